"""The one train step of both stages, its state and its random streams."""

import jax
import numpy as np
import pytest

from configs import dsprites
from msdr_jax import data
from msdr_jax import parallel
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps


def _tiny_config():
  config = dsprites.get_config("preset=tiny")
  config.eval.num_points = 200
  return config


def test_train_step_is_deterministic_and_learns():
  config = _tiny_config()
  config.stage1.optimizer.learning_rate = 1e-3
  dataset = data.get_dataset(config.data)
  shape = dataset.observation_shape
  stage_one = stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, shape, dataset.num_images)
  step = jax.jit(steps.make_train_step(stage_one.loss))
  images, _ = dataset.sample(jax.random.PRNGKey(0), 16)
  optimizer = steps.make_optimizer(config.stage1.optimizer)

  def run():
    state = steps.create_train_state(stage_one.init, optimizer, jax.random.PRNGKey(3))
    losses = []
    for i in range(15):
      state, metrics = step(state, images, jax.random.PRNGKey(i))
      losses.append(float(metrics["loss"]))
    return state, losses

  state_a, losses_a = run()
  state_b, losses_b = run()
  assert losses_a == losses_b
  jax.tree_util.tree_map(np.testing.assert_array_equal, state_a.params, state_b.params)
  assert losses_a[-1] < 0.7 * losses_a[0], losses_a


def test_rng_streams_are_independent_and_keep_training_trajectories():
  init_rng, train_rng, eval_rng = steps.rng_streams(0)
  keys = [tuple(np.asarray(k)) for k in (init_rng, train_rng, eval_rng)]
  assert len(set(keys)) == 3
  # Evaluation must not redraw the batches of training.
  dataset = data.get_dataset(_tiny_config().data)
  _, train_factors = dataset.sample(jax.random.fold_in(train_rng, 0), 64)
  _, eval_factors = dataset.sample(jax.random.fold_in(eval_rng, 0), 64)
  assert not np.array_equal(train_factors, eval_factors)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's kernels only")
def test_training_iteration_runs_on_xla_cpu_kernels_and_computes_the_same_step(monkeypatch):
  config = _tiny_config()
  dataset = data.get_dataset(config.data)
  stage_one = stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, dataset.observation_shape, dataset.num_images)
  optimizer = steps.make_optimizer(config.stage1.optimizer)
  mesh = parallel.data_mesh(jax.devices()[:1])
  train_step = steps.make_train_step(stage_one.loss)

  def one_iteration():
    iteration = steps.make_train_iteration(train_step, 16, jax.random.PRNGKey(1), mesh)
    state = steps.create_train_state(stage_one.init, optimizer, jax.random.PRNGKey(0))
    program = iteration.lower(state, (), dataset).compile()
    return program.as_text(), program(state, (), dataset)

  assert steps.training_compiler_options() == steps.CPU_TRAINING_OPTIONS
  hlo, (state, metrics) = one_iteration()
  assert "__ynn_fusion" not in hlo
  monkeypatch.setattr(steps, "CPU_TRAINING_OPTIONS", {})  # jaxlib's defaults.
  assert steps.training_compiler_options() is None
  ynn_hlo, (ynn_state, ynn_metrics) = one_iteration()
  assert "__ynn_fusion" in ynn_hlo  # Else this test no longer compares two kernels.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               metrics, ynn_metrics)
  # Adam's first update is about the learning rate times the gradient's sign;
  # where a gradient is as small as Adam's eps, rounding moves its update by
  # a sizeable fraction, so parameters are compared to a tenth of one update.
  update_tolerance = 0.1 * config.stage1.optimizer.learning_rate
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=update_tolerance),
               state.params, ynn_state.params)


def test_compiler_options_this_jaxlib_lacks_fall_back_to_its_defaults(monkeypatch):
  monkeypatch.setattr(steps, "CPU_TRAINING_OPTIONS", {"xla_cpu_no_such_option": ""})
  assert steps.training_compiler_options() is None
