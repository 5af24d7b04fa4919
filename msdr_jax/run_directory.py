"""Run directories: what ties a work directory to the run that made it.

A run directory is tied to the config that created it: `config.json` is
written on the first start, and a later start with a config that differs in
anything but the *resumable* keys (how long to train, how often to log and
save, how to evaluate) is refused, so one directory never mixes two runs. The
checkpoints carry the same record (`checkpoints`), so the refusal holds even
without `config.json`. One process at a time uses a directory (`locked`).
The evaluation's results go to `metrics.json`, written atomically.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import shutil
import socket
import sys
from typing import Any, Iterator, Mapping

from etils import epath
import ml_collections

from msdr_jax import base_config


class RunDirectoryError(ValueError):
  """The work directory cannot be used for this config."""


# Keys that may change between a run and its resumption.
RESUMABLE_KEYS = (
    "name",
    "stage1.num_steps",
    "stage2.num_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "max_checkpoints_to_keep",
    "eval",
    # Where a loaded data set lives changes speed, not numbers: both
    # placements draw the same batches.
    "data.placement",
    # A TFDS data set is identified by its name and version, not its location.
    "data.data_dir",
)

CONFIG_FILENAME = "config.json"

# Keys added after runs were recorded without them, with the value those runs
# implicitly had. At that value a key is left out of a run's identity, so an
# older run directory still resumes and keeps its default name.
LEGACY_DEFAULTS = {
    "data.source": "procedural",
    "data.data_dir": "",
    "data.path": "",
    "data.placement": "device",
    "compute_dtype": "float32",
    # Family hyperparameters (part of the identity of that family's runs only,
    # `_left_out_as_legacy`).
    "stage2.flow.base": "gaussian",
    "stage2.gmm.assignment": "posterior",
    "stage2.gan.fake_codes": "posterior",
}


METRICS_FILENAME = "metrics.json"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a.b': value} for every leaf of a nested mapping."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, path + "."))
    else:
      flat[path] = value
  return flat


def _is_resumable(key: str) -> bool:
  return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def _identity(flat_config: Mapping[str, Any]) -> dict[str, Any]:
  family = flat_config.get("stage2.family")
  return {k: v for k, v in sorted(flat_config.items())
          if not _is_resumable(k) and not _left_out_as_legacy(k, v, family)}


def _left_out_as_legacy(key: str, value: Any, family: str | None) -> bool:
  """Whether a key stays out of a run's identity: in the section of a
  stage-two family the run does not train (so a family's new or changed
  hyperparameters change no other family's runs), or added later and at the
  value older runs implicitly had."""
  section = key.split(".")
  if (section[0] == "stage2" and len(section) == 3
      and section[1] in base_config.FAMILY_SECTIONS and section[1] != family):
    return True
  return key in LEGACY_DEFAULTS and LEGACY_DEFAULTS[key] == value


def run_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The flattened config without the resumable keys."""
  return _identity(flatten(json.loads(config.to_json())))


def fingerprint(config: ml_collections.ConfigDict) -> str:
  """Short hash of `run_identity`, used to name default work directories."""
  encoded = json.dumps(run_identity(config), sort_keys=True).encode()
  return hashlib.sha256(encoded).hexdigest()[:8]


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """`runs/<config name>-<fingerprint>`: rerunning a command resumes it."""
  return os.path.join("runs", f"{config.name}-{fingerprint(config)}")


def fill_legacy_defaults(config: ml_collections.ConfigDict) -> None:
  """Adds the `LEGACY_DEFAULTS` keys a recorded config lacks, in place."""
  for key, value in LEGACY_DEFAULTS.items():
    *sections, name = key.split(".")
    node = config
    for section in sections:
      node = node[section]
    if name not in node:
      node[name] = value


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises RunDirectoryError if `workdir` holds a run of another config.

  Reads only: call it before slow work (loading a data set) so a mismatch is
  reported at once; `bind_workdir` then records the config.
  """
  path = epath.Path(workdir) / CONFIG_FILENAME
  try:
    if not path.exists():
      return
    theirs = _identity(flatten(json.loads(path.read_text())))
  except (OSError, ValueError) as e:  # Unreadable directory, corrupt JSON.
    raise RunDirectoryError(
        f"Cannot use {path} ({type(e).__name__}: {e}). Use another --workdir."
    ) from e
  _check_same_run(theirs, config, workdir)


def bind_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the config in `workdir`, or checks it matches the recorded one.

  `config.json` keeps the config of the run's first start; resumptions may
  differ from it in the resumable keys only.
  """
  path = epath.Path(workdir) / CONFIG_FILENAME
  try:
    if path.exists():
      theirs = _identity(flatten(json.loads(path.read_text())))
    else:
      path.parent.mkdir(parents=True, exist_ok=True)
      write_json(path, json.loads(config.to_json()))
      return
  except (OSError, ValueError) as e:  # Unwritable directory, corrupt JSON.
    raise RunDirectoryError(
        f"Cannot use {path} ({type(e).__name__}: {e}). Use another --workdir."
    ) from e
  _check_same_run(theirs, config, workdir)


LOCK_FILENAME = "lock"


@contextlib.contextmanager
def locked(workdir: str, enabled: bool = True) -> Iterator[None]:
  """Holds `workdir`'s lock: a second process on the directory is refused.

  An advisory `flock` on `workdir/lock`, which names its holder. The kernel
  releases it when the process ends however it ends (a SIGKILL leaves no
  stale lock). Directories on remote file systems (`gs://...`) are not
  locked. Creates `workdir` if needed.
  """
  if not enabled or "://" in str(workdir):
    yield
    return
  path = epath.Path(workdir) / LOCK_FILENAME
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise _storage_error(workdir, _storage_reason(e) or str(e)) from None
  try:
    try:
      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(descriptor, 500).decode(errors="replace").strip() or "another process"
      raise RunDirectoryError(
          f"{workdir} is in use by {holder}. Wait for it to finish, or use another "
          "--workdir.") from None
    started = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"process {os.getpid()} on {socket.gethostname()} "
              f"(started {started})\n".encode(), 0)
    yield
  finally:
    os.close(descriptor)  # Releases the lock.


def record_difference(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
  """How a checkpoint's record differs from this run's, or None.

  Records are `{"config": run_identity, "stage1": {"params_sha256", "step"}}`
  (`checkpoints.run_record`); only the parts both hold are compared, so a
  checkpoint written before records existed resumes. The stored identity is
  read under today's rules (`_identity`), as a recorded config.json is.
  """
  if "config" in stored and "config" in expected:
    difference = _config_difference(_identity(stored["config"]), expected["config"])
    if difference:
      return f"was trained with another config: {difference}"
  if "stage1" in stored and "stage1" in expected:
    theirs, ours = stored["stage1"], expected["stage1"]
    if theirs["params_sha256"] != ours["params_sha256"]:
      return (f"was trained on another stage one (parameter digest "
              f"{theirs['params_sha256'][:12]} at step {theirs['step']} there, "
              f"{ours['params_sha256'][:12]} at step {ours['step']} here)")
  return None


def _config_difference(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> str | None:
  """'key is X there but Y here (n key(s) differ)' between two run identities."""
  differing = sorted(k for k in theirs.keys() | ours.keys()
                     if theirs.get(k, "<absent>") != ours.get(k, "<absent>"))
  if not differing:
    return None
  key = differing[0]
  return (f"{key} is {theirs.get(key, '<absent>')!r} there but "
          f"{ours.get(key, '<absent>')!r} here ({len(differing)} key(s) differ)")


def _check_same_run(theirs: Mapping[str, Any], config, workdir: str) -> None:
  difference = _config_difference(theirs, run_identity(config))
  if difference:
    raise RunDirectoryError(
        f"{workdir} holds a run with a different config: {difference}. Use another "
        "--workdir, or rerun with the recorded config to resume.")


# The packages whose versions can move a run's numbers (scikit-learn's, the
# disentanglement scores) or its checkpoints.
_RECORDED_PACKAGES = ("msdr_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
                      "numpy", "scikit-learn", "tensorflow-datasets")


def provenance() -> dict[str, Any]:
  """What made a result: the command line and the versions of Python and packages."""
  versions = {"python": platform.python_version()}
  for package in _RECORDED_PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass  # An optional package that is not installed.
  main = getattr(sys.modules.get("__main__"), "__spec__", None)
  program = ["-m", main.name] if main else sys.argv[:1]  # python -m msdr_jax.main ...
  return {"command": shlex.join(["python", *program, *sys.argv[1:]]), "versions": versions}


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run recorded, with defaults for keys added since (eval, data)."""
  path = epath.Path(workdir) / CONFIG_FILENAME
  if not path.exists():
    raise RunDirectoryError(
        f"{workdir} is not a run directory: it has no {CONFIG_FILENAME}. "
        "Pass the --workdir of a run of msdr_jax.main.")
  try:
    recorded = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise RunDirectoryError(f"Cannot read {path} ({type(e).__name__}: {e}).") from e
  eval_config = base_config.eval_config()
  eval_config.update_from_flattened_dict(
      {k: v for k, v in flatten(recorded.pop("eval", {})).items()
       if _has_key(eval_config, k)})
  config = ml_collections.ConfigDict(recorded)
  config.eval = eval_config
  fill_legacy_defaults(config)
  return config


def _has_key(config: ml_collections.ConfigDict, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def write_json(path: epath.PathLike, payload: dict[str, Any]) -> None:
  """Writes `payload` to `path` atomically (a reader sees the old or the new
  file; a failed write leaves neither a partial file nor a changed one)."""
  path = epath.Path(path)
  tmp = path.parent / (path.name + ".tmp")
  try:
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    tmp.replace(path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


# What a full, read-only or forbidden file system makes writes fail with, as
# errno codes (Python's OSError) or their messages (TensorStore's errors,
# which orbax raises as ValueError).
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                   errno.EPERM)
_STORAGE_MESSAGES = tuple(os.strerror(code) for code in _STORAGE_ERRNOS)
# Files that exist only while being written: `write_json`'s, and orbax's
# checkpoints, written under a temporary name until complete.
_PARTIAL_FILES = ("*.tmp", "*.orbax-checkpoint-tmp*")


def _storage_message(text: str) -> str | None:
  """The full, read-only or forbidden disk an error message names, if any."""
  return next((message for message in _STORAGE_MESSAGES if message in text), None)


def is_storage_error_text(text: str) -> bool:
  """Whether an error message says the disk is full, read-only or forbidden."""
  return _storage_message(text) is not None


def _storage_reason(error: BaseException) -> str | None:
  if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
    return os.strerror(error.errno) + (f" ({error.filename})" if error.filename else "")
  return _storage_message(str(error))


def _remove_partial_files(workdir: str) -> None:
  if "://" in str(workdir):
    return  # Remote storage: orbax removes its partial checkpoints on the next start.
  for pattern in _PARTIAL_FILES:
    for path in pathlib.Path(workdir).rglob(pattern):
      try:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
      except OSError:
        pass  # Unremovable on this file system too; a rerun's save replaces it.


@contextlib.contextmanager
def storage_errors_reported(workdir: str) -> Iterator[None]:
  """Turns a write that fails for lack of space or permission into one line.

  The error becomes a `RunDirectoryError` naming `workdir` and the reason,
  and files left half-written are removed; the complete checkpoints and
  results already there are kept, so a rerun resumes from them.
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    reason = _storage_reason(e)
    if reason is None:
      raise
    _remove_partial_files(workdir)
    raise _storage_error(workdir, reason) from None


def _storage_error(workdir: str, reason: str) -> RunDirectoryError:
  return RunDirectoryError(
      f"Cannot write in {workdir}: {reason}. Free space or make it writable, then "
      "rerun the same command to resume from its last complete checkpoint; or use "
      "another --workdir.")
