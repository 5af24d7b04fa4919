"""Checkpoints: orbax managers for a run's two stages, and loading a stage.

A run directory holds each stage's training states (`TrainState`: step,
parameters, optimizer state) in its own orbax directory:

  workdir/checkpoints/<step>/          stage one
  workdir/checkpoints_stage2/<step>/   stage two

Saving is asynchronous (`manager`); resuming restores the latest state into
the structure of a freshly created one (`resume`); `load_stage_one` and
`load_stage_two` give the parameters of a finished stage to another run, the
evaluation or a notebook. `load_stage_one` also reads PyTorch checkpoints
(`pytorch_import`).

Every checkpoint carries its run's record (`run_record`, orbax's per-step
custom metadata): the config's identity and, for stage two, the digest and
step of the stage one it was trained on. Resuming or evaluating a
checkpoint under another config or on another stage one is refused.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import shutil
import sys
import traceback
from typing import Any, Callable, Iterator, NamedTuple

from absl import logging
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from msdr_jax import configuration
from msdr_jax import data
from msdr_jax import families
from msdr_jax import multi_stage
from msdr_jax import pytorch_import
from msdr_jax import run_directory
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps
from msdr_jax import torch_checkpoint

# Each stage's checkpoint directory inside a run directory.
DIRECTORIES = {"stage1": "checkpoints", "stage2": "checkpoints_stage2"}
STAGE_NAMES = {"stage1": "stage one", "stage2": "stage two"}


def manager(workdir: str, stage: str, max_to_keep: int) -> ocp.CheckpointManager:
  """The checkpoint manager of `stage` ("stage1" or "stage2") in `workdir`.

  Asynchronous: `save` returns once the state is copied off the devices
  (before its buffers are donated to the next step) and writes it in the
  background; the training loop waits for it only before returning or
  raising.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True)
  # One item per checkpoint, named here: left to infer it from the step
  # directories, a manager that has met an empty one refuses every other.
  return ocp.CheckpointManager(
      epath.Path(workdir).absolute() / DIRECTORIES[stage], options=options,
      item_handlers=ocp.StandardCheckpointHandler())


def check_free_space(manager: ocp.CheckpointManager, state: Any, step: int,
                     stage: str) -> None:
  """Refuses to start a save that the disk has no room for.

  A save that runs out of space fails inside orbax's background threads,
  which leave a half-written checkpoint and a screen of tracebacks; checked
  first, the run stops in one line with its complete checkpoints intact.
  The size is the state's bytes plus a margin for orbax's metadata.
  """
  needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state)) * 1.1 + 2**20
  try:
    free = shutil.disk_usage(manager.directory).free
  except (OSError, NotImplementedError, TypeError):
    return  # Remote storage: nothing to measure.
  if needed > free:
    latest = manager.latest_step()
    raise run_directory.RunDirectoryError(
        f"Cannot write {STAGE_NAMES[stage]}'s checkpoint {step} in {manager.directory}: "
        f"it needs {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free. Free "
        "space, then rerun the same command to resume from "
        + (f"its checkpoint {latest}" if latest is not None else "the start")
        + "; or use another --workdir.")


def run_record(
    config: ml_collections.ConfigDict, stage1_params: Any = None, stage1_step: int = 0
) -> dict[str, Any]:
  """What a checkpoint records of its run: the config, and stage two's stage one.

  Also the command and package versions that wrote it (`provenance`).

  With `stage1_params` (a stage-two checkpoint's record) it includes their
  digest and step; without (stage one's, or a check made before stage one is
  known) only the config is compared.
  """
  record = {"config": run_directory.run_identity(config),
            "provenance": run_directory.provenance()}  # Kept, not compared.
  if stage1_params is not None:
    record["stage1"] = {"params_sha256": stage_one_lib.params_digest(stage1_params),
                        "step": int(stage1_step)}
  return record


def _stored_record(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The record checkpoint `step` was saved with ({} when it has none or it is
  unreadable: its restore then decides)."""
  try:
    return dict(manager.metadata(step).custom_metadata or {})
  except Exception:  # pylint: disable=broad-except
    return {}


def _check_record(manager: ocp.CheckpointManager, step: int, stage: str,
                  record: dict[str, Any] | None) -> None:
  difference = record and run_directory.record_difference(
      _stored_record(manager, step), record)
  if difference:
    raise run_directory.RunDirectoryError(
        f"The {STAGE_NAMES[stage]} checkpoint {step} in {manager.directory} "
        f"{difference}. Use another --workdir, or the config and stage one it was "
        "trained with.")


def _first_sentence(error: Exception) -> str:
  return (str(error).splitlines() or [type(error).__name__])[0].split(". ")[0][:200]


def _set_aside(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  """Renames checkpoint `step` to `<step>.unreadable[-n]`; it is never deleted."""
  path = epath.Path(manager.directory) / str(step)
  target, n = path.with_name(f"{step}.unreadable"), 0
  while target.exists():
    n += 1
    target = path.with_name(f"{step}.unreadable-{n}")
  path.rename(target)
  manager.reload()
  return target


def _from_orbax(exc_traceback) -> bool:
  return "/orbax/" in "".join(traceback.format_tb(exc_traceback))


@contextlib.contextmanager
def _abandoned_reads_quiet() -> Iterator[None]:
  """Drops the reports of orbax's reads abandoned when a restore fails.

  A damaged file fails one read; orbax then abandons the others. Python
  reports each abandoned coroutine as an "Exception ignored" traceback when
  it is collected (collected here, inside this context), and TensorStore's
  threads, finishing such reads after orbax's event loop has closed, report
  "Event loop is closed" errors, possibly much later
  (`_drop_closed_loop_reports`). The failure itself is reported in one line
  by the caller.
  """
  _drop_closed_loop_reports()
  previous = sys.unraisablehook

  def unraisable_hook(unraisable):
    if not _from_orbax(unraisable.exc_traceback):
      previous(unraisable)

  sys.unraisablehook = unraisable_hook
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = previous  # Still dropping closed-loop reports.


def _drop_closed_loop_reports() -> None:
  """From now on, drops "Event loop is closed" errors of TensorStore's callbacks.

  TensorStore reports an exception of a completion callback as unraisable
  (`sys.unraisablehook`); only that error, raised by `asyncio`'s closed-loop
  check, is dropped.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_reports", False):
    return

  def unraisable_hook(unraisable):
    frames = traceback.extract_tb(unraisable.exc_traceback)
    if not (unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed"
            and frames and frames[-1].name == "_check_closed"):
      previous(unraisable)

  unraisable_hook.drops_closed_loop_reports = True
  sys.unraisablehook = unraisable_hook


def _restore_newest_readable(
    manager: ocp.CheckpointManager,
    abstract: Any,
    set_aside: bool,
    mismatch_error: Callable[[int, str], Exception],
    stage: str,
    record: dict[str, Any] | None,
) -> Any | None:
  """The newest checkpoint that can be read, restored into `abstract`.

  None when there is no checkpoint. A checkpoint whose parameter shapes
  differ from `abstract`'s raises `mismatch_error(step, first difference)`,
  one whose record differs from `record` a `RunDirectoryError`. Newer ones
  that cannot be read are skipped with a warning and, with `set_aside`,
  renamed (`_set_aside`) once an older one has been read; when none can be
  read, nothing is renamed and the error names the directory.
  """
  unreadable = []
  for step in sorted(manager.all_steps(), reverse=True):
    _check_record(manager, step, stage, record)
    try:
      stored_params = manager.item_metadata(step).get("params")
    except Exception:  # pylint: disable=broad-except
      stored_params = None  # Unreadable metadata: the restore below decides.
    mismatch = stored_params is not None and _shape_mismatch(abstract.params, stored_params)
    if mismatch:
      raise mismatch_error(step, mismatch)
    try:
      with _abandoned_reads_quiet():
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    # TensorStore reports damaged files as a bare Exception.
    except Exception as e:  # pylint: disable=broad-except
      unreadable.append((step, _first_sentence(e)))
      continue
    for bad_step, reason in unreadable:
      what = f"set aside as {_set_aside(manager, bad_step)}" if set_aside else "skipped"
      logging.warning("Checkpoint %d in %s cannot be read (%s); %s, using step %d.",
                      bad_step, manager.directory, reason, what, step)
    return restored
  if unreadable:
    raise run_directory.RunDirectoryError(
        f"No checkpoint in {manager.directory} can be read (step {unreadable[0][0]}: "
        f"{unreadable[0][1]}). Move the directory away to start over, or use "
        "another --workdir.")
  return None


def restore_or_create_state(
    manager: ocp.CheckpointManager, state: steps.TrainState, stage: str,
    record: dict[str, Any] | None = None,
) -> steps.TrainState:
  """The newest readable checkpoint, restored into the structure of `state`.

  `state` itself when there is none. A checkpoint of another model is refused
  (the first parameter whose shape differs, both shapes named), as is one
  whose record differs from `record` (`run_record`). One that cannot be read
  (truncated, overwritten, files missing) is renamed to `<step>.unreadable`
  (never deleted) with a warning, and the one before it is tried.
  """
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
  restored = _restore_newest_readable(
      manager, abstract, set_aside=True,
      mismatch_error=lambda step, mismatch: run_directory.RunDirectoryError(
          f"Checkpoint {step} in {manager.directory} does not match this config's "
          f"model ({mismatch}). Use another --workdir."),
      stage=stage, record=record)
  return state if restored is None else restored


def latest_saved_step(workdir: str, stage: str) -> int | None:
  """The newest complete checkpoint of `stage` in `workdir`, from its listing.

  Orbax writes a checkpoint under a temporary name and renames it to its step
  when it is complete, so only all-digit names count.
  """
  directory = epath.Path(workdir) / DIRECTORIES[stage]
  if not directory.is_dir():
    return None
  return max((int(p.name) for p in directory.iterdir() if p.name.isdigit()), default=None)


def _beyond_num_steps(workdir: str, stage: str, step: int, num_steps: int) -> Exception:
  return run_directory.RunDirectoryError(
      f"{workdir} holds {STAGE_NAMES[stage]} trained to step {step}, beyond "
      f"config.{stage}.num_steps={num_steps}. Use "
      f"--config.{stage}.num_steps={step} (or more), or another --workdir.")


def check_resumable(workdir: str, stage: str, num_steps: int,
                    record: dict[str, Any]) -> None:
  """Refuses, before anything is written, a stage trained beyond `num_steps`,
  or one whose newest checkpoint's record differs from `record`."""
  latest = latest_saved_step(workdir, stage)
  if latest is None:
    return
  if latest > num_steps:
    raise _beyond_num_steps(workdir, stage, latest, num_steps)
  manager = ocp.CheckpointManager(
      epath.Path(workdir).absolute() / DIRECTORIES[stage],
      options=ocp.CheckpointManagerOptions(create=False, read_only=True),
      item_handlers=ocp.StandardCheckpointHandler())
  try:
    _check_record(manager, latest, stage, record)
  finally:
    manager.close()


def resume(
    manager: ocp.CheckpointManager, state: steps.TrainState, workdir: str, stage: str,
    num_steps: int, record: dict[str, Any],
) -> steps.TrainState:
  """Restores the latest readable checkpoint; refuses one beyond `num_steps`
  or one whose record differs from `record`.

  On a refusal `manager` is closed (no background thread outlives the error).
  """
  try:
    state = restore_or_create_state(manager, state, stage, record)
    start_step = int(state.step)
    if start_step > num_steps:
      raise _beyond_num_steps(workdir, stage, start_step, num_steps)
  except BaseException:
    manager.close()
    raise
  if start_step:
    logging.info("Resumed %s from the checkpoint at step %d.", STAGE_NAMES[stage],
                 start_step)
  return state


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


def _on_first_local_device(abstract_state: Any) -> Any:
  """Shapes and dtypes placed on this process's first device, whatever devices
  wrote the checkpoint."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_state)


def load_stage_one(
    config: ml_collections.ConfigDict, stage_one: stage_one_lib.DisentanglingVAE
) -> tuple[Any, int]:
  """(params, step) of `stage_one` from the checkpoint `config.stage1.checkpoint`.

  The path is a stage-one work directory or its `checkpoints/` directory
  (the latest checkpoint is used), or a PyTorch checkpoint of the Burgess et
  al. architecture: a `torch.save` file or a directory holding `model.pt`
  (`pytorch_import`; its step is 0). A checkpoint of another model is
  refused with the first parameter whose shape differs, both shapes named; an
  unreadable one in one line.
  """
  checkpoint = config.stage1.checkpoint
  if pytorch_import.is_pytorch_checkpoint(checkpoint):
    try:
      params = pytorch_import.load_params(
          checkpoint, config.stage1.model, stage_one.image_shape)
    except (torch_checkpoint.CheckpointError,
            pytorch_import.IncompatibleCheckpointError) as e:
      raise run_directory.RunDirectoryError(str(e)) from None
    return params, 0
  path = epath.Path(checkpoint).absolute()
  if (path / DIRECTORIES["stage1"]).is_dir():
    path = path / DIRECTORIES["stage1"]
  fix = ("Pass a stage-one work directory (or its checkpoints/ directory) or a "
         "PyTorch checkpoint as --config.stage1.checkpoint, or leave it empty to "
         "train stage one.")
  if not path.is_dir():
    raise run_directory.RunDirectoryError(
        f"Stage-one checkpoint {checkpoint} does not exist. {fix}")
  manager = ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(create=False, read_only=True),
      item_handlers=ocp.StandardCheckpointHandler())
  state = jax.eval_shape(functools.partial(
      steps.create_train_state, stage_one.init,
      steps.make_optimizer(config.stage1.optimizer)), jax.random.PRNGKey(0))
  abstract = _on_first_local_device(state)
  model = config.stage1.model
  not_this_model = lambda step, mismatch: run_directory.RunDirectoryError(
      f"Stage-one checkpoint {path} (step {step}) is not a model of this "
      f"config (architecture {model.architecture}, latent_dim "
      f"{model.latent_dim}, images {'x'.join(map(str, stage_one.image_shape))}): "
      f"{mismatch}. Set --config.stage1.model.* and --config.data.* to the "
      "values the checkpoint was trained with.")
  try:
    restored = _restore_newest_readable(manager, abstract, False, not_this_model,
                                        "stage1", record=None)
  finally:
    manager.close()
  if restored is None:
    raise run_directory.RunDirectoryError(f"{path} holds no stage-one checkpoint. {fix}")
  step = int(restored.step)
  return restored.params, step


def load_stage_two(
    config: ml_collections.ConfigDict,
    workdir: str,
    model: multi_stage.MultiStageModel,
    stage1_params: Any,
    stage1_step: int,
) -> tuple[Any, int] | None:
  """(params, step) of the latest stage-two checkpoint in `workdir`, or None.

  Refused when the checkpoint was trained under another config or on another
  stage one than `stage1_params` (at `stage1_step`).
  """
  path = epath.Path(workdir).absolute() / DIRECTORIES["stage2"]
  if not path.is_dir():
    return None
  state = jax.eval_shape(functools.partial(
      steps.create_train_state, model.init,
      steps.make_optimizer(config.stage2.optimizer, model.stage2.update_scales)),
      jax.random.PRNGKey(0), stage1_params)
  manager = ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(create=False, read_only=True),
      item_handlers=ocp.StandardCheckpointHandler())
  try:
    restored = _restore_newest_readable(
        manager, _on_first_local_device(state), False,
        lambda step, mismatch: run_directory.RunDirectoryError(
            f"Stage-two checkpoint {step} in {path} does not match this config's "
            f"model ({mismatch})."),
        "stage2", run_record(config, stage1_params, stage1_step))
  finally:
    manager.close()
  if restored is None or not int(restored.step):
    return None
  return restored.params, int(restored.step)


class Run(NamedTuple):
  """A finished (or interrupted) run, loaded from its directory (`load_run`).

  Attributes:
    config: the config the run recorded (`config.json`).
    dataset: its data set.
    stage_one: its stage one (a `stage_one.DisentanglingVAE`).
    model: the combined model (`multi_stage.MultiStageModel`), or the stage
      one alone when the run has no stage two (yet).
    params: `{"stage1": ..., "stage2": ...}` for the combined model, stage
      one's parameters for stage one alone.
    steps: `{"stage1": step, "stage2": step}` of the loaded checkpoints.
  """

  config: ml_collections.ConfigDict
  dataset: data.GroundTruthData
  stage_one: stage_one_lib.DisentanglingVAE
  model: multi_stage.MultiStageModel | stage_one_lib.DisentanglingVAE
  params: Any
  steps: dict[str, int]


def load_run(workdir: str, config: ml_collections.ConfigDict | None = None) -> Run:
  """Loads the run in `workdir`: its config, data, model and latest parameters.

  `config` replaces the recorded one (e.g. with other evaluation settings);
  it must be the same run. Checkpoints are opened read-only; damaged ones are
  skipped for the newest readable one. A stage one that was given from
  Python is not in the directory and cannot be loaded from it.
  """
  config = run_directory.load_run_config(workdir) if config is None else config
  configuration.validate(config)
  dataset = data.get_dataset(config.data)
  if not config.stage1.checkpoint and not (
      epath.Path(workdir) / DIRECTORIES["stage1"]).is_dir():
    raise run_directory.RunDirectoryError(
        f"{workdir} holds no stage-one checkpoint (no {DIRECTORIES['stage1']}/ "
        "directory): train the run with msdr_jax.main first (a stage one given "
        "from Python is not kept in the run directory).")
  stage_one = stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, dataset.observation_shape)
  loading = config.copy_and_resolve_references()
  loading.stage1.checkpoint = config.stage1.checkpoint or workdir
  stage1_params, stage1_step = load_stage_one(loading, stage_one)
  stage_two = None
  if config.stage2.family != families.NO_STAGE_TWO:
    model = multi_stage.MultiStageModel.from_config(config, stage_one)
    stage_two = load_stage_two(config, workdir, model, stage1_params, stage1_step)
  if stage_two is None:
    return Run(config, dataset, stage_one, stage_one, stage1_params,
               {"stage1": stage1_step})
  params, step = stage_two
  return Run(config, dataset, stage_one, model, {"stage1": stage1_params, "stage2": params},
             {"stage1": stage1_step, "stage2": step})
