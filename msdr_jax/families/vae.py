"""MS-VAE: a conditional VAE that refines stage one's reconstruction.

  q(w | x, c) = N(mean(x, c), diag exp(log_var(x, c))),   p(w) = N(0, I),
  p(x | c, w) = the stage-one likelihood with logits Refiner(c, w),

trained with the negative ELBO  -E_q log p(x | c, w) + beta * KL(q ‖ p(w)).
The KL is a plain one (beta = 1 by default, no total-correlation penalty):
w is meant to hold the *correlated* detail, and independence from z comes
from the graph, not from a penalty.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from msdr_jax import losses
from msdr_jax.families import base
from msdr_jax.models import refiner
from msdr_jax.models import vae as vae_lib


@dataclasses.dataclass(frozen=True)
class ConditionalVAE(base.Family):
  """MS-VAE with `latent_dim` new latents and KL weight `beta`."""

  image_shape: tuple[int, int, int]
  conditioning: str
  likelihood: str
  latent_dim: int
  beta: float
  compute_dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, stage2_config, image_shape, likelihood: str,
                  compute_dtype: Any = jnp.float32):
    return cls(
        image_shape=tuple(image_shape),
        conditioning=stage2_config.conditioning,
        likelihood=likelihood,
        latent_dim=stage2_config.vae.latent_dim,
        beta=stage2_config.vae.beta,
        compute_dtype=compute_dtype,
    )

  @property
  def encoder(self) -> refiner.ConditionalEncoder:
    return refiner.ConditionalEncoder(
        self.latent_dim, self.conditioning, dtype=self.compute_dtype)

  @property
  def decoder(self) -> refiner.Refiner:
    return refiner.Refiner(
        self.conditioning, self.image_shape[-1], dtype=self.compute_dtype)

  def init(self, rng, cond, images):
    encoder_rng, decoder_rng = jax.random.split(rng)
    latents = jnp.zeros((images.shape[0], self.latent_dim), images.dtype)
    return {
        "encoder": self.encoder.init(encoder_rng, images, cond)["params"],
        "decoder": self.decoder.init(decoder_rng, cond, latents)["params"],
    }

  def _logits(self, params, cond, latents):
    logits, _ = self.decoder.apply({"params": params["decoder"]}, cond, latents)
    return logits

  def loss(self, params, cond, images, rng):
    mean, log_var = self.encoder.apply({"params": params["encoder"]}, images, cond)
    latents = vae_lib.sample_diagonal_gaussian(rng, mean, log_var)
    recon = losses.LIKELIHOODS[self.likelihood](self._logits(params, cond, latents), images)
    kl = losses.kl_to_standard_normal(mean, log_var).sum(-1)
    loss = jnp.mean(recon + self.beta * kl)
    return loss, {"loss": loss, "recon": recon.mean(), "kl": kl.mean()}

  def encode(self, params, cond, images):
    mean, _ = self.encoder.apply({"params": params["encoder"]}, images, cond)
    return mean

  def decode(self, params, cond, latents):
    return losses.decoder_mean(self._logits(params, cond, latents))

  def sample_latents(self, params, cond, rng):
    del params  # The prior has no parameters.
    return jax.random.normal(rng, (cond.code.shape[0], self.latent_dim), cond.code.dtype)
