"""Session-wide test settings.

The end-to-end tests start the CLI in many subprocesses that compile the same
tiny-config programs (train steps, evaluation batches) again and again. A
persistent JAX compilation cache, private to this test session, lets every
process after the first load them instead; it changes no numbers (the cached
executables are the ones XLA compiled), only the suite's time.

On tiny configs the suite spends most of its time compiling, so XLA:CPU
compiles without LLVM's optimisation passes (a tiny CLI run: 44 s -> 30 s).
The programs are the same; their float results may differ in the last bits
from an optimised build, which no test depends on (every comparison is within
one test session).
"""

import os
import shutil
import tempfile

# Set before any test module imports JAX; subprocesses, pytest-xdist's
# workers among them, inherit them, so the whole session shares one cache,
# which the process that made it removes at the end.
_OWN_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE_DIR = tempfile.mkdtemp(prefix="msdr_jax_test_compilation_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE_DIR
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE_DIR:
    shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)
