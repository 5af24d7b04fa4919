"""In-process tests of the train step, the loop, checkpoints and bad input."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import dsprites
from msdr_jax import configuration
from msdr_jax import data
from msdr_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny_config():
  config = dsprites.get_config("preset=tiny")
  config.eval.num_points = 200
  return config


def test_readme_train_step_example_runs():
  readme = (REPO / "README.md").read_text()
  blocks = [
      re.search(rf"<!-- {name} -->\s*```python\n(.*?)```", readme, re.S)
      for name in ("train-step-example", "stage-two-example", "pmap-example",
                   "metrics-example")
  ]
  assert all(blocks), "README lost a train-step or metrics example"
  namespace = {}
  for block in blocks:
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert np.isfinite(float(namespace["metrics"]["loss"]))
  assert int(namespace["state"].step) == 4  # 3 steps, then 1 pmapped step.
  assert np.isfinite(float(namespace["device_metrics"]["loss"][0]))
  assert np.isfinite(float(namespace["metrics2"]["loss"]))
  assert int(namespace["state2"].step) == 3
  assert namespace["reconstructions"].shape == namespace["images"].shape
  assert namespace["samples"].shape == (8, 64, 64, 1)
  scores = namespace["scores"]
  assert sorted(k for k in scores if "/" not in k) == ["mig", "sap"]
  assert all(np.isfinite(v) for v in scores.values())
  assert "factor_vae/eval_accuracy" in scores


def test_train_step_is_deterministic_and_learns():
  config = _tiny_config()
  config.stage1.optimizer.learning_rate = 1e-3
  dataset = data.get_dataset(config.data)
  shape = dataset.observation_shape
  step = jax.jit(train.make_train_step(config.stage1, shape, dataset.num_images))
  images, _ = dataset.sample(jax.random.PRNGKey(0), 16)

  def run():
    state = train.create_train_state(config.stage1, shape, jax.random.PRNGKey(3))
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


def test_train_step_takes_a_mapped_axis():
  """With axis_name, per-device gradients are averaged: 2 shards == 1 batch."""
  config = _tiny_config()
  dataset = data.get_dataset(config.data)
  shape = dataset.observation_shape
  images, _ = dataset.sample(jax.random.PRNGKey(0), 8)
  state = train.create_train_state(config.stage1, shape, jax.random.PRNGKey(1))
  loss_fn = train.make_loss_fn(config.stage1, shape, dataset.num_images)
  mapped_step = train.make_train_step(config.stage1, shape, dataset.num_images,
                                      axis_name="devices")
  shards = images.reshape(2, 4, *shape)
  rngs = jax.random.split(jax.random.PRNGKey(2), 2)
  new_states, _ = jax.jit(
      jax.vmap(mapped_step, in_axes=(None, 0, 0), axis_name="devices"))(
          state, shards, rngs)
  grad_fn = jax.jit(jax.grad(loss_fn, has_aux=True))
  grads = [grad_fn(state.params, s, r)[0] for s, r in zip(shards, rngs)]
  mean_grad = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, *grads)
  expected = state.apply_gradients(grads=mean_grad)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-6),
      new_states.params, expected.params)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  config = _tiny_config()  # checkpoints every 3 steps, 6 steps.
  make_step = train.make_train_step

  def poisoned_make_train_step(*args, **kwargs):
    step = make_step(*args, **kwargs)

    def poisoned(state, batch, rng):
      # From the 5th step on the batch is NaN, so the loss is too.
      batch = batch * jnp.where(state.step >= 4, jnp.nan, 1.0)
      return step(state, batch, rng)

    return poisoned

  monkeypatch.setattr(train, "make_train_step", poisoned_make_train_step)
  with pytest.raises(train.NonFiniteLossError, match=r"Stage one loss is nan at step 5\. .*step 3\)"):
    train.train_and_evaluate(config, str(tmp_path))
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps == [3]
  restored = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "3" / "default")
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(restored["params"]))
  assert not (tmp_path / "metrics.json").exists()


def test_nonfinite_gradients_with_a_finite_loss_are_caught():
  finite = {"loss": np.float32(1.0), "grad_norm": np.float32(2.0)}
  pending = [(1, finite), (2, dict(finite, grad_norm=np.float32(np.inf))),
             (3, dict(finite, loss=np.float32(np.nan)))]
  assert train._first_nonfinite(pending) == (2, "grad_norm", np.inf)  # pylint: disable=protected-access
  assert train._first_nonfinite(pending[:1]) is None  # pylint: disable=protected-access


def test_checkpoint_of_another_model_is_refused(tmp_path):
  config = _tiny_config()
  shape = (64, 64, 1)
  config.stage1.model.latent_dim = 4
  other = train.create_train_state(config.stage1, shape, jax.random.PRNGKey(0))
  manager = ocp.CheckpointManager(tmp_path.absolute() / "checkpoints")
  manager.save(3, args=ocp.args.StandardSave(other))
  manager.wait_until_finished()
  config.stage1.model.latent_dim = 10
  state = train.create_train_state(config.stage1, shape, jax.random.PRNGKey(0))
  with pytest.raises(configuration.RunDirectoryError,
                     match=r"Checkpoint 3 in .* does not match this config.s model "
                     r"\(Requested shape: \(.*\) is not compatible with the "
                     r"stored shape: \(.*\)\)\. Use another --workdir\.$"):
    train.restore_or_create_state(manager, state)
  manager.close()


def test_rng_streams_are_independent_and_keep_training_trajectories():
  init_rng, train_rng, eval_rng = train.rng_streams(0)
  keys = [tuple(np.asarray(k)) for k in (init_rng, train_rng, eval_rng)]
  assert len(set(keys)) == 3
  # Evaluation must not redraw the batches of training.
  dataset = data.get_dataset(_tiny_config().data)
  _, train_factors = dataset.sample(jax.random.fold_in(train_rng, 0), 64)
  _, eval_factors = dataset.sample(jax.random.fold_in(eval_rng, 0), 64)
  assert not np.array_equal(train_factors, eval_factors)


def test_resuming_with_fewer_steps_than_trained_is_refused(tmp_path):
  config = _tiny_config()
  state = train.create_train_state(config.stage1, (64, 64, 1), jax.random.PRNGKey(0))
  with ocp.CheckpointManager(tmp_path.absolute() / "checkpoints") as manager:
    manager.save(6, args=ocp.args.StandardSave(state.replace(step=6)))
  config.stage1.num_steps = 3
  with pytest.raises(configuration.RunDirectoryError,
                     match=r"trained to step 6, beyond config.stage1.num_steps=3\. "
                     r"Use --config.stage1.num_steps=6"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "metrics.json").exists()
