"""Stage-one training: state, the pure train step, and the training loop.

The pieces are usable on their own from any JAX code:

  state = train.create_train_state(config.stage1, image_shape, rng)
  train_step = jax.jit(
      train.make_train_step(config.stage1, image_shape, dataset_size))
  state, metrics = train_step(state, images, step_rng)

`train_step(state, batch, rng) -> (state, metrics)` is a pure function of
pytrees; with `axis_name` set it averages gradients over that axis, so the
same function runs under `jax.pmap` or `shard_map`. (The total-correlation
estimators then see each device's share of the batch, as with any per-device
minibatch statistic.)

`train_and_evaluate(config, workdir)` owns the loop: data are generated on the
device inside the same compiled step, per-step randomness is
`fold_in(rng, step)` (so a resumed run replays exactly the batches and noise
an uninterrupted run would have seen), checkpoints are written by orbax, and
the evaluation of `evaluation.py` runs at the end.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

from absl import logging
from etils import epath
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from msdr_jax import configuration
from msdr_jax import data
from msdr_jax import evaluation
from msdr_jax import losses
from msdr_jax import writers
from msdr_jax.models import vae

Metrics = dict[str, jax.Array]

OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict], optax.GradientTransformation]] = {
    "adam": lambda c: optax.adam(c.learning_rate, b1=c.b1, b2=c.b2, eps=c.eps),
}


class TrainState(train_state.TrainState):
  """step, params and opt_state (pytree leaves); apply_fn and tx are static."""


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite."""


def rng_streams(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The independent (init, train, eval) keys of a run.

  One derivation for every stream: mixing `split` and `fold_in` of the same
  key can give identical keys (with threefry_partitionable, `fold_in(k, 1)`
  is `split(k)[1]`).
  """
  init_rng, train_rng, eval_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  return init_rng, train_rng, eval_rng


def create_train_state(
    stage_config: ml_collections.ConfigDict,
    image_shape: tuple[int, int, int],
    rng: jax.Array,
) -> TrainState:
  """Initialises the VAE parameters and the optimizer state."""
  model = vae.model_from_config(stage_config.model, image_shape)
  init_rng, sample_rng = jax.random.split(rng)
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  params = model.init(init_rng, dummy, sample_rng)["params"]
  return TrainState.create(
      apply_fn=model.apply,
      params=params,
      tx=OPTIMIZERS[stage_config.optimizer.name](stage_config.optimizer),
  )


def make_loss_fn(
    stage_config: ml_collections.ConfigDict,
    image_shape: tuple[int, int, int],
    dataset_size: int,
) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Metrics]]:
  """Returns `loss_fn(params, images, rng) -> (loss, terms)` of the objective."""
  model = vae.model_from_config(stage_config.model, image_shape)
  likelihood = losses.LIKELIHOODS[stage_config.model.likelihood]
  objective = losses.objective_from_config(stage_config.objective, dataset_size)

  def loss_fn(params, images, rng):
    out = model.apply({"params": params}, images, rng)
    recon_nll = likelihood(out.decoder_output, images)
    loss, terms = objective(recon_nll, out.latents, out.mean, out.log_var)
    return loss, dict(terms, loss=loss)

  return loss_fn


def make_train_step(
    stage_config: ml_collections.ConfigDict,
    image_shape: tuple[int, int, int],
    dataset_size: int,
    axis_name: str | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
  """Returns the pure `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    stage_config: `config.stage1` (model, objective, optimizer).
    image_shape: (H, W, C) of the images.
    dataset_size: N of the total-correlation estimators.
    axis_name: if set, gradients and metrics are averaged over this mapped
      axis (data parallelism under `jax.pmap` / `shard_map`).
  """
  loss_fn = make_loss_fn(stage_config, image_shape, dataset_size)

  def train_step(state: TrainState, batch: jax.Array, rng: jax.Array):
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, rng)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    # Logged, and checked with the loss: a finite loss with non-finite
    # gradients would otherwise put NaN parameters into the next checkpoint.
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state.apply_gradients(grads=grads), metrics

  return train_step


def _checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.max_checkpoints_to_keep, create=True
  )
  return ocp.CheckpointManager(
      epath.Path(workdir).absolute() / "checkpoints", options=options
  )


def _first_sentence(error: Exception) -> str:
  return str(error).splitlines()[0].split(". ")[0]


def restore_or_create_state(
    manager: ocp.CheckpointManager, state: TrainState
) -> TrainState:
  """Restores the latest checkpoint into the structure of `state`, if any."""
  latest = manager.latest_step()
  if latest is None:
    return state
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
  try:
    return manager.restore(latest, args=ocp.args.StandardRestore(abstract))
  except (ValueError, KeyError, TypeError) as e:
    raise configuration.RunDirectoryError(
        f"Checkpoint {latest} in {manager.directory} does not match this "
        f"config's model ({_first_sentence(e)}). Use another --workdir."
    ) from e


def _first_nonfinite(
    pending: list[tuple[int, Metrics]],
) -> tuple[int, str, float] | None:
  """(step, name, value) of the first non-finite loss or gradient norm."""
  for step, metrics in pending:
    for name in ("loss", "grad_norm"):
      value = float(metrics[name])
      if not np.isfinite(value):
        return step, name, value
  return None


def _raise_if_nonfinite(
    pending: list[tuple[int, Metrics]],
    manager: ocp.CheckpointManager,
    workdir: str,
) -> None:
  bad = _first_nonfinite(pending)
  if bad is None:
    return
  manager.wait_until_finished()  # The last good checkpoint is complete.
  step, name, value = bad
  raise NonFiniteLossError(
      f"Stage-one {name} is {value} at step {step}. The last good checkpoint "
      f"(step {manager.latest_step()}) in {workdir} is intact, but resuming "
      "replays the same steps; start a new run with a lower "
      "--config.stage1.optimizer.learning_rate, or check the data."
  )


def train_stage_one(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: data.GroundTruthData,
    writer: writers.MetricWriter,
) -> TrainState:
  """Trains (or resumes) stage one up to `config.stage1.num_steps`."""
  stage_config = config.stage1
  image_shape = dataset.observation_shape
  init_rng, train_rng, _ = rng_streams(config.seed)
  state = create_train_state(stage_config, image_shape, init_rng)
  manager = _checkpoint_manager(workdir, config)
  state = restore_or_create_state(manager, state)
  start_step = int(state.step)
  num_steps = stage_config.num_steps
  if start_step:
    logging.info("Resumed stage one from the checkpoint at step %d.", start_step)
  if start_step >= num_steps:
    manager.close()
    if start_step > num_steps:
      raise configuration.RunDirectoryError(
          f"{workdir} holds stage one trained to step {start_step}, beyond "
          f"config.stage1.num_steps={num_steps}. Use "
          f"--config.stage1.num_steps={start_step} (or more), or another --workdir."
      )
    return state

  train_step = make_train_step(stage_config, image_shape, dataset.num_images)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_iteration(state):
    # Data generation is fused into the step: no host input pipeline.
    step_rng = jax.random.fold_in(train_rng, state.step)
    data_rng, model_rng = jax.random.split(step_rng)
    images, _ = dataset.sample(data_rng, config.batch_size)
    return train_step(state, images, model_rng)

  progress = writers.Progress(num_steps, start_step, config.batch_size)
  pending: list[tuple[int, Metrics]] = []
  try:
    for step in range(start_step + 1, num_steps + 1):
      state, metrics = train_iteration(state)
      pending.append((step, metrics))
      save = step % config.checkpoint_every_steps == 0 or step == num_steps
      if save or step % config.log_every_steps == 0:
        # The only host synchronisation: every log interval and before saving,
        # so a non-finite value is caught before it can reach a checkpoint.
        pending = jax.device_get(pending)
        _raise_if_nonfinite(pending, manager, workdir)
        summary = writers.scalar_summary(pending)
        writer.write_scalars(step, {f"stage1/{k}": v for k, v in summary.items()})
        logging.info("%s", progress.report(step, summary))
        pending = []
      if save:
        manager.save(step, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
  finally:
    manager.close()
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains stage one in `workdir` (resuming if possible), then evaluates it.

  Returns the evaluation metrics, also written to `workdir/metrics.json`.
  """
  configuration.validate(config)
  configuration.bind_workdir(config, workdir)
  dataset = data.get_dataset(config.data)
  with writers.MetricWriter(workdir) as writer:
    start = time.time()
    state = train_stage_one(config, workdir, dataset, writer)
    logging.info("Stage one trained in %.1f s; evaluating.", time.time() - start)
    _, _, eval_rng = rng_streams(config.seed)
    return evaluation.evaluate_stage_one(
        config, workdir, dataset, state.params, int(state.step), eval_rng, writer)
