"""The program: train stage one (or load it), train stage two on it, evaluate.

`train_and_evaluate(config, workdir)` reads as the method does:

  validate → mesh → data → stage one given or loaded → refuse what cannot
  resume → lock the run directory → stage one trained → evaluate it
  → stage two on the frozen stage one → evaluate the multi-stage model
  → write metrics.json (once, every evaluation's scores)

Each stage is built once and passed down. Both stages train through one loop
(`train_stage`) around the one train step of `steps`: data are generated on
the devices inside the compiled step, the step is one program over every
device of every host (`parallel`: batch split over the devices, state
replicated), checkpoints are written by orbax in the background
(`checkpoints`), and a run killed at any point resumes where an
uninterrupted run would be.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from msdr_jax import accelerators
from msdr_jax import checkpoints
from msdr_jax import configuration
from msdr_jax import data
from msdr_jax import evaluators
from msdr_jax import families
from msdr_jax import multi_stage
from msdr_jax import parallel
from msdr_jax import run_directory
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps
from msdr_jax import writers

_STAGE_NUMBERS = {"stage1": 1, "stage2": 2}


def _raise_if_nonfinite(pending, manager: ocp.CheckpointManager, workdir: str,
                        stage: str) -> None:
  bad = steps.first_nonfinite(pending)
  if bad is None:
    return
  manager.wait_until_finished()  # The last good checkpoint is complete.
  step, name, value = bad
  latest = manager.latest_step()
  kept = (f"The last good checkpoint (step {latest}) in {workdir} is intact, but "
          "resuming replays the same steps" if latest is not None else
          "No checkpoint was written before it")
  raise steps.NonFiniteLossError(
      f"{checkpoints.STAGE_NAMES[stage].capitalize()} {name} is {value} at step "
      f"{step}. {kept}; start a new run with a lower "
      f"--config.{stage}.optimizer.learning_rate, or check the data.")


def _train_loop(
    config: ml_collections.ConfigDict,
    workdir: str,
    stage: str,
    state: steps.TrainState,
    train_iteration: Callable[[steps.TrainState], tuple[steps.TrainState, steps.Metrics]],
    manager: ocp.CheckpointManager,
    writer: writers.MetricWriter,
    record: dict[str, Any],
) -> steps.TrainState:
  """Runs `train_iteration` from `state.step` to `config.<stage>.num_steps`.

  The only host synchronisation is every log interval and before saving, so
  a non-finite value is caught before it can reach a checkpoint. Each
  checkpoint carries `record` (`checkpoints.run_record`).
  """
  start_step, num_steps = int(state.step), config[stage].num_steps
  progress = writers.Progress(
      num_steps, start_step, config.batch_size, checkpoints.STAGE_NAMES[stage].capitalize(),
      writers.live_display() if parallel.is_main_process() else None)
  pending: list[tuple[int, steps.Metrics]] = []
  try:
    for step in range(start_step + 1, num_steps + 1):
      state, metrics = train_iteration(state)
      progress.tick(step)
      pending.append((step, metrics))
      save = step % config.checkpoint_every_steps == 0 or step == num_steps
      if save or step % config.log_every_steps == 0:
        pending = jax.device_get(pending)
        _raise_if_nonfinite(pending, manager, workdir, stage)
        summary = writers.scalar_summary(pending)
        writer.write_scalars(step, {f"{stage}/{k}": v for k, v in summary.items()})
        logging.info("%s %s", checkpoints.STAGE_NAMES[stage],
                     progress.report(step, summary))
        pending = []
      if save:
        checkpoints.check_free_space(manager, state, step, stage)
        manager.save(step, args=ocp.args.StandardSave(state), custom_metadata=record)
    manager.wait_until_finished()
  finally:
    progress.close()
    manager.close()
  return state


def train_stage(
    config: ml_collections.ConfigDict,
    workdir: str,
    stage: str,
    model: Any,
    dataset: data.GroundTruthData,
    writer: writers.MetricWriter,
    mesh: jax.sharding.Mesh,
    frozen: tuple[Any, ...] = (),
    record: dict[str, Any] | None = None,
) -> steps.TrainState:
  """Trains (or resumes) one stage up to `config.<stage>.num_steps`.

  Args:
    config: the run's config.
    workdir: the run directory; the stage's checkpoints go under it.
    stage: "stage1" or "stage2".
    model: the stage, with `init(rng, *frozen)` and
      `loss(params, *frozen, images, rng, step)` (a `DisentanglingVAE` or a
      `MultiStageModel`).
    dataset: the training data.
    writer: where the training curves go.
    mesh: the devices to train on; the returned state is replicated on it.
    frozen: `()` for stage one, `(stage1_params,)` for stage two.
    record: what each checkpoint records of the run, and what a checkpoint
      to resume must match (`checkpoints.run_record`; by default built from
      the config and `frozen`, stage one's step taken as 0).
  """
  init_rng, train_rng, _ = steps.rng_streams(config.seed, _STAGE_NUMBERS[stage])
  iteration = steps.make_train_iteration(
      steps.make_train_step(model.loss), config.batch_size, train_rng, mesh)
  # Initialised from host values: frozen parameters only shape the model.
  state = steps.create_train_state(
      model.init, steps.make_optimizer(
          config[stage].optimizer, model.stage2.update_scales if stage == "stage2" else None),
      init_rng,
      *parallel.to_host(frozen))
  if record is None:
    record = checkpoints.run_record(config, *parallel.to_host(frozen))
  state = parallel.replicate(state, mesh)
  frozen = parallel.replicate(frozen, mesh)
  manager = checkpoints.manager(workdir, stage, config.max_checkpoints_to_keep)
  state = checkpoints.resume(manager, state, workdir, stage, config[stage].num_steps,
                             record)
  dataset = parallel.replicate(dataset, mesh)  # No copy if it already is.
  return _train_loop(config, workdir, stage, state,
                     lambda state: iteration(state, frozen, dataset), manager, writer,
                     record)


# Steps beyond which a CPU run gets a hint to start with a shorter preset
# (the `quick` preset has 8,000; see the README's table of presets).
_CPU_HINT_STEPS = 50_000


def _log_plan(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
              stage_one: str) -> None:
  """Says what the run will do before it starts (a long run on a CPU: how to
  start shorter)."""
  two = config.stage2.family != families.NO_STAGE_TWO
  platform = mesh.devices.flat[0].platform
  logging.info("Plan: stage one %s | stage two %s | batch %d over %d %s device(s).",
               stage_one, f"{config.stage2.family}, {config.stage2.num_steps:,} steps"
               if two else "none", config.batch_size, mesh.size, platform.upper())
  total = (0 if config.stage1.checkpoint else config.stage1.num_steps) + (
      config.stage2.num_steps if two else 0)
  unused = accelerators.unused_message(platform, accelerators.present())
  if unused:
    logging.warning("%s", unused)
  if platform == "cpu" and total >= _CPU_HINT_STEPS:
    logging.warning(
        "%s training steps on a CPU take hours (the README's table of presets gives "
        "measured times). For a first run add :preset=quick to --config.",
        f"{total:,}")


def _train_and_evaluate_stage_two(
    config, workdir, stage_one, eval_stage_one, stage1_params, record, train_data,
    dataset, writer, mesh, compute_dtype, stage1_evaluation,
) -> evaluators.Evaluation | None:
  """Trains stage two on the frozen stage one, then evaluates the whole model.

  `record` is what its checkpoints record (`checkpoints.run_record`).
  """
  start = time.time()
  model = multi_stage.MultiStageModel.from_config(config, stage_one, compute_dtype)
  state = train_stage(config, workdir, "stage2", model, train_data, writer, mesh,
                      frozen=(stage1_params,), record=record)
  logging.info("Stage two trained in %.1f s.", time.time() - start)
  params = {"stage1": stage1_params, "stage2": parallel.to_host(state.params)}
  stage2_step = int(state.step)
  del state
  if not parallel.is_main_process():
    return None
  evaluation = evaluators.multi_stage.evaluate(
      config, dataset, multi_stage.MultiStageModel.from_config(config, eval_stage_one),
      params, stage2_step, stage1_evaluation.active, stage1_evaluation.scores.get("mig"))
  writers.write_evaluation(workdir, writer, evaluation)
  return evaluation


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    stage_one: stage_one_lib.StageOne | None = None,
    stage1_params: Any = None,
) -> dict[str, Any]:
  """Trains stage one and stage two in `workdir` (resuming), then evaluates.

  Stage one is, in this order: `stage_one` with its `stage1_params` when
  given (any disentangler, e.g. a user's own Flax networks; stage two's
  checkpoints record their digest, and resuming on others is refused); the checkpoint
  `config.stage1.checkpoint` names (a run of this library, or a PyTorch
  checkpoint); otherwise it is trained here. Stage two
  (`config.stage2.family`, unless "none") is then trained on it, frozen.
  Training runs data-parallel over every device of every host (`parallel`);
  with several processes, the first one writes the summaries and runs the
  evaluation. Returns the evaluation metrics, also written to
  `workdir/metrics.json` (an empty dict in the other processes).
  """
  # --- Validate the config and the work directory, before anything slow.
  configuration.validate(config)
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh.size, "config.batch_size")
  # Several processes sharing a work directory must train one config.
  parallel.assert_same_in_all_processes(
      int(run_directory.fingerprint(config), 16), "configs")
  run_directory.check_workdir(config, workdir)
  compute_dtype = steps.COMPUTE_DTYPES[config.compute_dtype]

  # --- Data: one copy on every device. Training uses them all, the
  # evaluation this process's first replica (no second copy on that device).
  train_data = parallel.replicate(data.get_dataset(config.data), mesh)
  dataset = parallel.local_replica(train_data)
  image_shape = dataset.observation_shape
  parallel.check_batch_fits(config.batch_size, image_shape, mesh.size, "config.batch_size")

  # --- Stage one: given, loaded or to be trained. Checked before the run
  # directory is created or bound.
  stage_one_lib.check_given(stage_one, stage1_params, image_shape, config)
  given = stage_one is not None
  if not given:
    stage_one = stage_one_lib.DisentanglingVAE.from_config(
        config.stage1, image_shape, dataset.num_images, compute_dtype)
  stage1_step = 0  # A given stage one's; a loaded one's is its checkpoint's.
  if config.stage1.checkpoint:
    stage1_params, stage1_step = checkpoints.load_stage_one(config, stage_one)
  # A stage trained beyond its num_steps, or under another config or on another
  # stage one (known here unless it trains in this run), is refused before
  # anything is written.
  stage1_record = checkpoints.run_record(config)
  stage2_record = checkpoints.run_record(config, stage1_params, stage1_step)
  if not (given or config.stage1.checkpoint):
    checkpoints.check_resumable(workdir, "stage1", config.stage1.num_steps, stage1_record)
  if config.stage2.family != families.NO_STAGE_TWO:
    checkpoints.check_resumable(workdir, "stage2", config.stage2.num_steps, stage2_record)
  _log_plan(config, mesh, "given from Python" if given else
            f"loaded from {config.stage1.checkpoint} (step {stage1_step})"
            if config.stage1.checkpoint else f"{config.stage1.num_steps:,} steps")
  # The library's networks are evaluated in float32, whatever they trained in.
  eval_stage_one = stage_one
  if not given and compute_dtype != jnp.float32:
    eval_stage_one = stage_one_lib.DisentanglingVAE.from_config(
        config.stage1, image_shape, dataset.num_images)

  # --- From here on the run writes to its directory, which one process (the
  # first of a multi-host job) holds locked. A full or read-only disk stops it
  # in one line, its complete checkpoints kept.
  main_process = parallel.is_main_process()
  with (run_directory.locked(workdir, enabled=main_process),
        run_directory.storage_errors_reported(workdir)):
    if main_process:
      run_directory.bind_workdir(config, workdir)
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
        state = train_stage(config, workdir, "stage1", stage_one, train_data, writer,
                            mesh, record=stage1_record)
        stage1_params, stage1_step = parallel.to_host(state.params), int(state.step)
        stage2_record = checkpoints.run_record(config, stage1_params, stage1_step)
        del state  # Frees the replicas and the optimizer state.
        logging.info("Stage one trained in %.1f s.", time.time() - start)

      # --- Evaluate stage one: on one device of the first process, on host
      # copies of the parameters; the other processes go on to stage two and
      # wait for it at stage two's first step.
      evaluations = []
      if main_process:
        evaluations.append(evaluators.stage_one.evaluate(
            config, dataset, eval_stage_one, stage1_params, stage1_step))
        writers.write_evaluation(workdir, writer, evaluations[-1])

      # --- Stage two on the frozen stage one, and the multi-stage evaluation.
      if config.stage2.family != families.NO_STAGE_TWO:
        multi = _train_and_evaluate_stage_two(
            config, workdir, stage_one, eval_stage_one, stage1_params, stage2_record,
            train_data, dataset, writer, mesh, compute_dtype,
            evaluations[0] if main_process else None)
        evaluations += [multi] if multi else []

    # --- Write metrics.json, once: every evaluation's scores.
    results = writers.write_metrics(workdir, evaluations) if main_process else {}
  parallel.sync_processes("msdr_jax: evaluation done")
  return results
