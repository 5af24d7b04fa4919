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
  # Cells run in an empty directory, as in Colab after a pip install: the
  # configs come with the package.
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(tmp_path)}})
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


def test_colab_installs_with_pip_and_stops_if_jax_ignores_the_accelerator():
  # A fake Colab TPU runtime: `%pip` records its arguments instead of
  # installing, and the TPU is announced the way Colab does.
  cells = nbformat.read(NOTEBOOK, as_version=4).cells
  install, check = cells[1], cells[4]
  fake_colab = nbformat.v4.new_code_cell(
      "import os, sys, types\n"
      'sys.modules["google.colab"] = types.ModuleType("google.colab")\n'
      'os.environ["COLAB_TPU_ADDR"] = "10.0.0.2:8470"\n'
      "pip_calls = []\n"
      'get_ipython().register_magic_function(pip_calls.append, "line", "pip")')
  # The fake module lacks what libraries look for in a real Colab.
  show = nbformat.v4.new_code_cell('del sys.modules["google.colab"]\nprint(pip_calls)')
  notebook = nbformat.v4.new_notebook(cells=[fake_colab, install, show, check])
  client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                   resources={"metadata": {"path": str(REPO)}})
  with pytest.raises(nbclient.exceptions.CellExecutionError) as error:
    client.execute()
  assert _text(notebook.cells[2]).strip() == (
      """['install -q "msdr_jax[experiments]"', 'install -q -U "jax[tpu]"']""")
  # JAX here runs on the CPU: the check cell stops and says what to install.
  assert "RuntimeError" in str(error.value)
  assert ('This machine has a TPU but JAX runs on the CPU: the installed JAX has no TPU '
          'support. Run pip install -U "jax[tpu]", then restart Python') in str(error.value)
