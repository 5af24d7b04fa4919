r"""The paper's claim on paper-scale stage ones: pretrained PyTorch disentanglers.

For every dSprites checkpoint in --checkpoints (folders holding a `model.pt`
of the Burgess et al. architecture and its `specs.json`, as the public
disentangling-vae code base writes them), this

1. evaluates the imported stage one: the full disentanglement suite (MIG,
   DCI, SAP, modularity and explicitness, BetaVAE and FactorVAE scores),
   reconstruction BCE / MSE / PSNR / SSIM and the FID / KID of its samples;
2. trains each stage-two family on it, frozen, and evaluates the combined
   model: its reconstructions next to stage one's on the same images (both
   from z = the encoder mean, so at the identical MIG), sample FID / KID
   against the same real images, and conditioning fidelity;

each run through `train.train_and_evaluate` exactly as `msdr_jax.main` runs
it (`--config.stage1.checkpoint=<folder>`). It writes, into --workdir:

  results.csv   one row per (checkpoint, model);
  results.md    the table, the verdict per checkpoint (is the best
                multi-stage MSE at least 2x lower, with conditioning fidelity
                R^2 >= 0.9 over the latents carrying >= 0.5 nats?) and how
                it was made;
  reconstruction_vs_mig.png, sample_fid.png, conditioning_fidelity.png
                (`figures.plot_pretrained`: the paper's figure and the two
                per-family comparisons);
  <checkpoint>-reconstructions.png, <checkpoint>-traversals.png.

Runs live in `<workdir>/<checkpoint>/<stage1|model>` and are resumed as the
beta sweep's are (`runs`): rerun the same command after an interruption, or
with more families or variants to add them to the finished ones. A variant is
a family with config overrides, a model of its own in the table:
`--variant=vae:stage2.vae.beta=0.25` trains MS-VAE with beta_2 = 0.25 as
`vae_beta=0.25`.

  python -m experiments.pretrained_study \
      --checkpoints=path/to/disentangling-vae --workdir=runs/pretrained-cpu
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath
import jax
import ml_collections
import numpy as np

from configs import dsprites as dsprites_config
from experiments import results
from experiments import runs
from msdr_jax import cpu_memory
from msdr_jax import families
from msdr_jax import pytorch_import
from msdr_jax import run_directory
from msdr_jax import writers

# The study's verdict: the best family's MSE at least this much lower than
# stage one's, with conditioning fidelity at least `TARGET_FIDELITY` on the
# latents carrying at least `INFORMATIVE_NATS` of KL.
TARGET_RATIO = results.TARGET_RATIO
TARGET_FIDELITY = 0.9
INFORMATIVE_NATS = 0.5


@dataclasses.dataclass(frozen=True)
class Budget:
  """Overrides of the preset for stage one's and the families' runs."""

  stage_one: dict[str, Any]
  stage_two: dict[str, Any]
  # Stage-two steps per family (absent: the preset's).
  stage_two_steps: dict[str, int]
  description: str


BUDGETS = {
    # Stage one: disentanglement_lib's full evaluation (the default eval
    # config), but the BetaVAE and FactorVAE scores on a fifth of its votes.
    # Stage two: the quick preset's learning rate; MS-VAE, the family meant
    # for reconstructions, trains twice its KL warm-up, so that it ends at
    # the full KL weight. Sized to finish five checkpoints in about three
    # hours on a 2-core CPU from the times of the runs in
    # experiments/RESULTS.md.
    "cpu": Budget(
        stage_one={
            "eval.disentanglement.beta_vae.num_train": 2_000,
            "eval.disentanglement.beta_vae.num_eval": 1_000,
            "eval.disentanglement.factor_vae.num_train": 2_000,
            "eval.disentanglement.factor_vae.num_eval": 1_000,
            "eval.sample_quality.num_samples": 5_000,
        },
        stage_two={
            "log_every_steps": 100,
            "checkpoint_every_steps": 500,
            "eval.num_points": 2_000,
            "eval.sample_quality.num_samples": 5_000,
        },
        stage_two_steps={"vae": 1_000, "gmm": 300, "gan": 150, "flow": 150},
        description="stage one scored with the full suite on disentanglement_lib's "
                    "10,000 points (BetaVAE and FactorVAE scores on 2,000 + 1,000 "
                    "votes) and FID/KID on 5,000 samples; stage two at batch 64, "
                    "lr 5e-4, for {steps} steps, each scored on 2,000 images and "
                    "5,000 samples"),
    "paper": Budget(stage_one={}, stage_two={},
                    stage_two_steps=dict.fromkeys(families.FAMILIES, 100_000),
                    description="stage two at the paper's {steps} steps, full evaluation"),
    "tiny": Budget(
        stage_one={"eval.disentanglement.metrics": "mig,sap"},
        stage_two={}, stage_two_steps={},
        description="a few steps ({steps}), for tests"),
}


def dsprites_checkpoints(directory: str) -> list[str]:
  """Names of the sub-folders of `directory` holding a dSprites checkpoint."""
  names = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    specs = pytorch_import.read_specs(path)
    if pytorch_import.is_pytorch_checkpoint(path) and specs.get("dataset") == "dsprites":
      names.append(name)
  return names


@dataclasses.dataclass(frozen=True)
class Model:
  """A stage-two model of the study: a family, with config overrides or none."""

  name: str  # Of its row and its run's folder.
  family: str
  overrides: tuple[tuple[str, Any], ...] = ()


def parse_variant(text: str) -> Model:
  """`family:key=value,key=value` (a --variant) as a `Model` named
  `family_field=value_...`, each value typed as the config field it sets."""
  family, sep, assignments = text.partition(":")
  if not sep or family not in families.FAMILIES:
    raise app.UsageError(
        f"--variant={text!r}: expected family:key=value,... with a family from "
        f"{sorted(families.FAMILIES)}, e.g. vae:stage2.vae.beta=0.25.")
  defaults = dsprites_config.get_config("preset=quick")
  overrides = []
  for item in assignments.split(","):
    key, sep, value = item.partition("=")
    field = defaults
    for part in key.split(".") if sep else ():
      field = field.get(part) if isinstance(field, ml_collections.ConfigDict) else None
    if not sep or field is None or isinstance(field, ml_collections.ConfigDict):
      raise app.UsageError(f"--variant={text!r}: {item!r} does not set a config "
                           "field; use e.g. stage2.vae.beta=0.25.")
    try:
      overrides.append((key, type(field)(value)))
    except ValueError:
      raise app.UsageError(f"--variant={text!r}: {key} takes a "
                           f"{type(field).__name__}, not {value!r}.") from None
  name = "_".join([family, *(f"{key.rsplit('.', 1)[-1]}={value}"
                             for key, value in overrides)])
  return Model(name, family, tuple(overrides))


def study_config(checkpoint: str, budget: Budget, family: str, preset: str,
                 overrides: Sequence[tuple[str, Any]] = ()) -> ml_collections.ConfigDict:
  """The config of one run: `configs/dsprites.py` on the imported stage one.

  `overrides` apply to a stage-two run, after the budget's.
  """
  config = dsprites_config.get_config(f"preset={preset}")
  config.stage1.model.architecture = pytorch_import.ARCHITECTURE
  config.stage1.checkpoint = os.path.abspath(checkpoint)
  config.stage2.family = family
  if family == families.NO_STAGE_TWO:
    config.update_from_flattened_dict(dict(budget.stage_one))
  else:
    config.update_from_flattened_dict(dict(budget.stage_two))
    config.stage2.num_steps = budget.stage_two_steps.get(family, config.stage2.num_steps)
    # The combined model's z is stage one's encoder mean, so its
    # disentanglement is stage one's: scored once, in stage one's run.
    config.eval.disentanglement.metrics = "none"
    config.update_from_flattened_dict(dict(overrides))
  return config


def informative_fidelity(
    metrics: dict, key: str = "multi_stage/conditioning_fidelity_r2_per_latent"
) -> float | None:
  """A per-latent fidelity R^2 (`key`) averaged over the latents with >= 0.5 nats."""
  kl = np.asarray(metrics["kl_per_latent"])
  r2 = np.asarray(metrics[key])
  informative = kl >= INFORMATIVE_NATS
  return float(r2[informative].mean()) if informative.any() else None


def _rows(name: str, specs: dict, stage_one: dict, seconds: float | None,
          family_runs: list[tuple[str, dict, float | None]]) -> list[dict]:
  """Stage one's row, then one per family.

  Stage one's reconstruction error and fidelity come from a family run's
  evaluation, which scores both stages on the same images; its FID and
  disentanglement from its own run (the full suite, more samples).
  """
  first = family_runs[0][1]
  common = {"checkpoint": name, "loss": specs.get("loss", ""),
            "mig": stage_one.get("mig"),
            "dci_disentanglement": stage_one.get("dci/disentanglement"),
            "sap": stage_one.get("sap"),
            "factor_vae_accuracy": stage_one.get("factor_vae/eval_accuracy"),
            "beta_vae_accuracy": stage_one.get("beta_vae/eval_accuracy"),
            "informative_latents": int(np.sum(
                np.asarray(stage_one["kl_per_latent"]) >= INFORMATIVE_NATS))}
  rows = [{**common, "model": results.STAGE_ONE,
           "reconstruction_mse": first["multi_stage/stage1_reconstruction_mse"],
           "reconstruction_bce": first["multi_stage/stage1_reconstruction_bce"],
           "reconstruction_psnr": first["multi_stage/stage1_reconstruction_psnr"],
           "reconstruction_ssim": first["multi_stage/stage1_reconstruction_ssim"],
           "mse_ratio": 1.0,
           "fidelity_r2_informative": informative_fidelity(
               first, "multi_stage/stage1_fidelity_r2_per_latent"),
           "fid": stage_one.get("sample_quality/fid"),
           "kid": stage_one.get("sample_quality/kid"),
           "stage2_step": 0,
           "seconds": seconds}]
  for family, metrics, family_seconds in family_runs:
    mse = metrics["multi_stage/reconstruction_mse"]
    rows.append({**common, "model": family,
                 "reconstruction_mse": mse,
                 "reconstruction_bce": metrics["multi_stage/reconstruction_bce"],
                 "reconstruction_psnr": metrics["multi_stage/reconstruction_psnr"],
                 "reconstruction_ssim": metrics["multi_stage/reconstruction_ssim"],
                 "mse_ratio": (math.inf if mse < runs.EXACT_MSE
                               else metrics["multi_stage/mse_ratio"]),
                 "fidelity_r2_informative": informative_fidelity(metrics),
                 "fid": metrics.get("multi_stage/sample_quality/fid"),
                 "kid": metrics.get("multi_stage/sample_quality/kid"),
                 "stage2_step": metrics["stage2_step"],
                 "seconds": family_seconds})
  return rows


def study_models(family_names: Sequence[str], variants: Sequence[str]) -> list[Model]:
  """The families (`--families`), then the variants (`--variant`)."""
  unknown = sorted(set(family_names) - set(families.FAMILIES))
  if not (family_names or variants) or unknown:
    raise app.UsageError(
        f"--families must name stage-two families from {sorted(families.FAMILIES)} "
        f"(got {list(family_names)}).")
  return [*(Model(family, family) for family in family_names),
          *map(parse_variant, variants)]


def study_configs(checkpoints_dir: str, names: Sequence[str], models: Sequence[Model],
                  budget: Budget, preset: str) -> dict[tuple[str, str], Any]:
  """Every run's config by (checkpoint, `families.NO_STAGE_TWO` or model name)."""
  configs = {}
  for name in names:
    checkpoint = os.path.join(checkpoints_dir, name)
    configs[name, families.NO_STAGE_TWO] = study_config(
        checkpoint, budget, families.NO_STAGE_TWO, preset)
    for model in models:
      configs[name, model.name] = study_config(
          checkpoint, budget, model.family, preset, model.overrides)
  return configs


def run_study(checkpoints_dir: str, workdir: str, names: Sequence[str],
              models: Sequence[Model], budget: Budget, preset: str,
              train: bool = True) -> list[dict]:
  """Evaluates each checkpoint, trains and evaluates each model on it.

  With `train=False` nothing runs: the rows are those of the finished runs
  (a checkpoint whose stage one or models have none finished has no rows).
  """
  configs = study_configs(checkpoints_dir, names, models, budget, preset)
  run = runs.study_runner(configs.values(), train)

  rows = []
  for name in names:
    root = epath.Path(workdir) / name
    stage_one, seconds = run(configs[name, families.NO_STAGE_TWO], root / "stage1",
                             f"{name} {results.STAGE_ONE}")
    family_runs = []
    for model in models:
      metrics, model_seconds = run(configs[name, model.name], root / model.name,
                                   f"{name} {model.name}")
      if metrics is not None:
        family_runs.append((model.name, metrics, model_seconds))
    if stage_one is None or not family_runs:
      continue
    specs = pytorch_import.read_specs(os.path.join(checkpoints_dir, name))
    rows.extend(_rows(name, specs, stage_one, seconds, family_runs))
  return rows


_COLUMNS = (
    ("MIG", "mig", "{:.3f}"),
    ("DCI-D", "dci_disentanglement", "{:.3f}"),
    ("BCE", "reconstruction_bce", "{:.2f}"),
    ("MSE", "reconstruction_mse", "{:.3f}"),
    ("MSE ratio", "mse_ratio", "{:.2f}x"),
    ("PSNR", "reconstruction_psnr", "{:.2f}"),
    ("SSIM", "reconstruction_ssim", "{:.3f}"),
    ("FID", "fid", "{:.2f}"),
    ("fidelity R^2 (>= 0.5 nats)", "fidelity_r2_informative", "{:.3f}"),
)


def verdict(rows: list[dict], name: str) -> tuple[bool, str]:
  """(met, sentence): is the best qualifying family >= 2x lower in MSE?"""
  candidates = [row for row in rows if row["checkpoint"] == name
                and row["model"] != results.STAGE_ONE and not math.isinf(row["mse_ratio"])]
  faithful = [row for row in candidates
              if (row["fidelity_r2_informative"] or 0.0) >= TARGET_FIDELITY]
  if not faithful:
    return False, (f"{name}: no family keeps fidelity R^2 >= {TARGET_FIDELITY:g} on the "
                   "informative latents.")
  best = max(faithful, key=lambda row: row["mse_ratio"])
  met = best["mse_ratio"] >= TARGET_RATIO
  outcome = "met" if met else f"missed by {TARGET_RATIO / best['mse_ratio']:.2f}x"
  return met, (f"{name}: best faithful family {best['model']} at "
               f"{best['mse_ratio']:.2f}x lower MSE (fidelity R^2 "
               f"{best['fidelity_r2_informative']:.3f}): {outcome}.")


def report(rows: list[dict], names: Sequence[str], budget_name: str, budget: Budget,
           seconds: float, command: str) -> str:
  """results.md: the table, the verdicts and how they were made."""
  machine = results.machine()
  header = ["checkpoint", "model", *(column for column, _, _ in _COLUMNS)]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    lines.append("| " + " | ".join(
        [row["checkpoint"], row["model"],
         *(results.cell(row[key], fmt) for _, key, fmt in _COLUMNS)]) + " |")
  verdicts = [verdict(rows, name)[1] for name in names]
  timed = sum(row["seconds"] is not None for row in rows)
  steps = ", ".join(f"{family} {row['stage2_step']:,}" for family, row in
                    {row["model"]: row for row in rows
                     if row["model"] != results.STAGE_ONE}.items())
  return "\n".join([
      f"`{command}`\n",
      f"Budget `{budget_name}`: {budget.description.format(steps=steps)}. "
      f"{machine}. This invocation "
      f"trained or evaluated {timed} of the {len(rows)} runs (the others were "
      f"finished) in {writers.format_duration(seconds)}. MSE and BCE are per "
      "image; stage one and each multi-stage model are scored on the same "
      "images, both from z = stage one's encoder mean, so at the identical MIG. "
      "Fidelity R^2: stage one's re-encoding of images generated from z with "
      f"w ~ p(w), averaged over the latents with >= {INFORMATIVE_NATS:g} nats "
      "(stage one's own row: its own reconstructions).\n",
      "\n".join(lines) + "\n",
      "\n".join(f"- {line}" for line in verdicts) + "\n",
  ])


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when it runs, so that importing this
  module next to the beta sweep (whose flags share names) works."""
  flags.DEFINE_string("checkpoints", None,
                      "Folder of checkpoint folders (model.pt + specs.json).",
                      required=True)
  flags.DEFINE_string("workdir", None, "Directory of the study.", required=True)
  flags.DEFINE_list("models", None,
                    "Checkpoint folders to use (default: every dSprites one).")
  flags.DEFINE_list("families", sorted(families.FAMILIES),
                    "Stage-two families trained on each stage one.")
  flags.DEFINE_enum("budget", "cpu", sorted(BUDGETS), "Scale of every run.")
  flags.DEFINE_integer("stage2_steps", None,
                       "Stage-two steps of every family (default: the budget's).")
  flags.DEFINE_bool("report_finished", False,
                    "Train nothing: report the finished runs (say which runs "
                    "are not), e.g. while the study runs in another process.")
  flags.DEFINE_multi_string(
      "variant", [], "A family with config overrides, run as a model of its own "
      "next to --families: family:key=value,... (e.g. vae:stage2.vae.beta=0.25; "
      "repeat the flag for more).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here: matplotlib is only needed to draw (the `experiments` extra).
  from experiments import figures  # pylint: disable=g-import-not-at-top

  writers.filter_library_logs()
  cpu_memory.reuse_step_memory()  # As msdr_jax.main trains on a CPU.
  if not os.path.isdir(FLAGS.checkpoints):
    raise app.UsageError(f"--checkpoints={FLAGS.checkpoints} is not a directory.")
  names = FLAGS.models or dsprites_checkpoints(FLAGS.checkpoints)
  if not names:
    raise app.UsageError(f"{FLAGS.checkpoints} holds no dSprites checkpoint folder "
                         "(model.pt with a specs.json whose dataset is dsprites).")
  missing = [name for name in names if not pytorch_import.is_pytorch_checkpoint(
      os.path.join(FLAGS.checkpoints, name))]
  if missing:
    raise app.UsageError(f"--models: {', '.join(missing)} in {FLAGS.checkpoints} "
                         f"hold no {pytorch_import.CHECKPOINT_FILENAME}.")
  budget = BUDGETS[FLAGS.budget]
  if FLAGS.stage2_steps is not None:
    budget = dataclasses.replace(budget, stage_two_steps=dict.fromkeys(
        families.FAMILIES, FLAGS.stage2_steps))
  preset = "tiny" if FLAGS.budget == "tiny" else "quick"
  root = epath.Path(FLAGS.workdir)
  root.mkdir(parents=True, exist_ok=True)
  # Every stage two compiles the same programs: a persistent cache does it once.
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(root / "compilation_cache"))
  models = study_models(FLAGS.families, FLAGS.variant)
  start = time.time()
  try:
    rows = run_study(FLAGS.checkpoints, FLAGS.workdir, names, models, budget, preset,
                     train=not FLAGS.report_finished)
  except run_directory.RunDirectoryError as e:
    print(f"pretrained_study: error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  seconds = time.time() - start
  reported = {(row["checkpoint"], row["model"]) for row in rows}
  unfinished = [f"{name} {model}" for name in names
                for model in (results.STAGE_ONE, *(model.name for model in models))
                if (name, model) not in reported]
  names = [name for name in names if (name, results.STAGE_ONE) in reported]
  if not names:
    raise app.UsageError(f"{FLAGS.workdir} holds no finished run of these models yet.")
  configs = {(name, model): config for (name, model), config in study_configs(
      FLAGS.checkpoints, names, models, budget, preset).items()
             if model == families.NO_STAGE_TWO or (name, model) in reported}
  results.write_csv(root / "results.csv", rows)
  command = " ".join(["python -m experiments.pretrained_study", *sys.argv[1:]])
  text = report(rows, names, FLAGS.budget, budget, seconds, command)
  if unfinished:
    text += f"\nNot finished, so not in the table: {', '.join(unfinished)}.\n"
  (root / "results.md").write_text(text)
  figures.plot_pretrained(rows, root)
  for name in names:
    figures.model_figures({model: config for (checkpoint, model), config
                           in configs.items() if checkpoint == name},
                          root / name, root / name)
  print(text, flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
