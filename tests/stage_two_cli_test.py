"""End-to-end CLI runs of every stage-two family on a saved stage one."""

import json

import numpy as np
from PIL import Image
import pytest

from main_test import TINY, _run  # pylint: disable=g-bad-import-order

# Loading a stage one does not depend on the family, nor does the CLI's
# evaluation and figures. MS-VAE runs end to end in main_test and
# evaluate_cli_test (the tiny preset's family), MS-GMM on a loaded stage one
# in the studies' tests (beta_sweep_test, pretrained_study_test), MS-VAE on an
# imported one in pytorch_import_test; MS-GAN's training and evaluation run
# in-process in stage_two_test and precision_test.
FAMILIES = ("flow",)


@pytest.fixture(scope="module")
def stage_one_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("stage_one")
  # Scored as the families' runs are (below): MIG alone, no FID.
  code, _, stderr = _run(TINY, "--config.stage2.family=none",
                         "--config.eval.disentanglement.metrics=mig",
                         "--config.eval.sample_quality.num_samples=0", f"--workdir={workdir}")
  assert code == 0, stderr[-3000:]
  assert not (workdir / "checkpoints_stage2").exists()
  return workdir


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_from_a_stage_one_checkpoint(family, stage_one_run, tmp_path):
  workdir = tmp_path / family
  # MIG alone and no FID: the stage-one run scored the rest, and the main
  # job's tests score FID of a multi-stage model.
  code, stdout, stderr = _run(TINY, f"--config.stage2.family={family}",
                              f"--config.stage1.checkpoint={stage_one_run}",
                              "--config.eval.disentanglement.metrics=mig",
                              "--config.eval.sample_quality.num_samples=0",
                              f"--workdir={workdir}")
  assert code == 0, stderr[-3000:]
  assert f"Loaded stage one (step 6) from {stage_one_run}" in stderr
  assert "stage two step 6/6" in stderr and f"results in {workdir}" in stdout
  assert not (workdir / "checkpoints").exists()  # Stage one was not retrained.
  assert sorted(p.name for p in (workdir / "checkpoints_stage2").iterdir()) == ["3", "6"]

  metrics = json.loads((workdir / "metrics.json").read_text())
  stage_one = json.loads((stage_one_run / "metrics.json").read_text())
  # The same frozen stage one, evaluated on the same points: same numbers.
  for key in ("reconstruction_mse", "reconstruction_bce", "mig", "kl"):
    assert metrics[key] == stage_one[key], key
  assert metrics["multi_stage/mig"] == metrics["mig"]
  assert metrics["stage2_family"] == family and metrics["stage2_step"] == 6
  assert np.isfinite(metrics["multi_stage/reconstruction_mse"])
  assert np.isfinite(metrics["multi_stage/stage1_reconstruction_mse"])
  assert len(metrics["multi_stage/conditioning_fidelity_r2_per_latent"]) == 10
  assert np.isfinite(metrics["stage2/loss"])
  if family == "flow":
    assert metrics["multi_stage/reconstruction_mse"] == 0.0  # A bijection.
    assert 0.0 < metrics["stage2/bits_per_dim"] < 2.0

  side_by_side = np.asarray(Image.open(workdir / "side_by_side.png"))
  assert side_by_side.shape[0] == 6 * (64 + 2) + 2  # 2 x (input, stage 1, multi).
  traversals = np.asarray(Image.open(workdir / "traversals_multi_stage.png"))
  assert traversals.shape[0] == 10 * (64 + 2) + 2
  samples = np.asarray(Image.open(workdir / "samples.png"))
  assert samples.shape[0] == 4 * (64 + 2) + 2


def test_stage_one_checkpoint_of_another_model_names_both_shapes(stage_one_run, tmp_path):
  code, _, stderr = _run(TINY, "--config.stage1.model.latent_dim=6",
                         f"--config.stage1.checkpoint={stage_one_run}",
                         f"--workdir={tmp_path / 'run'}")
  assert code == 1, stderr[-3000:]
  assert "is not a model of this config" in stderr
  assert "has shape (10, 256) there but (6, 256) here" in stderr, stderr[-2000:]
  assert "Traceback" not in stderr
  assert not (tmp_path / "run").exists()


def test_missing_stage_one_checkpoint_is_a_clear_error(tmp_path):
  code, _, stderr = _run(TINY, f"--config.stage1.checkpoint={tmp_path / 'nowhere'}",
                         f"--workdir={tmp_path / 'run'}")
  assert code == 1
  assert f"Stage-one checkpoint {tmp_path / 'nowhere'} does not exist" in stderr
  assert "Traceback" not in stderr
  assert not (tmp_path / "run").exists()
  (tmp_path / "empty").mkdir()
  code, _, stderr = _run(TINY, f"--config.stage1.checkpoint={tmp_path / 'empty'}",
                         f"--workdir={tmp_path / 'run'}")
  assert code == 1 and "holds no stage-one checkpoint" in stderr
  assert not (tmp_path / "run").exists()
