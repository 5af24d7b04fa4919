"""The study script: one stage one, each family on it, one table."""

import json

from absl import app
import pytest

from configs import dsprites
from experiments import compare_families


def test_study_trains_stage_one_once_and_tabulates_each_family(tmp_path):
  config = dsprites.get_config("preset=tiny")
  rows = compare_families.run_study(config, str(tmp_path), ["gmm", "vae"])
  assert [row["family"] for row in rows] == ["gmm", "vae"]
  assert not (tmp_path / "stage1" / "checkpoints_stage2").exists()
  for row in rows:
    workdir = tmp_path / row["family"]
    assert not (workdir / "checkpoints").exists()  # Stage one loaded, not retrained.
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert row["multi_stage/reconstruction_mse"] == metrics["multi_stage/reconstruction_mse"]
    assert row["multi_stage/mig"] == metrics["mig"]
  table = compare_families.markdown_table(rows).splitlines()
  assert table[0].startswith("| family | stage-one MSE | multi-stage MSE | MSE ratio |")
  assert table[2].startswith("| gmm | ") and table[3].startswith("| vae | ")
  assert len(table) == 4


def test_unknown_family_is_refused_before_training(tmp_path):
  with pytest.raises(app.UsageError, match=r"Unknown families \['made_up'\]"):
    compare_families.run_study(dsprites.get_config("preset=tiny"), str(tmp_path),
                               ["vae", "made_up"])
  assert not (tmp_path / "stage1").exists()
