"""Training steps on a CPU that reuse their working memory instead of mapping it afresh.

XLA:CPU allocates all temporaries of one execution as one block: a training
step's activations and gradients (149 MB for the MS-VAE iteration at batch 64,
docs/performance.md). glibc's malloc serves any block above 32 MB with a
fresh `mmap` and returns it with `munmap` when it is freed, so with its
defaults every training step page-faults its whole working set in again, and
the kernel zeroes each page first.

`reuse_step_memory()` makes the block come from, and go back to, glibc's main
heap, where it stays mapped between steps:

* malloc never uses `mmap` (`M_MMAP_MAX` = 0) and trims the top of its heap
  only beyond 2 GiB of free memory (`M_TRIM_THRESHOLD` at its largest value):
  the process's resident memory stays near its peak, as with any caching
  allocator.
* JAX's CPU client executes synchronously, on the calling thread (this
  overrides `JAX_CPU_ENABLE_ASYNC_DISPATCH`). With asynchronous dispatch a
  worker thread executes, and allocates from its own malloc arena, whose heaps
  (at most 64 MB each) cannot hold the block. The training loop waits for the
  device at every log interval anyway.

Both are process-wide, and apply only on a machine without a GPU or TPU
(`accelerators.present()`). They must come before anything uses JAX: JAX
reads its dispatch setting when it creates its CPU client, which any
computation, array or `jax.devices()` does. `python -m msdr_jax.main` and the
experiments' scripts call it first; so does a notebook or script that trains
on a CPU:

  from msdr_jax import cpu_memory
  cpu_memory.reuse_step_memory()

`benchmarks/step_memory.py` measures what it gains, side by side.
"""

from __future__ import annotations

import ctypes
import os

from absl import logging

from msdr_jax import accelerators

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
  """The process's C library when it is glibc (which has `mallopt`), else None."""
  try:
    if not os.confstr("CS_GNU_LIBC_VERSION"):
      return None
  except (ValueError, OSError):  # Not a glibc system.
    return None
  libc = ctypes.CDLL(None)
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  libc.mallopt.restype = ctypes.c_int
  return libc


def _jax_backends_started() -> bool:
  # JAX has no public way to ask; its private one, or "started" (so that
  # nothing is changed) if a JAX version lacks it.
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return True


def reuse_step_memory() -> bool:
  """Keeps XLA:CPU's per-step working memory mapped between steps (see above).

  Returns True when applied. Returns False, having changed nothing, on a
  machine with a GPU or TPU, where the C library is not glibc, or once JAX's
  backends exist (a warning then says to call it earlier).
  """
  import jax  # pylint: disable=g-import-not-at-top
  if accelerators.present() is not None:
    return False
  libc = _glibc()
  if libc is None:
    logging.info("cpu_memory.reuse_step_memory(): not glibc; nothing changed.")
    return False
  if _jax_backends_started():
    logging.warning(
        "cpu_memory.reuse_step_memory() changed nothing: JAX's backends already exist "
        "(any computation, array or jax.devices() creates them); call it before "
        "anything uses JAX.")
    return False
  if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)):
    # Not expected of glibc; mallopt's options are then partly set, which only
    # changes how memory is reused, not what is computed.
    logging.warning("cpu_memory.reuse_step_memory(): glibc's mallopt refused an option.")
    return False
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True
