"""Networks of the stage-two families that work in image space.

* `ConditionalEncoder` -- q(w | x, c): a conv net on x stacked with the
  stage-one reconstruction y, with the stage-one code z joined before the
  dense layers.
* `Refiner` -- a U-Net from (c, w) to logits. With the image in the
  conditioning it predicts a *correction* to stage one's logits and its last
  layer starts at zero, so an untrained refiner reproduces stage one exactly
  and training only ever adds the detail stage one misses.
* `PatchDiscriminator` -- D(x, c) of MS-GAN: one logit per image patch.

The strided convolutions are the fast `layers.Stride2Conv` /
`layers.Stride2ConvTranspose` of stage one; the few full-resolution layers
are stride-1 convolutions, which XLA:CPU runs quickly.

Every network computes in its `dtype` (bfloat16 for mixed precision) with
float32 parameters, and returns float32: its outputs feed likelihoods, KL
terms and the GAN losses, and the refiner's correction is added to stage
one's float32 logits, which bfloat16 would round.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msdr_jax.models import conditioning as conditioning_lib
from msdr_jax.models import layers

# 64x64 -> 32 -> 16 -> 8 -> 4.
_FEATURES = (32, 32, 64, 64)
_DENSE = 256
_FULL_RESOLUTION_FEATURES = 8


def latent_map_depth(image_size: int, latent_resolution: int) -> int:
  """How many halvings take `image_size` to `latent_resolution` (a U-Net level)."""
  for depth in range(1, len(_FEATURES) + 1):
    if image_size // 2 ** depth == latent_resolution:
      return depth
  sizes = [image_size // 2 ** d for d in range(1, len(_FEATURES) + 1)]
  raise ValueError(f"A latent map of {latent_resolution}x{latent_resolution} is not a "
                   f"level of the {image_size}x{image_size} U-Net; choose one of {sizes}.")


class ConditionalEncoder(nn.Module):
  """(x, c) -> (mean, log_var) of a diagonal Gaussian over w.

  w is a vector [B, latent_dim] (`latent_resolution=0`), or a map
  [B, r, r, latent_dim] of local latents at one of the U-Net's resolutions
  r (`latent_resolution=r`): each holds the detail of its own patch, which
  the refiner reads at the same place.
  """

  latent_dim: int
  conditioning: str
  latent_resolution: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, cond: conditioning_lib.Conditioning):
    h = images
    if conditioning_lib.uses_image(self.conditioning):
      h = jnp.concatenate([images, cond.image], axis=-1)
    if self.latent_resolution:
      depth = latent_map_depth(images.shape[1], self.latent_resolution)
      for features in _FEATURES[:depth]:
        h = nn.relu(layers.Stride2Conv(features, 4, dtype=self.dtype)(h))
      if conditioning_lib.uses_code(self.conditioning):
        h = h + nn.Dense(h.shape[-1], dtype=self.dtype)(cond.code)[:, None, None, :]
      h = nn.relu(nn.Conv(_FEATURES[depth - 1], (3, 3), dtype=self.dtype)(h))
      out = nn.Conv(2 * self.latent_dim, (3, 3), dtype=self.dtype)(h)
    else:
      for features in _FEATURES:
        h = nn.relu(layers.Stride2Conv(features, 4, dtype=self.dtype)(h))
      h = h.reshape(h.shape[0], -1)
      if conditioning_lib.uses_code(self.conditioning):
        h = jnp.concatenate([h, cond.code], axis=-1)
      h = nn.relu(nn.Dense(_DENSE, dtype=self.dtype)(h))
      out = nn.Dense(2 * self.latent_dim, dtype=self.dtype)(h)
    mean, log_var = jnp.split(out.astype(jnp.float32), 2, axis=-1)
    return mean, log_var


class Refiner(nn.Module):
  """U-Net (c, w) -> `output_channels` logit maps at the image resolution.

  `output_channels` is C for one image, M * C for the M mixture components
  of MS-GMM. `w` may be None (MS-GMM has no continuous latents), a vector
  [B, L] (joined with z at the bottleneck) or a map [B, r, r, L] (joined
  to the up path where it has resolution r). Returns (logits
  [B, H, W, output_channels], bottleneck features [B, F]), both float32.
  """

  conditioning: str
  output_channels: int
  # Start exactly at stage one's logits. MS-GMM turns this off: identical
  # components would receive identical updates and never separate.
  zero_init_correction: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cond: conditioning_lib.Conditioning, latents: jax.Array | None):
    batch, height, width, channels = cond.image.shape
    with_image = conditioning_lib.uses_image(self.conditioning)
    latent_map = latents if latents is not None and latents.ndim == 4 else None
    codes = [latents] if latents is not None and latent_map is None else []
    if conditioning_lib.uses_code(self.conditioning):
      codes.append(cond.code)
    grid = (height // 2 ** len(_FEATURES), width // 2 ** len(_FEATURES))

    skips = []
    if with_image:
      h = jnp.concatenate([cond.image, cond.logits], axis=-1)
      for features in _FEATURES:
        h = nn.relu(layers.Stride2Conv(features, 4, dtype=self.dtype)(h))
        skips.append(h)
      bottleneck = h.reshape(batch, -1)
    else:
      bottleneck = jnp.zeros((batch, 0), cond.code.dtype)
    if codes:
      code = jnp.concatenate(codes, axis=-1)
      code = nn.relu(nn.Dense(_DENSE, dtype=self.dtype)(code))
      code = nn.relu(
          nn.Dense(grid[0] * grid[1] * _FEATURES[-1], dtype=self.dtype)(code))
      bottleneck = jnp.concatenate([bottleneck, code], axis=-1)
      code_map = code.reshape(batch, *grid, _FEATURES[-1])
      h = jnp.concatenate([h, code_map], axis=-1) if with_image else code_map

    def join_latent_map(h):
      if latent_map is not None and latent_map.shape[1] == h.shape[1]:
        return jnp.concatenate([h, latent_map.astype(h.dtype)], axis=-1)
      return h

    # Up: 4 -> 8 -> 16 -> 32 -> 64, joining the encoder maps of each size.
    h = join_latent_map(h)
    for features, skip in zip(_FEATURES[-2::-1], skips[-2::-1] or [None] * 3):
      h = nn.relu(layers.Stride2ConvTranspose(features, 4, dtype=self.dtype)(h))
      if skip is not None:
        h = jnp.concatenate([h, skip], axis=-1)
      h = join_latent_map(h)
    h = nn.relu(layers.Stride2ConvTranspose(
        _FULL_RESOLUTION_FEATURES, 4, dtype=self.dtype)(h))
    if with_image:
      h = jnp.concatenate([h, cond.image, cond.logits], axis=-1)
    h = nn.relu(nn.Conv(_FULL_RESOLUTION_FEATURES, (3, 3), dtype=self.dtype)(h))
    bottleneck = bottleneck.astype(jnp.float32)
    if not with_image:
      logits = nn.Conv(self.output_channels, (3, 3), dtype=self.dtype)(h)
      return logits.astype(jnp.float32), bottleneck
    kernel_init = (nn.initializers.zeros if self.zero_init_correction
                   else nn.initializers.normal(1e-2))
    correction = nn.Conv(self.output_channels, (3, 3), kernel_init=kernel_init,
                         dtype=self.dtype)(h)
    base_logits = jnp.tile(cond.logits, (1, 1, 1, self.output_channels // channels))
    return base_logits + correction.astype(jnp.float32), bottleneck


class PatchDiscriminator(nn.Module):
  """(x, c) -> [B, H/8, W/8] float32 real/fake logits, one per overlapping patch."""

  conditioning: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, cond: conditioning_lib.Conditioning) -> jax.Array:
    h = images
    if conditioning_lib.uses_image(self.conditioning):
      h = jnp.concatenate([images, cond.image], axis=-1)
    for features in _FEATURES[:3]:
      h = nn.leaky_relu(layers.Stride2Conv(features, 4, dtype=self.dtype)(h), 0.2)
    if conditioning_lib.uses_code(self.conditioning):
      h = h + nn.Dense(h.shape[-1], dtype=self.dtype)(cond.code)[:, None, None, :]
    return nn.Conv(1, (3, 3), dtype=self.dtype)(h)[..., 0].astype(jnp.float32)
