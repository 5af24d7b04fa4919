"""MS-Flow: a conditional normalizing flow with an exact likelihood.

  w = f_c(v),   p(w) = N(0, I),   log p(v | c) = log N(f_c(v); 0, I) + log |det df_c/dv|,

with f_c the `flow.ConditionalFlow` bijection and v a dequantised image.
Images x lie on the grid k / (L - 1), k = 0..L-1 (L = `num_levels`: 2 for
binary dSprites, 256 for 8-bit images). Uniform dequantisation spreads each
level over its own bin of width 1 / L in (0, 1):

  v = (x (L - 1) + u) / L,   u ~ U[0, 1)^D,

and by Jensen, for the discrete model P(x | c) = integral of p(v | c) over
x's bin,

  -log P(x | c) <= E_u[-log p(v | c)] + D log L,

which in bits per dimension is the `bits_per_dim` metric. With
`base="stage_one"` (the default for binary images and a Bernoulli stage one)
the flow's first layer is stage one's own decoder distribution, dequantised
and mapped to a standard normal (`flow.bernoulli_cdf_transform`). Its
density is uniform within each bin, so the bound is tight, and a fresh flow
has exactly stage one's likelihood: `bits_per_dim` starts at
`stage1_bits_per_dim` (stage one's -log P(x | z) on the same images, also
reported) and training moves it from there. With `base="gaussian"` the first
layer is the logit transform into a standard normal, for any number of
levels. The training loss
is the batch mean of -log p(v | c) in nats per image (the constant D log L
left out); it is a density on (0, 1)^D and not comparable with the other
families' losses.

The latent w is the flow's output, shaped like the squeezed image
[B, H/2, W/2, 4C]. `encode` uses the bin centres (u = 1/2), and `decode`
quantises the inverse back to the grid, so decode(encode(x)) == x: a centre
is 1 / (2L) away from either bin edge, far beyond float error.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msdr_jax import losses
from msdr_jax.families import base
from msdr_jax.models import flow as flow_lib

_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class Flow(base.Family):
  """MS-Flow with `num_couplings` affine couplings of `hidden_features` width."""

  NAME = "flow"
  HYPERPARAMETERS = {
      "num_levels": base.Hyperparameter(int, lambda v: v >= 2, ">= 2"),
      "num_couplings": base.AT_LEAST_ONE,
      "hidden_features": base.AT_LEAST_ONE,
      "logit_alpha": base.Hyperparameter(float, lambda v: 0 < v < 0.5, "in (0, 0.5)"),
      "sample_temperature": base.Hyperparameter(float, lambda v: v > 0, "> 0"),
      "base": base.Hyperparameter(str, lambda v: v in flow_lib.BASES,
                                  f"one of {list(flow_lib.BASES)}"),
  }

  image_shape: tuple[int, int, int]
  conditioning: str
  num_levels: int
  num_couplings: int
  hidden_features: int
  logit_alpha: float
  sample_temperature: float
  base: str = "gaussian"
  compute_dtype: Any = jnp.float32

  @classmethod
  def config_error(cls, stage2_config, stage1_likelihood: str) -> str | None:
    if stage2_config.flow.base != "stage_one":
      return None
    if stage2_config.flow.num_levels != 2 or stage1_likelihood != "bernoulli":
      return (f"config.stage2.flow.base='stage_one' needs binary images (num_levels=2, now "
              f"{stage2_config.flow.num_levels}) and a Bernoulli stage one (now "
              f"{stage1_likelihood!r}): only then is stage one's decoder a distribution on "
              "the image's levels. Use --config.stage2.flow.base=gaussian.")
    return None

  @property
  def model(self) -> flow_lib.ConditionalFlow:
    return flow_lib.ConditionalFlow(
        conditioning=self.conditioning,
        num_couplings=self.num_couplings,
        hidden_features=self.hidden_features,
        logit_alpha=self.logit_alpha,
        base=self.base,
        dtype=self.compute_dtype,
    )

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    """Shape of one w: the squeezed image, [H/2, W/2, 4C]."""
    return flow_lib.latent_shape(self.image_shape)

  def dequantize(self, images: jax.Array, noise: jax.Array | float) -> jax.Array:
    """v = (x (L - 1) + u) / L for noise u in [0, 1) (u = 1/2: bin centres)."""
    return (images * (self.num_levels - 1) + noise) / self.num_levels

  def quantize(self, v: jax.Array) -> jax.Array:
    """The grid value of v's bin, clip(floor(v L), 0, L - 1) / (L - 1)."""
    level = jnp.clip(jnp.floor(v * self.num_levels), 0, self.num_levels - 1)
    # A table of the correctly rounded k / (L - 1), as numpy (and so the data
    # pipeline) computes them: XLA:CPU's float32 division is not correctly
    # rounded (it is off by an ulp for half of k / 255), which would break
    # decode(encode(x)) == x bit for bit.
    grid = np.arange(self.num_levels, dtype=np.float32) / np.float32(self.num_levels - 1)
    return jnp.asarray(grid, v.dtype)[level.astype(jnp.int32)]

  def forward(self, params, cond, v) -> tuple[jax.Array, jax.Array]:
    """(w, log |det dw/dv| [B]) for dequantised images v."""
    return self.model.apply(
        {"params": params}, v, cond, method=flow_lib.ConditionalFlow.forward)

  def inverse(self, params, cond, latents) -> jax.Array:
    """Dequantised images v with forward(v) == latents."""
    return self.model.apply(
        {"params": params}, latents, cond, method=flow_lib.ConditionalFlow.inverse)

  def log_prob(self, params, cond, v) -> jax.Array:
    """log p(v | c) = log N(w; 0, I) + log |det dw/dv|, one per example [B]."""
    w, log_det = self.forward(params, cond, v)
    log_normal = -0.5 * (w**2 + _LOG_2PI)
    return log_normal.reshape(w.shape[0], -1).sum(-1) + log_det

  def init(self, rng, cond, images):
    self.latent_shape  # Fail early on odd image sizes.
    return self.model.init(
        rng, self.dequantize(images, 0.5), cond,
        method=flow_lib.ConditionalFlow.forward)["params"]

  def loss(self, params, cond, images, rng, step=None):
    del step  # No warm-up.
    """Mean -log p(v | c) for v = (x (L - 1) + u) / L, u = uniform(rng, x.shape)."""
    noise = jax.random.uniform(rng, images.shape, images.dtype)
    nll = -self.log_prob(params, cond, self.dequantize(images, noise))
    dims = math.prod(images.shape[1:])
    bits_per_dim = (nll + dims * math.log(self.num_levels)) / (dims * math.log(2.0))
    loss = nll.mean()
    metrics = {"loss": loss, "nll": loss, "bits_per_dim": bits_per_dim.mean()}
    if self.base == "stage_one":
      # The same images under stage one's own likelihood, like for like: the
      # figure a fresh flow starts at and training must get below.
      stage_one_nll = losses.bernoulli_nll(cond.logits, images)
      metrics["stage1_bits_per_dim"] = stage_one_nll.mean() / (dims * math.log(2.0))
    return loss, metrics

  def encode(self, params, cond, images):
    """w of the bin centres of `images`, [B, H/2, W/2, 4C]."""
    w, _ = self.forward(params, cond, self.dequantize(images, 0.5))
    return w

  def decode(self, params, cond, latents):
    """The inverse flow quantised back to the pixel grid (an image, not a mean)."""
    return self.quantize(self.inverse(params, cond, latents))

  def sample_latents(self, params, cond, rng):
    del params  # The prior has no parameters.
    shape = (cond.code.shape[0], *self.latent_shape)
    return self.sample_temperature * jax.random.normal(rng, shape, cond.code.dtype)
