"""Stage one as a plug-in: any disentangler with a pure encoder and decoder.

Everything after stage one (the stage-two families, the combined model, the
evaluation, the metric suite, the figures and the studies) needs only a
`StageOne`: two pure functions of a parameter pytree and three facts.

  encode(params, images [B, H, W, C] in [0, 1]) -> (mean, log_var), each [B, K]
  decode(params, codes [B, K]) -> logits [B, H, W, C]  (mean image: sigmoid)
  image_shape (H, W, C), latent_dim K, likelihood ('bernoulli' or 'gaussian')

Three ways to get one:

  # The library's own VAE (trained by msdr_jax.main or loaded from a run):
  stage_one = DisentanglingVAE.from_config(config.stage1, image_shape)
  # A PyTorch checkpoint of the Burgess et al. architecture (pytorch_import):
  stage_one, params = pytorch_import.load_stage_one("btcvae_dsprites/")
  # A user's own Flax modules, params = {"encoder": ..., "decoder": ...}:
  stage_one = StageOne.from_flax_modules(encoder, decoder, (64, 64, 1), 10)

`DisentanglingVAE` has the shape of a stage-two family: `init(rng)` and
`loss(params, images, rng, step)` train it (`steps.make_train_step`), and
`encode` / `decode` are its plug-in interface. A `StageOne` holds the two
functions of a disentangler trained elsewhere.

Stage one is frozen: its parameters are an ordinary argument of every
function that uses them, never differentiated (`multi_stage.condition` stops
their gradient).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msdr_jax import configuration
from msdr_jax import losses
from msdr_jax import steps
from msdr_jax.models import vae

Params = Any
Encode = Callable[[Params, jax.Array], tuple[jax.Array, jax.Array]]
Decode = Callable[[Params, jax.Array], jax.Array]


def check_given(stage_one, params: Params, image_shape, config) -> None:
  """Raises ConfigError unless a stage one given from Python fits the run.

  Both or neither of `stage_one` and `params`; not together with
  `config.stage1.checkpoint`; the data set's image shape; parameters that fit
  the networks.
  """
  if (stage_one is None) != (params is None):
    raise configuration.ConfigError(
        "Pass both stage_one and stage1_params (or neither, to train stage one "
        "or load config.stage1.checkpoint).")
  if stage_one is None:
    return
  if config.stage1.checkpoint:
    raise configuration.ConfigError(
        "Both a stage_one and config.stage1.checkpoint are given; leave "
        "config.stage1.checkpoint empty when passing stage_one.")
  if stage_one.image_shape != tuple(image_shape):
    raise configuration.ConfigError(
        f"Stage one takes {stage_one.image_shape} images but config.data "
        f"({config.data.name}) has {tuple(image_shape)}.")
  stage_one.check_params(params)


def _check_likelihood(likelihood: str) -> None:
  if likelihood not in losses.LIKELIHOODS:
    raise ValueError(f"Stage one's likelihood {likelihood!r} is not one of "
                     f"{sorted(losses.LIKELIHOODS)}.")


@dataclasses.dataclass(frozen=True)
class StageOne:
  """A frozen disentangler: pure `encode` / `decode` and what they work on.

  Attributes:
    encode: `(params, images) -> (mean, log_var)` of q(z | x); the mean is
      the representation every metric scores and stage two conditions on.
    decode: `(params, codes) -> logits` of p(x | z); for either likelihood
      the mean image is `sigmoid(logits)` (`losses.decoder_mean`).
    image_shape: (H, W, C) of the images it encodes and decodes.
    latent_dim: K, the size of z.
    likelihood: a key of `losses.LIKELIHOODS`, the likelihood its logits
      parameterise (MS-VAE and MS-GAN reconstruct with it).
  """

  encode: Encode
  decode: Decode
  image_shape: tuple[int, int, int]
  latent_dim: int
  likelihood: str = "bernoulli"

  def __post_init__(self):
    _check_likelihood(self.likelihood)
    object.__setattr__(self, "image_shape", tuple(int(n) for n in self.image_shape))

  @classmethod
  def from_flax_modules(
      cls,
      encoder: nn.Module,
      decoder: nn.Module,
      image_shape: tuple[int, int, int],
      latent_dim: int,
      likelihood: str = "bernoulli",
  ) -> StageOne:
    """A user's own networks: `encoder(images) -> (mean, log_var)` and
    `decoder(codes) -> logits`, with parameters
    `{"encoder": encoder.init(...)["params"], "decoder": decoder.init(...)["params"]}`.
    """
    return cls(
        encode=lambda params, images: encoder.apply(
            {"params": params["encoder"]}, images),
        decode=lambda params, codes: decoder.apply(
            {"params": params["decoder"]}, codes),
        image_shape=image_shape,
        latent_dim=latent_dim,
        likelihood=likelihood,
    )

  def check_params(self, params: Params) -> None:
    """Raises ValueError, naming both shapes, if `params` do not fit.

    Traces `encode` and `decode` abstractly (no computation) on one image
    and one code of this stage one's shapes.
    """
    images = jax.ShapeDtypeStruct((1, *self.image_shape), jnp.float32)
    codes = jax.ShapeDtypeStruct((1, self.latent_dim), jnp.float32)
    try:
      mean, log_var = jax.eval_shape(self.encode, params, images)
      logits = jax.eval_shape(self.decode, params, codes)
    except (TypeError, ValueError, KeyError) as e:
      raise ValueError(
          f"The stage-one parameters do not fit its networks: "
          f"{str(e).splitlines()[0]}") from e
    expected = {"mean": (1, self.latent_dim), "log_var": (1, self.latent_dim),
                "decoded images": (1, *self.image_shape)}
    actual = {"mean": mean.shape, "log_var": log_var.shape,
              "decoded images": logits.shape}
    for name, shape in expected.items():
      if tuple(actual[name]) != shape:
        raise ValueError(
            f"Stage one's {name} have shape {tuple(actual[name])}, but its "
            f"image_shape and latent_dim say {shape}.")


@dataclasses.dataclass(frozen=True, eq=False)
class DisentanglingVAE:
  """The library's stage one: a VAE with a disentangling objective.

  Attributes:
    network: the encoder and decoder (`models.vae.VAE`), computing in its
      `dtype`.
    likelihood: a key of `losses.LIKELIHOODS`.
    objective: `f(recon_nll, latents, mean, log_var) -> (loss, terms)`, the
      objective of `losses.OBJECTIVES` with its hyperparameters bound; None
      for a stage one imported to be used frozen (`pytorch_import`).
  """

  network: vae.VAE
  likelihood: str = "bernoulli"
  objective: Callable[..., losses.ObjectiveTerms] | None = None

  def __post_init__(self):
    _check_likelihood(self.likelihood)

  @classmethod
  def from_config(
      cls,
      stage1_config: ml_collections.ConfigDict,
      image_shape: tuple[int, int, int],
      dataset_size: int | None = None,
      compute_dtype: Any = jnp.float32,
  ) -> DisentanglingVAE:
    """The VAE of `config.stage1`, computing in `compute_dtype`.

    `dataset_size` (N of the total-correlation estimators) is needed to
    train it; without it the objective is left out.
    """
    network = vae.VAE(
        architecture=stage1_config.model.architecture,
        latent_dim=stage1_config.model.latent_dim,
        image_shape=tuple(int(n) for n in image_shape),
        dtype=compute_dtype,
    )
    objective = (None if dataset_size is None else
                 losses.objective_from_config(stage1_config.objective, dataset_size))
    return cls(network, stage1_config.model.likelihood, objective)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.network.image_shape)

  @property
  def latent_dim(self) -> int:
    return self.network.latent_dim

  def init(self, rng: jax.Array) -> Params:
    """Initial parameters, compiled as one program (`steps.jit_run_once`)."""

    def initialise(rng):
      init_rng, sample_rng = jax.random.split(rng)
      images = jnp.zeros((1, *self.image_shape), jnp.float32)
      return self.network.init(init_rng, images, sample_rng)["params"]

    return steps.jit_run_once(initialise)(rng)

  def loss(self, params: Params, images: jax.Array, rng: jax.Array,
           step: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, terms) of the objective on a batch; `step` is unused."""
    del step  # The stage-one objectives have no schedule.
    if self.objective is None:
      raise ValueError("This stage one was built without a training objective "
                       "(no dataset_size); it can only be used frozen.")
    out = self.network.apply({"params": params}, images, rng)
    recon_nll = losses.LIKELIHOODS[self.likelihood](out.decoder_output, images)
    loss, terms = self.objective(recon_nll, out.latents, out.mean, out.log_var)
    return loss, dict(terms, loss=loss)

  def encode(self, params: Params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.network.apply({"params": params}, images, method=vae.VAE.encode)

  def decode(self, params: Params, codes: jax.Array) -> jax.Array:
    return self.network.apply({"params": params}, codes, method=vae.VAE.decode)


def traversal_codes(code: jax.Array, values: jax.Array) -> jax.Array:
  """[K * V, K]: `code` [K] with latent j set to each of `values` [V], j by j.

  The one sweep behind every traversal figure, stage one's and the combined
  model's (`multi_stage.MultiStageModel.traverse`).
  """
  num_latents = code.shape[-1]
  codes = jnp.tile(code, (num_latents, len(values), 1))
  rows = jnp.arange(num_latents)
  return codes.at[rows, :, rows].set(values[None, :]).reshape(-1, num_latents)


def traverse(stage_one, params: Params, code: jax.Array, values: jax.Array) -> jax.Array:
  """[K, V, H, W, C] mean images of `traversal_codes(code, values)`."""
  logits = stage_one.decode(params, traversal_codes(code, values))
  return losses.decoder_mean(logits).reshape(code.shape[-1], len(values), *logits.shape[1:])


def params_digest(params: Params) -> str:
  """SHA-256 of a parameter pytree: its paths, shapes, dtypes and values.

  A run on a stage one given from Python records it, so that resuming the
  run on other parameters can be refused.
  """
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    leaf = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};".encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()
