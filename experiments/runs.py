"""What every study shares: resumable runs and the study's progress.

A study is many runs of `train.train_and_evaluate`, each in its own work
directory, exactly as `msdr_jax.main` runs them. A run whose evaluation
finished is reused, so an interrupted study resumes where it stopped when its
command is rerun; a run directory that a rerun could only corrupt is refused.
"""

from __future__ import annotations

import json
import time

from absl import logging
from etils import epath
import ml_collections

from msdr_jax import configuration
from msdr_jax import families
from msdr_jax import pytorch_import
from msdr_jax import run_directory
from msdr_jax import train
from msdr_jax import writers

# A squared error per image below this is an exact reconstruction: it is
# less than one 8-bit grey level in a single pixel ((1/255)^2 = 1.5e-5).
EXACT_MSE = 1e-6


def stage_one_step(config: ml_collections.ConfigDict) -> int:
  """The step a run records for its stage one: 0 for an imported checkpoint."""
  if config.stage1.checkpoint and pytorch_import.is_pytorch_checkpoint(
      config.stage1.checkpoint):
    return 0
  return config.stage1.num_steps


def finished_metrics(config: ml_collections.ConfigDict, workdir: epath.Path):
  """The metrics of a finished run in `workdir`, or None if it must (re)run.

  Refuses (`run_directory.RunDirectoryError`) a directory of another config,
  and a stage two that a rerun could only corrupt: one trained on another
  stage one, or beyond the study's stage-two steps.
  """
  run_directory.check_workdir(config, str(workdir))
  path = workdir / "metrics.json"
  if not path.exists():
    return None
  metrics = json.loads(path.read_text())
  stage1_steps, stage2_steps = stage_one_step(config), config.stage2.num_steps
  if config.stage2.family == families.NO_STAGE_TWO:
    return metrics if metrics.get("step") == stage1_steps else None
  # A stage-two run records the step of the stage one it was trained on
  # (its stage-one evaluation is written before stage two trains).
  if metrics.get("step") != stage1_steps:
    raise run_directory.RunDirectoryError(
        f"{workdir} holds a stage two trained on stage one at step "
        f"{metrics.get('step')}, but the study's stage one now has {stage1_steps} "
        f"steps. Delete {workdir} to retrain it on the new stage one, or use "
        "another --workdir.")
  trained = metrics.get("stage2_step")
  if trained is not None and trained > stage2_steps:
    raise run_directory.RunDirectoryError(
        f"{workdir} holds a stage two trained for {trained} steps, more than the "
        f"study's {stage2_steps}. Pass --stage2_steps={trained}, or use another "
        "--workdir.")
  return metrics if trained == stage2_steps else None


def run_or_load(config: ml_collections.ConfigDict,
                workdir: epath.Path) -> tuple[dict, float | None]:
  """(metrics, seconds) of the run: trained and evaluated unless finished.

  `seconds` is None for a finished run reused as it is.
  """
  metrics = finished_metrics(config, workdir)
  if metrics is not None:
    logging.info("%s is finished; reusing its metrics.json.", workdir)
    return metrics, None
  start = time.time()
  metrics = train.train_and_evaluate(config, str(workdir))
  return metrics, time.time() - start


class StudyProgress:
  """Runs done, elapsed time and the study's ETA, for the log."""

  def __init__(self, num_runs: int):
    self._num_runs, self._done, self._start = num_runs, 0, time.time()
    self._seconds_run = 0.0
    self._runs_timed = 0

  def finished(self, name: str, seconds: float | None) -> None:
    self._done += 1
    if seconds is not None:  # Reused runs say nothing about the time of the rest.
      self._seconds_run += seconds
      self._runs_timed += 1
    left = self._num_runs - self._done
    eta = left * self._seconds_run / max(self._runs_timed, 1)
    logging.info("Study: run %d/%d done (%s, %s); elapsed %s, ETA %s.",
                 self._done, self._num_runs, name,
                 "reused" if seconds is None else f"{seconds:.0f} s",
                 writers.format_duration(time.time() - self._start),
                 writers.format_duration(eta))


def study_runner(configs, train: bool = True):
  """`run(config, directory, label) -> (metrics, seconds)` for a study's runs.

  Validates every config first (every mistake before hours of training).
  `run` trains and evaluates a run unless it finished (`run_or_load`) and
  logs the study's progress; with `train=False` it runs nothing and returns
  the finished run's metrics, or None.
  """
  configs = list(configs)
  for config in configs:
    configuration.validate(config)
  progress = StudyProgress(len(configs))

  def run(config: ml_collections.ConfigDict, directory: epath.Path, label: str):
    if not train:
      return finished_metrics(config, directory), None
    metrics, seconds = run_or_load(config, directory)
    progress.finished(label, seconds)
    return metrics, seconds

  return run
