"""Executes the Colab quick-start notebook on CPU with the tiny preset."""

import json
import pathlib

import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _parameters_cell(notebook):
  tagged = [cell for cell in notebook.cells
            if "parameters" in cell.get("metadata", {}).get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  return tagged[0]


def _text(cell) -> str:
  parts = []
  for output in cell.get("outputs", []):
    parts.append(output.get("text", ""))
    parts.extend(str(value) for key, value in output.get("data", {}).items()
                 if key.startswith("text/"))
  return "".join(parts)


def test_notebook_runs_end_to_end_on_the_tiny_preset(tmp_path):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  workdir = tmp_path / "run"
  _parameters_cell(notebook).source += (
      f'\n# Overridden by the test:\nPRESET = "tiny"\nWORKDIR = {str(workdir)!r}\n')
  # Cells run from the repository root (configs/ is not in the package), as
  # in Colab after the install cell's `%cd`.
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(REPO)}})
  client.execute()  # Raises CellExecutionError, with the cell, on any error.

  outputs = [output for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.outputs]
  images = [output for output in outputs if "image/png" in output.get("data", {})]
  assert len(images) == 3  # Reconstructions and the two traversal figures.
  metrics = json.loads((workdir / "metrics.json").read_text())
  table = next(output["data"]["text/markdown"] for output in outputs
               if "text/markdown" in output.get("data", {}))
  assert f"| MIG | {metrics['mig']:.3f} | {metrics['mig']:.3f} |" in table
  assert (f"| squared error per image | "
          f"{metrics['multi_stage/stage1_reconstruction_mse']:.3f} | "
          f"{metrics['multi_stage/reconstruction_mse']:.3f} |") in table
  assert "DCI disentanglement" in table

  own_loop = _text(notebook.cells[-1])
  losses = [float(line.split("loss ")[1]) for line in own_loop.splitlines()
            if line.startswith("step ")]
  assert len(losses) == 5 and all(loss > 0 for loss in losses), own_loop
  assert "squared error per image after 5 steps from a fresh stage two" in own_loop


def test_install_cell_in_colab_asks_for_the_repository_url():
  install = nbformat.read(NOTEBOOK, as_version=4).cells[1]
  assert "REPOSITORY_URL" in install.source
  fake_colab = nbformat.v4.new_code_cell(
      'import sys, types\nsys.modules["google.colab"] = types.ModuleType("google.colab")')
  notebook = nbformat.v4.new_notebook(cells=[fake_colab, install])
  client = nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3")
  with pytest.raises(nbclient.exceptions.CellExecutionError, match="Set REPOSITORY_URL"):
    client.execute()
