"""A conditional RealNVP/Glow-style normalizing flow on images.

The flow is a bijection f_c from dequantised images v in (0, 1)^D to latents
w in R^D, conditioned on stage one's c = (z, y). Its density is exact by the
change of variables

  log p(v | c) = log N(f_c(v); 0, I) + log |det df_c/dv|,

and every layer below has a triangular (or diagonal) Jacobian whose
log-determinant is a sum of cheap per-element terms. The layers, in order:

1. With `base="stage_one"` (binary images, a Bernoulli stage one): stage
   one's CDF transform, s = Phi^-1(F(v | c)) with F the CDF of stage one's
   dequantised decoder distribution (`bernoulli_cdf_transform`). A fresh flow
   then is stage one's likelihood exactly, so training starts from it and
   can only be asked to improve on it.
   With `base="gaussian"`: the logit transform,
   s = logit(alpha + (1 - 2 alpha) v). It maps the bounded
   pixel range onto the real line, where an unbounded Gaussian base makes
   sense; alpha keeps s finite at the bin edges v = 0 and v -> 1. Its
   per-element log-derivative is log(1 - 2 alpha) - log p - log(1 - p) with
   p = alpha + (1 - 2 alpha) v. (The image of (0, 1) is the bounded
   interval |s| < logit(1 - alpha), so the density on (0, 1)^D integrates to
   slightly less than one: a sub-normalised density, whose -log p is still an
   upper bound on that of a normalised model.)
2. Squeeze (space-to-depth 2x2): [H, W, C] -> [H/2, W/2, 4C]. Couplings act
   on channels, so without it a single-channel image could not be split.
3. `num_couplings` steps, each an `ActNorm` (learned per-channel affine,
   identity at init, no data-dependent init so `init` stays a pure function
   of shapes) followed by an `AffineCoupling`. Which channels condition and
   which are transformed cycles through four fixed partitions (first half /
   second half, then even / odd channels, each way round); after a squeeze,
   channel (dy * 2 + dx) * C + c is pixel (dy, dx) of its 2x2 cell, so the
   halves split a cell into rows and the parities into columns, and every
   pixel is transformed given every other within four steps. A partition is a
   fixed permutation, log-det 0.

The latents w keep the squeezed layout [B, H/2, W/2, 4C] (not flattened), so
they can be fed back to the convolutional inverse directly.

Conditioning ("image_and_code", "image", "code"; see `conditioning_lib.CONDITIONINGS`):

* image: the squeezed stage-one mean 2y - 1 ([B, H/2, W/2, 4C], the flow's
  resolution) is concatenated to the input of every coupling net, so each
  coupling sees, at each site, what stage one predicts there;
* code: z goes through a Dense layer per coupling to per-channel biases
  (FiLM-style shifts) added to both hidden layers of the coupling net.

Every coupling net ends in a zero-initialised convolution, so a fresh flow is
exactly the logit transform plus squeeze, and the conditioning starts to
matter as soon as those layers move away from zero (the paths from z and y
to the output exist from the start, so their gradients do too).

Mixed precision (`dtype=jnp.bfloat16`) applies to the coupling networks only:
their (shift, raw log-scale) are cast to float32 before the affine
transform, so the bijection itself, its log-determinant (a sum of D terms)
and the base density are float32, and `inverse` undoes `forward` to float32
accuracy. ActNorm and the logit transform have no network and stay float32.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from msdr_jax.models import conditioning as conditioning_lib

_LOG_2PI = math.log(2.0 * math.pi)

# The first layer: stage one's Bernoulli CDF, or the logit transform.
BASES = ("stage_one", "gaussian")

# (kind, swap) of coupling step k is _PARTITIONS[k % 4]. "halves" splits the
# channels into [first half, second half], "parity" into [even, odd]; the
# first part conditions the second unless swapped.
_PARTITIONS = (("halves", False), ("halves", True), ("parity", False), ("parity", True))


# ----------------------------------------------------------------------------
# Fixed (parameter-free) bijections.


def squeeze(x: jax.Array) -> jax.Array:
  """Space-to-depth 2x2: [B, H, W, C] -> [B, H/2, W/2, 4C].

  Output channel (dy * 2 + dx) * C + c holds pixel (2i + dy, 2j + dx, c).
  """
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(x: jax.Array) -> jax.Array:
  """Depth-to-space 2x2, the inverse of `squeeze`."""
  b, h, w, c4 = x.shape
  c = c4 // 4
  x = x.reshape(b, h, w, 2, 2, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c)


def logit_transform(v: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
  """s = logit(alpha + (1 - 2 alpha) v) and its log-det, one per example [B]."""
  p = alpha + (1.0 - 2.0 * alpha) * v
  log_p, log_1mp = jnp.log(p), jnp.log1p(-p)
  log_det = jnp.log1p(-2.0 * alpha) - log_p - log_1mp
  return log_p - log_1mp, log_det.reshape(v.shape[0], -1).sum(-1)


def inverse_logit_transform(s: jax.Array, alpha: float) -> jax.Array:
  """v = (sigmoid(s) - alpha) / (1 - 2 alpha), the inverse of `logit_transform`."""
  return (jax.nn.sigmoid(s) - alpha) / (1.0 - 2.0 * alpha)


def bernoulli_cdf_transform(v: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """s = Phi^-1(F(v)) for F the CDF of stage one's dequantised Bernoulli, and
  its log-det, one per example [B].

  Stage one's decoder gives each binary pixel P(x = 1) = p = sigmoid(logits).
  Dequantised (v = (x + u) / 2, u ~ U[0, 1)), that is the density 2 (1 - p)
  on [0, 1/2) and 2 p on [1/2, 1), whose CDF F is piecewise linear; s =
  Phi^-1(F(v)) is then exactly standard normal, and its log-derivative is
  log p(v) - log N(s; 0, 1). A flow that starts with this transform and is
  the identity after it has stage one's likelihood exactly. F and 1 - F are
  each computed as a sum of non-negative terms, and the smaller of the two is
  inverted, so a pixel that stage one is sure of (p near 0 or 1) keeps its
  precision in the tail.
  """
  q, p = jax.nn.sigmoid(-logits), jax.nn.sigmoid(logits)
  upper_bin = v >= 0.5
  t = jnp.where(upper_bin, 2.0 * v - 1.0, 2.0 * v)  # Position within the bin.
  below = jnp.where(upper_bin, q + t * p, t * q)  # F(v).
  above = jnp.where(upper_bin, (1.0 - t) * p, p + (1.0 - t) * q)  # 1 - F(v).
  tiny = jnp.finfo(v.dtype).tiny  # F(0) = 0 would map to -inf.
  # Phi^-1 of the smaller tail, its sign telling which tail it is.
  tail = jax.scipy.special.ndtri(jnp.maximum(jnp.minimum(below, above), tiny))
  s = jnp.where(below <= above, tail, -tail)
  log_mass = jnp.where(upper_bin, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))
  log_det = math.log(2.0) + log_mass + 0.5 * (s**2 + _LOG_2PI)
  return s, log_det.reshape(v.shape[0], -1).sum(-1)


def inverse_bernoulli_cdf_transform(s: jax.Array, logits: jax.Array) -> jax.Array:
  """v = F^-1(Phi(s)), the inverse of `bernoulli_cdf_transform`."""
  q, p = jax.nn.sigmoid(-logits), jax.nn.sigmoid(logits)
  tiny = jnp.finfo(s.dtype).tiny
  # The smaller of F and 1 - F: F for s < 0, 1 - F otherwise. Bin and
  # position come from it.
  tail = jax.scipy.special.ndtr(-jnp.abs(s))
  lower_tail = s < 0
  upper_bin = jnp.where(lower_tail, tail >= q, tail <= p)
  t_upper = jnp.where(lower_tail, (tail - q) / jnp.maximum(p, tiny),
                      1.0 - tail / jnp.maximum(p, tiny))
  t_lower = jnp.where(lower_tail, tail / jnp.maximum(q, tiny),
                      1.0 - (tail - p) / jnp.maximum(q, tiny))
  return jnp.where(upper_bin, 0.5 + 0.5 * t_upper, 0.5 * t_lower)


def split_channels(x: jax.Array, kind: str, swap: bool) -> tuple[jax.Array, jax.Array]:
  """(conditioning part a, transformed part b) of x under a partition."""
  if kind == "halves":
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
  else:
    a, b = x[..., 0::2], x[..., 1::2]
  return (b, a) if swap else (a, b)


def merge_channels(a: jax.Array, b: jax.Array, kind: str, swap: bool) -> jax.Array:
  """The inverse of `split_channels`."""
  first, second = (b, a) if swap else (a, b)
  if kind == "halves":
    return jnp.concatenate([first, second], axis=-1)
  return jnp.stack([first, second], axis=-1).reshape(*first.shape[:-1], -1)


# ----------------------------------------------------------------------------
# Learned layers.


class ActNorm(nn.Module):
  """x -> x * exp(log_scale) + bias per channel; identity at init.

  No data-dependent initialisation: parameters must be a pure function of the
  shapes, and the identity start (with zero-initialised couplings) is already
  well scaled because the logit transform puts s in a unit-ish range.
  """

  @nn.compact
  def __call__(self, x: jax.Array, inverse: bool = False):
    channels = x.shape[-1]
    log_scale = self.param("log_scale", nn.initializers.zeros, (channels,))
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    if inverse:
      return (x - bias) * jnp.exp(-log_scale)
    sites = x.shape[1] * x.shape[2]
    log_det = jnp.full((x.shape[0],), sites * log_scale.sum(), x.dtype)
    return x * jnp.exp(log_scale) + bias, log_det


class CouplingNet(nn.Module):
  """(a, image features, code) -> (shift, raw log-scale) for b, each [..., nb].

  3x3 conv -> ReLU -> 1x1 conv -> ReLU -> 3x3 conv (zero-initialised). The
  code enters as per-channel biases on both hidden layers, the image as extra
  input channels, so both reach every output. The outputs are float32
  whatever the computation `dtype`.
  """

  hidden_features: int
  out_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, a: jax.Array, image: jax.Array | None, code: jax.Array | None):
    h = a if image is None else jnp.concatenate([a, image], axis=-1)
    film = None
    if code is not None:
      film = nn.Dense(2 * self.hidden_features, dtype=self.dtype,
                      name="film")(code)[:, None, None, :]
      film = jnp.split(film, 2, axis=-1)
    h = nn.Conv(self.hidden_features, (3, 3), dtype=self.dtype, name="conv_in")(h)
    if film is not None:
      h = h + film[0]
    h = nn.relu(h)
    # A 1x1 convolution as a matmul over flattened sites: XLA:CPU computes
    # the kernel gradient of the [N, C] x [C, D] form 2x faster than that of
    # the 4-D convolution or einsum.
    shape = h.shape
    h = nn.Dense(self.hidden_features, dtype=self.dtype,
                 name="dense_hidden")(h.reshape(-1, shape[-1]))
    h = h.reshape(shape)
    if film is not None:
      h = h + film[1]
    h = nn.relu(h)
    out = nn.Conv(2 * self.out_features, (3, 3), kernel_init=nn.initializers.zeros,
                  dtype=self.dtype, name="conv_out")(h)
    shift, raw_log_scale = jnp.split(out.astype(jnp.float32), 2, axis=-1)
    return shift, raw_log_scale


class AffineCoupling(nn.Module):
  """b -> b * exp(log_scale(a, c)) + shift(a, c), a passed through unchanged.

  The log-scale is bounded, log_scale = factor * tanh(raw), with a learned
  per-channel factor initialised to 1: an unbounded exp(raw) lets a single
  large network output blow up the density early in training.
  """

  kind: str
  swap: bool
  hidden_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, image: jax.Array | None, code: jax.Array | None,
               inverse: bool = False):
    a, b = split_channels(x, self.kind, self.swap)
    nb = b.shape[-1]
    factor = self.param("log_scale_factor", nn.initializers.ones, (nb,))
    shift, raw = CouplingNet(self.hidden_features, nb, dtype=self.dtype,
                             name="net")(a, image, code)
    log_scale = factor * jnp.tanh(raw)
    if inverse:
      b = (b - shift) * jnp.exp(-log_scale)
      return merge_channels(a, b, self.kind, self.swap)
    b = b * jnp.exp(log_scale) + shift
    log_det = log_scale.reshape(x.shape[0], -1).sum(-1)
    return merge_channels(a, b, self.kind, self.swap), log_det


class ConditionalFlow(nn.Module):
  """v in (0, 1)^[H, W, C] <-> w in R^[H/2, W/2, 4C], conditioned on c.

    model = ConditionalFlow("image_and_code")
    params = model.init(rng, v, cond, method=ConditionalFlow.forward)["params"]
    w, log_det = model.apply({"params": params}, v, cond,
                             method=ConditionalFlow.forward)
    v = model.apply({"params": params}, w, cond, method=ConditionalFlow.inverse)
  """

  conditioning: str
  num_couplings: int = 8
  hidden_features: int = 32
  logit_alpha: float = 0.05
  base: str = "gaussian"
  dtype: Any = jnp.float32

  def setup(self):
    if self.conditioning not in conditioning_lib.CONDITIONINGS:
      raise ValueError(f"Unknown conditioning {self.conditioning!r}.")
    if self.base not in BASES:
      raise ValueError(f"Unknown base {self.base!r}; choose one of {list(BASES)}.")
    self.actnorms = [ActNorm() for _ in range(self.num_couplings)]
    self.couplings = [
        AffineCoupling(*_PARTITIONS[k % len(_PARTITIONS)], self.hidden_features,
                       dtype=self.dtype)
        for k in range(self.num_couplings)
    ]

  def _features(self, cond: conditioning_lib.Conditioning):
    """(image features at the flow's resolution or None, code or None)."""
    image = (squeeze(2.0 * cond.image - 1.0)
             if conditioning_lib.uses_image(self.conditioning) else None)
    code = cond.code if conditioning_lib.uses_code(self.conditioning) else None
    return image, code

  def forward(self, v: jax.Array, cond: conditioning_lib.Conditioning) -> tuple[jax.Array, jax.Array]:
    """(w [B, H/2, W/2, 4C], log |det dw/dv| [B]) for v [B, H, W, C] in (0, 1)."""
    image, code = self._features(cond)
    if self.base == "stage_one":
      s, log_det = bernoulli_cdf_transform(v, cond.logits)
    else:
      s, log_det = logit_transform(v, self.logit_alpha)
    h = squeeze(s)
    for actnorm, coupling in zip(self.actnorms, self.couplings):
      h, ld = actnorm(h)
      log_det = log_det + ld
      h, ld = coupling(h, image, code)
      log_det = log_det + ld
    return h, log_det

  def inverse(self, w: jax.Array, cond: conditioning_lib.Conditioning) -> jax.Array:
    """v [B, H, W, C] with forward(v, cond)[0] == w."""
    image, code = self._features(cond)
    h = w
    for actnorm, coupling in zip(reversed(self.actnorms), reversed(self.couplings)):
      h = coupling(h, image, code, inverse=True)
      h = actnorm(h, inverse=True)
    if self.base == "stage_one":
      return inverse_bernoulli_cdf_transform(unsqueeze(h), cond.logits)
    return inverse_logit_transform(unsqueeze(h), self.logit_alpha)

  def __call__(self, v: jax.Array, cond: conditioning_lib.Conditioning):
    return self.forward(v, cond)


def latent_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
  """Shape of one w for images of `image_shape` [H, W, C] (H, W even)."""
  height, width, channels = image_shape
  if height % 2 or width % 2:
    raise ValueError(f"The flow squeezes 2x2 cells; got image shape {image_shape}.")
  return height // 2, width // 2, 4 * channels
