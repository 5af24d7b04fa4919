"""MS-GMM: a conditional mixture of Gaussians, the tractable baseline.

  p(x | c) = sum_k pi_k(c) N(x; mu_k(c), sigma_k^2 I),   k = 1..M,

with mu_k(c) = sigmoid(stage-one logits + correction_k(c)): every component
is a residual refinement of stage one's reconstruction, produced in one pass
of a `Refiner` U-Net with M * C output maps; the mixture weights come from the
U-Net's bottleneck features and each component has a learned scale
sigma_k >= min_scale. The latent w is the component, one-hot over M; unlike
the other families its prior pi(c) depends on the conditioning. The
likelihood is exact: -log p(x | c) is a logsumexp over the components, so the
model can train by maximum likelihood with no sampling (`assignment =
"posterior"`). It is a density on [0, 1]-valued pixels, in nats per image,
and is not comparable with the other families' losses.

Under maximum likelihood the mixture collapses: over D = 4,096 pixels the
components' log-likelihoods differ by tens of nats from the start, so the
posterior gives each image wholly to one component, the component that
starts best takes every image, and the others never train. With
`assignment = "balanced"` (the default) training is EM in which each batch's
images are shared out evenly over the components, by the entropy-regularised
optimal transport that follows the components' log-joints as closely as the
equal shares allow (`balanced_assignments`, as in SwAV's cluster
assignments); each component then learns from its own images. The reported
`nll` is always the exact mixture likelihood, and the evaluation's
responsibilities are the exact posterior's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msdr_jax import losses
from msdr_jax.families import base
from msdr_jax.models import conditioning as conditioning_lib
from msdr_jax.models import refiner

_LOG_2PI = math.log(2 * math.pi)

# How training assigns images to components: shared out evenly over each
# batch ("balanced"), or by the posterior (plain maximum likelihood).
ASSIGNMENTS = ("balanced", "posterior")


def _inverse_softplus(y: float) -> float:
  return math.log(math.expm1(y))


class ConditionalMixture(nn.Module):
  """c -> (component logits [B, M, H, W, C], log pi [B, M], sigma [M])."""

  conditioning: str
  num_components: int
  channels: int
  min_scale: float
  initial_scale: float = 0.25
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cond: conditioning_lib.Conditioning):
    logits, features = refiner.Refiner(
        self.conditioning, self.num_components * self.channels,
        zero_init_correction=False, dtype=self.dtype)(cond, None)
    batch, height, width, _ = logits.shape
    logits = logits.reshape(batch, height, width, self.num_components, self.channels)
    logits = jnp.moveaxis(logits, 3, 1)
    # Uniform weights at the start: which component explains an image is
    # then decided by the likelihood rather than by a random weight layer.
    # The scales start at initial_scale, near where training takes them: from
    # a start far above it Adam needs thousands of steps to get there
    # (experiments/RESULTS.md, "Why the defaults are what they are").
    # Neither stops maximum likelihood from collapsing the mixture onto one
    # component on dSprites (see `components_used`); balanced assignments do.
    weight_logits = nn.Dense(self.num_components, kernel_init=nn.initializers.zeros,
                             dtype=self.dtype)(features)
    log_weights = jax.nn.log_softmax(weight_logits.astype(jnp.float32))
    raw_scales = self.param(
        "raw_scales", nn.initializers.constant(_inverse_softplus(
            self.initial_scale - self.min_scale)), (self.num_components,))
    return logits, log_weights, self.min_scale + jax.nn.softplus(raw_scales)


def balanced_assignments(log_joint: jax.Array, num_iterations: int = 50) -> jax.Array:
  """Soft assignments [B, M] of B images to M components, each component
  receiving B / M of them, that best follow `log_joint` [B, M].

  Sinkhorn-Knopp iterations in the log domain (as in SwAV's equipartitioned
  cluster assignments): the entropy-regularised optimal transport from the
  uniform distribution over images to the uniform one over components, with
  cost -log_joint. Rows sum to 1.
  """
  batch, components = log_joint.shape

  def normalise(_, log_plan):
    log_plan = log_plan - jax.nn.logsumexp(log_plan, axis=0, keepdims=True) - math.log(components)
    return log_plan - jax.nn.logsumexp(log_plan, axis=1, keepdims=True) - math.log(batch)

  # A loop rather than unrolled iterations: unrolled, XLA:CPU compiled the
  # 100 normalisations for seconds in every program that trains the mixture.
  log_plan = jax.lax.fori_loop(0, num_iterations, normalise, log_joint.astype(jnp.float32))
  return jnp.exp(log_plan) * batch


@dataclasses.dataclass(frozen=True)
class ConditionalGMM(base.Family):
  """MS-GMM with `num_components` residual components."""

  NAME = "gmm"
  HYPERPARAMETERS = {
      "num_components": base.AT_LEAST_ONE,  # 1: the baseline without a mixture.
      "min_scale": base.Hyperparameter(float, lambda v: v > 0, "> 0"),
      "assignment": base.Hyperparameter(str, lambda v: v in ASSIGNMENTS,
                                        f"one of {list(ASSIGNMENTS)}"),
  }

  image_shape: tuple[int, int, int]
  conditioning: str
  num_components: int
  min_scale: float
  assignment: str = "posterior"
  compute_dtype: Any = jnp.float32

  @property
  def mixture(self) -> ConditionalMixture:
    return ConditionalMixture(
        self.conditioning, self.num_components, self.image_shape[-1], self.min_scale,
        dtype=self.compute_dtype)

  def init(self, rng, cond, images):
    del images
    return self.mixture.init(rng, cond)["params"]

  def _components(self, params, cond):
    logits, log_weights, scales = self.mixture.apply({"params": params}, cond)
    return losses.decoder_mean(logits), log_weights, scales

  def log_joint(self, params, cond, images) -> jax.Array:
    """log pi_k(c) + log N(x; mu_k(c), sigma_k^2 I) for every k: [B, M]."""
    means, log_weights, scales = self._components(params, cond)
    squared = ((images[:, None] - means) ** 2).reshape(*means.shape[:2], -1).sum(-1)
    dims = math.prod(self.image_shape)
    log_normal = (-0.5 * squared / scales**2
                  - dims * (jnp.log(scales) + 0.5 * _LOG_2PI))
    return log_weights + log_normal

  def loss(self, params, cond, images, rng, step=None):
    del rng, step  # The likelihood is exact; no warm-up.
    log_joint = self.log_joint(params, cond, images)
    nll = -jax.nn.logsumexp(log_joint, axis=-1)
    responsibilities = jax.nn.softmax(log_joint, axis=-1)
    if self.assignment == "balanced":
      # EM with each batch's images shared out evenly over the components
      # (balanced assignments by optimal transport, fixed in the M-step).
      assignments = jax.lax.stop_gradient(balanced_assignments(log_joint))
      loss = -jnp.mean(jnp.sum(assignments * log_joint, axis=-1))
    else:  # Maximum likelihood: the posterior's own responsibilities.
      loss = nll.mean()
    # exp(entropy) of the average responsibilities: how many components the
    # batch really uses (1 when the mixture has collapsed).
    usage = responsibilities.mean(0)
    used = jnp.exp(-jnp.sum(usage * jnp.log(usage + 1e-12)))
    # And how many components take at least 5% of the batch's responsibility.
    shared = jnp.sum(usage >= 0.05).astype(jnp.float32)
    return loss, {"loss": loss, "nll": nll.mean(), "components_used": used,
                  "components_over_5_percent": shared}

  def encode(self, params, cond, images):
    """The most responsible component, one-hot [B, M]."""
    best = jnp.argmax(self.log_joint(params, cond, images), axis=-1)
    return jax.nn.one_hot(best, self.num_components, dtype=images.dtype)

  def decode(self, params, cond, latents):
    """sum_k w_k mu_k: the chosen component's mean for one-hot w."""
    means, _, _ = self._components(params, cond)
    return jnp.einsum("bm,bm...->b...", latents, means)

  def sample_latents(self, params, cond, rng):
    _, log_weights, _ = self.mixture.apply({"params": params}, cond)
    choice = jax.random.categorical(rng, log_weights, axis=-1)
    return jax.nn.one_hot(choice, self.num_components, dtype=cond.code.dtype)
