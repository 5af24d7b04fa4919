r"""Multi-stage model on Shapes3D (floor, wall and object hue, scale, shape, orientation).

  python -m msdr_jax.main --config=configs/shapes3d.py:preset=quick
  python -m msdr_jax.main --config=configs/shapes3d.py:preset=quick,source=tfds \
      --config.data.data_dir=DIR
  python -m msdr_jax.main --config=configs/shapes3d.py:preset=quick,source=file \
      --config.data.path=3dshapes.h5

Sources (`source=...`):
  procedural -- the default: a shaded ray-cast scene with the Shapes3D factors,
                rendered in the train step (64x64x3, no download).
  tfds       -- DeepMind's 3dshapes from a prepared TFDS data_dir (480,000
                images, 5.9 GB in device memory; --config.data.placement=host
                keeps them in host memory).
  file       -- the same images from DeepMind's 3dshapes.h5
                (github.com/deepmind/3d-shapes) at --config.data.path.

Presets as in configs/dsprites.py.
"""

import ml_collections

from msdr_jax import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The config for `arg`, e.g. 'preset=quick'; see the module docstring."""
  config = base_config.get_config(arg, "shapes3d", default_source="procedural")
  # 8-bit colour images: the flow dequantises 256 levels per channel.
  config.stage2.flow.num_levels = 256
  config.stage2.flow.base = "gaussian"  # Stage one is no distribution on 256 levels.
  return config
