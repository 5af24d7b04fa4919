"""The study's results: rows of metrics, grouped, averaged and tabulated.

A row is one model of one run of the study: data set, beta, seed, model
("stage one" or a stage-two family) and its metrics (`beta_sweep._rows`).
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import statistics

from etils import epath
import jax

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


def mean_and_spread(values: list[float | None], fmt: str) -> str:
  """"mean ± sample standard deviation" over seeds, in `fmt`.

  An infinite MSE ratio is an exact reconstruction (MS-Flow is a bijection):
  "exact" if every seed's is, else the finite seeds' mean and "(+k exact)".
  """
  values = [v for v in values if v is not None]
  if not values:
    return "n/a"
  finite = [v for v in values if not math.isinf(v)]
  if not finite:
    return "exact"
  mean = fmt.format(statistics.fmean(finite))
  if len(finite) > 1:
    mean += f" ± {fmt.format(statistics.stdev(finite)).rstrip('x')}"
  if len(finite) < len(values):
    mean += f" (+{len(values) - len(finite)} exact)"
  return mean


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
      if all(math.isinf(r) for r in ratios):
        verdict = "exact by construction"
      else:
        verdict = "yes" if all(r >= TARGET_RATIO for r in ratios) else "no"
    lines.append("| " + " | ".join(cells + [verdict]) + " |")
  return "\n".join(lines)


def verdicts(rows: list[dict], data_name: str) -> dict[str, tuple[int, int]]:
  """Per family: (betas where every seed's MSE is >= 2x lower, betas).

  A family whose reconstructions are all exact (MS-Flow, a bijection) is
  left out: its ratio says nothing about the method; see `exact_families`.
  """
  counts: dict[str, list[int]] = {}
  exact = exact_families(rows, data_name)
  for (data, _, model), group in aggregate(rows).items():
    if data != data_name or model == STAGE_ONE or model in exact:
      continue
    count = counts.setdefault(model, [0, 0])
    count[0] += all(row["mse_ratio"] >= TARGET_RATIO for row in group)
    count[1] += 1
  return {model: tuple(count) for model, count in counts.items()}


def exact_families(rows: list[dict], data_name: str) -> list[str]:
  """The families that reconstruct every image exactly (infinite ratio)."""
  models = {row["model"] for row in rows if row["data"] == data_name} - {STAGE_ONE}
  return sorted(model for model in models if all(
      math.isinf(row["mse_ratio"]) for row in rows
      if row["data"] == data_name and row["model"] == model))


def cell(value, fmt: str) -> str:
  """A table cell: "n/a" for None, "exact" for an infinite ratio, text as it is."""
  if value is None:
    return "n/a"
  if isinstance(value, str):
    return value
  if isinstance(value, float) and math.isinf(value):
    return "exact"
  return fmt.format(value)


def machine() -> str:
  """The machine and JAX a study ran on, as its report says it."""
  return (f"{platform.machine()} ({platform.processor() or 'cpu'}, {os.cpu_count()} "
          f"cores; {jax.devices()[0].device_kind} x{jax.device_count()}), "
          f"jax {jax.__version__}")


def write_csv(path: epath.Path, rows: list[dict]) -> None:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  path.write_text(buffer.getvalue())
