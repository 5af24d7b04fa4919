"""The built wheel, installed without a clone, works from an empty directory."""

import os
import pathlib
import re
import subprocess
import sys
import sysconfig

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config=configs/dsprites.py:preset=tiny", "--config.stage1.num_steps=2",
        "--config.stage2.family=none", "--config.eval.disentanglement.metrics=none",
        "--config.eval.sample_quality.num_samples=0"]


def _install_wheel(tmp_path) -> dict[str, str]:
  """The wheel `pip` builds from the repository, installed on its own path.

  Its dependencies come from this test environment's site-packages, read as
  a plain directory: its editable install of the repository is not seen.
  Returns the environment that runs the installed copy.
  """
  wheels, installed = tmp_path / "wheels", tmp_path / "installed"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels,
                  REPO], check=True, capture_output=True, timeout=300)
  (wheel,) = wheels.glob("msdr_jax-*.whl")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                  installed, wheel], check=True, capture_output=True, timeout=300)
  dependencies = sysconfig.get_paths()["purelib"]
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  # Python's -I would also drop site-packages; -S and an explicit path keep
  # the .pth hooks of the editable install out.
  env["PYTHONPATH"] = os.pathsep.join([str(installed), dependencies])
  return env


def test_the_installed_wheel_runs_the_readme_commands_from_an_empty_directory(tmp_path):
  env = _install_wheel(tmp_path)
  empty = tmp_path / "empty"
  empty.mkdir()
  run = lambda *args: subprocess.run([sys.executable, "-S", *args], cwd=empty, env=env,
                                     capture_output=True, text=True, timeout=300)
  where = run("-c", "import configs, msdr_jax; print(msdr_jax.__file__, configs.__file__)")
  assert where.returncode == 0, where.stderr[-2000:]
  assert str(REPO) not in where.stdout and str(tmp_path / "installed") in where.stdout

  # The main command, without --workdir: runs/<name>-<hash> in the current
  # directory, printed, and found again by the same command.
  first = run("-m", "msdr_jax.main", *TINY)
  assert first.returncode == 0, first.stderr[-3000:]
  (workdir,) = (empty / "runs").iterdir()
  assert workdir.name.startswith("dsprites-tiny-")
  assert f"work directory runs/{workdir.name}" in first.stdout
  before = sorted(p.name for p in workdir.iterdir())
  second = run("-m", "msdr_jax.main", *TINY, "--config.stage1.num_steps=1")
  assert second.returncode == 1
  assert (f"runs/{workdir.name} holds stage one trained to step 2, beyond "
          "config.stage1.num_steps=1") in second.stderr
  assert sorted(p.name for p in workdir.iterdir()) == before

  # The README's own-JAX-code example (docs/python_api.md).
  example = re.search(r"<!-- train-step-example -->\s*```python\n(.*?)```",
                      (REPO / "docs" / "python_api.md").read_text(), re.S).group(1)
  own_code = run("-c", example)
  assert own_code.returncode == 0, own_code.stderr[-3000:]
  assert "'loss'" in own_code.stdout
  assert sorted(p.name for p in empty.iterdir()) == ["runs"]
