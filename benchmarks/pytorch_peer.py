r"""Stage-one training speed of msdr_jax against a PyTorch peer, side by side.

The library's compiled training iteration (Burgess et al. architecture,
beta-TCVAE with the minibatch-stratified-sampling estimator, Adam, dSprites
rendered on the device; `stage_one_throughput.make_iteration`) against the
same iteration written in PyTorch as disentangling-vae's code makes it
(`pytorch_worker.py`: same architecture, loss and batch; batches from memory),
run in another process with torch. Rounds alternate between the two, so that
both see the same machine load; medians are reported, with the ratio
msdr_jax / PyTorch in images per second (above 1: the library is faster).

torch is never a dependency of the library: without --torch_python the script
makes a virtual environment of its own under build/ and installs
torch==2.13.0 (a CPU build) into it.

  python -m benchmarks.pytorch_peer
  python -m benchmarks.pytorch_peer --batch_sizes=64 --timing_rounds=5
"""

import os
import platform
import statistics
import subprocess
import sys

from absl import app
from absl import flags
import jax

from benchmarks import stage_one_throughput
from configs import dsprites
from msdr_jax import data

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "256"], "Images per step.")
_STEPS = flags.DEFINE_integer("timed_steps", 20, "Timed steps per round.")
_ROUNDS = flags.DEFINE_integer("timing_rounds", 3, "Alternating timing rounds.")
_TORCH_PYTHON = flags.DEFINE_string(
    "torch_python", None, "A Python with torch (default: build/torch-venv, made on "
    "first use).")

TORCH_VERSION = "2.13.0"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_VENV = os.path.join(_REPO, "build", "torch-venv")


def torch_python() -> str:
  """--torch_python, or build/torch-venv's Python (created with torch if absent)."""
  if _TORCH_PYTHON.value:
    return _TORCH_PYTHON.value
  python = os.path.join(_VENV, "bin", "python")
  if not os.path.exists(python):
    print(f"Installing torch=={TORCH_VERSION} into {_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", _VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", f"torch=={TORCH_VERSION}"],
                   check=True)
  return python


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main(argv):
  del argv
  python = torch_python()
  print(f"machine: {cpu_name()}, {os.cpu_count()} CPU cores; jax {jax.__version__} "
        f"({jax.default_backend()}); torch {TORCH_VERSION}")
  for batch_size in map(int, _BATCH_SIZES.value):
    config = dsprites.get_config("preset=paper")
    config.batch_size = batch_size
    config.stage1.model.architecture = "burgess"
    dataset = data.get_dataset(config.data)
    rng = jax.random.PRNGKey(1)
    iteration, state = stage_one_throughput.make_iteration(config, dataset)
    state, _ = stage_one_throughput.time_round(iteration, state, rng, 2)  # Compile.
    worker = subprocess.Popen(
        [python, os.path.join(_REPO, "benchmarks", "pytorch_worker.py"), str(batch_size),
         str(dataset.num_images)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if worker.stdout.readline().strip() != "ready":
      raise RuntimeError("The PyTorch worker did not start; see its error above.")
    seconds = {"msdr_jax": [], "PyTorch": []}
    for _ in range(_ROUNDS.value):
      state, step_seconds = stage_one_throughput.time_round(iteration, state, rng,
                                                            _STEPS.value)
      seconds["msdr_jax"].append(step_seconds)
      worker.stdin.write(f"{_STEPS.value}\n")
      worker.stdin.flush()
      seconds["PyTorch"].append(float(worker.stdout.readline()))
    worker.stdin.write("quit\n")
    worker.stdin.flush()
    worker.wait()
    images_per_second = {name: batch_size / statistics.median(times)
                         for name, times in seconds.items()}
    print(f"stage one (burgess, beta-TCVAE MSS, Adam), batch {batch_size}, median of "
          f"{_ROUNDS.value} alternating rounds x {_STEPS.value} steps:")
    for name, speed in images_per_second.items():
      print(f"  {name:9s} {speed:8.0f} images/s")
    print(f"  ratio msdr_jax / PyTorch: "
          f"{images_per_second['msdr_jax'] / images_per_second['PyTorch']:.2f}x",
          flush=True)


if __name__ == "__main__":
  app.run(main)
