"""End-to-end runs of the real CLI on the tiny preset."""

import json
import pathlib
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest
from tensorboardX.proto import event_pb2

import msdr_jax
from msdr_jax import run_directory

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = "--config=configs/dsprites.py:preset=tiny"
# Long enough to be killed in the middle, short enough for CI.
# MIG alone and no FID: the evaluation's own tests score the rest.
RESUMABLE = (TINY, "--config.stage1.num_steps=120", "--config.stage2.num_steps=60",
             "--config.checkpoint_every_steps=20", "--config.log_every_steps=10",
             "--config.eval.disentanglement.metrics=mig",
             "--config.eval.sample_quality.num_samples=0")


def _cli(*args, **kwargs):
  return subprocess.Popen(
      [sys.executable, "-m", "msdr_jax.main", *args],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _run(*args, timeout=300):
  process = _cli(*args)
  stdout, stderr = process.communicate(timeout=timeout)
  return process.returncode, stdout, stderr


def _read_events(path):
  """Parses a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
  events, data = [], path.read_bytes()
  offset = 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
    offset += 12 + length + 4
  return events


def _final_params(workdir, step, checkpoints="checkpoints"):
  restored = ocp.StandardCheckpointer().restore(
      pathlib.Path(workdir).absolute() / checkpoints / str(step) / "default")
  return restored["params"]


def _kill_when(process, path):
  deadline = time.time() + 300
  while not path.exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  assert process.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  code, stdout, stderr = _run(*RESUMABLE, f"--workdir={workdir}")
  assert code == 0, stderr[-3000:]
  return workdir, stdout, stderr


def test_cli_writes_figures_metrics_and_logs(uninterrupted_run):
  workdir, stdout, stderr = uninterrupted_run
  assert f"work directory {workdir}" in stdout
  assert "steps/s" in stderr and "ETA" in stderr
  assert ("Plan: stage one 120 steps | stage two vae, 60 steps | batch 8 over 1 CPU "
          "device(s).") in stderr
  metrics = json.loads((workdir / "metrics.json").read_text())
  for key in ("reconstruction_bce", "reconstruction_mse", "kl", "tc",
              "active_latents", "mig"):
    assert np.isfinite(metrics[key]), key
  assert 0.0 <= metrics["mig"] <= 1.0
  assert len(metrics["kl_per_latent"]) == 10
  traversal = np.asarray(Image.open(workdir / "traversals.png"))
  assert traversal.shape[0] == 10 * (64 + 2) + 2  # One row per latent.
  recon = np.asarray(Image.open(workdir / "reconstructions.png"))
  assert recon.shape[0] == 4 * (64 + 2) + 2  # 16 inputs and their reconstructions.
  (event_file,) = [p for p in workdir.iterdir() if p.name.startswith("events.out.tfevents")]
  tags = {}
  for event in _read_events(event_file):
    for value in event.summary.value:
      tags.setdefault(value.tag, []).append(event.step)
  for tag in ("stage1/loss", "stage1/recon", "stage1/kl", "stage1/tc", "stage1/mi",
              "stage1/dim_kl", "stage1/kl_per_latent/9"):
    assert tags[tag] == list(range(10, 121, 10)), tag
  assert tags["eval/mig"] == [120]
  assert tags["stage1/traversals"] == tags["stage1/reconstructions"] == [120]
  assert tags["stage2/loss"] == tags["stage2/kl"] == list(range(10, 61, 10))
  assert tags["eval/multi_stage/reconstruction_mse"] == [60]
  assert tags["stage2/side_by_side"] == tags["stage2/samples"] == [60]
  assert json.loads((workdir / "config.json").read_text())["stage1"]["num_steps"] == 120
  # What made the results, in them and in every checkpoint.
  provenance = metrics["provenance"]
  assert provenance["command"].endswith(" ".join(RESUMABLE) + f" --workdir={workdir}")
  assert provenance["versions"]["jax"] == jax.__version__
  assert provenance["versions"]["msdr_jax"] == msdr_jax.__version__
  assert {"python", "flax", "scikit-learn", "orbax-checkpoint"} <= provenance["versions"].keys()
  with ocp.CheckpointManager(workdir.absolute() / "checkpoints_stage2") as manager:
    assert manager.metadata(60).custom_metadata["provenance"] == provenance


def test_sigkill_then_rerun_ends_where_an_uninterrupted_run_does(
    uninterrupted_run, tmp_path):
  reference_dir = uninterrupted_run[0]
  workdir = tmp_path / "killed"
  # Killed once in stage one, then once in stage two.
  _kill_when(_cli(*RESUMABLE, f"--workdir={workdir}"), workdir / "checkpoints" / "40")
  assert not (workdir / "checkpoints" / "120").exists(), "killed too late to test resumption"
  _kill_when(_cli(*RESUMABLE, f"--workdir={workdir}"),
             workdir / "checkpoints_stage2" / "20")
  assert not (workdir / "checkpoints_stage2" / "60").exists(), "killed too late"

  code, _, stderr = _run(*RESUMABLE, f"--workdir={workdir}")
  assert code == 0, stderr[-3000:]
  assert "Resumed stage one from the checkpoint at step 120" in stderr
  assert "Resumed stage two from the checkpoint at step" in stderr
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         _final_params(workdir, 120), _final_params(reference_dir, 120))
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         _final_params(workdir, 60, "checkpoints_stage2"),
                         _final_params(reference_dir, 60, "checkpoints_stage2"))
  ours = json.loads((workdir / "metrics.json").read_text())
  theirs = json.loads((reference_dir / "metrics.json").read_text())
  assert ours.pop("provenance")["command"] != theirs.pop("provenance")["command"]  # --workdir.
  assert ours == theirs


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.stage1.model.architecture=resnet",
         "msdr_jax: error: config.stage1.model.architecture='resnet' is unknown"),
        ("--config.data.name=celeba", "msdr_jax: error: config.data.name='celeba' is unknown"),
        ("--config.stage1.objective.beta=-2", "config.stage1.objective.beta=-2.0 must be >= 0"),
        ("--config.stage1.optimizer.learning_rate=1e6",
         "config.stage1.optimizer.learning_rate=1000000.0 must be in (0, 1]"),
        ("--config.batch_size=1000000000000",  # Known only once JAX sees the devices.
         "msdr_jax: error: config.batch_size=1000000000000 cannot fit: a device's share "
         "of its images alone takes 15,258,789.1 GiB, more than the device's"),
    ],
)
def test_cli_bad_input_is_one_line_without_traceback(override, message, tmp_path):
  code, _, stderr = _run(TINY, override, f"--workdir={tmp_path / 'run'}")
  assert code == 1
  assert message in stderr
  assert "Traceback" not in stderr
  assert not (tmp_path / "run").exists()


def test_cli_refuses_workdir_of_another_config(uninterrupted_run):
  workdir = uninterrupted_run[0]
  before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  code, _, stderr = _run(*RESUMABLE, "--config.stage1.objective.beta=3",
                         f"--workdir={workdir}")
  assert code == 1
  assert "holds a run with a different config: stage1.objective.beta" in stderr
  assert "Traceback" not in stderr
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before


def test_a_work_directory_in_use_is_refused_naming_its_holder(uninterrupted_run):
  workdir = uninterrupted_run[0]
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  with run_directory.locked(str(workdir)):  # As a running job holds it.
    holder = (workdir / "lock").read_text().strip()
    code, _, stderr = _run(*RESUMABLE, f"--workdir={workdir}")
    evaluation = subprocess.run(
        [sys.executable, "-m", "msdr_jax.evaluate", f"--workdir={workdir}"], cwd=REPO,
        capture_output=True, text=True, timeout=300)
  assert code == 1
  assert f"msdr_jax: error: {workdir} is in use by {holder}. Wait for it" in stderr
  assert evaluation.returncode == 1
  assert f"msdr_jax.evaluate: error: {workdir} is in use by {holder}." in evaluation.stderr
  assert "Traceback" not in stderr + evaluation.stderr
  lock = workdir / "lock"
  assert {p: t for p, t in before.items() if p != lock} == {
      p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p != lock}


@pytest.mark.parametrize(
    "args, message",
    [
        ((TINY, "--config.stage1.model.latent_dim=ten"),
         "--config.stage1.model.latent_dim=ten: invalid literal for int()"),
        ((TINY, "--config.stage1.modle.latent_dim=3"),
         "unknown config key 'modle'; did you mean \"model\"?"),
        ((TINY, "--config.stage1.model.latent_dimm=3"),
         "unknown config key 'latent_dimm'; did you mean \"latent_dim\"?"),
        ((TINY, "--config.bogus=1"), "unknown config key 'bogus'"),
        ((TINY, "extra"), "unexpected argument(s) ['extra']; every setting is a flag"),
        (("--config=configs/dsprites.py:preset=huge",), "Unknown preset 'huge'"),
        (("--config=configs/missing.py",), "No such file or directory"),
        (("--config=tests/data/configs/syntax_error.py",),
         "the config file tests/data/configs/syntax_error.py does not parse: "),
        (("--config=tests/data/configs/no_get_config.py",),
         "the config file defines no get_config()"),
        ((TINY, "--num_processes=2", "--process_id=1"),
         "--num_processes and --process_id need --coordinator_address=HOST:PORT"),
    ],
)
def test_cli_flag_errors_are_one_line(args, message, tmp_path):
  code, _, stderr = _run(*args, f"--workdir={tmp_path / 'run'}")
  assert code == 2
  assert stderr.startswith("msdr_jax: error: ") and message in stderr, stderr
  assert stderr.count("\n") == 1, stderr
  assert not (tmp_path / "run").exists()
