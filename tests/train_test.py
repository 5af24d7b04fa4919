"""In-process tests of the program: the documented examples and the training loop."""

import errno
import logging
import os
import pathlib
import re
import shutil
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import dsprites
from msdr_jax import accelerators
from msdr_jax import cpu_memory
from msdr_jax import evaluators
from msdr_jax import parallel
from msdr_jax import run_directory
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps
from msdr_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny_config():
  config = dsprites.get_config("preset=tiny")
  config.eval.num_points = 200
  return config


def test_documented_train_step_examples_run(monkeypatch):
  """docs/python_api.md's step examples, then docs/metrics.md's, in one namespace."""
  # Process-wide; tests/install_test.py runs the example in a process of its own.
  monkeypatch.setattr(cpu_memory, "reuse_step_memory", lambda: False)
  api = (REPO / "docs" / "python_api.md").read_text()
  metrics_doc = (REPO / "docs" / "metrics.md").read_text()
  blocks = [
      re.search(rf"<!-- {name} -->\s*```python\n(.*?)```", text, re.S)
      for name, text in (("train-step-example", api), ("stage-two-example", api),
                         ("pmap-example", api), ("metrics-example", metrics_doc))
  ]
  assert all(blocks), "the docs lost a train-step or metrics example"
  namespace = {}
  for block in blocks:
    exec(compile(block.group(1), "docs", "exec"), namespace)  # pylint: disable=exec-used
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


@pytest.mark.parametrize("first_nan_step, kept", [
    (5, r"The last good checkpoint \(step 3\) in .* is intact"),
    (1, r"No checkpoint was written before it"),
])
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(
    first_nan_step, kept, tmp_path, monkeypatch):
  config = _tiny_config()  # checkpoints every 3 steps, 6 steps.
  make_step = steps.make_train_step

  def poisoned_make_train_step(*args, **kwargs):
    step = make_step(*args, **kwargs)

    def poisoned(state, batch, rng):  # Stage one's: no frozen parameters.
      # From `first_nan_step` on the batch is NaN, so the loss is too.
      batch = batch * jnp.where(state.step >= first_nan_step - 1, jnp.nan, 1.0)
      return step(state, batch, rng)

    return poisoned

  monkeypatch.setattr(steps, "make_train_step", poisoned_make_train_step)
  with pytest.raises(steps.NonFiniteLossError,
                     match=rf"Stage one loss is nan at step {first_nan_step}\. {kept}"):
    train.train_and_evaluate(config, str(tmp_path))
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved == ([3] if first_nan_step > 3 else [])
  for step in saved:
    restored = ocp.StandardCheckpointer().restore(
        tmp_path / "checkpoints" / str(step) / "default")
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(restored["params"]))
  assert not (tmp_path / "metrics.json").exists()


def test_a_diverged_stage_one_is_one_line_and_keeps_the_last_complete_results(tmp_path):
  config = _tiny_config()
  config.stage2.family = "none"
  config.eval.disentanglement.metrics = "mig"
  config.eval.sample_quality.num_samples = 0
  vae = stage_one_lib.DisentanglingVAE.from_config(config.stage1, (64, 64, 1))
  stage_one = stage_one_lib.StageOne(vae.encode, vae.decode, vae.image_shape,
                                     vae.latent_dim, vae.likelihood)
  params = vae.init(jax.random.PRNGKey(0))
  train.train_and_evaluate(config, str(tmp_path), stage_one, params)
  results = (tmp_path / "metrics.json").read_text()
  exploded = jax.tree.map(lambda x: x * 1e30, params)
  with pytest.raises(evaluators.NonFiniteCodesError,
                     match=r"^Stage one's codes at step 0 are NaN or infinite for 200 of 200 "
                           r"evaluation points: its parameters diverged\. Start a new run "
                           r"with a lower --config\.stage1\.optimizer\.learning_rate"):
    train.train_and_evaluate(config, str(tmp_path), stage_one, exploded)
  assert (tmp_path / "metrics.json").read_text() == results


def test_a_full_disk_stops_the_run_in_one_line_before_a_partial_checkpoint(
    tmp_path, monkeypatch):
  config = _tiny_config()  # Checkpoints at steps 3 and 6.
  config.stage2.family = "none"
  real_disk_usage = shutil.disk_usage
  free = {"bytes": 10**12}

  def disk_usage(path):  # The disk fills up after the first checkpoint.
    usage = real_disk_usage(path)
    return usage._replace(free=free["bytes"])

  monkeypatch.setattr(shutil, "disk_usage", disk_usage)
  make_iteration = steps.make_train_iteration

  def filling_iteration(*args, **kwargs):
    iteration = make_iteration(*args, **kwargs)

    def run(state, *rest):
      if int(state.step) == 3:
        free["bytes"] = 300_000
      return iteration(state, *rest)

    return run

  monkeypatch.setattr(steps, "make_train_iteration", filling_iteration)
  with pytest.raises(run_directory.RunDirectoryError,
                     match=r"^Cannot write stage one's checkpoint 6 in .*checkpoints: it "
                           r"needs \d+\.\d MiB, 0\.3 MiB are free\. Free space, then rerun "
                           r"the same command to resume from its checkpoint 3; or use "
                           r"another --workdir\.$"):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3"]
  assert not (tmp_path / "metrics.json").exists()


def test_a_read_only_or_full_file_system_is_one_line_and_leaves_no_partial_file(tmp_path):
  (tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp").mkdir(parents=True)
  (tmp_path / "metrics.json.tmp").write_text("{")
  (tmp_path / "metrics.json").write_text("{}")
  for error, reason in [
      (OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "x.png")),
       f"Read-only file system ({tmp_path / 'x.png'})"),
      # TensorStore's errors, as orbax raises them.
      (ValueError("RESOURCE_EXHAUSTED: Failed writing: ... No space left on device "
                  "[os_error_code='28']"), "No space left on device")]:
    with pytest.raises(run_directory.RunDirectoryError,
                       match=rf"^Cannot write in {tmp_path}: {re.escape(reason)}\. Free "):
      with run_directory.storage_errors_reported(str(tmp_path)):
        raise error
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "metrics.json"]
  with pytest.raises(KeyError):  # Any other error passes through.
    with run_directory.storage_errors_reported(str(tmp_path)):
      raise KeyError("x")


def test_the_plan_is_logged_first_and_a_long_cpu_run_suggests_a_short_preset(caplog):
  caplog.set_level(logging.INFO, logger="absl")
  paper = dsprites.get_config()
  train._log_plan(paper, parallel.data_mesh(), "300,000 steps")  # pylint: disable=protected-access
  assert [r.getMessage() for r in caplog.records] == [
      "Plan: stage one 300,000 steps | stage two vae, 100,000 steps | batch 64 over 1 "
      "CPU device(s).",
      "400,000 training steps on a CPU take hours (the README's table of presets gives "
      "measured times). For a first run add :preset=quick to --config."]
  caplog.clear()
  train._log_plan(_tiny_config(), parallel.data_mesh(), "6 steps")  # pylint: disable=protected-access
  assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith("Plan: ")
  # On a machine with a GPU that this JAX does not use, the plan says so.
  caplog.clear()
  with mock.patch.object(accelerators, "present", return_value="gpu"):
    train._log_plan(_tiny_config(), parallel.data_mesh(), "6 steps")  # pylint: disable=protected-access
  assert caplog.records[1].getMessage() == (
      "This machine has a GPU but JAX runs on the CPU: the installed JAX has no GPU support. "
      'Run pip install -U "jax[cuda12]", then restart Python (in Colab: Runtime > Restart '
      "session) and run again.")


def test_the_machines_accelerator_is_read_from_the_system(monkeypatch, tmp_path):
  monkeypatch.delenv("TPU_ACCELERATOR_TYPE", raising=False)
  monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
  monkeypatch.setattr(accelerators, "_DEVICE_DIR", str(tmp_path))
  monkeypatch.setattr(accelerators, "_NVIDIA_SMI", "no-such-program")
  assert accelerators.present() is None
  (tmp_path / "nvidia0").touch()
  assert accelerators.present() == "gpu"
  (tmp_path / "nvidia0").unlink()
  (tmp_path / "vfio").mkdir()
  (tmp_path / "vfio" / "vfio").touch()  # The VFIO control file alone: no TPU.
  assert accelerators.present() is None
  (tmp_path / "vfio" / "0").touch()
  assert accelerators.present() == "tpu"
  # JAX on its accelerator, or a machine without one: nothing to say.
  assert accelerators.unused_message("gpu", "gpu") is None
  assert accelerators.unused_message("cpu", None) is None
  # This JAX runs on the CPU, so with a TPU present the check stops.
  with pytest.raises(RuntimeError, match=r'TPU but JAX runs on the CPU.*"jax\[tpu\]"'):
    accelerators.check_jax_uses_accelerator()
  (tmp_path / "vfio" / "0").unlink()
  assert accelerators.check_jax_uses_accelerator() == "cpu"
  monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
  assert accelerators.present() == "tpu"


def test_nonfinite_gradients_with_a_finite_loss_are_caught():
  finite = {"loss": np.float32(1.0), "grad_norm": np.float32(2.0)}
  pending = [(1, finite), (2, dict(finite, grad_norm=np.float32(np.inf))),
             (3, dict(finite, loss=np.float32(np.nan)))]
  assert steps.first_nonfinite(pending) == (2, "grad_norm", np.inf)  # pylint: disable=protected-access
  assert steps.first_nonfinite(pending[:1]) is None  # pylint: disable=protected-access
