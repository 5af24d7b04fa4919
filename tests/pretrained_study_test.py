"""The pretrained study end to end on the committed beta-TCVAE, at the tiny budget."""

import csv
import math
import pathlib
import shutil
import subprocess
import sys

import pytest

from experiments import pretrained_study
from experiments import results
from experiments import runs

REPO = pathlib.Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "tests" / "data" / "pytorch"


def _study(*args):
  return subprocess.run(
      [sys.executable, "-m", "experiments.pretrained_study", "--budget=tiny", *args],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """A checkpoint folder as disentangling-vae lays it out, and one study run."""
  checkpoints = tmp_path_factory.mktemp("checkpoints")
  for name in ("btcvae_dsprites", "btcvae_celeba"):  # CelebA is not a dSprites model.
    shutil.copytree(PRETRAINED / name, checkpoints / name)
  workdir = tmp_path_factory.mktemp("study")
  result = _study(f"--checkpoints={checkpoints}", f"--workdir={workdir}",
                  "--families=gmm", "--variant=gmm:stage2.gmm.num_components=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Study: run 1/3 done (btcvae_dsprites stage one" in result.stderr
  assert "Study: run 3/3 done (btcvae_dsprites gmm_num_components=2" in result.stderr
  return checkpoints, workdir, result


def test_study_writes_table_csv_and_figures(study):
  checkpoints, workdir, result = study
  with open(workdir / "results.csv") as file:
    rows = list(csv.DictReader(file))
  assert [(row["checkpoint"], row["model"]) for row in rows] == [
      ("btcvae_dsprites", results.STAGE_ONE), ("btcvae_dsprites", "gmm"),
      ("btcvae_dsprites", "gmm_num_components=2")]
  assert all(row["loss"] == "btcvae" for row in rows)
  # One stage one: every model shares its z, hence its MIG.
  assert len({row["mig"] for row in rows}) == 1 and 0 <= float(rows[0]["mig"]) <= 1
  assert rows[0]["informative_latents"] == "5"  # As its training log says.
  assert float(rows[0]["mse_ratio"]) == 1.0
  for row in rows[1:]:
    assert float(row["mse_ratio"]) == pytest.approx(
        float(rows[0]["reconstruction_mse"]) / float(row["reconstruction_mse"]))
  # The variant is its own run, on the same stage one, with its override.
  variant = workdir / "btcvae_dsprites" / "gmm_num_components=2"
  assert '"num_components": 2' in (variant / "config.json").read_text()
  assert rows[2]["reconstruction_mse"] != rows[1]["reconstruction_mse"]
  for row in rows:
    assert math.isfinite(float(row["fid"])) and float(row["fidelity_r2_informative"]) <= 1
  # Stage one recovers its own z from its reconstructions (six steps of a
  # stage two need not).
  assert float(rows[0]["fidelity_r2_informative"]) > 0.9
  stage_one_metrics = (workdir / "btcvae_dsprites" / "stage1" / "metrics.json").read_text()
  assert '"sap"' in stage_one_metrics and "sample_quality/fid" in stage_one_metrics
  text = (workdir / "results.md").read_text()
  assert text in result.stdout
  assert "| btcvae_dsprites | gmm |" in text and "- btcvae_dsprites:" in text
  for name in ("reconstruction_vs_mig", "sample_fid", "conditioning_fidelity",
               "btcvae_dsprites-reconstructions", "btcvae_dsprites-traversals"):
    assert (workdir / f"{name}.png").stat().st_size > 0, name


def test_rerun_reuses_finished_runs(study):
  checkpoints, workdir, _ = study
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(runs.train, "train_and_evaluate", lambda *args: pytest.fail(
        "a finished run was trained again"))
    rows = pretrained_study.run_study(
        str(checkpoints), str(workdir), ["btcvae_dsprites"],
        pretrained_study.study_models(["gmm"], ["gmm:stage2.gmm.num_components=2"]),
        pretrained_study.BUDGETS["tiny"], "tiny")
  assert [row["seconds"] for row in rows] == [None, None, None]
  with open(workdir / "results.csv") as file:
    written = list(csv.DictReader(file))
  assert [float(row["reconstruction_mse"]) for row in written] == [
      row["reconstruction_mse"] for row in rows]


def test_report_finished_trains_nothing_and_names_the_runs_left(study, tmp_path):
  checkpoints, workdir, _ = study
  copy = tmp_path / "study"
  shutil.copytree(workdir, copy)
  result = _study(f"--checkpoints={checkpoints}", f"--workdir={copy}", "--report_finished",
                  "--families=gmm", "--variant=gmm:stage2.gmm.num_components=3")
  assert result.returncode == 0, result.stderr[-3000:]
  assert not (copy / "btcvae_dsprites" / "gmm_num_components=3").exists()
  text = (copy / "results.md").read_text()
  assert "| btcvae_dsprites | gmm |" in text
  assert "Not finished, so not in the table: btcvae_dsprites gmm_num_components=3." in text
  with open(copy / "results.csv") as file:
    assert [row["model"] for row in csv.DictReader(file)] == [results.STAGE_ONE, "gmm"]


def test_folder_without_dsprites_checkpoints_is_a_usage_error(tmp_path):
  result = _study(f"--checkpoints={tmp_path}", f"--workdir={tmp_path / 'study'}")
  assert result.returncode != 0
  assert "holds no dSprites checkpoint folder" in result.stderr
  assert "Traceback" not in result.stderr


def test_variant_is_a_family_with_typed_overrides():
  model = pretrained_study.parse_variant(
      "vae:stage2.vae.beta=0.1,stage2.num_steps=300,stage2.vae.kl_warmup_steps=0")
  assert model == pretrained_study.Model(
      "vae_beta=0.1_num_steps=300_kl_warmup_steps=0", "vae",
      (("stage2.vae.beta", 0.1), ("stage2.num_steps", 300),
       ("stage2.vae.kl_warmup_steps", 0)))
  config = pretrained_study.study_config(
      str(PRETRAINED / "btcvae_dsprites"), pretrained_study.BUDGETS["cpu"],
      model.family, "quick", model.overrides)
  assert (config.stage2.vae.beta, config.stage2.num_steps) == (0.1, 300)
  plain = pretrained_study.study_config(
      str(PRETRAINED / "btcvae_dsprites"), pretrained_study.BUDGETS["cpu"], "vae", "quick")
  assert (plain.stage2.vae.beta, plain.stage2.num_steps) == (1.0, 1_000)


@pytest.mark.parametrize("text, message", [
    ("vae", "expected family:key=value"),
    ("made_up:stage2.vae.beta=1", "expected family:key=value"),
    ("vae:stage2.vae.betta=1", "'stage2.vae.betta=1' does not set a config field"),
    ("vae:stage2.vae=1", "'stage2.vae=1' does not set a config field"),
    ("vae:stage2.vae.beta", "'stage2.vae.beta' does not set a config field"),
    ("vae:stage2.vae.beta=small", "stage2.vae.beta takes a float, not 'small'"),
])
def test_bad_variant_is_a_usage_error(text, message):
  with pytest.raises(pretrained_study.app.UsageError, match=message):
    pretrained_study.parse_variant(text)


def _row(model, ratio, fidelity):
  return {"checkpoint": "m", "model": model, "mse_ratio": ratio,
          "fidelity_r2_informative": fidelity}


def test_verdict_takes_the_best_family_that_keeps_the_factors():
  rows = [_row(results.STAGE_ONE, 1.0, 0.99), _row("gan", 3.0, 0.5),
          _row("vae", 2.5, 0.95), _row("gmm", 1.2, 0.97), _row("flow", math.inf, 0.9)]
  met, line = pretrained_study.verdict(rows, "m")
  assert met and "vae at 2.50x" in line  # gan is faster but loses the factors.
  rows[2]["mse_ratio"] = 1.6
  met, line = pretrained_study.verdict(rows, "m")
  assert not met and "missed by 1.25x" in line
  met, line = pretrained_study.verdict([_row("vae", 3.0, 0.2)], "m")
  assert not met and "no family keeps fidelity" in line


def test_informative_fidelity_averages_latents_with_half_a_nat():
  metrics = {"kl_per_latent": [0.01, 0.6, 2.0, 0.49],
             "multi_stage/conditioning_fidelity_r2_per_latent": [-3.0, 0.8, 1.0, 0.1]}
  assert pretrained_study.informative_fidelity(metrics) == pytest.approx(0.9)
