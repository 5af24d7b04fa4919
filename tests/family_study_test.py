"""The family study end to end at the tiny budget: MS-GAN on a stage one trained
here (`pretrained_study_test` runs the imported stage ones)."""

import csv
import math
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from experiments import family_study
from experiments import pretrained_study
from experiments import results

REPO = pathlib.Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "tests" / "data" / "pytorch"
STAGE_ONES = ("dsprites",)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """The study's own functions, as its command runs them (the command line is
  `test_unknown_stage_one_is_a_usage_error`'s; its flags are not defined here,
  where other studies' of the same names may be)."""
  workdir = tmp_path_factory.mktemp("families")
  configs = family_study.study_configs(
      STAGE_ONES, str(PRETRAINED), str(workdir), pretrained_study.study_models(["gan"], []),
      family_study.BUDGETS["tiny"], stage1_steps=4, stage2_steps=3)
  rows = family_study.run_study(configs, str(workdir))
  family_study.write_outputs(configs, rows, family_study.report(rows, "tiny", 0.0, "cmd"),
                             workdir)
  with open(workdir / "results.csv") as file:
    return workdir, list(csv.DictReader(file))


def test_rows_share_stage_one_and_the_budget(study):
  workdir, rows = study
  assert [(row["stage_one"], row["model"]) for row in rows] == [
      ("dsprites", results.STAGE_ONE), ("dsprites", "gan")]
  assert [row["steps"] for row in rows] == ["4", "3"]
  assert len({row["mig"] for row in rows}) == 1  # One z for every row.
  # The family's run loads the stage one trained in the stage-one run.
  config = (workdir / "dsprites" / "gan" / "config.json").read_text()
  assert str(workdir / "dsprites" / "stage1") in config
  for row in rows:
    assert math.isfinite(float(row["fid"])) and float(row["minutes"]) > 0
    # The error on the sprite is part of the error on the whole image.
    assert 0 < float(row["foreground_mse"]) <= float(row["reconstruction_mse"])
    # Binary images: bits/dim given z is the BCE in bits per pixel for stage
    # one, and the negative ELBO (at least the BCE) for MS-GAN.
    bits = float(row["bits_per_dim"])
    bce_bits = float(row["reconstruction_bce"]) / (64 * 64 * math.log(2))
    if row["model"] == results.STAGE_ONE:
      assert bits == pytest.approx(bce_bits, rel=1e-6)
    else:
      assert bits > 0


def test_table_and_samples_from_the_same_z(study):
  workdir, _ = study
  text = (workdir / "results.md").read_text()
  assert "### dsprites (MIG" in text and "| gan |" in text
  samples = np.asarray(Image.open(workdir / "dsprites-samples.png"))
  assert samples.ndim == 3 and samples.std() > 0
  for name in ("dsprites-reconstructions", "dsprites-traversals"):
    assert (workdir / f"{name}.png").stat().st_size > 0


def test_unknown_stage_one_is_a_usage_error(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.family_study", f"--workdir={tmp_path}",
       "--stage_ones=made_up", f"--pretrained={PRETRAINED}"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert "--stage_ones=made_up:" in result.stderr and "holds no model.pt" in result.stderr
  assert "Traceback" not in result.stderr
