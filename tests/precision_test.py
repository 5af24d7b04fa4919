"""Mixed precision: bfloat16 networks, float32 parameters and losses.

Every model is built with `compute_dtype` float32 and bfloat16 and run on the
same float32 parameters. Parameters are perturbed with numpy noise first:
fresh models have zero-initialised output layers (flow couplings, refiner
corrections, mixture weights) whose bfloat16 path would be trivially exact.

On CPU these tests spend their time compiling, not computing, so every
function is compiled once (without LLVM optimisations, which halves the
compile time), noise comes from numpy, and the keys use the "rbg" PRNG, whose
samplers compile 3-5x faster than threefry's.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dsprites
from msdr_jax import losses
from msdr_jax import multi_stage
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps

# The smallest images the four stride-2 layers of every network allow.
SHAPE = (16, 16, 1)
BATCH = 4
DATASET_SIZE = 1000  # N of the stage-one total-correlation estimator.

# Relative tolerances, about 3-10x the largest difference measured over 20
# seeds of images and parameters. bfloat16 keeps 8 significant bits, so a
# network output is off by ~1% (relative L2 error <= 1.5e-2 measured) and so
# are terms made of a few outputs (KL of 10 latents: <= 7e-3; GAN patch
# terms: <= 1.5e-3). Sums over all pixels average the rounding away (losses:
# <= 1e-4), except the flow's NLL, a small difference of two large sums
# (Gaussian term and log-determinant): <= 4.6e-3.
OUTPUT_RTOL = 3e-2
LOSS_RTOL = 1e-3
METRIC_RTOLS = {
    "vae": {"loss": LOSS_RTOL, "recon": LOSS_RTOL, "kl": OUTPUT_RTOL},
    "flow": {"loss": 1e-2},
    "gan": {"loss": LOSS_RTOL, "recon": LOSS_RTOL, "kl": OUTPUT_RTOL,
            "generator_adversarial": OUTPUT_RTOL, "discriminator": OUTPUT_RTOL,
            "vae_loss": LOSS_RTOL, "r1": OUTPUT_RTOL},
    "gmm": {"loss": LOSS_RTOL},
}

# No LLVM optimisation: numbers differ only in the last bits.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# The element type of each convolution's / matmul's result in StableHLO.
_CONVOLUTION = re.compile(r"stablehlo\.convolution\(.*-> tensor<[^>]*x(\w+)>$", re.M)
_DOT = re.compile(r"stablehlo\.dot_general .*-> tensor<[^>]*x(\w+)>$", re.M)


def _config(family="none"):
  config = dsprites.get_config("preset=tiny")
  config.stage2.family = family
  for family_config in (config.stage2.vae, config.stage2.gan):
    family_config.latent_resolution = 4  # A level of the small images' U-Net.
  return config


def _key(seed):
  return jax.random.key(seed, impl="rbg")


def _perturbed(params, seed, scale=0.05):
  rs = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
      lambda p: jnp.asarray(np.asarray(p) + scale * rs.randn(*p.shape), p.dtype),
      params)


def _images(seed=0):
  rs = np.random.RandomState(seed)
  return jnp.asarray(rs.rand(BATCH, *SHAPE) > 0.5, jnp.float32)


def _compile(fn, *args):
  """(StableHLO text, executable) of `jax.jit(fn)` for `args`."""
  lowered = jax.jit(fn).lower(*args)
  return lowered.as_text(), lowered.compile(_COMPILER_OPTIONS)


def _relative_error(actual, expected):
  return float(jnp.linalg.norm(actual - expected) / jnp.linalg.norm(expected))


def _stage_one(config, compute_dtype=jnp.float32):
  return stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, SHAPE, DATASET_SIZE, compute_dtype)


def _multi_stage(config, compute_dtype):
  """Both stages computing in `compute_dtype`."""
  return multi_stage.MultiStageModel.from_config(
      config, _stage_one(config, compute_dtype), compute_dtype)


def _stage_one_loss(config, compute_dtype):
  """`DisentanglingVAE.loss`, with the VAE's outputs as aux."""
  stage_one = _stage_one(config, compute_dtype)
  likelihood = losses.LIKELIHOODS[stage_one.likelihood]

  def loss_fn(params, images, rng):
    out = stage_one.network.apply({"params": params}, images, rng)
    loss, _ = stage_one.objective(likelihood(out.decoder_output, images), out.latents,
                                  out.mean, out.log_var)
    return loss, out

  return loss_fn


def _assert_same_tree(f32_params, bf16_params):
  """Same names, shapes and (float32) dtypes: checkpoints are interchangeable."""
  assert f32_params == bf16_params
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree_util.tree_leaves(bf16_params))


def _run_both(f32_loss_fn, bf16_loss_fn, params, *args):
  """(loss, aux) of both losses; checks the programs and bfloat16 gradients.

  The float32 program must hold no bfloat16 at all, and every convolution and
  matmul of the bfloat16 one, backward pass included, must compute in
  bfloat16, so that no layer can silently ignore the dtype.
  """
  text, f32_loss_fn = _compile(f32_loss_fn, params, *args)
  assert "bf16" not in text
  f32_loss, f32_aux = f32_loss_fn(params, *args)

  text, grad_fn = _compile(
      jax.value_and_grad(bf16_loss_fn, has_aux=True), params, *args)
  convolutions, dots = _CONVOLUTION.findall(text), _DOT.findall(text)
  assert convolutions and set(convolutions) == {"bf16"}, set(convolutions)
  assert set(dots) <= {"bf16"}, set(dots)
  (loss, aux), grads = grad_fn(params, *args)

  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
  assert float(loss) != float(f32_loss)  # The bfloat16 path really ran.
  assert (jax.tree_util.tree_structure(grads)
          == jax.tree_util.tree_structure(params))
  for grad in jax.tree_util.tree_leaves(grads):
    assert grad.dtype == jnp.float32 and np.all(np.isfinite(grad))
  assert any(np.any(g) for g in jax.tree_util.tree_leaves(grads))
  return (f32_loss, f32_aux), (loss, aux)


@pytest.fixture(scope="module")
def stage_one():
  """(float32 stage-one parameters, perturbed, and a batch of images)."""
  config, images = _config(), _images()
  model = _stage_one(config).network
  _, init = _compile(model.init, _key(0), images, _key(1))
  return _perturbed(init(_key(0), images, _key(1))["params"], 1), images


def test_stage_one_vae(stage_one):
  config = _config()
  params, images = stage_one
  rng = _key(2)
  _assert_same_tree(*[
      jax.eval_shape(_stage_one(config, dtype).network.init, rng, images, rng)
      for dtype in (jnp.float32, jnp.bfloat16)])

  (f32_loss, f32_out), (loss, out) = _run_both(
      _stage_one_loss(config, jnp.float32), _stage_one_loss(config, jnp.bfloat16),
      params, images, rng)
  np.testing.assert_allclose(loss, f32_loss, rtol=LOSS_RTOL)
  for name in out._fields:
    assert getattr(out, name).dtype == jnp.float32, name
  for name in ("mean", "log_var", "decoder_output"):
    error = _relative_error(getattr(out, name), getattr(f32_out, name))
    assert error < OUTPUT_RTOL, (name, error)


@pytest.mark.parametrize("family", ["vae", "flow", "gan", "gmm"])
def test_stage_two_family(stage_one, family):
  config = _config(family)
  stage1_params, images = stage_one
  rng = _key(3)
  models = [_multi_stage(config, dtype) for dtype in (jnp.float32, jnp.bfloat16)]
  conds = [jax.eval_shape(functools.partial(multi_stage.condition, model.stage1),
                          stage1_params, images) for model in models]
  assert conds[0] == conds[1]  # float32 conditioning from a bfloat16 stage one.
  _assert_same_tree(*[jax.eval_shape(model.stage2.init, rng, conds[0], images)
                      for model in models])

  # Initial values depend on the shapes of the conditioning only.
  cond = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), conds[0])
  _, init = _compile(models[0].stage2.init, rng, cond, images)
  params = _perturbed(init(rng, cond, images), 2)
  (_, f32_metrics), (_, metrics) = _run_both(
      models[0].loss, models[1].loss,
      params, stage1_params, images, rng)
  for name, value in metrics.items():
    assert value.dtype == jnp.float32, name
  for name, rtol in METRIC_RTOLS[family].items():
    np.testing.assert_allclose(metrics[name], f32_metrics[name], rtol=rtol,
                               err_msg=name)


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_train_steps_compute_in_the_configured_dtype(compute_dtype):
  """Both stages' train steps compute in the dtype their models are built with."""
  config = _config("vae")
  model = _multi_stage(config, steps.COMPUTE_DTYPES[compute_dtype])
  state = steps.create_train_state(
      model.stage1.init, steps.make_optimizer(config.stage1.optimizer), _key(0))
  stage1_step = steps.make_train_step(model.stage1.loss)
  state2 = steps.create_train_state(
      model.init, steps.make_optimizer(config.stage2.optimizer), _key(1), state.params)
  stage2_step = steps.make_train_step(model.loss)
  texts = [jax.jit(stage1_step).lower(state, _images(), _key(2)).as_text(),
           jax.jit(stage2_step).lower(state2, state.params, _images(), _key(3)).as_text()]
  expected = {"bf16" if compute_dtype == "bfloat16" else "f32"}
  for text in texts:
    assert set(_CONVOLUTION.findall(text)) == expected
