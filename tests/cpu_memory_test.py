"""cpu_memory.reuse_step_memory: an execution's temporaries stay mapped between executions."""

import json
import os
import subprocess
import sys

import jax
import pytest

from msdr_jax import accelerators
from msdr_jax import cpu_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PAGE = os.sysconf("SC_PAGE_SIZE")

# Runs a program with a 64 MB temporary (above glibc's 32 MB mmap ceiling)
# five times after a first run, and reports the median page faults of an
# execution.
_PROGRAM = """
import json, resource, statistics, sys
from msdr_jax import cpu_memory
applied = cpu_memory.reuse_step_memory() if sys.argv[1] == "reuse" else None
import jax, jax.numpy as jnp

def program(x):
  y = jax.lax.optimization_barrier(jnp.sin(x))  # Materialised: a temporary.
  return jnp.sum(y * y)

x = jnp.ones((16 * 2**20,), jnp.float32)
program = jax.jit(program)
temp_bytes = program.lower(x).compile().memory_analysis().temp_size_in_bytes
program(x).block_until_ready()
faults = []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  program(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = statistics.median(faults)
print(json.dumps({"applied": applied, "temp_bytes": temp_bytes, "faults": faults,
                  "async_dispatch": jax.config.read('jax_cpu_enable_async_dispatch')}))
"""


def _run(setting):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _PROGRAM, setting], env=env,
                          capture_output=True, text=True, check=True, timeout=300)
  return json.loads(result.stdout.strip().splitlines()[-1])


def _transparent_huge_pages() -> str:
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return f.read()
  except OSError:
    return ""


@pytest.mark.skipif(cpu_memory._glibc() is None, reason="mallopt is glibc's")
@pytest.mark.skipif("[always]" in _transparent_huge_pages(),
                    reason="with huge pages always on, a fresh block faults in 2 MB at a time")
@pytest.mark.skipif(accelerators.present() is not None, reason="applies without accelerators")
def test_reused_temporaries_are_not_faulted_in_again():
  defaults, reused = _run("defaults"), _run("reuse")
  temp_pages = defaults["temp_bytes"] / _PAGE
  assert defaults["temp_bytes"] >= 64 * 2**20
  # With glibc's defaults every execution maps its temporary afresh and
  # faults in each of its pages; reused, (almost) none.
  assert defaults["faults"] > 0.9 * temp_pages, defaults
  assert reused["applied"] is True
  assert reused["async_dispatch"] is False
  assert reused["faults"] < 0.01 * temp_pages, reused


class _RecordingLibc:
  """A C library whose `mallopt` records its calls."""

  def __init__(self):
    self.calls = []

  def mallopt(self, param, value):
    self.calls.append((param, value))
    return 1


def test_changes_nothing_where_it_does_not_apply(monkeypatch):
  dispatch = jax.config.read("jax_cpu_enable_async_dispatch")
  libc = _RecordingLibc()
  monkeypatch.setattr(cpu_memory, "_glibc", lambda: libc)
  monkeypatch.setattr(accelerators, "present", lambda: None)
  jax.numpy.zeros(1).block_until_ready()  # JAX's backends exist.
  assert cpu_memory.reuse_step_memory() is False
  monkeypatch.setattr(cpu_memory, "_jax_backends_started", lambda: False)
  monkeypatch.setattr(accelerators, "present", lambda: "gpu")
  assert cpu_memory.reuse_step_memory() is False
  monkeypatch.setattr(accelerators, "present", lambda: None)
  monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)  # Another C library.
  assert cpu_memory.reuse_step_memory() is False
  assert libc.calls == []
  assert jax.config.read("jax_cpu_enable_async_dispatch") == dispatch
