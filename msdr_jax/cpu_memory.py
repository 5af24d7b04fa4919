"""Training steps on a CPU that reuse their working memory instead of mapping it afresh.

XLA:CPU allocates all temporaries of one execution as one block: a training
step's activations and gradients, a hundred megabytes or more. glibc's malloc
serves any block above 32 MB with a fresh `mmap` and returns it with `munmap`
when it is freed, so with its defaults every training step page-faults its
whole working set in again, and the kernel zeroes each page first
(docs/performance.md has the profile).

`reuse_step_memory()` makes the block come from, and go back to, glibc's main
heap, where it stays mapped between steps:

* JAX's CPU client executes synchronously, on the calling thread. With
  asynchronous dispatch a worker thread executes, and allocates from its own
  arena, whose heaps (at most 64 MB each) cannot hold the block. The training
  loop waits for the device at every log interval anyway, and one step's host
  work is microseconds against a step of milliseconds.
* malloc never uses `mmap` (`M_MMAP_MAX` = 0) and keeps freed memory at the
  top of the heap (`M_TRIM_THRESHOLD` at its maximum): the process's
  resident memory stays at its peak, as with any caching allocator.

Both are process-wide and must come before JAX's first computation (JAX reads
its dispatch setting when it creates its CPU client). `python -m
msdr_jax.main` calls it on machines without an accelerator; a notebook or
script that trains on a CPU calls it first:

  from msdr_jax import cpu_memory
  cpu_memory.reuse_step_memory()

`benchmarks/step_memory.py` measures what it gains, side by side.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from absl import logging

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
  """The C library when it is glibc (which has `mallopt`), else None."""
  name = ctypes.util.find_library("c")
  if name is None:
    return None
  try:
    libc = ctypes.CDLL(name)
  except OSError:
    return None
  return libc if hasattr(libc, "gnu_get_libc_version") else None


def reuse_step_memory() -> bool:
  """Keeps XLA:CPU's per-step working memory mapped between steps (see above).

  Returns True when applied; False, changing nothing, where the C library is
  not glibc, or where JAX's backends have already started (a warning then
  says to call it before JAX's first computation).
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from jax._src import xla_bridge
  # pylint: enable=g-import-not-at-top
  libc = _glibc()
  if libc is None:
    return False
  if xla_bridge.backends_are_initialized():
    logging.warning("cpu_memory.reuse_step_memory() has no effect once JAX has computed; "
                    "call it before JAX's first computation.")
    return False
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return bool(libc.mallopt(_M_MMAP_MAX, 0) and
              libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
