"""The README's commands are the ones CI and users actually run."""

import importlib.metadata
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
  lines = (REPO / "README.md").read_text().splitlines()
  return [line for line in lines if line.startswith("python3 -m venv .venv")]


def test_ci_runs_exactly_the_readme_test_command():
  test_commands = [c for c in _readme_commands() if "pytest" in c]
  assert len(test_commands) == 1
  ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
  assert test_commands[0] in ci_lines


def test_readme_main_command_is_the_documented_one():
  main_commands = [c for c in _readme_commands() if "msdr_jax.main" in c]
  assert len(main_commands) == 1
  assert main_commands[0].endswith(
      "python -m msdr_jax.main --config=configs/dsprites.py")


def test_constraints_pin_every_dependency():
  pinned = {}
  for line in (REPO / "constraints.txt").read_text().splitlines():
    if line and not line.startswith("#"):
      name, version = line.split("==")
      pinned[re.sub(r"[-_.]+", "-", name).lower()] = version
  requirements = importlib.metadata.requires("msdr_jax")
  names = {re.sub(r"[-_.]+", "-", re.match(r"[\w.-]+", r).group()).lower()
           for r in requirements}
  assert {"jax", "flax", "orbax-checkpoint", "tensorflow-datasets", "pytest"} <= names
  assert names <= pinned.keys(), sorted(names - pinned.keys())
