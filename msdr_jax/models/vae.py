"""The stage-one VAE as a Flax module with pure `encode` / `decode` methods.

Parameters live outside the module (`{'params': ...}` pytrees), so every
method is a pure function of `(params, inputs)`:

  model = VAE(architecture='dlib_conv', latent_dim=10, image_shape=(64, 64, 1))
  params = model.init(rng, images, rng)['params']
  mean, log_var = model.apply({'params': params}, images, method=VAE.encode)
  logits = model.apply({'params': params}, mean, method=VAE.decode)

`dtype=jnp.bfloat16` computes the networks in bfloat16 (mixed precision).
The parameter tree is the same for every `dtype` (float32 leaves), so a
checkpoint trained in one precision loads in the other, and every output is
float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from msdr_jax.models import architectures


class VAEOutput(NamedTuple):
  """Everything the stage-one objectives need from one forward pass."""

  mean: jax.Array  # [B, K] posterior means, the representation of the metrics.
  log_var: jax.Array  # [B, K] posterior log-variances.
  latents: jax.Array  # [B, K] one reparameterised posterior sample per image.
  decoder_output: jax.Array  # [B, H, W, C] likelihood parameters (logits).


class VAE(nn.Module):
  """Gaussian-posterior VAE: q(z|x) = N(mean(x), diag exp(log_var(x)))."""

  architecture: str
  latent_dim: int
  image_shape: Sequence[int]
  dtype: Any = jnp.float32

  def setup(self):
    architecture = architectures.ARCHITECTURES[self.architecture]
    self.encoder = architectures.ConvEncoder(
        architecture, self.latent_dim, dtype=self.dtype)
    self.decoder = architectures.ConvDecoder(
        architecture, tuple(self.image_shape), dtype=self.dtype)

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.encoder(images)

  def decode(self, latents: jax.Array) -> jax.Array:
    return self.decoder(latents)

  def __call__(self, images: jax.Array, rng: jax.Array) -> VAEOutput:
    mean, log_var = self.encode(images)
    latents = sample_diagonal_gaussian(rng, mean, log_var)
    return VAEOutput(mean, log_var, latents, self.decode(latents))


def sample_diagonal_gaussian(
    rng: jax.Array, mean: jax.Array, log_var: jax.Array
) -> jax.Array:
  """Reparameterised sample z = mean + exp(log_var / 2) * eps."""
  eps = jax.random.normal(rng, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * log_var) * eps

