"""The beta sweep: its CLI, runs, table, plots, figures and resumption, on tiny runs."""

import csv
import json
import math
import pathlib
import subprocess
import sys

from absl import app
from PIL import Image
import pytest

from experiments import beta_sweep
from experiments import figures
from experiments import results
from experiments import runs
from msdr_jax import configuration
from msdr_jax import run_directory

REPO = pathlib.Path(__file__).resolve().parents[1]
_BUDGET = beta_sweep.BUDGETS["tiny"]
_STUDY = (["dsprites"], [4.0], [0], ["gmm"])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """The study run by its CLI; rows read back by a rerun that trains nothing."""
  workdir = tmp_path_factory.mktemp("study")
  process = subprocess.run(
      [sys.executable, "-m", "experiments.beta_sweep", "--budget=tiny", "--data=dsprites",
       "--betas=4", "--families=gmm", f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert process.returncode == 0, process.stderr[-3000:]
  assert "Study: run 2/2 done (dsprites beta 4 seed 0 gmm" in process.stderr
  assert "| 4 | gmm | " in process.stdout  # The report, printed.
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(runs.train, "train_and_evaluate", lambda *args: pytest.fail(
        "a finished run was trained again"))
    rows = beta_sweep.run_study(str(workdir), *_STUDY, _BUDGET)
  return workdir, rows


def test_cli_writes_table_csv_and_figures(study):
  workdir, rows = study
  with (workdir / "results.csv").open() as f:
    written = list(csv.DictReader(f))
  assert [(float(row["beta"]), row["model"], float(row["reconstruction_mse"]))
          for row in written] == [
              (row["beta"], row["model"], row["reconstruction_mse"]) for row in rows]
  report = (workdir / "results.md").read_text()
  assert results.markdown_table(rows, "dsprites") in report
  assert "Budget `tiny`" in report
  for name in ("reconstruction_vs_beta.png", "disentanglement_vs_beta.png",
               f"dsprites-beta{figures.best_beta(rows, 'dsprites'):g}-reconstructions.png",
               f"dsprites-beta{figures.best_beta(rows, 'dsprites'):g}-traversals.png"):
    with Image.open(workdir / name) as image:
      assert image.format == "PNG" and min(image.size) > 100


def test_rows_compare_stage_one_and_the_family_like_for_like(study):
  workdir, rows = study
  assert [(row["beta"], row["model"]) for row in rows] == [(4.0, "stage one"), (4.0, "gmm")]
  stage_one, gmm = rows
  run = workdir / "dsprites" / "beta4-seed0"
  stage_one_metrics = json.loads((run / "stage1" / "metrics.json").read_text())
  gmm_metrics = json.loads((run / "gmm" / "metrics.json").read_text())
  assert json.loads((run / "stage1" / "config.json").read_text())[
      "stage1"]["objective"]["beta"] == 4.0
  assert not (run / "gmm" / "checkpoints").exists()  # Stage one loaded, not retrained.
  # Like for like: both errors from the multi-stage evaluation's images.
  assert stage_one["reconstruction_mse"] == gmm_metrics[
      "multi_stage/stage1_reconstruction_mse"]
  assert gmm["reconstruction_mse"] == gmm_metrics["multi_stage/reconstruction_mse"]
  assert gmm["mse_ratio"] == pytest.approx(
      stage_one["reconstruction_mse"] / gmm["reconstruction_mse"])
  # The disentanglement scores are stage one's, computed once.
  assert gmm["mig"] == stage_one["mig"] == stage_one_metrics["mig"]
  assert gmm["dci_disentanglement"] == stage_one_metrics["dci/disentanglement"]
  assert 0 <= gmm["dci_disentanglement"] <= 1
  assert "mig" not in gmm_metrics  # No second, identical suite evaluation.
  assert gmm["conditioning_fidelity_r2"] == gmm_metrics[
      "multi_stage/conditioning_fidelity_r2"]


def test_unfinished_family_run_is_redone(study):
  workdir, _ = study
  config = beta_sweep.study_config(str(workdir), "dsprites", _BUDGET, 4.0, 0, "gmm")
  run = workdir / "dsprites" / "beta4-seed0" / "gmm"
  assert runs.finished_metrics(config, run) is not None
  config.stage2.num_steps += 1  # As if killed before the last step.
  assert runs.finished_metrics(config, run) is None


def test_run_directory_of_another_config_is_refused(study):
  workdir, _ = study
  config = beta_sweep.study_config(str(workdir), "dsprites", _BUDGET, 4.0, 0, "gmm")
  config.stage1.model.latent_dim = 7
  with pytest.raises(run_directory.RunDirectoryError):
    runs.run_or_load(config, workdir / "dsprites" / "beta4-seed0" / "gmm")


def test_report_table_and_verdict(study):
  _, rows = study
  table = results.markdown_table(rows, "dsprites").splitlines()
  assert table[0] == ("| beta | model | reconstruction MSE | MSE ratio (stage one / model) "
                      "| MIG | DCI disentanglement | conditioning fidelity R^2 "
                      "| >= 2x lower MSE |")
  assert len(table) == 2 + 2
  assert table[2].startswith("| 4 | stage one | ") and "1 (reference)" in table[2]
  ratio = rows[1]["mse_ratio"]
  assert table[3].startswith(f"| 4 | gmm | {rows[1]['reconstruction_mse']:.2f} | {ratio:.2f}x | ")
  assert table[3].endswith("| yes |" if ratio >= 2 else "| no |")
  assert results.verdicts(rows, "dsprites") == {"gmm": (int(ratio >= 2), 1)}


def _synthetic_row(beta, seed, model, mse, ratio, mig):
  return {"data": "toy", "beta": beta, "seed": seed, "model": model,
          "reconstruction_mse": mse, "mse_ratio": ratio, "mig": mig,
          "dci_disentanglement": 0.5, "conditioning_fidelity_r2": 0.9}


def test_seeds_are_averaged_and_every_seed_must_halve_the_error():
  rows = [
      _synthetic_row(1.0, 0, "stage one", 30.0, 1.0, 0.1),
      _synthetic_row(1.0, 0, "vae", 10.0, 3.0, 0.1),
      _synthetic_row(1.0, 0, "flow", 0.0, math.inf, 0.1),
      _synthetic_row(1.0, 1, "stage one", 20.0, 1.0, 0.3),
      _synthetic_row(1.0, 1, "vae", 12.0, 1.6, 0.3),  # Not 2x for this seed.
      _synthetic_row(1.0, 1, "flow", 0.0, math.inf, 0.3),
      _synthetic_row(4.0, 0, "stage one", 40.0, 1.0, 0.5),
      _synthetic_row(4.0, 0, "vae", 10.0, 4.0, 0.5),
      _synthetic_row(4.0, 0, "flow", 0.0, math.inf, 0.5),
      _synthetic_row(4.0, 1, "stage one", 40.0, 1.0, 0.4),
      _synthetic_row(4.0, 1, "vae", 0.0, math.inf, 0.4),
      _synthetic_row(4.0, 1, "flow", 0.0, math.inf, 0.4),
  ]
  table = results.markdown_table(rows, "toy").splitlines()
  assert table[2] == ("| 1 | stage one | 25.00 ± 7.07 | 1 (reference) | 0.200 ± 0.141 "
                      "| 0.500 ± 0.000 | 0.900 ± 0.000 |  |")
  assert table[3].startswith("| 1 | vae | 11.00 ± 1.41 | 2.30x ± 0.99 | ")
  assert table[3].endswith("| no |")
  assert table[4].startswith("| 1 | flow | 0.00 ± 0.00 | exact | ")
  assert table[4].endswith("| exact by construction |")
  assert table[6].startswith("| 4 | vae | 5.00 ± 7.07 | 4.00x (+1 exact) | ")
  assert table[6].endswith("| yes |")
  # MS-Flow's exact reconstructions are not evidence for the method.
  assert results.exact_families(rows, "toy") == ["flow"]
  assert results.verdicts(rows, "toy") == {"vae": (1, 2)}
  assert figures.best_beta(rows, "toy") == 4.0


def test_rerun_refuses_a_stage_two_it_could_only_corrupt(study):
  workdir, _ = study
  run = workdir / "dsprites" / "beta4-seed0" / "gmm"
  config = beta_sweep.study_config(str(workdir), "dsprites", _BUDGET, 4.0, 0, "gmm")
  config.stage1.num_steps += 2  # Stage one would be retrained longer ...
  with pytest.raises(run_directory.RunDirectoryError,
                     match="trained on stage one at step 6, but the study's stage one "
                           "now has 8 steps"):
    runs.run_or_load(config, run)
  config = beta_sweep.study_config(str(workdir), "dsprites", _BUDGET, 4.0, 0, "gmm")
  config.stage2.num_steps = 3  # ... or stage two would be cut short.
  with pytest.raises(run_directory.RunDirectoryError,
                     match="--stage2_steps=6"):
    runs.run_or_load(config, run)
  assert json.loads((run / "metrics.json").read_text())["stage2_step"] == 6  # Untouched.


def test_a_reconstruction_exact_up_to_rounding_is_exact():
  stage_one = {"mig": 0.2, "dci/disentanglement": 0.3, "active_latents": 5}
  def family(mse):
    return {"multi_stage/stage1_reconstruction_mse": 100.0,
            "multi_stage/stage1_fidelity_r2": 0.9,
            "multi_stage/stage1_reconstruction_psnr": 20.0,
            "multi_stage/reconstruction_mse": mse,
            "multi_stage/mse_ratio": 100.0 / mse if mse > 0 else None,
            "multi_stage/conditioning_fidelity_r2": 0.8,
            "multi_stage/reconstruction_psnr": 30.0}
  rows = beta_sweep._rows("toy", 1.0, 0, stage_one, 5.0, [
      ("flow", family(9e-12), 1.0), ("gmm", family(0.0), 1.0), ("vae", family(40.0), 1.0)])
  assert [row["mse_ratio"] for row in rows] == [1.0, math.inf, math.inf, 2.5]
  assert [row["mig"] for row in rows] == [0.2] * 4


def test_bad_names_are_refused_before_training(tmp_path):
  with pytest.raises(app.UsageError, match=r"Unknown families \['made_up'\]"):
    beta_sweep.run_study(str(tmp_path), ["dsprites"], [1.0], [0], ["vae", "made_up"], _BUDGET)
  with pytest.raises(app.UsageError, match=r"Unknown data sets \['celeb_a'\]"):
    beta_sweep.run_study(str(tmp_path), ["celeb_a"], [1.0], [0], ["vae"], _BUDGET)
  with pytest.raises(configuration.ConfigError, match="batch_size"):
    beta_sweep.run_study(str(tmp_path), ["dsprites"], [1.0], [0], ["vae"], beta_sweep.Budget(
        "tiny", {"batch_size": 0}, "a broken budget"))
  with pytest.raises(app.UsageError, match="at least one stage-two family"):
    beta_sweep.run_study(str(tmp_path), ["dsprites"], [1.0], [0], [], _BUDGET)
  assert not list(tmp_path.iterdir())
