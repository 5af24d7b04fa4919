r"""Multi-stage model on Cars3D from its directory of .mat files.

  python -m msdr_jax.main --config=configs/cars3d.py:preset=quick \
      --config.data.path=cars/

Factors: elevation (4), azimuth (24), object (183 car models); 17,568 images,
resized from 128x128 to 64x64x3 (216 MB in memory).

Presets as in configs/dsprites.py.
"""

import ml_collections

from msdr_jax import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The config for `arg`, e.g. 'preset=quick'; see the module docstring."""
  config = base_config.get_config(arg, "cars3d", default_source="file")
  config.stage2.flow.num_levels = 256  # 8-bit colour.
  config.stage2.flow.base = "gaussian"  # Stage one is no distribution on 256 levels.
  return config
