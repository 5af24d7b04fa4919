"""dSprites with a per-image texture that its factors do not determine.

The five dSprites factors place the sprite exactly as in `dsprites`; a sixth,
*nuisance* state variable picks one of `NUM_TEXTURES` grey-level textures
that fills the sprite (the background stays black). The texture is drawn
uniformly and independently of the factors for every image, and the
disentanglement metrics score the five factors only.

This is the situation multi-stage modelling is for: a penalised stage one
(beta-TCVAE) has no capacity to spend on texture and reconstructs the sprite
as a flat average grey, while stage two, given stage one's output and z, can
put the texture into its own latents w without touching z.

Texture t is the sum of two sinusoidal gratings whose directions,
frequencies (2 to 8 cycles per image width) and phases are row t of a fixed
table drawn once with NumPy (`TEXTURE_PARAMETERS`, independent of JAX's
random-number implementation): deterministic per t, smooth enough to be
learnable, and varied enough (1024 of them) that no few latents can index
them. A sprite pixel's intensity is 0.4 + 0.6 * pattern, in [0.4, 1],
rounded to 8 bits like the images of the real data sets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from msdr_jax.data import dsprites
from msdr_jax.data import ground_truth

NUM_TEXTURES = 1024
TEXTURE_SEED = 20_190_601
NUM_GRATINGS = 2
MIN_CYCLES, MAX_CYCLES = 2.0, 8.0
MIN_INTENSITY = 0.4


# Per texture and grating: (direction, frequency, phase), each uniform in
# [0, 1) before scaling.
TEXTURE_PARAMETERS = np.random.default_rng(TEXTURE_SEED).random(
    (NUM_TEXTURES, NUM_GRATINGS, 3)).astype(np.float32)


def texture(index: jax.Array) -> jax.Array:
  """Grey-level patterns in [0, 1] of texture indices `[...]`: `[..., 64, 64]`."""
  index = jnp.asarray(index, jnp.int32)
  params = jnp.asarray(TEXTURE_PARAMETERS)[index.reshape(-1)]
  direction = 2.0 * np.pi * params[..., 0]
  cycles = MIN_CYCLES + (MAX_CYCLES - MIN_CYCLES) * params[..., 1]
  phase = 2.0 * np.pi * params[..., 2]
  size = dsprites.IMAGE_SIZE
  pixel = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
  # Gratings are separable in x and y up to the sum: [B, G, 1, W] + [B, G, H, 1].
  wave_x = (cycles * jnp.cos(direction))[..., None, None] * pixel[None, :]
  wave_y = (cycles * jnp.sin(direction))[..., None, None] * pixel[:, None]
  gratings = jnp.sin(2.0 * np.pi * (wave_x + wave_y) + phase[..., None, None])
  pattern = 0.5 + 0.5 * gratings.mean(axis=-3)
  return pattern.reshape(*index.shape, size, size)


def render(state: jax.Array) -> jax.Array:
  """States `[..., 6]` (dSprites factors, texture) -> float32 `[..., 64, 64, 1]`."""
  state = jnp.asarray(state, jnp.int32)
  mask = dsprites.render(state[..., :5])
  intensity = MIN_INTENSITY + (1.0 - MIN_INTENSITY) * texture(state[..., 5])
  # 8-bit levels, as the flow family's dequantisation assumes.
  return jnp.round(mask * intensity[..., None] * 255.0) / 255.0


class TexturedDSprites(ground_truth.GroundTruthData):
  """dSprites whose sprites carry one of 1024 textures, drawn per image."""

  @property
  def factor_names(self) -> tuple[str, ...]:
    return dsprites.FACTOR_NAMES

  @property
  def factor_sizes(self) -> tuple[int, ...]:
    return dsprites.FACTOR_SIZES

  @property
  def nuisance_names(self) -> tuple[str, ...]:
    return ("texture",)

  @property
  def nuisance_sizes(self) -> tuple[int, ...]:
    return (NUM_TEXTURES,)

  @property
  def observation_shape(self) -> tuple[int, int, int]:
    return (dsprites.IMAGE_SIZE, dsprites.IMAGE_SIZE, 1)

  def images_from_state(self, state: jax.Array) -> jax.Array:
    return render(state)
