r"""Trains one stage one, then every stage-two family on it, and tabulates them.

The question of the method: does a stage two lower the reconstruction error
of a disentangled stage one without changing its code? This script answers
it for one config:

1. `<workdir>/stage1` -- stage one alone (`config.stage2.family=none`),
2. `<workdir>/<family>` -- each family trained on that frozen stage one
   (`config.stage1.checkpoint=<workdir>/stage1`),

each through `train.train_and_evaluate`, exactly as the CLI runs them (so an
interrupted study resumes where it stopped when rerun), and prints a Markdown
table of the metrics every run wrote, also saved as `<workdir>/families.md`,
`.csv` and `.json`. A family's time covers its whole run: loading stage one,
training stage two and both evaluations.

  python -m experiments.compare_families \
      --config=configs/dsprites.py:preset=quick --workdir=runs/families-quick
  python -m experiments.compare_families --families=vae,gmm \
      --config=configs/dsprites.py:preset=long --workdir=runs/families-long
"""

from __future__ import annotations

import csv
import io
import json
import platform
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
from ml_collections import config_flags

from msdr_jax import families
from msdr_jax import train
from msdr_jax import writers

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the study.", required=True)
_FAMILIES = flags.DEFINE_list(
    "families", sorted(families.FAMILIES), "Stage-two families to train.")
config_flags.DEFINE_config_file("config", None, "Base config file.", lock_config=False)
flags.mark_flags_as_required(["config"])

# (column, metrics.json key, format).
_COLUMNS = (
    ("stage-one MSE", "multi_stage/stage1_reconstruction_mse", "{:.2f}"),
    ("multi-stage MSE", "multi_stage/reconstruction_mse", "{:.2f}"),
    ("MSE ratio", "multi_stage/mse_ratio", "{:.2f}x"),
    ("MIG", "multi_stage/mig", "{:.3f}"),
    ("fidelity R2", "multi_stage/conditioning_fidelity_r2", "{:.3f}"),
    ("variance-weighted", "multi_stage/conditioning_fidelity_r2_variance_weighted",
     "{:.3f}"),
    ("stage one's own R2", "multi_stage/stage1_fidelity_r2", "{:.3f}"),
)


def _format(value, fmt: str) -> str:
  return "n/a" if value is None else fmt.format(value)


def run_study(config, workdir: str, family_names) -> list[dict]:
  """Trains stage one and each family; returns one row of metrics per family."""
  unknown = sorted(set(family_names) - set(families.FAMILIES))
  if unknown:
    raise app.UsageError(
        f"Unknown families {unknown}; choose from {sorted(families.FAMILIES)}.")
  root = epath.Path(workdir)
  stage1_config = config.copy_and_resolve_references()
  stage1_config.stage2.family = families.NO_STAGE_TWO
  start = time.time()
  stage1_results = train.train_and_evaluate(stage1_config, str(root / "stage1"))
  logging.info("Stage one done in %.0f s: MIG %.3f.", time.time() - start,
               stage1_results["mig"])

  rows = []
  for name in family_names:
    family_config = config.copy_and_resolve_references()
    family_config.stage1.checkpoint = str(root / "stage1")
    family_config.stage2.family = name
    start = time.time()
    results = train.train_and_evaluate(family_config, str(root / name))
    rows.append({"family": name, "seconds": time.time() - start,
                 **{key: results[key] for _, key, _ in _COLUMNS}})
  return rows


def markdown_table(rows: list[dict]) -> str:
  header = ["family", *(column for column, _, _ in _COLUMNS), "run time"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["family"], *(_format(row[key], fmt) for _, key, fmt in _COLUMNS),
             f"{row['seconds'] / 60:.1f} min"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  writers.hide_library_info_logs()
  config = flags.FLAGS.config
  rows = run_study(config, _WORKDIR.value, _FAMILIES.value)
  machine = (f"{platform.machine()}, jax {jax.__version__}, "
             f"{jax.devices()[0].device_kind} x{jax.device_count()}")
  table = (f"{config.name}, stage one beta {config.stage1.objective.beta}, "
           f"stage two {config.stage2.num_steps} steps; {machine}\n\n"
           f"{markdown_table(rows)}\n")
  root = epath.Path(_WORKDIR.value)
  (root / "families.md").write_text(table)
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  (root / "families.csv").write_text(buffer.getvalue())
  (root / "families.json").write_text(json.dumps(rows, indent=2))
  print(table, flush=True)


if __name__ == "__main__":
  app.run(main)
