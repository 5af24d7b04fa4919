"""What a run shows: TensorBoard scalars and images, evaluation figures, progress."""

from __future__ import annotations

import logging as std_logging
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorboardX

from msdr_jax import run_directory
from msdr_jax import visualize


class _LibraryLogFilter(std_logging.Filter):
  """Keeps orbax's chatter out of the training log (INFO on every save,
  warnings about read-only managers and items it was not asked to restore),
  and the tracebacks its background threads log when the disk is full or
  read-only: the run reports that in one line
  (`run_directory.storage_errors_reported`)."""

  def filter(self, record):
    from_library = "/orbax/" in record.pathname or record.name == "asyncio"
    if not from_library:
      return True
    if record.levelno < std_logging.ERROR:
      return False
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    return not run_directory.is_storage_error_text(text)


def filter_library_logs() -> None:
  """Filters libraries' records from absl's log (`_LibraryLogFilter`)."""
  logging.get_absl_handler().addFilter(_LibraryLogFilter())
  std_logging.getLogger("asyncio").addFilter(_LibraryLogFilter())


class MetricWriter:
  """TensorBoard event files in `logdir` (readable by `tensorboard --logdir`).

  With `enabled=False` (the processes of a multi-host run but the first)
  nothing is written.
  """

  def __init__(self, logdir: str, enabled: bool = True):
    self._writer = tensorboardX.SummaryWriter(logdir=str(logdir)) if enabled else None

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), global_step=step)
    self._writer.flush()

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """`image` is [H, W] or [H, W, C] with values in [0, 1]."""
    if self._writer is None:
      return
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
      image = image[..., None]
    self._writer.add_image(name, image, global_step=step, dataformats="HWC")
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def write_evaluation(workdir: str, writer: MetricWriter, evaluation: Any) -> None:
  """Saves an `evaluators.Evaluation`: its figures as `<name>.png` in `workdir`
  and in TensorBoard, its float scores as `eval/<key>` scalars."""
  for name, grid in evaluation.figures.items():
    visualize.save_png(epath.Path(workdir) / f"{name}.png", grid)
    writer.write_image(evaluation.step, f"{evaluation.tag}/{name}", grid)
  writer.write_scalars(evaluation.step, {
      f"eval/{key}": value for key, value in evaluation.scores.items()
      if isinstance(value, float)})


def write_metrics(workdir: str, evaluations: Sequence[Any]) -> dict[str, Any]:
  """Writes every evaluation's scores to `workdir/metrics.json`, once; returns them.

  With them, under "provenance", the command and the package versions that
  computed them (`run_directory.provenance`).
  """
  results = {key: value for e in evaluations for key, value in e.scores.items()}
  results["provenance"] = run_directory.provenance()
  run_directory.write_json(epath.Path(workdir) / run_directory.METRICS_FILENAME, results)
  return results


def scalar_summary(
    step_metrics: Sequence[tuple[int, Mapping[str, Any]]],
) -> dict[str, float]:
  """Averages per-step metrics over a logging window.

  Vector metrics (e.g. the KL of each latent) become one scalar per entry,
  `name/0`, `name/1`, ...
  """
  scalars = {}
  for name in step_metrics[0][1]:
    mean = np.mean([np.asarray(m[name]) for _, m in step_metrics], axis=0)
    if mean.ndim == 0:
      scalars[name] = float(mean)
    else:
      for i, value in enumerate(mean.reshape(-1)):
        scalars[f"{name}/{i}"] = float(value)
  return scalars


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  if minutes:
    return f"{minutes}m{seconds:02d}s"
  return f"{seconds}s"


_LEADING_TERMS = ("loss", "recon", "kl", "mi", "tc", "dim_kl")


class Progress:
  """A stage's progress: log lines, an early estimate, a live display.

  `report` makes the log line of a logging window (steps/s, images/s, ETA).
  `tick`, called every step with host time only (no device synchronisation),
  logs once, after the first `ESTIMATE_AFTER_S` seconds of timed steps, how
  long the stage will take, and refreshes a live line every `REFRESH_S`
  seconds where someone watches: in place on a terminal's stderr, or as an
  updated display in a notebook. Log files get the log lines only.
  """

  ESTIMATE_AFTER_S = 10.0
  REFRESH_S = 2.0

  def __init__(self, num_steps: int, start_step: int, batch_size: int, name: str = "",
               live: Callable[[str], None] | None = None):
    self._num_steps = num_steps
    self._batch_size = batch_size
    self._name = name
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._live = live
    self._timed_from: tuple[int, float] | None = None  # After the compiling step.
    self._estimated = False
    self._last_refresh = 0.0
    self._loss = None

  def report(self, step: int, summary: Mapping[str, float]) -> str:
    """One log line from a `scalar_summary` (per-latent entries left out)."""
    if self._live is not None:
      self._live("")  # The log line goes on a line of its own.
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    self._loss = summary.get("loss", self._loss)
    eta = (self._num_steps - step) / max(rate, 1e-9)
    scalars = [name for name in summary if "/" not in name]
    ordered = [n for n in _LEADING_TERMS if n in scalars]
    ordered += sorted(set(scalars) - set(ordered))
    terms = " ".join(f"{name} {summary[name]:.3f}" for name in ordered)
    width = len(str(self._num_steps))
    return (
        f"step {step:>{width}}/{self._num_steps} | {terms} | "
        f"{rate:.2f} steps/s ({rate * self._batch_size:.0f} img/s) | "
        f"ETA {format_duration(eta)}"
    )

  def tick(self, step: int) -> None:
    """Marks step `step` dispatched: the early estimate and the live line."""
    now = time.perf_counter()
    if self._timed_from is None:
      self._timed_from = (step, now)
      self._last_refresh = now  # A rate needs a few seconds of steps.
      return
    first_step, start = self._timed_from
    if step == first_step:
      return
    rate = (step - first_step) / max(now - start, 1e-9)
    remaining = format_duration((self._num_steps - step) / rate)
    if not self._estimated and now - start >= self.ESTIMATE_AFTER_S:
      self._estimated = True
      logging.info("%s: %.2f steps/s over its first %d timed steps; about %s to go "
                   "(%d steps).", self._name, rate, step - first_step, remaining,
                   self._num_steps - step)
    if self._live is not None and now - self._last_refresh >= self.REFRESH_S:
      self._last_refresh = now
      loss = "" if self._loss is None else f" | loss {self._loss:.3f}"
      self._live(f"{self._name} step {step}/{self._num_steps}{loss} | "
                 f"{rate:.2f} steps/s | ETA {remaining}")

  def close(self) -> None:
    if self._live is not None:
      self._live("")


def live_display() -> Callable[[str], None] | None:
  """Where a live progress line goes: a notebook's updated output, a terminal's
  stderr rewritten in place, or nowhere (a log file, a pipe)."""
  shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
  if shell is not None and "ipykernel" in sys.modules:
    from IPython import display  # pylint: disable=g-import-not-at-top
    handle = display.display(display.Pretty(""), display_id=True)
    return lambda line: handle.update(display.Pretty(line))
  if sys.stderr.isatty():
    def rewrite(line):
      sys.stderr.write("\r\033[K" + line)  # Back to the line's start, cleared.
      sys.stderr.flush()
    return rewrite
  return None
