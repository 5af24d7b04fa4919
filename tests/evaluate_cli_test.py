"""The evaluation of the main job and `python -m msdr_jax.evaluate`, end to end."""

import json
import math
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import msdr_jax
from msdr_jax import multi_stage
from msdr_jax import run_directory

from main_test import REPO, TINY, _run  # pylint: disable=g-bad-import-order

SUITE_KEYS = (
    "mig", "dci/disentanglement", "dci/completeness", "dci/informativeness_train",
    "dci/informativeness_test", "sap", "modularity", "explicitness/train",
    "explicitness/test", "beta_vae/train_accuracy", "beta_vae/eval_accuracy",
    "factor_vae/train_accuracy", "factor_vae/eval_accuracy",
    "factor_vae/num_active_latents")
QUALITY_KEYS = (
    "reconstruction_psnr", "reconstruction_ssim", "sample_quality/fid",
    "sample_quality/kid", "multi_stage/reconstruction_psnr",
    "multi_stage/reconstruction_ssim", "multi_stage/reconstruction_bce",
    "multi_stage/stage1_reconstruction_ssim", "multi_stage/sample_quality/fid",
    "multi_stage/sample_quality/kid")


def _evaluate(*args):
  process = subprocess.run(
      [sys.executable, "-m", "msdr_jax.evaluate", *args], cwd=REPO,
      capture_output=True, text=True, timeout=300)
  return process.returncode, process.stdout, process.stderr


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  code, _, stderr = _run(TINY, f"--workdir={workdir}", "--config.eval.disentanglement"
                         ".metrics=mig,dci,sap,modularity,beta_vae,factor_vae")
  assert code == 0, stderr[-3000:]
  return workdir


def test_main_job_writes_the_whole_suite(trained_run):
  results = json.loads((trained_run / "metrics.json").read_text())
  for key in SUITE_KEYS + QUALITY_KEYS:
    assert isinstance(results[key], float) and math.isfinite(results[key]), key
  assert results["metric_factors"] == [
      "shape", "scale", "orientation", "position_x", "position_y"]
  assert results["sample_quality/feature_extractor"] == "random_conv"
  assert results["sample_quality/num_samples"] == 200
  assert 0 <= results["dci/informativeness_test"] <= 1
  assert -1 <= results["reconstruction_ssim"] <= 1


def test_evaluate_command_reproduces_the_main_jobs_numbers(trained_run):
  before = json.loads((trained_run / "metrics.json").read_text())
  (trained_run / "metrics.json").unlink()
  code, stdout, stderr = _evaluate(f"--workdir={trained_run}")
  assert code == 0, stderr[-3000:]
  assert f"metrics in {trained_run / 'metrics.json'}" in stdout
  after = json.loads((trained_run / "metrics.json").read_text())
  assert after.pop("provenance")["command"].endswith(f"--workdir={trained_run}")
  before.pop("provenance")
  assert after == before


def test_evaluate_command_selects_metrics(trained_run, tmp_path):
  code, _, stderr = _evaluate(f"--workdir={trained_run}", "--metrics=mig,sap",
                              "--num_samples=0")
  assert code == 0, stderr[-3000:]
  results = json.loads((trained_run / "metrics.json").read_text())
  assert "sap" in results and "mig" in results
  assert not any(k.startswith(("dci", "beta_vae", "factor_vae", "sample_quality",
                               "multi_stage/sample_quality")) for k in results)


@pytest.mark.parametrize("args, message", [
    (["--metrics=mig,betavae"], "Unknown metric(s) ['betavae']"),
    (["--feature_extractor=inception_v3"], "inception_weights='' is not a file"),
    (["--feature_extractor=vgg"], "feature_extractor='vgg' is unknown"),
])
def test_evaluate_command_refuses_bad_settings(trained_run, args, message):
  before = (trained_run / "metrics.json").read_text()
  code, _, stderr = _evaluate(f"--workdir={trained_run}", *args)
  assert code == 1 and message in stderr, stderr[-2000:]
  assert "Traceback" not in stderr
  assert (trained_run / "metrics.json").read_text() == before


def test_a_run_loads_in_one_line(trained_run):
  run = msdr_jax.load(str(trained_run))
  assert isinstance(run.model, multi_stage.MultiStageModel)
  assert run.steps == {"stage1": 6, "stage2": 6}
  assert run.config.to_dict() == run_directory.load_run_config(str(trained_run)).to_dict()
  images, _ = run.dataset.sample(jax.random.PRNGKey(0), 4)
  reconstructions = jax.jit(run.model.reconstruct)(run.params, images)
  assert reconstructions.shape == images.shape
  # The parameters are the final checkpoints'.
  for stage, directory in (("stage1", "checkpoints"), ("stage2", "checkpoints_stage2")):
    saved = ocp.StandardCheckpointer().restore(trained_run / directory / "6" / "default")
    jax.tree.map(np.testing.assert_array_equal, run.params[stage], saved["params"])


def test_evaluate_command_needs_a_trained_run(trained_run, tmp_path):
  code, _, stderr = _evaluate(f"--workdir={tmp_path}")
  assert code == 1 and "is not a run directory" in stderr
  (tmp_path / "config.json").write_text((trained_run / "config.json").read_text())
  code, _, stderr = _evaluate(f"--workdir={tmp_path}")
  assert code == 1 and "holds no stage-one checkpoint" in stderr, stderr[-2000:]
  (tmp_path / "config.json").write_text("{not json")
  code, _, stderr = _evaluate(f"--workdir={tmp_path}")
  assert code == 1 and "Cannot read" in stderr and "Traceback" not in stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_main_job_refuses_an_unknown_metric(tmp_path):
  code, _, stderr = _run(TINY, "--config.eval.disentanglement.metrics=mig,foo",
                         f"--workdir={tmp_path / 'run'}")
  assert code == 1 and "Unknown metric(s) ['foo']" in stderr
  assert not (tmp_path / "run").exists()
