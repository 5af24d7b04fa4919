r"""Stage-one training speed of msdr_jax against a PyTorch peer, side by side.

The library's compiled training iteration (Burgess et al. architecture,
beta-TCVAE with the minibatch-stratified-sampling estimator, Adam, dSprites
rendered on the device; the training loop's own `steps.make_train_iteration`,
its batch split over --host_devices XLA host devices) against the
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

One XLA:CPU device computes on about one core; with --host_devices=1,2 the
library is timed on one device and on two host devices (the CPU's cores
shared out as `--xla_force_host_platform_device_count=2` makes them), each
row against the same PyTorch rounds.
"""

import os
import statistics
import subprocess
import sys

from absl import app
from absl import flags
import jax

from benchmarks import conv_formulations
from benchmarks import stage_one_throughput
from configs import dsprites
from msdr_jax import data
from msdr_jax import parallel
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "256"], "Images per step.")
_STEPS = flags.DEFINE_integer("timed_steps", 20, "Timed steps per round.")
_ROUNDS = flags.DEFINE_integer("timing_rounds", 3, "Alternating timing rounds.")
_HOST_DEVICES = flags.DEFINE_list(
    "host_devices", ["1", "2"], "XLA host devices the library's batch is split over; "
    "one row each.")
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


def library_iteration(config, dataset, num_devices):
  """The training loop's compiled body on `num_devices` devices and its state.

  As `stage_one_throughput.time_round` calls it: `iteration(state, rng)`.
  """
  stage_one = stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, dataset.observation_shape, dataset.num_images)
  mesh = parallel.data_mesh(jax.devices()[:num_devices])
  iteration = steps.make_train_iteration(
      steps.make_train_step(stage_one.loss), config.batch_size, jax.random.PRNGKey(1), mesh)
  state = parallel.replicate(steps.create_train_state(
      stage_one.init, steps.make_optimizer(config.stage1.optimizer), jax.random.PRNGKey(0)),
      mesh)
  dataset = parallel.replicate(dataset, mesh)
  return lambda state, rng: iteration(state, (), dataset), state


def main(argv):
  del argv
  device_counts = sorted(set(map(int, _HOST_DEVICES.value)))
  # Before JAX starts its CPU backend, which reads the flag once.
  os.environ["XLA_FLAGS"] = " ".join(filter(None, [
      os.environ.get("XLA_FLAGS"),
      f"--xla_force_host_platform_device_count={max(device_counts)}"]))
  python = torch_python()
  print(f"machine: {conv_formulations.cpu_model()}, {os.cpu_count()} CPU cores; "
        f"jax {jax.__version__} ({jax.default_backend()}); torch {TORCH_VERSION}")
  for batch_size in map(int, _BATCH_SIZES.value):
    config = dsprites.get_config("preset=paper")
    config.batch_size = batch_size
    config.stage1.model.architecture = "burgess"
    dataset = data.get_dataset(config.data)
    rng = jax.random.PRNGKey(1)
    runs = {}
    for count in device_counts:
      iteration, state = library_iteration(config, dataset, count)
      state, _ = stage_one_throughput.time_round(iteration, state, rng, 2)  # Compile.
      runs[f"msdr_jax, {count} device{'s' if count > 1 else ''}"] = [iteration, state]
    worker = subprocess.Popen(
        [python, os.path.join(_REPO, "benchmarks", "pytorch_worker.py"), str(batch_size),
         str(dataset.num_images)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if worker.stdout.readline().strip() != "ready":
      raise RuntimeError("The PyTorch worker did not start; see its error above.")
    seconds = {name: [] for name in [*runs, "PyTorch"]}
    for _ in range(_ROUNDS.value):
      for name, run in runs.items():
        run[1], step_seconds = stage_one_throughput.time_round(*run, rng, _STEPS.value)
        seconds[name].append(step_seconds)
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
      ratio = ("" if name == "PyTorch" else
               f"  ratio to PyTorch {speed / images_per_second['PyTorch']:.2f}x")
      print(f"  {name:20s} {speed:8.0f} images/s{ratio}", flush=True)


if __name__ == "__main__":
  app.run(main)
