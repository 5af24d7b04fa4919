"""MS-GAN: a conditional GAN with an encoder, so real images can be rebuilt.

  generator      G(c, w) -> logits, a `Refiner` U-Net; p(w) = N(0, I),
  discriminator  D(x, c) -> one logit per patch (`PatchDiscriminator`),
  encoder        E(x, c) -> q(w | x, c), a diagonal Gaussian.

The generator and encoder minimise

  NLL(x | G(c, w)), w ~ E(x, c)                        (reconstruction)
  + kl_weight * KL(E(x, c) ‖ N(0, I))                  (keeps E's codes where
                                                        the prior samples are)
  + adversarial_weight * sum_patches softplus(-D(G(c, w'), c)), w' ~ p(w)

(the non-saturating generator loss), and the discriminator minimises
softplus(-D(x, c)) + softplus(D(G(c, w'), c)) summed over patches.

Both players' objectives are one scalar `loss` whose gradient is exactly the
simultaneous GAN update: the generator terms see the discriminator's
parameters through `stop_gradient`, the discriminator terms see the fakes
through `stop_gradient`. One optimizer over all parameters then trains each
player on its own objective, and the family fits the common train step.
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


def _per_image_sum(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1).sum(-1)


@dataclasses.dataclass(frozen=True)
class ConditionalGAN(base.GaussianLatentRefiner):
  """MS-GAN with `latent_dim` new latents."""

  NAME = "gan"
  REFINER_KEY = "generator"  # G(c, w).
  HYPERPARAMETERS = {
      "latent_dim": base.AT_LEAST_ONE,
      "kl_weight": base.NON_NEGATIVE,
      "adversarial_weight": base.NON_NEGATIVE,
  }

  image_shape: tuple[int, int, int]
  conditioning: str
  likelihood: str
  latent_dim: int
  kl_weight: float
  adversarial_weight: float
  compute_dtype: Any = jnp.float32

  @property
  def encoder(self) -> refiner.ConditionalEncoder:
    return refiner.ConditionalEncoder(
        self.latent_dim, self.conditioning, dtype=self.compute_dtype)

  @property
  def latent_shape(self) -> tuple[int, ...]:
    return (self.latent_dim,)

  @property
  def discriminator(self) -> refiner.PatchDiscriminator:
    return refiner.PatchDiscriminator(self.conditioning, dtype=self.compute_dtype)

  def init(self, rng, cond, images):
    encoder_rng, generator_rng, discriminator_rng = jax.random.split(rng, 3)
    params = self._init_encoder_and_refiner(encoder_rng, generator_rng, cond, images)
    params["discriminator"] = self.discriminator.init(
        discriminator_rng, images, cond)["params"]
    return params

  def _critic(self, discriminator_params, images, cond):
    return self.discriminator.apply({"params": discriminator_params}, images, cond)

  def loss(self, params, cond, images, rng, step=None):
    del step  # No warm-up.
    posterior_rng, prior_rng = jax.random.split(rng)
    mean, log_var = self._posterior(params, cond, images)
    posterior = vae_lib.sample_diagonal_gaussian(posterior_rng, mean, log_var)
    recon = losses.LIKELIHOODS[self.likelihood](
        self._logits(params, cond, posterior), images)
    kl = losses.kl_to_standard_normal(mean, log_var).sum(-1)

    fakes = losses.decoder_mean(
        self._logits(params, cond, self.sample_latents(params, cond, prior_rng)))
    frozen_critic = jax.lax.stop_gradient(params["discriminator"])
    generator_adversarial = _per_image_sum(
        jax.nn.softplus(-self._critic(frozen_critic, fakes, cond)))
    generator_loss = jnp.mean(
        recon + self.kl_weight * kl + self.adversarial_weight * generator_adversarial)

    real_logits = self._critic(params["discriminator"], images, cond)
    fake_logits = self._critic(
        params["discriminator"], jax.lax.stop_gradient(fakes), cond)
    discriminator_loss = jnp.mean(
        _per_image_sum(jax.nn.softplus(-real_logits))
        + _per_image_sum(jax.nn.softplus(fake_logits)))

    loss = generator_loss + discriminator_loss
    return loss, {
        "loss": loss,
        "recon": recon.mean(),
        "kl": kl.mean(),
        "generator_adversarial": generator_adversarial.mean(),
        "discriminator": discriminator_loss,
        "real_accuracy": jnp.mean(real_logits > 0),
        "fake_accuracy": jnp.mean(fake_logits < 0),
    }
