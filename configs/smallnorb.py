r"""Multi-stage model on SmallNORB from a prepared TFDS data_dir.

  python -m msdr_jax.main --config=configs/smallnorb.py:preset=quick \
      --config.data.data_dir=DIR

Factors: category (5), elevation (9), azimuth (18), lighting (6); the object
instance is a nuisance factor. Train and test splits combined (48,600 images),
resized from 96x96 to 64x64 grey.

Presets as in configs/dsprites.py.
"""

import ml_collections

from msdr_jax import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The config for `arg`, e.g. 'preset=quick'; see the module docstring."""
  config = base_config.get_config(arg, "smallnorb", default_source="tfds")
  config.stage2.flow.num_levels = 256  # 8-bit grey.
  config.stage2.flow.base = "gaussian"  # Stage one is no distribution on 256 levels.
  return config
