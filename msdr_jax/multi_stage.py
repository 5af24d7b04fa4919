"""The multi-stage model: a frozen stage one and a stage-two family as one model.

The generative model is

  z ~ N(0, I),  w ~ p(w),  y = dec(z),  x ~ p(x | y, z, w),

with stage one's decoder giving y and a stage-two family (`families/`) giving
p(x | c, w), c = (z, y). Stage one is any `stage_one.StageOne` (the
library's VAE, an imported checkpoint, a user's own networks).
`MultiStageModel` exposes the model as pure functions of the parameter
pytree `{"stage1": ..., "stage2": ...}`:

  stage_one = stage_one_lib.DisentanglingVAE.from_config(config.stage1, image_shape)
  model = multi_stage.MultiStageModel.from_config(config, stage_one)
  codes, latents = model.encode(params, images)   # z = stage one's mean.
  images = model.reconstruct(params, images)
  images = model.sample(params, rng, 16)
  grid = model.traverse(params, image, values)    # vary z_j, hold w.

The stage-two loss takes the stage-one parameters as an ordinary argument,
`loss(stage2_params, stage1_params, images, rng)`, and stops their gradient:
stage one is frozen by construction, and a different stage-one checkpoint is
just a different argument value (no recompilation).

`compute_dtype=jnp.bfloat16` runs the networks of both stages in bfloat16
(mixed precision); the parameters, the conditioning c and the losses stay
float32, and the parameter trees are those of float32, so checkpoints move
freely between the two.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from msdr_jax import losses
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps
from msdr_jax.families import FAMILIES
from msdr_jax.families import base
from msdr_jax.models import conditioning as conditioning_lib

Params = Any
StageOne = stage_one_lib.StageOne


def family_from_config(
    config: ml_collections.ConfigDict,
    stage_one: StageOne,
    compute_dtype: Any = jnp.float32,
) -> base.Family:
  """The stage-two family of `config.stage2` for `stage_one`'s images."""
  family = FAMILIES[config.stage2.family]
  return family.from_config(
      config.stage2, stage_one.image_shape, stage_one.likelihood,
      compute_dtype=compute_dtype)


def condition_on_codes(
    stage_one: StageOne, stage1_params: Params, codes: jax.Array
) -> conditioning_lib.Conditioning:
  """c = (z, dec(z)) for given stage-one codes z."""
  stage1_params = jax.lax.stop_gradient(stage1_params)
  logits = stage_one.decode(stage1_params, codes)
  return conditioning_lib.Conditioning(codes, logits, losses.decoder_mean(logits))


def condition(
    stage_one: StageOne, stage1_params: Params, images: jax.Array
) -> conditioning_lib.Conditioning:
  """c = (z, dec(z)) with z the stage-one posterior mean of `images`.

  The mean, not a sample: it is the representation the metrics score and the
  code whose meaning stage two must keep.
  """
  stage1_params = jax.lax.stop_gradient(stage1_params)
  codes, _ = stage_one.encode(stage1_params, images)
  return condition_on_codes(stage_one, stage1_params, codes)


@dataclasses.dataclass(frozen=True)
class MultiStageModel:
  """Stage one (any `StageOne`) and a stage-two family; no parameters inside."""

  stage1: StageOne
  stage2: base.Family

  @classmethod
  def from_config(
      cls,
      config: ml_collections.ConfigDict,
      stage_one: StageOne,
      compute_dtype: Any = jnp.float32,
  ) -> MultiStageModel:
    """`stage_one` and the family of `config.stage2`, computing in `compute_dtype`.

    The compute dtype is the family's; stage one computes as it was built.
    """
    return cls(stage1=stage_one,
               stage2=family_from_config(config, stage_one, compute_dtype))

  def init(self, rng: jax.Array, stage1_params: Params) -> Params:
    """Initial stage-two parameters; `stage1_params` only shape the conditioning.

    Compiled as one program (`steps.jit_run_once`).
    """

    def initialise(rng, stage1_params):
      images = jnp.zeros((1, *self.stage1.image_shape), jnp.float32)
      cond = condition(self.stage1, stage1_params, images)
      return self.stage2.init(rng, cond, images)

    return steps.jit_run_once(initialise)(rng, stage1_params)

  def loss(self, stage2_params, stage1_params, images, rng, step=None):
    """(loss, metrics) of stage two at training `step`; stage one gets no gradient.

    The train step of `steps.make_train_step`: stage one's parameters are an
    ordinary argument, so another stage-one checkpoint reuses the compiled
    step.

    `step=None` is the objective after any warm-up (`base.Family.loss`).
    """
    cond = condition(self.stage1, stage1_params, images)
    return self.loss_given_condition(stage2_params, stage1_params, cond, images, rng, step)

  def loss_given_condition(self, stage2_params, stage1_params, cond, images, rng, step=None):
    """`loss` with stage one's conditioning `cond` of `images` already computed.

    For callers that need `cond` themselves (the evaluation), so that stage
    one does not run twice.
    """
    if not self.stage2.trains_on_prior_codes:
      return self.stage2.loss(stage2_params, cond, images, rng, step)
    code_rng, rng = jax.random.split(rng)
    codes = jax.random.normal(code_rng, cond.code.shape, cond.code.dtype)
    prior_cond = condition_on_codes(self.stage1, stage1_params, codes)
    return self.stage2.loss(stage2_params, cond, images, rng, step, prior_cond=prior_cond)

  def encode(self, params, images) -> tuple[jax.Array, jax.Array]:
    """(z, w): stage one's code and stage two's latents of `images`."""
    cond = condition(self.stage1, params["stage1"], images)
    return cond.code, self.stage2.encode(params["stage2"], cond, images)

  def decode(self, params, codes, latents) -> jax.Array:
    """Images in [0, 1] from stage-one codes z and stage-two latents w."""
    cond = condition_on_codes(self.stage1, params["stage1"], codes)
    return self.stage2.decode(params["stage2"], cond, latents)

  def reconstruct(self, params, images) -> jax.Array:
    codes, latents = self.encode(params, images)
    return self.decode(params, codes, latents)

  def sample_latents(self, params, codes, rng) -> jax.Array:
    """w ~ p(w) (MS-GMM: p(w | c)) for each stage-one code z."""
    cond = condition_on_codes(self.stage1, params["stage1"], codes)
    return self.stage2.sample_latents(params["stage2"], cond, rng)

  def sample(self, params, rng, num_samples: int) -> jax.Array:
    """Images of z ~ N(0, I) and w ~ p(w)."""
    code_rng, latent_rng = jax.random.split(rng)
    codes = jax.random.normal(code_rng, (num_samples, self.stage1.latent_dim))
    return self.decode(params, codes, self.sample_latents(params, codes, latent_rng))

  def traverse(self, params, image, values) -> jax.Array:
    """Sweeps each z_j of one image over `values`, holding its w fixed.

    Args:
      params: `{"stage1": ..., "stage2": ...}`.
      image: [H, W, C] image whose (z, w) the sweep starts from.
      values: [V] values given to each latent in turn.

    Returns:
      [K, V, H, W, C] images.
    """
    code, latent = self.encode(params, image[None])
    codes = stage_one_lib.traversal_codes(code[0], values)
    latents = jnp.repeat(latent, len(codes), axis=0)
    images = self.decode(params, codes, latents)
    return images.reshape(code.shape[-1], len(values), *image.shape)

