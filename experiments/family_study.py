r"""Every stage-two family on the same frozen stage one, at the same budget.

For each stage one of --stage_ones,

  dsprites   a beta-TCVAE trained here on procedural dSprites
             (`configs/dsprites.py`, quick preset, --stage1_steps steps);
  dsprites_textured   the same on textured dSprites, whose sprites carry a
             texture the factors do not determine
             (`configs/dsprites_textured.py`);
  shapes3d   the same on procedural Shapes3D (`configs/shapes3d.py`);
  <folder>   a PyTorch checkpoint folder in --pretrained (model.pt and
             specs.json of the public disentangling-vae code, e.g.
             btcvae_dsprites), imported as in `pretrained_study`;

this trains each family of --families (and each --variant) on it, frozen, for
the same --stage2_steps, each run through `train.train_and_evaluate` as
`msdr_jax.main` runs it, and writes into --workdir:

  results.csv            one row per (stage one, model);
  results.md             the table: per image MSE and BCE of reconstructions
                         from z = stage one's encoder mean (the same images for
                         every row), bits/dim of x given that z, sample FID
                         (the library's extractor, the same real images),
                         conditioning fidelity R^2, steps and minutes, and on
                         the dSprites data sets the squared error on the
                         sprite's pixels alone;
  <stage one>-samples.png           stage one's dec(z) and each family's
                                    sample from the same z;
  <stage one>-reconstructions.png, <stage one>-traversals.png.

Bits/dim is -log2 P(x | z) per pixel of the discrete images: stage one's
exactly (its Bernoulli decoder), MS-Flow's bound by dequantisation, MS-VAE's
and MS-GAN's negative ELBO over w. It is given where such a likelihood
exists: on binary images (dSprites) for every model but MS-GMM (a Gaussian
density of pixel values), on 8-bit images for MS-Flow only.

Runs live in `<workdir>/<stage one>/<stage1|model>` and are resumed as the
other studies' are (`runs`): rerun the same command after an interruption.

  python -m experiments.family_study --workdir=runs/families \
      --pretrained=path/to/disentangling-vae
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

from configs import dsprites as dsprites_config
from configs import dsprites_textured as dsprites_textured_config
from configs import shapes3d as shapes3d_config
from experiments import pretrained_study
from experiments import results
from experiments import runs
from msdr_jax import cpu_memory
from msdr_jax import families
from msdr_jax import pytorch_import
from msdr_jax import run_directory
from msdr_jax import writers
from msdr_jax.data import dsprites as dsprites_data

# Stage ones trained here, by --stage_ones name: their config module.
TRAINED_HERE = {"dsprites": dsprites_config, "dsprites_textured": dsprites_textured_config,
                "shapes3d": shapes3d_config}
# Data sets on a black background, where the non-black pixels are the object.
BLACK_BACKGROUND = ("dsprites", "dsprites_textured")
# Data sets whose images are binary, where Bernoulli likelihoods are
# probabilities of the discrete images: their pixels per image.
BINARY_DATA_PIXELS = {"dsprites": dsprites_data.IMAGE_SIZE ** 2}


@dataclasses.dataclass(frozen=True)
class Budget:
  """Overrides of the preset for stage one's and the families' runs."""

  preset: str
  stage_one: dict[str, Any]
  stage_two: dict[str, Any]
  description: str


BUDGETS = {
    # Sized for three stage ones and four families in about 1.5 hours on a
    # 2-core CPU.
    "cpu": Budget(
        preset="quick",
        stage_one={
            "eval.num_points": 2_000,
            "eval.disentanglement.metrics": "mig,dci",
            "eval.sample_quality.num_samples": 5_000,
        },
        stage_two={
            "log_every_steps": 100,
            "eval.num_points": 2_000,
            "eval.sample_quality.num_samples": 5_000,
        },
        description="the quick preset (batch 64, lr 5e-4); stage ones trained here "
                    "for {stage1_steps} steps; every family for {stage2_steps} steps; "
                    "scores on 2,000 images, FID on 5,000 samples"),
    "tiny": Budget(preset="tiny", stage_one={"eval.disentanglement.metrics": "mig"},
                   stage_two={}, description="a few steps, for tests"),
}


def study_config(stage_one: str, pretrained: str | None, workdir: str, budget: Budget,
                 stage1_steps: int, stage2_steps: int, model: pretrained_study.Model | None
                 ) -> ml_collections.ConfigDict:
  """The config of one run: stage one's (`model` None) or a family's on it."""
  if stage_one in TRAINED_HERE:
    config = TRAINED_HERE[stage_one].get_config(f"preset={budget.preset}")
    config.stage1.num_steps = stage1_steps
    checkpoint = os.path.join(os.path.abspath(workdir), stage_one, "stage1")
  else:
    config = dsprites_config.get_config(f"preset={budget.preset}")
    config.stage1.model.architecture = pytorch_import.ARCHITECTURE
    checkpoint = os.path.abspath(os.path.join(pretrained, stage_one))
  # A stage one trained here is trained by its own run and loaded by the
  # families'; an imported one is loaded by every run.
  if model is not None or stage_one not in TRAINED_HERE:
    config.stage1.checkpoint = checkpoint
  if model is None:
    config.stage2.family = families.NO_STAGE_TWO
    config.update_from_flattened_dict(dict(budget.stage_one))
    return config
  config.stage2.family = model.family
  config.stage2.num_steps = stage2_steps
  config.update_from_flattened_dict(dict(budget.stage_two))
  # Every model shares stage one's z: disentanglement is scored in its run.
  config.eval.disentanglement.metrics = "none"
  config.update_from_flattened_dict(dict(model.overrides))
  return config


def _bits_per_dim(bce: float | None, config: ml_collections.ConfigDict) -> float | None:
  """Stage one's -log2 P(x | z) per pixel, from its per-image BCE (nats)."""
  if bce is None or config.data.name not in BINARY_DATA_PIXELS:
    return None
  return bce / (BINARY_DATA_PIXELS[config.data.name] * math.log(2.0))


def _rows(stage_one: str, configs: dict[str, ml_collections.ConfigDict],
          stage_one_run: tuple[dict, float | None],
          model_runs: list[tuple[str, dict, float | None]]) -> list[dict]:
  """Stage one's row, then one per model.

  Stage one's reconstruction scores come from a model's evaluation, which
  scores both stages on the same images; its FID from its own run.
  """
  stage_one_metrics, stage_one_seconds = stage_one_run
  first = model_runs[0][1]
  stage_one_config = configs[families.NO_STAGE_TWO]
  imported = pytorch_import.is_pytorch_checkpoint(stage_one_config.stage1.checkpoint)
  on_black = stage_one_config.data.name in BLACK_BACKGROUND
  common = {"stage_one": stage_one, "mig": stage_one_metrics.get("mig"),
            "dci_disentanglement": stage_one_metrics.get("dci/disentanglement")}
  minutes = lambda seconds: None if seconds is None else seconds / 60
  rows = [{**common, "model": results.STAGE_ONE,
           "reconstruction_mse": first["multi_stage/stage1_reconstruction_mse"],
           "reconstruction_bce": first["multi_stage/stage1_reconstruction_bce"],
           "foreground_mse": (first.get("multi_stage/stage1_reconstruction_foreground_mse")
                              if on_black else None),
           "bits_per_dim": _bits_per_dim(
               first["multi_stage/stage1_reconstruction_bce"], stage_one_config),
           "fid": stage_one_metrics.get("sample_quality/fid"),
           "fidelity_r2_informative": pretrained_study.informative_fidelity(
               first, "multi_stage/stage1_fidelity_r2_per_latent"),
           "steps": "imported" if imported else stage_one_config.stage1.num_steps,
           "minutes": minutes(stage_one_seconds)}]
  for name, metrics, seconds in model_runs:
    family = configs[name].stage2.family
    exact_likelihood = family == "flow" or (
        family in ("vae", "gan") and stage_one_config.data.name in BINARY_DATA_PIXELS)
    rows.append({**common, "model": name,
                 "reconstruction_mse": metrics["multi_stage/reconstruction_mse"],
                 "reconstruction_bce": metrics["multi_stage/reconstruction_bce"],
                 "foreground_mse": (metrics.get("multi_stage/reconstruction_foreground_mse")
                                    if on_black else None),
                 "bits_per_dim": (metrics.get("stage2/bits_per_dim")
                                  if exact_likelihood else None),
                 "fid": metrics.get("multi_stage/sample_quality/fid"),
                 "fidelity_r2_informative": pretrained_study.informative_fidelity(metrics),
                 "steps": metrics["stage2_step"],
                 "minutes": minutes(seconds)})
  return rows


def study_configs(stage_ones: Sequence[str], pretrained: str | None, workdir: str,
                  models: Sequence[pretrained_study.Model], budget: Budget,
                  stage1_steps: int, stage2_steps: int
                  ) -> dict[str, dict[str, ml_collections.ConfigDict]]:
  """Every run's config: {stage one: {families.NO_STAGE_TWO or model name: config}}."""
  return {
      stage_one: {
          families.NO_STAGE_TWO: study_config(stage_one, pretrained, workdir, budget,
                                              stage1_steps, stage2_steps, None),
          **{model.name: study_config(stage_one, pretrained, workdir, budget,
                                      stage1_steps, stage2_steps, model)
             for model in models}}
      for stage_one in stage_ones}


def run_study(configs: dict[str, dict[str, ml_collections.ConfigDict]], workdir: str,
              train: bool = True) -> list[dict]:
  """Runs (or reuses) every run; the rows of each stage one whose runs finished.

  With `train=False` nothing runs: the rows are those of the finished runs.
  """
  run = runs.study_runner(
      [config for group in configs.values() for config in group.values()], train)

  rows = []
  for stage_one, group in configs.items():
    root = epath.Path(workdir) / stage_one
    stage_one_run = run(group[families.NO_STAGE_TWO], root / "stage1",
                        f"{stage_one} {results.STAGE_ONE}")
    model_runs = []
    for name, config in group.items():
      if name != families.NO_STAGE_TWO:
        metrics, seconds = run(config, root / name, f"{stage_one} {name}")
        if metrics is not None:
          model_runs.append((name, metrics, seconds))
    if stage_one_run[0] is not None and model_runs:
      rows.extend(_rows(stage_one, group, stage_one_run, model_runs))
  return rows


_COLUMNS = (
    ("MSE", "reconstruction_mse", "{:.3f}"),
    ("MSE on the sprite", "foreground_mse", "{:.3f}"),
    ("BCE", "reconstruction_bce", "{:.2f}"),
    ("bits/dim given z", "bits_per_dim", "{:.5f}"),
    ("FID", "fid", "{:.4f}"),
    ("fidelity R^2", "fidelity_r2_informative", "{:.3f}"),
    ("steps", "steps", "{}"),
    ("minutes", "minutes", "{:.1f}"),
)


def report(rows: list[dict], description: str, seconds: float, command: str) -> str:
  """results.md: how the runs were made, then one table per stage one."""
  machine = results.machine()
  header = ["model", *(column for column, _, _ in _COLUMNS)]
  sections = []
  for stage_one in dict.fromkeys(row["stage_one"] for row in rows):
    group = [row for row in rows if row["stage_one"] == stage_one]
    mig = group[0]["mig"]
    lines = [f"### {stage_one} (MIG {results.cell(mig, '{:.3f}')}, shared by every row)\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([row["model"], *(results.cell(row[key], fmt)
                                                 for _, key, fmt in _COLUMNS)]) + " |"
              for row in group]
    sections.append("\n".join(lines) + "\n")
  timed = sum(row["minutes"] is not None for row in rows)
  return "\n".join([
      f"`{command}`\n",
      f"Budget: {description}. {machine}. This invocation trained or evaluated "
      f"{timed} of the {len(rows)} runs (the others were finished) in "
      f"{writers.format_duration(seconds)}. MSE and BCE are per image, of "
      "reconstructions from z = stage one's encoder mean, on the same images for "
      "every row. Bits/dim given z: -log2 P(x | z) per pixel (stage one's exact, "
      "MS-Flow's by dequantisation, MS-VAE's and MS-GAN's their negative ELBO "
      "over w; n/a where the model has no probability of the discrete images). "
      "FID: samples of z ~ N(0, I) and w ~ p(w) against the same real images, on "
      "the library's features. Fidelity R^2: stage one's re-encoding of samples "
      f"from z, over the latents with >= {pretrained_study.INFORMATIVE_NATS:g} nats "
      "(stage one's row: its own reconstructions). Minutes: each run's wall time, "
      "evaluation included.\n",
      *sections,
  ])


def write_outputs(configs: dict[str, dict[str, ml_collections.ConfigDict]],
                  rows: list[dict], text: str, root: epath.Path) -> None:
  """results.csv, results.md (`text`) and each stage one's figures into `root`."""
  # Imported here: matplotlib is only needed to draw (the `experiments` extra).
  from experiments import figures  # pylint: disable=g-import-not-at-top

  results.write_csv(root / "results.csv", rows)
  (root / "results.md").write_text(text)
  finished = {(row["stage_one"], row["model"]) for row in rows}
  for stage_one, group in configs.items():
    done = {name: config for name, config in group.items()
            if name == families.NO_STAGE_TWO or (stage_one, name) in finished}
    if len(done) > 1:
      figures.samples_from_same_z(done, root / stage_one, root / f"{stage_one}-samples.png")
      figures.model_figures(done, root / stage_one, root / stage_one)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when it runs (see `pretrained_study`)."""
  flags.DEFINE_string("workdir", None, "Directory of the study.", required=True)
  flags.DEFINE_list("stage_ones",
                    ["dsprites", "dsprites_textured", "shapes3d", "btcvae_dsprites"],
                    f"Stage ones: {sorted(TRAINED_HERE)} (trained here) or checkpoint "
                    "folders in --pretrained.")
  flags.DEFINE_string("pretrained", None,
                      "Folder of PyTorch checkpoint folders (model.pt + specs.json).")
  flags.DEFINE_list("families", ["vae", "gan", "flow", "gmm"],
                    "Stage-two families trained on each stage one.")
  flags.DEFINE_multi_string(
      "variant", [], "A family with config overrides, as in pretrained_study: "
      "family:key=value,... (repeat the flag for more).")
  flags.DEFINE_enum("budget", "cpu", sorted(BUDGETS), "Scale of every run.")
  flags.DEFINE_integer("stage1_steps", 3_000, "Steps of the stage ones trained here.")
  flags.DEFINE_integer("stage2_steps", 300, "Steps of every stage-two model.")
  flags.DEFINE_bool("report_finished", False,
                    "Train nothing: report the finished runs.")


def _check_stage_ones(stage_ones: Sequence[str], pretrained: str | None) -> None:
  for stage_one in stage_ones:
    if stage_one in TRAINED_HERE:
      continue
    if pretrained is None:
      raise app.UsageError(f"--stage_ones={stage_one} is not one of {sorted(TRAINED_HERE)}, "
                           "so it must be a checkpoint folder in --pretrained; pass "
                           "--pretrained=path/to/disentangling-vae.")
    path = os.path.join(pretrained, stage_one)
    if not pytorch_import.is_pytorch_checkpoint(path):
      raise app.UsageError(f"--stage_ones={stage_one}: {path} holds no "
                           f"{pytorch_import.CHECKPOINT_FILENAME}.")
    if pytorch_import.read_specs(path).get("dataset") != "dsprites":
      raise app.UsageError(f"--stage_ones={stage_one}: {path} is not a dSprites "
                           "checkpoint (its specs.json's dataset).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  writers.filter_library_logs()
  cpu_memory.reuse_step_memory()  # As msdr_jax.main trains on a CPU.
  _check_stage_ones(FLAGS.stage_ones, FLAGS.pretrained)
  budget = BUDGETS[FLAGS.budget]
  models = pretrained_study.study_models(FLAGS.families, FLAGS.variant)
  root = epath.Path(FLAGS.workdir)
  root.mkdir(parents=True, exist_ok=True)
  # Every stage two compiles the same programs: a persistent cache does it once.
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(root / "compilation_cache"))
  configs = study_configs(FLAGS.stage_ones, FLAGS.pretrained, FLAGS.workdir, models,
                          budget, FLAGS.stage1_steps, FLAGS.stage2_steps)
  start = time.time()
  try:
    rows = run_study(configs, FLAGS.workdir, train=not FLAGS.report_finished)
  except run_directory.RunDirectoryError as e:
    print(f"family_study: error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  if not rows:
    raise app.UsageError(f"{FLAGS.workdir} holds no finished run of these models yet.")
  command = " ".join(["python -m experiments.family_study", *sys.argv[1:]])
  description = budget.description.format(stage1_steps=FLAGS.stage1_steps,
                                          stage2_steps=FLAGS.stage2_steps)
  text = report(rows, description, time.time() - start, command)
  write_outputs(configs, rows, text, root)
  print(text, flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
