"""MS-VAE: a conditional VAE that refines stage one's reconstruction.

  q(w | x, c) = N(mean(x, c), diag exp(log_var(x, c))),   p(w) = N(0, I),
  p(x | c, w) = the stage-one likelihood with logits Refiner(c, w),

trained with the negative ELBO  -E_q log p(x | c, w) + beta * KL(q ‖ p(w)).
The KL is a plain one (beta = 1 by default, no total-correlation penalty):
w is meant to hold the *correlated* detail, and independence from z comes
from the graph, not from a penalty.

w is a map of local latents, `latent_channels` at `latent_resolution` x
`latent_resolution` (default 16 x 16 x 1): the detail stage one misses lies
along its edges and in textures, at given places, and a latent per patch that
the refiner reads at that place is a short path from what is missing to
where it is missing. `latent_resolution=0` makes w one vector of
`latent_channels` latents, joined with z at the refiner's bottleneck.

The KL weight warms up geometrically, from `beta * KL_WARMUP_START` at step 0
to `beta` at step `kl_warmup_steps`. The refiner starts as stage one (its
correction layer is zero), so at first the reconstruction term does not
depend on w at all and the KL term is the encoder's only gradient; Adam
follows even a small gradient at full step size, and w collapses onto the
prior before the refiner could learn to read it. A weight that starts near
zero lets w carry information until the refiner uses it; afterwards the
full KL prices it. `experiments/ms_vae_ablation.py` measures the choice.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from msdr_jax import losses
from msdr_jax.families import base
from msdr_jax.models import refiner
from msdr_jax.models import vae as vae_lib

# The KL weight at step 0, relative to `beta`.
KL_WARMUP_START = 1e-4

# w: a vector (0) or a map at a level of the stage-two U-Net on 64x64 images
# (`models/refiner.py`).
LATENT_MAP_RESOLUTIONS = (0, 4, 8, 16, 32)


def kl_weight(beta: float, warmup_steps: int, step: jax.Array | None) -> jax.Array:
  """beta * KL_WARMUP_START ** (1 - step / warmup_steps), and beta from then on."""
  if step is None or warmup_steps == 0:
    return jnp.asarray(beta, jnp.float32)
  remaining = jnp.maximum(0.0, 1.0 - jnp.asarray(step, jnp.float32) / warmup_steps)
  return beta * KL_WARMUP_START ** remaining


@dataclasses.dataclass(frozen=True)
class ConditionalVAE(base.GaussianLatentRefiner):
  """MS-VAE with a `latent_resolution`^2 x `latent_channels` map of new latents."""

  NAME = "vae"
  REFINER_KEY = "decoder"
  HYPERPARAMETERS = {
      "latent_resolution": base.Hyperparameter(
          int, lambda v: v in LATENT_MAP_RESOLUTIONS,
          f"0 (a vector) or one of the U-Net's resolutions {list(LATENT_MAP_RESOLUTIONS[1:])}"),
      "latent_channels": base.AT_LEAST_ONE,
      "beta": base.NON_NEGATIVE,
      "kl_warmup_steps": base.Hyperparameter(int, lambda v: v >= 0, ">= 0"),
  }

  image_shape: tuple[int, int, int]
  conditioning: str
  likelihood: str
  latent_resolution: int
  latent_channels: int
  beta: float
  kl_warmup_steps: int
  compute_dtype: Any = jnp.float32

  @property
  def latent_shape(self) -> tuple[int, ...]:
    """The shape of one image's w: a map, or a vector if `latent_resolution` is 0."""
    if not self.latent_resolution:
      return (self.latent_channels,)
    return (self.latent_resolution, self.latent_resolution, self.latent_channels)

  @property
  def encoder(self) -> refiner.ConditionalEncoder:
    return refiner.ConditionalEncoder(
        self.latent_channels, self.conditioning,
        latent_resolution=self.latent_resolution, dtype=self.compute_dtype)

  def init(self, rng, cond, images):
    return self._init_encoder_and_refiner(*jax.random.split(rng), cond, images)

  def loss(self, params, cond, images, rng, step=None):
    mean, log_var = self._posterior(params, cond, images)
    latents = vae_lib.sample_diagonal_gaussian(rng, mean, log_var)
    recon = losses.LIKELIHOODS[self.likelihood](self._logits(params, cond, latents), images)
    kl = losses.kl_to_standard_normal(mean, log_var).reshape(images.shape[0], -1).sum(-1)
    weight = kl_weight(self.beta, self.kl_warmup_steps, step)
    loss = jnp.mean(recon + weight * kl)
    metrics = {"loss": loss, "recon": recon.mean(), "kl": kl.mean(), "kl_weight": weight}
    if self.likelihood == "bernoulli":
      # The negative ELBO at the full KL weight: a bound on -log P(x | z) of
      # binary images, in bits per dimension (MS-Flow's `bits_per_dim` is
      # the same quantity).
      metrics["bits_per_dim"] = jnp.mean(recon + kl) / (
          math.prod(self.image_shape) * math.log(2.0))
    return loss, metrics
