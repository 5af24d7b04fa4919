r"""Multi-stage model on CelebA from a prepared TFDS data_dir.

  python -m msdr_jax.main --config=configs/celeb_a.py:preset=quick \
      --config.data.data_dir=DIR

CelebA has no ground-truth factors: the evaluation reports reconstruction
and sample quality (FID/KID) only. All 202,599 photos (train, validation and
test), centre-cropped to 148x148 and resized to 64x64 (2.5 GB of uint8).

Presets as in configs/dsprites.py.
"""

import ml_collections

from msdr_jax import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The config for `arg`, e.g. 'preset=quick'; see the module docstring."""
  config = base_config.get_config(arg, "celeb_a", default_source="tfds")
  config.stage2.flow.num_levels = 256  # 8-bit colour.
  config.stage2.flow.base = "gaussian"  # Stage one is no distribution on 256 levels.
  return config
