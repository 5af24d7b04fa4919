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
devices inside the same compiled step, the step is one program over every
device of every host (`parallel`: batch split over the devices, state
replicated), per-step randomness is `fold_in(rng, step)` (so a resumed run
replays exactly the batches and noise an uninterrupted run would have seen, on
any number of devices), checkpoints are written by orbax in the background,
and the evaluation of `evaluation.py` runs at the end.
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
from msdr_jax import families
from msdr_jax import losses
from msdr_jax import multi_stage
from msdr_jax import parallel
from msdr_jax import pytorch_import
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import torch_checkpoint
from msdr_jax import writers
from msdr_jax.models import vae

Metrics = dict[str, jax.Array]

OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict], optax.GradientTransformation]] = {
    "adam": lambda c: optax.adam(c.learning_rate, b1=c.b1, b2=c.b2, eps=c.eps),
}

# `config.compute_dtype`: what the networks' convolutions and products compute
# in. Parameters, gradients, losses and the optimizer stay float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(train_state.TrainState):
  """step, params and opt_state (pytree leaves); apply_fn and tx are static."""


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite."""


def rng_streams(seed: int, stage: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The independent (init, train, eval) keys of a stage of a run.

  One derivation for every stream: mixing `split` and `fold_in` of the same
  key can give identical keys (with threefry_partitionable, `fold_in(k, 1)`
  is `split(k)[1]`). The first three keys of `split(k, 6)` are those of
  `split(k, 3)`, so stage one's streams do not depend on stage two's
  existence.
  """
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  init_rng, train_rng, eval_rng = keys[3 * (stage - 1) : 3 * stage]
  return init_rng, train_rng, eval_rng


def _jit_run_once(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`jax.jit(fn)` for a program that runs once, such as an initialisation.

  Run eagerly, each of an initialisation's hundreds of small operations would
  be compiled on its own. As one program, on XLA:CPU, LLVM's optimisation
  passes would take longer than the program itself ever runs, so they are
  left out there (see `benchmarks/startup.py`).
  """
  options = ({"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu"
             else None)
  jitted = jax.jit(fn, compiler_options=options)

  @functools.wraps(fn)
  def run(*args):
    # Inside another transformation (e.g. `jax.eval_shape`) compiler options
    # are not allowed, and the enclosing program compiles `fn` anyway.
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args)):
      return fn(*args)
    return jitted(*args)

  return run


def create_train_state(
    stage_config: ml_collections.ConfigDict,
    image_shape: tuple[int, int, int],
    rng: jax.Array,
) -> TrainState:
  """Initialises the VAE parameters and the optimizer state."""
  model = vae.model_from_config(stage_config.model, image_shape)

  @_jit_run_once
  def create(rng):
    init_rng, sample_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    params = model.init(init_rng, dummy, sample_rng)["params"]
    return TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=OPTIMIZERS[stage_config.optimizer.name](stage_config.optimizer),
    )

  return create(rng)


def make_loss_fn(
    stage_config: ml_collections.ConfigDict,
    image_shape: tuple[int, int, int],
    dataset_size: int,
    compute_dtype: Any = jnp.float32,
) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Metrics]]:
  """Returns `loss_fn(params, images, rng) -> (loss, terms)` of the objective.

  The networks compute in `compute_dtype` (see `COMPUTE_DTYPES`).
  """
  model = vae.model_from_config(stage_config.model, image_shape, compute_dtype)
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
    compute_dtype: Any = jnp.float32,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
  """Returns the pure `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    stage_config: `config.stage1` (model, objective, optimizer).
    image_shape: (H, W, C) of the images.
    dataset_size: N of the total-correlation estimators.
    axis_name: if set, gradients and metrics are averaged over this mapped
      axis (data parallelism under `jax.pmap` / `shard_map`).
    compute_dtype: what the networks compute in (`COMPUTE_DTYPES`); the
      parameters, gradients and loss stay float32.
  """
  loss_fn = make_loss_fn(stage_config, image_shape, dataset_size, compute_dtype)

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


def create_stage_two_state(
    config: ml_collections.ConfigDict,
    image_shape: tuple[int, int, int],
    stage1_params: Any,
    rng: jax.Array,
    stage_one: stage_one_lib.StageOne | None = None,
) -> TrainState:
  """Initialises the stage-two family's parameters and optimizer state.

  `stage1_params` (of `stage_one`, default the VAE of `config.stage1`) only
  shape the conditioning the family is built for.
  """
  model = multi_stage.MultiStageModel.from_config(config, image_shape, stage_one=stage_one)

  @_jit_run_once
  def create(stage1_params, rng):
    images = jnp.zeros((1, *image_shape), jnp.float32)
    cond = multi_stage.condition(model.stage1, stage1_params, images)
    params = model.stage2.init(rng, cond, images)
    return TrainState.create(
        apply_fn=None,
        params=params,
        tx=OPTIMIZERS[config.stage2.optimizer.name](config.stage2.optimizer),
    )

  return create(stage1_params, rng)


def make_stage_two_train_step(
    config: ml_collections.ConfigDict,
    image_shape: tuple[int, int, int],
    axis_name: str | None = None,
    compute_dtype: Any = jnp.float32,
    stage_one: stage_one_lib.StageOne | None = None,
) -> Callable[[TrainState, Any, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
  """Returns the pure `train_step(state, stage1_params, batch, rng)`.

  The frozen stage-one parameters are an ordinary input: the gradient is
  taken with respect to `state.params` only, and the loss stops stage one's
  gradient as well, so nothing can flow into it. Passing another stage-one
  checkpoint reuses the compiled step. Stage one is `stage_one` (any
  `stage_one.StageOne`), by default the VAE of `config.stage1`. `axis_name`
  and `compute_dtype` are those of `make_train_step`.
  """
  loss_fn = multi_stage.make_loss_fn(config, image_shape, compute_dtype, stage_one)

  def train_step(state: TrainState, stage1_params, batch: jax.Array, rng: jax.Array):
    grads, metrics = jax.grad(loss_fn, has_aux=True)(
        state.params, stage1_params, batch, rng, state.step)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state.apply_gradients(grads=grads), metrics

  return train_step


_STAGE_NAMES = {"stage1": "stage one", "stage2": "stage two"}
STAGE_ONE_CHECKPOINTS = "checkpoints"
STAGE_TWO_CHECKPOINTS = "checkpoints_stage2"


def _checkpoint_manager(
    workdir: str, config, subdirectory: str = STAGE_ONE_CHECKPOINTS
) -> ocp.CheckpointManager:
  # Asynchronous: `save` returns once the state is copied off the devices
  # (before its buffers are donated to the next step) and writes it in the
  # background; the loop waits for it only before returning or raising.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.max_checkpoints_to_keep, create=True,
      enable_async_checkpointing=True,
  )
  return ocp.CheckpointManager(
      epath.Path(workdir).absolute() / subdirectory, options=options
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


def _shape_mismatch(expected: Any, stored: Any) -> str | None:
  """'path: shape A there, B here' for the first differing parameter."""
  ours = {jax.tree_util.keystr(k): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  theirs = {jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_leaves_with_path(stored)}
  for path in sorted(ours.keys() | theirs.keys()):
    if ours.get(path) != theirs.get(path):
      there = theirs.get(path, "absent")
      here = ours.get(path, "absent")
      return f"params{path} has shape {there} there but {here} here"
  return None


def load_stage_one(
    config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]
) -> tuple[Any, int]:
  """(params, step) of the stage-one checkpoint `config.stage1.checkpoint`.

  The path is a stage-one work directory or its `checkpoints/` directory
  (the latest checkpoint is used), or a PyTorch checkpoint of the Burgess et
  al. architecture: a `torch.save` file or a directory holding `model.pt`
  (`pytorch_import`; its step is 0). A checkpoint of another model is
  refused with the first parameter whose shape differs, both shapes named; an
  unreadable one in one line.
  """
  if pytorch_import.is_pytorch_checkpoint(config.stage1.checkpoint):
    try:
      params = pytorch_import.load_params(
          config.stage1.checkpoint, config.stage1.model, image_shape)
    except (torch_checkpoint.CheckpointError,
            pytorch_import.IncompatibleCheckpointError) as e:
      raise configuration.RunDirectoryError(str(e)) from None
    return params, 0
  path = epath.Path(config.stage1.checkpoint).absolute()
  if (path / STAGE_ONE_CHECKPOINTS).is_dir():
    path = path / STAGE_ONE_CHECKPOINTS
  fix = ("Pass a stage-one work directory (or its checkpoints/ directory) or a "
         "PyTorch checkpoint as --config.stage1.checkpoint, or leave it empty to "
         "train stage one.")
  if not path.is_dir():
    raise configuration.RunDirectoryError(
        f"Stage-one checkpoint {config.stage1.checkpoint} does not exist. {fix}")
  manager = ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(create=False, read_only=True),
      item_handlers=ocp.StandardCheckpointHandler())
  try:
    step = manager.latest_step()
    if step is None:
      raise configuration.RunDirectoryError(
          f"{path} holds no stage-one checkpoint. {fix}")
    state = jax.eval_shape(
        functools.partial(create_train_state, config.stage1, image_shape),
        jax.random.PRNGKey(0))
    metadata = manager.item_metadata(step)
    stored_params = metadata.get("params") if metadata is not None else None
    mismatch = (_shape_mismatch(state.params, stored_params)
                if stored_params is not None else "it has no parameters")
    if mismatch:
      model = config.stage1.model
      raise configuration.RunDirectoryError(
          f"Stage-one checkpoint {path} (step {step}) is not a model of this "
          f"config (architecture {model.architecture}, latent_dim "
          f"{model.latent_dim}, images {'x'.join(map(str, image_shape))}): "
          f"{mismatch}. Set --config.stage1.model.* and --config.data.* to the "
          "values the checkpoint was trained with.")
    # Onto this process's first device, whatever devices wrote it.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  finally:
    manager.close()
  return restored.params, step


def load_stage_two(
    config: ml_collections.ConfigDict,
    workdir: str,
    image_shape: tuple[int, int, int],
    stage1_params: Any,
    stage_one: stage_one_lib.StageOne | None = None,
) -> tuple[Any, int] | None:
  """(params, step) of the latest stage-two checkpoint in `workdir`, or None."""
  path = epath.Path(workdir).absolute() / STAGE_TWO_CHECKPOINTS
  if not path.is_dir():
    return None
  state = create_stage_two_state(
      config, image_shape, stage1_params, jax.random.PRNGKey(0), stage_one)
  manager = ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(create=False, read_only=True))
  try:
    restored = restore_or_create_state(manager, state)
  finally:
    manager.close()
  step = int(restored.step)
  return (restored.params, step) if step else None


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
    stage: str,
) -> None:
  bad = _first_nonfinite(pending)
  if bad is None:
    return
  manager.wait_until_finished()  # The last good checkpoint is complete.
  step, name, value = bad
  raise NonFiniteLossError(
      f"{_STAGE_NAMES[stage].capitalize()} {name} is {value} at step "
      f"{step}. The last good checkpoint (step {manager.latest_step()}) in "
      f"{workdir} is intact, but resuming replays the same steps; start a new "
      f"run with a lower --config.{stage}.optimizer.learning_rate, or check "
      "the data."
  )


def _train_loop(
    config: ml_collections.ConfigDict,
    workdir: str,
    stage: str,
    state: TrainState,
    train_iteration: Callable[[TrainState], tuple[TrainState, Metrics]],
    manager: ocp.CheckpointManager,
    writer: writers.MetricWriter,
) -> TrainState:
  """Runs `train_iteration` from `state.step` to `config.<stage>.num_steps`.

  The only host synchronisation is every log interval and before saving, so
  a non-finite value is caught before it can reach a checkpoint.
  """
  start_step, num_steps = int(state.step), config[stage].num_steps
  progress = writers.Progress(num_steps, start_step, config.batch_size)
  pending: list[tuple[int, Metrics]] = []
  try:
    for step in range(start_step + 1, num_steps + 1):
      state, metrics = train_iteration(state)
      pending.append((step, metrics))
      save = step % config.checkpoint_every_steps == 0 or step == num_steps
      if save or step % config.log_every_steps == 0:
        pending = jax.device_get(pending)
        _raise_if_nonfinite(pending, manager, workdir, stage)
        summary = writers.scalar_summary(pending)
        writer.write_scalars(step, {f"{stage}/{k}": v for k, v in summary.items()})
        logging.info("%s %s", _STAGE_NAMES[stage], progress.report(step, summary))
        pending = []
      if save:
        manager.save(step, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
  finally:
    manager.close()
  return state


def _resume(
    manager: ocp.CheckpointManager, state: TrainState, workdir: str, stage: str,
    num_steps: int,
) -> TrainState:
  """Restores the latest checkpoint; refuses one beyond `num_steps`."""
  state = restore_or_create_state(manager, state)
  start_step = int(state.step)
  if start_step:
    logging.info("Resumed %s from the checkpoint at step %d.", _STAGE_NAMES[stage],
                 start_step)
  if start_step > num_steps:
    manager.close()
    raise configuration.RunDirectoryError(
        f"{workdir} holds {_STAGE_NAMES[stage]} trained to step {start_step}, beyond "
        f"config.{stage}.num_steps={num_steps}. Use "
        f"--config.{stage}.num_steps={start_step} (or more), or another --workdir."
    )
  return state


def make_train_iteration(
    train_step: Callable[..., tuple[TrainState, Metrics]],
    batch_size: int,
    train_rng: jax.Array,
    mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, tuple[Any, ...], data.GroundTruthData], tuple[TrainState, Metrics]]:
  """The training loop's compiled body, sharded over `mesh`.

  `iteration(state, frozen, dataset)` draws step `state.step`'s batch on the
  devices (each device renders or gathers its share of the images), then
  calls `train_step(state, *frozen, images, rng)`: `frozen` is `()` for stage
  one and `(stage1_params,)` for stage two. The batch of a step is the same
  on any number of devices. State, `frozen` and the data set are replicated;
  the state's buffers are donated to the updated state. A batch the devices
  cannot split evenly raises `parallel.DeviceCountError`.
  """
  parallel.check_batch_size(batch_size, mesh.size, "config.batch_size")
  draw_images = parallel.map_examples(
      lambda dataset, states: dataset.images_from_state(states), mesh)

  def iteration(state, frozen, dataset):
    step_rng = jax.random.fold_in(train_rng, state.step)
    data_rng, model_rng = jax.random.split(step_rng)
    states = parallel.constrain_batch(dataset.sample_state(data_rng, batch_size), mesh)
    return train_step(state, *frozen, draw_images(dataset, states), model_rng)

  return jax.jit(iteration, in_shardings=parallel.replicated(mesh),
                 out_shardings=parallel.replicated(mesh), donate_argnums=0)


def train_stage_one(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: data.GroundTruthData,
    writer: writers.MetricWriter,
    mesh: jax.sharding.Mesh | None = None,
) -> TrainState:
  """Trains (or resumes) stage one up to `config.stage1.num_steps`.

  On `mesh` (default: every device of every host); the returned state is
  replicated on it.
  """
  mesh = parallel.data_mesh() if mesh is None else mesh
  stage_config = config.stage1
  image_shape = dataset.observation_shape
  init_rng, train_rng, _ = rng_streams(config.seed)
  train_step = make_train_step(stage_config, image_shape, dataset.num_images,
                               compute_dtype=COMPUTE_DTYPES[config.compute_dtype])
  iteration = make_train_iteration(train_step, config.batch_size, train_rng, mesh)
  state = parallel.replicate(create_train_state(stage_config, image_shape, init_rng), mesh)
  manager = _checkpoint_manager(workdir, config)
  state = _resume(manager, state, workdir, "stage1", stage_config.num_steps)
  dataset = parallel.replicate(dataset, mesh)  # No copy if it already is.
  return _train_loop(
      config, workdir, "stage1", state, lambda state: iteration(state, (), dataset),
      manager, writer)


def train_stage_two(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: data.GroundTruthData,
    stage1_params: Any,
    writer: writers.MetricWriter,
    mesh: jax.sharding.Mesh | None = None,
    stage_one: stage_one_lib.StageOne | None = None,
) -> TrainState:
  """Trains (or resumes) stage two on frozen `stage1_params`, on `mesh`.

  `stage1_params` are those of `stage_one` (default: the VAE of
  `config.stage1`).
  """
  mesh = parallel.data_mesh() if mesh is None else mesh
  image_shape = dataset.observation_shape
  init_rng, train_rng, _ = rng_streams(config.seed, stage=2)
  train_step = make_stage_two_train_step(
      config, image_shape, compute_dtype=COMPUTE_DTYPES[config.compute_dtype],
      stage_one=stage_one)
  iteration = make_train_iteration(train_step, config.batch_size, train_rng, mesh)
  # Initialised from host values: `stage1_params` only shapes the model.
  state = parallel.replicate(create_stage_two_state(
      config, image_shape, parallel.to_host(stage1_params), init_rng, stage_one), mesh)
  stage1_params = parallel.replicate(stage1_params, mesh)
  manager = _checkpoint_manager(workdir, config, STAGE_TWO_CHECKPOINTS)
  state = _resume(manager, state, workdir, "stage2", config.stage2.num_steps)
  dataset = parallel.replicate(dataset, mesh)  # No copy if it already is.
  return _train_loop(
      config, workdir, "stage2", state,
      lambda state: iteration(state, (stage1_params,), dataset), manager, writer)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    stage_one: stage_one_lib.StageOne | None = None,
    stage1_params: Any = None,
) -> dict[str, Any]:
  """Trains stage one and stage two in `workdir` (resuming), then evaluates.

  Stage one is, in this order: `stage_one` with its `stage1_params` when
  given (any disentangler, e.g. a user's own Flax networks; the run records
  their digest and refuses to resume on others); the checkpoint
  `config.stage1.checkpoint` names (a run of this library, or a PyTorch
  checkpoint); otherwise it is trained here. Stage two
  (`config.stage2.family`, unless "none") is then trained on it, frozen.
  Training runs data-parallel over every device of every host (`parallel`);
  with several processes, the first one writes the summaries and runs the
  evaluation. Returns the evaluation metrics, also written to
  `workdir/metrics.json` (an empty dict in the other processes).
  """
  configuration.validate(config)
  given = stage_one is not None
  if given != (stage1_params is not None):
    raise configuration.ConfigError(
        "Pass both stage_one and stage1_params (or neither, to train stage one "
        "or load config.stage1.checkpoint).")
  if given and config.stage1.checkpoint:
    raise configuration.ConfigError(
        "Both a stage_one and config.stage1.checkpoint are given; leave "
        "config.stage1.checkpoint empty when passing stage_one.")
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh.size, "config.batch_size")
  # Several processes sharing a work directory must train one config.
  parallel.assert_same_in_all_processes(
      int(configuration.fingerprint(config), 16), "configs")
  configuration.check_workdir(config, workdir)  # Before a slow data load.
  # One copy of the data on every device: training uses it all, the
  # evaluation this process's first replica (no second copy on that device).
  train_data = parallel.replicate(data.get_dataset(config.data), mesh)
  dataset = parallel.local_replica(train_data)
  image_shape = dataset.observation_shape
  # Checked before the run directory is created or bound.
  if given:
    if stage_one.image_shape != tuple(image_shape):
      raise configuration.ConfigError(
          f"Stage one takes {stage_one.image_shape} images but config.data "
          f"({config.data.name}) has {tuple(image_shape)}.")
    stage_one.check_params(stage1_params)
    stage1_step = 0
  elif config.stage1.checkpoint:
    stage1_params, stage1_step = load_stage_one(config, image_shape)
  main_process = parallel.is_main_process()
  if main_process:
    configuration.bind_workdir(config, workdir)
    if given:
      configuration.bind_stage_one(workdir, stage_one_lib.params_digest(stage1_params))
  parallel.sync_processes("msdr_jax: work directory bound")
  with writers.MetricWriter(workdir, enabled=main_process) as writer:
    start = time.time()
    if given:
      logging.info("Stage one given: %s images, %d latents, %s likelihood.",
                   "x".join(map(str, stage_one.image_shape)), stage_one.latent_dim,
                   stage_one.likelihood)
    elif config.stage1.checkpoint:
      logging.info("Loaded stage one (step %d) from %s.", stage1_step,
                   config.stage1.checkpoint)
    else:
      state = train_stage_one(config, workdir, train_data, writer, mesh)
      stage1_params, stage1_step = parallel.to_host(state.params), int(state.step)
      del state  # Frees the replicas and the optimizer state.
      logging.info("Stage one trained in %.1f s.", time.time() - start)
    # The evaluation runs on one device of the first process, on host copies
    # of the parameters; the other processes go on to stage two and wait for
    # it at stage two's first step.
    results = {}
    if main_process:
      results = evaluation.evaluate_stage_one(
          config, workdir, dataset, stage1_params, stage1_step,
          rng_streams(config.seed)[2], writer, stage_one)
    if config.stage2.family != families.NO_STAGE_TWO:
      start = time.time()
      state = train_stage_two(config, workdir, train_data, stage1_params, writer, mesh,
                              stage_one)
      logging.info("Stage two trained in %.1f s.", time.time() - start)
      stage2_params, stage2_step = parallel.to_host(state.params), int(state.step)
      del state
      if main_process:
        results = evaluation.evaluate_multi_stage(
            config, workdir, dataset, {"stage1": stage1_params, "stage2": stage2_params},
            stage2_step, rng_streams(config.seed)[2],
            rng_streams(config.seed, stage=2)[2], writer, results, stage_one)
  parallel.sync_processes("msdr_jax: evaluation done")
  return results
