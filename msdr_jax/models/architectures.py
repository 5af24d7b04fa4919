"""Encoder and decoder networks of the stage-one VAE.

Two architectures, chosen by `config.stage1.model.architecture`, differ only
in their layer sizes (`ARCHITECTURES`):

* `dlib_conv` -- disentanglement_lib's `conv_encoder` / `deconv_decoder`
  (Locatello et al. 2019), the default of the published disentanglement
  studies: conv 32k4s2 -> 32k4s2 -> 64k2s2 -> 64k2s2 -> dense 256 -> dense 2K;
  dense 256 -> dense 1024 -> 4x4x64 -> convT 64, 32, 32, C (k4 s2).
* `burgess` -- Burgess et al. (2018), used by many PyTorch code bases:
  4 x conv 32k4s2 -> dense 256 -> 256 -> 2K; dense 256 -> 256 -> 4x4x32 ->
  3 x convT 32k4s2 -> convT C k4s2. (PyTorch's padding 1 is SAME for k4 s2.)

The strided convolutions are `layers.Stride2Conv` /
`layers.Stride2ConvTranspose`: the same functions and parameters as
`flax.linen.Conv` / `ConvTranspose` with SAME padding, with gradients
reformulated to run faster on CPUs (see `layers.py`).

Both networks take a computation `dtype` (bfloat16 for mixed precision); the
parameters stay float32 and the outputs are cast back to float32, so the
likelihood, the KL and the reparameterised sample are always float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from msdr_jax.models import layers

# Four stride-2 layers: 64x64 images <-> 4x4 feature maps.
_DOWNSAMPLING = 16


@dataclasses.dataclass(frozen=True)
class Architecture:
  """Layer sizes of a conv encoder / transposed-conv decoder pair."""

  encoder_convs: tuple[tuple[int, int], ...]  # (features, kernel) per layer.
  encoder_dense: tuple[int, ...]
  decoder_dense: tuple[int, ...]
  decoder_channels: int  # Channels of the first (smallest) feature map.
  decoder_convs: tuple[int, ...]  # Features of all but the image layer.


ARCHITECTURES = {
    "dlib_conv": Architecture(
        encoder_convs=((32, 4), (32, 4), (64, 2), (64, 2)),
        encoder_dense=(256,),
        decoder_dense=(256,),
        decoder_channels=64,
        decoder_convs=(64, 32, 32),
    ),
    "burgess": Architecture(
        encoder_convs=((32, 4),) * 4,
        encoder_dense=(256, 256),
        decoder_dense=(256, 256),
        decoder_channels=32,
        decoder_convs=(32, 32, 32),
    ),
}


class ConvEncoder(nn.Module):
  """Images [B, H, W, C] -> (mean, log_var) of q(z|x), each [B, K] float32."""

  architecture: Architecture
  latent_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = images
    for features, kernel in self.architecture.encoder_convs:
      h = nn.relu(layers.Stride2Conv(features, kernel, dtype=self.dtype)(h))
    h = h.reshape(h.shape[0], -1)
    for width in self.architecture.encoder_dense:
      h = nn.relu(nn.Dense(width, dtype=self.dtype)(h))
    out = nn.Dense(2 * self.latent_dim, dtype=self.dtype)(h).astype(jnp.float32)
    mean, log_var = jnp.split(out, 2, axis=-1)
    return mean, log_var


class ConvDecoder(nn.Module):
  """Latents [B, K] -> likelihood parameters (logits) [B, H, W, C] float32."""

  architecture: Architecture
  image_shape: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, latents: jax.Array) -> jax.Array:
    height, width, channels = self.image_shape
    grid = (height // _DOWNSAMPLING, width // _DOWNSAMPLING)
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    h = latents
    for hidden in self.architecture.decoder_dense:
      h = nn.relu(dense(hidden)(h))
    h = nn.relu(dense(grid[0] * grid[1] * self.architecture.decoder_channels)(h))
    h = h.reshape(h.shape[0], *grid, self.architecture.decoder_channels)
    for features in self.architecture.decoder_convs:
      h = nn.relu(layers.Stride2ConvTranspose(features, 4, dtype=self.dtype)(h))
    logits = layers.Stride2ConvTranspose(channels, 4, dtype=self.dtype)(h)
    return logits.astype(jnp.float32)
