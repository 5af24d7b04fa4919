"""Encoder and decoder networks of the stage-one VAE.

Two architectures, chosen by `config.stage1.model.architecture`:

* `dlib_conv` -- disentanglement_lib's `conv_encoder` / `deconv_decoder`
  (Locatello et al. 2019), the default of the published disentanglement
  studies.
* `burgess` -- Burgess et al. (2018), used by many PyTorch code bases.

The strided convolutions are `layers.Stride2Conv` / `layers.Stride2ConvTranspose`: the
same functions and parameters as `flax.linen.Conv` / `ConvTranspose` with SAME
padding, reformulated to run faster on CPUs (see `layers.py`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from msdr_jax.models import layers


class DlibConvEncoder(nn.Module):
  """conv 32k4s2 -> 32k4s2 -> 64k2s2 -> 64k2s2 -> dense 256 -> dense 2K."""

  latent_dim: int

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = images
    for features, kernel in ((32, 4), (32, 4), (64, 2), (64, 2)):
      h = nn.relu(layers.Stride2Conv(features, kernel)(h))
    h = h.reshape(h.shape[0], -1)
    h = nn.relu(nn.Dense(256)(h))
    stats = nn.Dense(2 * self.latent_dim)(h)
    mean, log_var = jnp.split(stats, 2, axis=-1)
    return mean, log_var


class DlibConvDecoder(nn.Module):
  """dense 256 -> dense 1024 -> 4x4x64 -> convT 64, 32, 32, C (k4 s2)."""

  image_shape: Sequence[int]

  @nn.compact
  def __call__(self, latents: jax.Array) -> jax.Array:
    height, width, channels = self.image_shape
    h = nn.relu(nn.Dense(256)(latents))
    h = nn.relu(nn.Dense(1024)(h))
    h = h.reshape(h.shape[0], height // 16, width // 16, -1)
    for features in (64, 32, 32):
      h = nn.relu(layers.Stride2ConvTranspose(features, 4)(h))
    return layers.Stride2ConvTranspose(channels, 4)(h)


class BurgessEncoder(nn.Module):
  """4 x conv 32k4s2 (pad 1) -> dense 256 -> dense 256 -> dense 2K."""

  latent_dim: int

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = images
    for _ in range(4):
      # For k4 s2 on even sizes, PyTorch's padding=1 is exactly SAME.
      h = nn.relu(layers.Stride2Conv(32, 4)(h))
    h = h.reshape(h.shape[0], -1)
    h = nn.relu(nn.Dense(256)(h))
    h = nn.relu(nn.Dense(256)(h))
    stats = nn.Dense(2 * self.latent_dim)(h)
    mean, log_var = jnp.split(stats, 2, axis=-1)
    return mean, log_var


class BurgessDecoder(nn.Module):
  """dense 256 -> 256 -> 4x4x32 -> 3 x convT 32k4s2 -> convT C k4s2."""

  image_shape: Sequence[int]

  @nn.compact
  def __call__(self, latents: jax.Array) -> jax.Array:
    height, width, channels = self.image_shape
    h = nn.relu(nn.Dense(256)(latents))
    h = nn.relu(nn.Dense(256)(h))
    h = nn.relu(nn.Dense(32 * (height // 16) * (width // 16))(h))
    h = h.reshape(h.shape[0], height // 16, width // 16, 32)
    for _ in range(3):
      h = nn.relu(layers.Stride2ConvTranspose(32, 4)(h))
    return layers.Stride2ConvTranspose(channels, 4)(h)


ARCHITECTURES = {
    "dlib_conv": (DlibConvEncoder, DlibConvDecoder),
    "burgess": (BurgessEncoder, BurgessDecoder),
}
