r"""Trains and evaluates a multi-stage disentangled representation learner.

  python -m msdr_jax.main --config=configs/dsprites.py
  python -m msdr_jax.main --config=configs/dsprites.py:preset=quick \
      --workdir=runs/quick --config.stage1.objective.beta=4

Without --workdir the run goes to runs/<config name>-<config hash>, so the
same command resumes an interrupted run.

Training uses every device JAX sees. On several hosts, start the same command
on each, with --distributed (Cloud TPU pods, SLURM and other clusters JAX
detects) or with the coordinator named explicitly:

  python -m msdr_jax.main --config=configs/dsprites.py \
      --coordinator_address=host0:1234 --num_processes=2 --process_id=0
"""

import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

# JAX-free: a mistaken command line is reported before JAX and the library
# load (`main` imports them).
from msdr_jax import configuration
from msdr_jax import run_directory

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "workdir", None,
    "Directory for checkpoints, logs and results (default: "
    "runs/<config name>-<config hash>).",
)
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file.", lock_config=True
)
flags.mark_flags_as_required(["config"])
flags.DEFINE_bool(
    "distributed", False,
    "Join a multi-host job whose coordinator JAX detects (Cloud TPU pods, "
    "SLURM, Open MPI, Kubernetes).",
)
flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 of a multi-host job (implies --distributed).",
)
flags.DEFINE_integer("num_processes", None, "Processes of the multi-host job.")
flags.DEFINE_integer("process_id", None, "This process's index in the job.")


def _user_errors() -> tuple[type[Exception], ...]:
  """Errors caused by the user's input: reported in one line, without traceback."""
  # pylint: disable=g-import-not-at-top
  from msdr_jax import data
  from msdr_jax import evaluators
  from msdr_jax import parallel
  from msdr_jax import steps
  # pylint: enable=g-import-not-at-top
  return (configuration.ConfigError, run_directory.RunDirectoryError, data.DataError,
          steps.NonFiniteLossError, evaluators.NonFiniteCodesError,
          parallel.DeviceCountError, parallel.ProcessMismatchError)


def _unknown_key(message: str) -> str:
  """"unknown config key 'x'; did you mean "y"?" from ml_collections' message."""
  key = re.search(r"'(\w+)", message)
  suggestion = re.search(r'Did you mean "(\w+)"', message)
  reason = f"unknown config key {key.group(1)!r}" if key else f"unknown config key {message}"
  return reason + (f'; did you mean "{suggestion.group(1)}"?' if suggestion else "")


def _installed_configs(argv: list[str]) -> list[str]:
  """`--config=configs/<file>` read from the installed `configs` package when
  the current directory has no such file (the library installed, not cloned)."""
  resolved = []
  for arg in argv:
    path = arg.removeprefix("--config=").split(":", 1)[0]
    if arg.startswith("--config=configs/") and not os.path.exists(path):
      import configs  # pylint: disable=g-import-not-at-top
      installed = os.path.join(os.path.dirname(configs.__file__), path.removeprefix("configs/"))
      if os.path.exists(installed):
        arg = "--config=" + installed + arg.removeprefix("--config=" + path)
    resolved.append(arg)
  return resolved


def _parse_flags(argv):
  """Parses flags; a bad flag, override or config file is reported in one line."""
  try:
    argv = FLAGS(_installed_configs(argv))
    FLAGS.config.get("name")  # ml_collections defers config-file load errors.
    if len(argv) > 1:
      reason = (f"unexpected argument(s) {argv[1:]}; every setting is a flag, e.g. "
                "--config.stage1.objective.beta=4")
    else:
      return argv
  except flags.Error as e:
    # A failing config file comes wrapped in its traceback: keep its last line.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = lines[-1].split(": ", 1)[-1] if len(lines) > 1 else lines[0]
  except (KeyError, AttributeError) as e:
    if "get_config" in str(e):  # A config file without get_config().
      reason = f"the config file defines no get_config(): {e}"
    else:  # An override of a key the config does not have.
      reason = _unknown_key(str(e.args[0]))
  except SyntaxError as e:  # In the config file.
    reason = f"the config file {e.filename} does not parse: {e.msg} (line {e.lineno})"
  except OSError as e:  # The config file could not be loaded.
    reason = " ".join(line.strip() for line in str(e).splitlines()[-2:])
  print(f"msdr_jax: error: {reason}", file=sys.stderr, flush=True)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  distributed = FLAGS.distributed or FLAGS.coordinator_address
  if not distributed and (FLAGS.num_processes is not None or FLAGS.process_id is not None):
    # Ignoring them would start independent runs writing one directory.
    print("msdr_jax: error: --num_processes and --process_id need "
          "--coordinator_address=HOST:PORT (process 0's address) or --distributed.",
          file=sys.stderr, flush=True)
    sys.exit(2)
  try:
    # Before the config names a directory, and before JAX loads: a mistaken
    # setting is reported at once.
    configuration.validate(config)
  except configuration.ConfigError as e:
    print(f"msdr_jax: error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  workdir = FLAGS.workdir or run_directory.default_workdir(config)
  # pylint: disable=g-import-not-at-top
  import jax
  from msdr_jax import cpu_memory
  from msdr_jax import parallel
  from msdr_jax import train
  from msdr_jax import writers
  # pylint: enable=g-import-not-at-top
  writers.filter_library_logs()
  cpu_memory.reuse_step_memory()  # On a CPU; before JAX creates its CPU client.
  if distributed:
    # Before anything else touches JAX's backends.
    parallel.initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  try:
    logging.info("JAX devices: %s", jax.devices())
    logging.info("Work directory: %s", workdir)
    print(f"msdr_jax: work directory {workdir}", flush=True)
    train.train_and_evaluate(config, workdir)
  except _user_errors() as e:
    print(f"msdr_jax: error: {e}", file=sys.stderr, flush=True)
    # Without the interpreter's shutdown: after a failed checkpoint write,
    # orbax's background threads leave coroutines that it would report as
    # tracebacks. The checkpoint manager has closed; the kernel frees the lock.
    logging.flush()
    sys.stdout.flush()
    os._exit(1)  # pylint: disable=protected-access
  print(f"msdr_jax: results in {workdir}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
