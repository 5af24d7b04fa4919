"""MS-GAN: MS-VAE whose samples are also trained to be indistinguishable from data.

  generator      G(c, w) -> logits: MS-VAE's refiner, w a map of local
                 latents with p(w) = N(0, I);
  encoder        E(x, c) -> q(w | x, c), MS-VAE's;
  discriminator  D(x, c) -> one logit per patch (`PatchDiscriminator`).

MS-VAE's objective (with its KL warm-up) keeps reconstructions faithful, but
its samples decode w ~ p(w), where the decoder is only trained as far as
q(w | x, c) covers the prior. The adversarial term trains the generator
exactly there, on prior samples: it is what turns MS-VAE's samples sharp.
The generator and encoder minimise

  -E_q log p(x | G(c, w)) + beta_t * KL(q ‖ p(w))       (MS-VAE's loss)
  + adversarial_weight * sum_patches g(D(G(c, w'), c)),  w' ~ p(w),

and the discriminator, conditioned on stage one's output, minimises

  sum_patches [d_real(D(x, c)) + d_fake(D(G(c, w'), c))]
  + r1_weight / 2 * ||grad_x sum_patches D(x, c)||^2   (R1, Mescheder et al.
                                                        2018, on real x)

with `adversarial_loss` "hinge" (d_real(t) = relu(1 - t), d_fake(t) =
relu(1 + t), g(t) = -t) or "non_saturating" (softplus(-t), softplus(t),
softplus(-t)). The discriminator's updates are `discriminator_learning_rate`
times the optimizer's (two time-scales). With `fake_codes` "prior" the fakes
decode codes z ~ N(0, I), as sampling does, instead of the batch's codes, and
the discriminator sees the image alone. The defaults are the best of the
ablation in docs/stage_two.md, "MS-GAN", where no variant made samples
sharper than MS-VAE's at 300 steps.

Both players' objectives are one scalar `loss` whose gradient is exactly the
simultaneous GAN update: the generator terms see the discriminator's
parameters through `stop_gradient`, the discriminator terms see the fakes
through `stop_gradient`. The common train step then trains each player on
its own objective.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from msdr_jax.families import base
from msdr_jax.families import ms_vae
from msdr_jax.models import refiner

# adversarial_loss -> (d_real, d_fake, g): per-patch losses of the
# discriminator on real and on generated images, and of the generator.
ADVERSARIAL_LOSSES: dict[str, tuple[Callable, Callable, Callable]] = {
    "hinge": (lambda t: jax.nn.relu(1.0 - t), lambda t: jax.nn.relu(1.0 + t),
              lambda t: -t),
    "non_saturating": (lambda t: jax.nn.softplus(-t), jax.nn.softplus,
                       lambda t: jax.nn.softplus(-t)),
}


# fake_codes: the stage-one codes of the generated images the discriminator
# judges: those of the batch's real images ("posterior"), or z ~ N(0, I) as
# the model samples ("prior"), with a discriminator that sees the image only.
FAKE_CODES = ("posterior", "prior")


def _per_image_sum(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1).sum(-1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConditionalGAN(ms_vae.ConditionalVAE):
  """MS-GAN: MS-VAE's model and loss, plus a conditional patch discriminator."""

  NAME = "gan"
  REFINER_KEY = "generator"  # G(c, w).
  HYPERPARAMETERS = {
      **ms_vae.ConditionalVAE.HYPERPARAMETERS,
      "adversarial_weight": base.NON_NEGATIVE,
      "adversarial_loss": base.Hyperparameter(
          str, lambda v: v in ADVERSARIAL_LOSSES, f"one of {sorted(ADVERSARIAL_LOSSES)}"),
      "r1_weight": base.NON_NEGATIVE,
      "discriminator_learning_rate": base.Hyperparameter(
          float, lambda v: v > 0, "> 0 (a multiple of the optimizer's learning rate)"),
      "fake_codes": base.Hyperparameter(
          str, lambda v: v in FAKE_CODES, f"one of {list(FAKE_CODES)}"),
  }

  adversarial_weight: float
  adversarial_loss: str
  r1_weight: float
  discriminator_learning_rate: float
  fake_codes: str

  @property
  def discriminator(self) -> refiner.PatchDiscriminator:
    # Conditioned on a prior code's y, the discriminator could call a fake
    # from y alone (stage one's prior holes) and teach the generator nothing.
    conditioning = self.conditioning if self.fake_codes == "posterior" else "none"
    return refiner.PatchDiscriminator(conditioning, dtype=self.compute_dtype)

  @property
  def trains_on_prior_codes(self) -> bool:
    return self.fake_codes == "prior"

  @property
  def update_scales(self) -> dict[str, float]:
    return {"discriminator": self.discriminator_learning_rate}

  def init(self, rng, cond, images):
    vae_rng, discriminator_rng = jax.random.split(rng)
    params = super().init(vae_rng, cond, images)
    params["discriminator"] = self.discriminator.init(
        discriminator_rng, images, cond)["params"]
    return params

  def _critic(self, discriminator_params, images, cond):
    return self.discriminator.apply({"params": discriminator_params}, images, cond)

  def loss(self, params, cond, images, rng, step=None, prior_cond=None):
    posterior_rng, prior_rng = jax.random.split(rng)
    vae_loss, metrics = super().loss(params, cond, images, posterior_rng, step)
    d_real, d_fake, g = ADVERSARIAL_LOSSES[self.adversarial_loss]

    fake_cond = cond if prior_cond is None else prior_cond
    fakes = self.decode(params, fake_cond, self.sample_latents(params, fake_cond, prior_rng))
    frozen_critic = jax.lax.stop_gradient(params["discriminator"])
    generator_adversarial = _per_image_sum(
        g(self._critic(frozen_critic, fakes, fake_cond)))

    def real_critic_sum(real):
      return self._critic(params["discriminator"], real, cond).sum()

    real_logits = self._critic(params["discriminator"], images, cond)
    fake_logits = self._critic(
        params["discriminator"], jax.lax.stop_gradient(fakes), fake_cond)
    discriminator_loss = jnp.mean(
        _per_image_sum(d_real(real_logits)) + _per_image_sum(d_fake(fake_logits)))
    if self.r1_weight:
      real_gradient = jax.grad(real_critic_sum)(images)
      r1 = jnp.mean(_per_image_sum(real_gradient ** 2))
      discriminator_loss += 0.5 * self.r1_weight * r1
      metrics["r1"] = r1

    loss = (vae_loss + self.adversarial_weight * generator_adversarial.mean()
            + discriminator_loss)
    metrics.update({
        "loss": loss,
        "vae_loss": vae_loss,
        "generator_adversarial": generator_adversarial.mean(),
        "discriminator": discriminator_loss,
        "real_accuracy": jnp.mean(real_logits > 0),
        "fake_accuracy": jnp.mean(fake_logits < 0),
    })
    return loss, metrics
