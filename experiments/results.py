"""The study's results: rows of metrics, grouped, averaged and tabulated.

A row is one model of one run of the study: data set, beta, seed, model
("stage one" or a stage-two family) and its metrics (`beta_sweep._rows`).
"""

from __future__ import annotations

import csv
import io
import math
import statistics

from etils import epath

STAGE_ONE = "stage one"

# (column, key of a row, format) of the Markdown table.
_COLUMNS = (
    ("reconstruction MSE", "reconstruction_mse", "{:.2f}"),
    ("MSE ratio (stage one / model)", "mse_ratio", "{:.2f}x"),
    ("MIG", "mig", "{:.3f}"),
    ("DCI disentanglement", "dci_disentanglement", "{:.3f}"),
    ("conditioning fidelity R^2", "conditioning_fidelity_r2", "{:.3f}"),
)
# A multi-stage model "halves the error at equal MIG" when its ratio is at
# least this (the MIG is equal by construction: both use stage one's z).
TARGET_RATIO = 2.0


def mean_and_spread(values: list[float], fmt: str) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "n/a"
  if any(math.isinf(v) for v in values):
    return "exact"
  mean = statistics.fmean(values)
  if len(values) == 1:
    return fmt.format(mean)
  return f"{fmt.format(mean)} ± {fmt.format(statistics.stdev(values)).rstrip('x')}"


def aggregate(rows: list[dict]) -> dict[tuple[str, float, str], list[dict]]:
  """Rows grouped by (data, beta, model), in the study's order."""
  groups: dict[tuple[str, float, str], list[dict]] = {}
  for row in rows:
    groups.setdefault((row["data"], row["beta"], row["model"]), []).append(row)
  return groups


def markdown_table(rows: list[dict], data_name: str) -> str:
  """The data set's table: per beta, stage one then each multi-stage model."""
  header = ["beta", "model", *(column for column, _, _ in _COLUMNS),
            f">= {TARGET_RATIO:g}x lower MSE"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for (data, beta, model), group in aggregate(rows).items():
    if data != data_name:
      continue
    cells = [f"{beta:g}", model]
    cells += [mean_and_spread([row[key] for row in group], fmt) for _, key, fmt in _COLUMNS]
    if model == STAGE_ONE:
      cells[3] = "1 (reference)"
      verdict = ""
    else:
      ratios = [row["mse_ratio"] for row in group]
      verdict = "yes" if all(r >= TARGET_RATIO for r in ratios) else "no"
    lines.append("| " + " | ".join(cells + [verdict]) + " |")
  return "\n".join(lines)


def verdicts(rows: list[dict], data_name: str) -> dict[str, tuple[int, int]]:
  """Per family: (betas where every seed's MSE is >= 2x lower, betas)."""
  counts: dict[str, list[int]] = {}
  for (data, _, model), group in aggregate(rows).items():
    if data != data_name or model == STAGE_ONE:
      continue
    count = counts.setdefault(model, [0, 0])
    count[0] += all(row["mse_ratio"] >= TARGET_RATIO for row in group)
    count[1] += 1
  return {model: tuple(count) for model, count in counts.items()}


def write_csv(path: epath.Path, rows: list[dict]) -> None:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  path.write_text(buffer.getvalue())
