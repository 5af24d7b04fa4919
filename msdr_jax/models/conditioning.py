"""How stage two sees the frozen stage one: the conditioning c = (z, y).

For an image x stage one provides the code z = mean of q(z|x) and the blurry
reconstruction y = dec(z). Every stage-two network (`refiner`, `flow`, the
families' heads) reads c through `Conditioning` and takes z, y or both
according to `config.stage2.conditioning`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

# How stage two sees stage one (`config.stage2.conditioning`). Every choice
# keeps a path from z to x; a model without one would ignore z, and the
# config validation rejects it.
CONDITIONINGS = ("image_and_code", "image", "code")


def uses_image(conditioning: str) -> bool:
  """Whether stage two sees y = dec(z) under `conditioning`."""
  return conditioning in ("image_and_code", "image")


def uses_code(conditioning: str) -> bool:
  """Whether stage two sees z itself under `conditioning`."""
  return conditioning in ("image_and_code", "code")


class Conditioning(NamedTuple):
  """Stage one's view of a batch; never differentiated."""

  code: jax.Array  # [B, K] stage-one code z.
  logits: jax.Array  # [B, H, W, C] stage-one decoder output at z.
  image: jax.Array  # [B, H, W, C] y, the decoder mean in [0, 1].
