r"""Multi-stage model on textured dSprites: detail that the factors do not determine.

Each sprite carries one of 1024 grey-level textures, drawn per image
(msdr_jax/data/textured_dsprites.py). Stage one cannot afford the texture;
stage two models it in w. The metrics score the five dSprites factors.

  python -m msdr_jax.main --config=configs/dsprites_textured.py:preset=quick

Presets as in configs/dsprites.py.
"""

import ml_collections

from msdr_jax import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The config for `arg`, e.g. 'preset=quick'; see the module docstring."""
  config = base_config.get_config(arg, "dsprites_textured", default_source="procedural")
  # Grey levels, not binary pixels: the flow dequantises 256 levels.
  config.stage2.flow.num_levels = 256
  config.stage2.flow.base = "gaussian"  # Stage one is no distribution on 256 levels.
  return config
