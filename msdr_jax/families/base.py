"""What every stage-two family shares: the interface and its config schema.

Stage one is frozen. For an image x it provides the conditioning
c = (z, y): the code z = mean of q(z|x) and the blurry reconstruction
y = dec(z). A stage-two family is a conditional generative model
p(x | c, w) with new latents w that are independent of z a priori:

  z ~ p(z),  w ~ p(w),  y = dec(z),  x ~ p(x | y, z, w).

Families are frozen dataclasses of static hyperparameters; their parameters
live outside them, so every method is a pure function of
`(params, conditioning, ...)` that can be jitted, vmapped or pmapped.

Every family takes a `compute_dtype` (`from_config(..., compute_dtype=...)`,
float32 by default): with bfloat16 its networks compute in bfloat16 while the
parameters and everything the loss is made of (likelihoods, log-densities,
log-determinants, KL terms, reparameterised samples) stay float32, and the
parameter tree does not depend on it.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from msdr_jax import losses
from msdr_jax.models import refiner as refiner_lib
from msdr_jax.models.conditioning import Conditioning

Params = Any
Metrics = dict[str, jax.Array]

class Hyperparameter(NamedTuple):
  """A key of `config.stage2.<family>`: its type and the range it must lie in."""

  kind: type  # int, float or str.
  valid: Callable[[float], bool]
  requirement: str  # What `valid` asks, as the error message says it.


AT_LEAST_ONE = Hyperparameter(int, lambda v: v >= 1, ">= 1")
NON_NEGATIVE = Hyperparameter(float, lambda v: v >= 0, ">= 0")


class Family(abc.ABC):
  """A conditional generative model p(x | c, w) with latents w.

  A family is a frozen dataclass whose constructor is its config's schema:
  `config.stage2.<NAME>` holds exactly the `HYPERPARAMETERS`, checked by
  `configuration.validate`, and `from_config` passes them to the constructor
  with what every family may take (`image_shape`, `conditioning`,
  `likelihood`, `compute_dtype`). Adding a family is its module and one
  line in `families.FAMILIES` (and its defaults in `base_config`, which
  loads without JAX).
  """

  NAME: ClassVar[str]
  HYPERPARAMETERS: ClassVar[dict[str, Hyperparameter]]

  @classmethod
  def from_config(
      cls,
      stage2_config: Any,
      image_shape: tuple[int, int, int],
      likelihood: str,
      compute_dtype: Any = jnp.float32,
  ) -> Family:
    """The family with `config.stage2`'s conditioning and hyperparameters.

    `likelihood` is stage one's, for the families that reconstruct with it.
    """
    shared = {"image_shape": tuple(image_shape), "conditioning": stage2_config.conditioning,
              "likelihood": likelihood, "compute_dtype": compute_dtype}
    fields = {field.name for field in dataclasses.fields(cls)}
    hyperparameters = stage2_config[cls.NAME]
    return cls(**{key: value for key, value in shared.items() if key in fields},
               **{key: hyperparameters[key] for key in cls.HYPERPARAMETERS})

  @classmethod
  def config_error(cls, stage2_config: Any, stage1_likelihood: str) -> str | None:
    """Why `config.stage2` cannot work with this stage one (one line), or None.

    For constraints between hyperparameters and stage one that their ranges
    cannot express; `configuration.validate` raises it.
    """
    del stage2_config, stage1_likelihood
    return None

  @property
  def update_scales(self) -> dict[str, float]:
    """Factors of the optimizer's updates per top-level parameter key
    (`steps.make_optimizer`); none by default."""
    return {}

  @property
  def trains_on_prior_codes(self) -> bool:
    """Whether `loss` also takes `prior_cond`: stage one's conditioning of
    codes z ~ N(0, I), one per image (`MultiStageModel.loss` makes it)."""
    return False

  @abc.abstractmethod
  def init(self, rng: jax.Array, cond: Conditioning, images: jax.Array) -> Params:
    """Initial parameters for batches shaped like `cond` and `images`."""

  @abc.abstractmethod
  def loss(
      self, params: Params, cond: Conditioning, images: jax.Array, rng: jax.Array,
      step: jax.Array | None = None,
  ) -> tuple[jax.Array, Metrics]:
    """(scalar loss, metrics); `jax.grad` of the loss is the training update.

    `step` is the training step, for objectives with a warm-up (MS-VAE's KL
    weight); None is the objective after its warm-up.
    """

  @abc.abstractmethod
  def encode(self, params: Params, cond: Conditioning, images: jax.Array) -> jax.Array:
    """Deterministic latents w of `images` (posterior mean, inverse, argmax)."""

  @abc.abstractmethod
  def decode(self, params: Params, cond: Conditioning, latents: jax.Array) -> jax.Array:
    """Images in [0, 1] (the mean of p(x | c, w)) for latents w."""

  @abc.abstractmethod
  def sample_latents(
      self, params: Params, cond: Conditioning, rng: jax.Array
  ) -> jax.Array:
    """Latents w drawn from their prior, one per row of `cond`."""


class GaussianLatentRefiner(Family):
  """The shape MS-VAE and MS-GAN share.

  w ~ N(0, I) of `latent_shape`; q(w | x, c) a diagonal Gaussian from
  `encoder` (parameters `params["encoder"]`); images are the stage-one
  likelihood's mean of a `Refiner`'s logits of (c, w) (parameters
  `params[REFINER_KEY]`). Subclasses are dataclasses with `conditioning`,
  `likelihood`, `image_shape` and `compute_dtype`.
  """

  REFINER_KEY: ClassVar[str]

  @property
  @abc.abstractmethod
  def latent_shape(self) -> tuple[int, ...]:
    """The shape of one image's w."""

  @property
  @abc.abstractmethod
  def encoder(self) -> refiner_lib.ConditionalEncoder:
    """The network of q(w | x, c)'s mean and log-variance."""

  @property
  def refiner(self) -> refiner_lib.Refiner:
    return refiner_lib.Refiner(
        self.conditioning, self.image_shape[-1], dtype=self.compute_dtype)

  def _posterior(self, params: Params, cond: Conditioning,
                 images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.encoder.apply({"params": params["encoder"]}, images, cond)

  def _logits(self, params: Params, cond: Conditioning, latents: jax.Array) -> jax.Array:
    logits, _ = self.refiner.apply({"params": params[self.REFINER_KEY]}, cond, latents)
    return logits

  def _init_encoder_and_refiner(self, encoder_rng, refiner_rng, cond, images) -> Params:
    latents = jnp.zeros((images.shape[0], *self.latent_shape), images.dtype)
    return {
        "encoder": self.encoder.init(encoder_rng, images, cond)["params"],
        self.REFINER_KEY: self.refiner.init(refiner_rng, cond, latents)["params"],
    }

  def encode(self, params, cond, images):
    mean, _ = self._posterior(params, cond, images)
    return mean

  def decode(self, params, cond, latents):
    return losses.decoder_mean(self._logits(params, cond, latents))

  def sample_latents(self, params, cond, rng):
    del params  # The prior has no parameters.
    return jax.random.normal(
        rng, (cond.code.shape[0], *self.latent_shape), cond.code.dtype)
