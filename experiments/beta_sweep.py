r"""The paper's study: reconstruction vs disentanglement over beta-TCVAE's beta.

For every data set, beta and seed this trains one stage one (beta-TCVAE),
then each stage-two family on it, frozen, and evaluates them all, each run
through `train.train_and_evaluate` exactly as `msdr_jax.main` runs it. It
then writes, into the study's work directory:

  results.csv            one row per (data set, beta, seed, model);
  results.md             per data set and beta: stage one vs each multi-stage
                         model (mean over seeds): reconstruction MSE, MSE
                         ratio, MIG, DCI disentanglement, conditioning
                         fidelity R^2;
  reconstruction_vs_beta.png, disentanglement_vs_beta.png,
  <data>-beta<b>-reconstructions.png, <data>-beta<b>-traversals.png
                         (see `figures`; b: --figure_beta, by default the
                         beta with the highest MIG).

Runs live in `<workdir>/<data>/beta<b>-seed<s>/<stage1|family>`. A run whose
evaluation finished is not redone, so an interrupted study resumes where it
stopped when the same command is rerun (with the same --workdir string:
stage-two runs record their stage one's path); a run directory that holds
another config, or a stage two that the rerun could only corrupt, is refused
(`run_directory.RunDirectoryError`).

`--budget` picks the scale:
  cpu   -- both data sets on a 2-core CPU in about 1.5 hours (aimed at one;
           experiments/RESULTS.md has what it took and what it shows);
  paper -- disentanglement_lib's scale (300k + 100k steps, the full metric
           suite and FID/KID on 10,000 samples), for GPUs and TPUs;
  tiny  -- a few steps, for tests.

  python -m experiments.beta_sweep --budget=cpu --workdir=runs/beta-sweep-cpu
  python -m experiments.beta_sweep --budget=paper --seeds=0,1,2 \
      --workdir=runs/beta-sweep-paper
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath
import jax
import ml_collections

from experiments import results
from experiments import runs
from msdr_jax import cpu_memory
from msdr_jax import families
from msdr_jax import writers

DEFAULT_BETAS = (1.0, 2.0, 4.0, 6.0, 8.0, 10.0)
# The data sets the study runs without a download: config files in configs/
# whose default source is the procedural renderer (labelled factors, so the
# disentanglement is scored). The Shapes3D scenes are a look-alike renderer.
DATA_SETS = ("dsprites", "shapes3d", "dsprites_textured")


@dataclasses.dataclass(frozen=True)
class Budget:
  """A study scale: a config preset plus overrides for every run."""

  preset: str
  overrides: dict[str, Any]
  description: str


# The metrics the study reports; the cheap budgets compute only these.
_STUDY_METRICS = "mig,dci"
BUDGETS = {
    "paper": Budget("paper", {}, "disentanglement_lib's settings and the full "
                    "evaluation"),
    # 2 data sets x 6 betas x (stage one + 4 families): about 1.4 hours of
    # runs on a 2-core CPU, a third of it compiling and evaluating (see
    # experiments/RESULTS.md for what these steps buy). The learning rate and
    # batch are the quick preset's.
    "cpu": Budget("quick", {
        "stage1.num_steps": 800,
        "stage2.num_steps": 100,
        "log_every_steps": 100,
        "checkpoint_every_steps": 400,
        "eval.num_points": 1_000,
        "eval.batch_size": 500,
        "eval.disentanglement.metrics": _STUDY_METRICS,
        "eval.disentanglement.num_train": 1_000,
        "eval.disentanglement.num_test": 500,
        "eval.sample_quality.num_samples": 0,
    }, "the quick preset's learning rate (5e-4), reconstructions on 1,000 images, "
       "MIG and DCI on 1,000 + 500 points, no FID"),
    "tiny": Budget("tiny", {
        "eval.disentanglement.metrics": _STUDY_METRICS,
        "eval.sample_quality.num_samples": 0,
    }, "a few steps, for tests"),
}

def study_config(workdir: str, data_name: str, budget: Budget, beta: float, seed: int,
                 family: str) -> ml_collections.ConfigDict:
  """The config of one run of the study in `workdir`.

  `configs/<data_name>.py` at the budget's scale; a stage-two run loads the
  stage one of its (data, beta, seed) (`run_directory(...) / "stage1"`).
  """
  module = importlib.import_module(f"configs.{data_name}")
  config = module.get_config(f"preset={budget.preset}")
  config.update_from_flattened_dict(dict(budget.overrides))
  config.stage1.objective.beta = float(beta)
  config.seed = int(seed)
  config.stage2.family = family
  if family != families.NO_STAGE_TWO:
    # A multi-stage model's z is stage one's encoder mean, unchanged, so its
    # disentanglement scores are stage one's: computed once, in that run.
    config.eval.disentanglement.metrics = "none"
    config.stage1.checkpoint = str(run_directory(workdir, data_name, beta, seed) / "stage1")
  return config


def run_directory(workdir: str, data_name: str, beta: float, seed: int) -> epath.Path:
  return epath.Path(workdir) / data_name / f"beta{beta:g}-seed{seed}"


def _rows(data_name, beta, seed, stage_one_metrics, stage_one_seconds, family_runs):
  """Stage one's row, then one per family, from the runs' metrics.

  Every number compares like with like: a family run's evaluation scores
  stage one and the multi-stage model on the same images, both from z = the
  encoder mean, so stage one's reconstruction error and conditioning
  fidelity come from there (the same in every family run: the same images
  and stage one). MIG and DCI are stage one's: the models share its z.
  """
  first = family_runs[0][1]
  common = {"data": data_name, "beta": beta, "seed": seed,
            "mig": stage_one_metrics.get("mig"),
            "dci_disentanglement": stage_one_metrics.get("dci/disentanglement"),
            "active_latents": stage_one_metrics.get("active_latents")}
  rows = [{**common, "model": results.STAGE_ONE,
           "reconstruction_mse": first["multi_stage/stage1_reconstruction_mse"],
           "mse_ratio": 1.0,
           "conditioning_fidelity_r2": first["multi_stage/stage1_fidelity_r2"],
           "reconstruction_psnr": first["multi_stage/stage1_reconstruction_psnr"],
           "seconds": stage_one_seconds}]
  for name, metrics, seconds in family_runs:
    mse = metrics["multi_stage/reconstruction_mse"]
    rows.append({**common, "model": name,
                 "reconstruction_mse": mse,
                 # MS-Flow is a bijection: its error is float rounding (1e-11
                 # on Shapes3D), not a ratio worth printing.
                 "mse_ratio": (math.inf if mse < runs.EXACT_MSE
                               else metrics["multi_stage/mse_ratio"]),
                 "conditioning_fidelity_r2": metrics["multi_stage/conditioning_fidelity_r2"],
                 "reconstruction_psnr": metrics["multi_stage/reconstruction_psnr"],
                 "seconds": seconds})
  return rows


def run_study(workdir: str, data_names: Sequence[str], betas: Sequence[float],
              seeds: Sequence[int], family_names: Sequence[str],
              budget: Budget) -> list[dict]:
  """Trains and evaluates every run of the study; returns one row per model."""
  if not family_names:
    raise app.UsageError("The study needs at least one stage-two family (--families).")
  unknown = sorted(set(family_names) - set(families.FAMILIES))
  if unknown:
    raise app.UsageError(
        f"Unknown families {unknown}; choose from {sorted(families.FAMILIES)}.")
  unknown = sorted(set(data_names) - set(DATA_SETS))
  if unknown:
    raise app.UsageError(f"Unknown data sets {unknown}; choose from {list(DATA_SETS)}.")
  configs = {(data_name, beta, seed, family): study_config(
      workdir, data_name, budget, beta, seed, family)
      for data_name in data_names for beta in betas for seed in seeds
      for family in (families.NO_STAGE_TWO, *family_names)}
  run = runs.study_runner(configs.values())
  rows = []
  for data_name in data_names:
    for beta in betas:
      for seed in seeds:
        root = run_directory(workdir, data_name, beta, seed)
        config = configs[data_name, beta, seed, families.NO_STAGE_TWO]
        name = f"{data_name} beta {beta:g} seed {seed}"
        stage_one_metrics, stage_one_seconds = run(config, root / "stage1",
                                                   f"{name} stage one")
        family_runs = []
        for family in family_names:
          metrics, seconds = run(configs[data_name, beta, seed, family], root / family,
                                 f"{name} {family}")
          family_runs.append((family, metrics, seconds))
        rows.extend(_rows(data_name, beta, seed, stage_one_metrics, stage_one_seconds,
                          family_runs))
  return rows


def report(rows: list[dict], data_names: Sequence[str], budget_name: str,
           budget: Budget, seconds: float, command: str) -> str:
  """results.md: the tables, the verdicts and how they were made."""
  config = study_config("", data_names[0], budget, 1.0, 0, families.NO_STAGE_TWO)
  machine = results.machine()
  parts = [
      f"`{command}`\n",
      f"Budget `{budget_name}`: {config.stage1.num_steps} stage-one and "
      f"{config.stage2.num_steps} stage-two steps at batch {config.batch_size}; "
      f"{budget.description}. {machine}. This invocation trained and evaluated "
      f"{sum(row['seconds'] is not None for row in rows)} of the {len(rows)} runs "
      f"(the others were finished) in {writers.format_duration(seconds)}. "
      "Reconstruction errors are squared errors per "
      "image, stage one and the multi-stage model on the same images, both from z = "
      "stage one's encoder mean; MIG and DCI are stage one's (the models share z).\n",
  ]
  for data_name in data_names:
    parts.append(f"## {data_name}\n\n{results.markdown_table(rows, data_name)}\n")
    summary = ", ".join(f"{model} {hits}/{total}"
                        for model, (hits, total) in results.verdicts(rows, data_name).items())
    line = (f"Betas where the multi-stage MSE is at least {results.TARGET_RATIO:g}x lower "
            f"than stage one's (same z, so equal MIG): {summary or 'none compared'}.")
    exact = results.exact_families(rows, data_name)
    if exact:
      line += (f" Not counted: {', '.join(exact)}, whose reconstruction is exact by "
               "construction (a bijection).")
    parts.append(line + "\n")
  return "\n".join(parts)


_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the study.", required=True)
_BUDGET = flags.DEFINE_enum("budget", "cpu", sorted(BUDGETS), "Scale of every run.")
_DATA = flags.DEFINE_list("data", ["dsprites", "shapes3d"],
                          f"Data sets (config files in configs/): {', '.join(DATA_SETS)}.")
_BETAS = flags.DEFINE_list("betas", [f"{b:g}" for b in DEFAULT_BETAS], "beta-TCVAE betas.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (config.seed) per beta.")
_FAMILIES = flags.DEFINE_list("families", sorted(families.FAMILIES),
                              "Stage-two families trained on each stage one.")
_STAGE1_STEPS = flags.DEFINE_integer(
    "stage1_steps", None, "Stage-one steps (default: the budget's).")
_STAGE2_STEPS = flags.DEFINE_integer(
    "stage2_steps", None, "Stage-two steps (default: the budget's).")
_FIGURE_BETA = flags.DEFINE_float(
    "figure_beta", None, "Beta of the reconstruction and traversal figures "
    "(default: the beta with the highest mean MIG).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here: matplotlib is only needed to draw (the `experiments` extra).
  from experiments import figures  # pylint: disable=g-import-not-at-top

  writers.filter_library_logs()
  cpu_memory.reuse_step_memory()  # As msdr_jax.main trains on a CPU.
  try:
    betas = [float(b) for b in _BETAS.value]
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError as e:
    raise app.UsageError(f"--betas takes numbers and --seeds integers: {e}") from e
  if _FIGURE_BETA.value is not None and _FIGURE_BETA.value not in betas:
    raise app.UsageError(f"--figure_beta={_FIGURE_BETA.value:g} is not one of --betas.")
  budget = BUDGETS[_BUDGET.value]
  steps = {"stage1.num_steps": _STAGE1_STEPS.value, "stage2.num_steps": _STAGE2_STEPS.value}
  if any(value is not None for value in steps.values()):
    budget = dataclasses.replace(budget, overrides={
        **budget.overrides, **{k: v for k, v in steps.items() if v is not None}})
  root = epath.Path(_WORKDIR.value)
  root.mkdir(parents=True, exist_ok=True)
  # Every run compiles the same evaluation and stage-two programs (stage
  # one's depend on beta): a persistent cache compiles each once.
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(root / "compilation_cache"))
  start = time.time()
  rows = run_study(_WORKDIR.value, _DATA.value, betas, seeds, _FAMILIES.value, budget)
  seconds = time.time() - start
  results.write_csv(root / "results.csv", rows)
  command = " ".join(["python -m experiments.beta_sweep", *sys.argv[1:]])
  text = report(rows, _DATA.value, _BUDGET.value, budget, seconds, command)
  (root / "results.md").write_text(text)
  figures.plot_against_beta(rows, root)
  for data_name in _DATA.value:
    beta = _FIGURE_BETA.value
    if beta is None:
      beta = figures.best_beta(rows, data_name)
    configs = {name: study_config(_WORKDIR.value, data_name, budget, beta, seeds[0], name)
               for name in (families.NO_STAGE_TWO, *_FAMILIES.value)}
    figures.model_figures(configs, run_directory(_WORKDIR.value, data_name, beta, seeds[0]),
                          root / f"{data_name}-beta{beta:g}")
  print(text, flush=True)


if __name__ == "__main__":
  app.run(main)
