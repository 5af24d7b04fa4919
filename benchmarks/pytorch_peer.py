r"""Training speed of msdr_jax against a PyTorch peer, side by side.

For each model of --models and each batch size, the library's compiled
training iteration (the training loop's own `steps.make_train_iteration`,
dSprites rendered on the device, its batch split over --host_devices XLA
host devices) against the same iteration written in PyTorch
(`pytorch_worker.py`; batches from memory), run in another process with
torch. The models, on the paper preset with the Burgess et al. architecture
as stage one:

  stage1  -- stage one: beta-TCVAE with the minibatch-stratified-sampling
             estimator, Adam; the peer as disentangling-vae's code makes it.
  ms_vae  -- stage two, MS-VAE with its defaults (a 16x16x1 map of latents w,
             the U-Net refiner, the KL warm-up), Adam, on a frozen stage one
             of fresh parameters that runs forward in every step; the peer
             has the library's stage-two networks and loss
             (`tests/pytorch_peer_test.py` checks both peers' losses).

Rounds alternate between the library and the peer, so that both see the same
machine load; medians are reported, one block per model and batch, with the
ratio msdr_jax / PyTorch in images per second (above 1: the library is
faster).

torch is never a dependency of the library: without --torch_python the script
makes a virtual environment of its own under build/ and installs
torch==2.13.0 (a CPU build) into it.

  python -m benchmarks.pytorch_peer
  python -m benchmarks.pytorch_peer --batch_sizes=64 --timing_rounds=5
  python -m benchmarks.pytorch_peer --models=ms_vae --host_devices=1,2

The library runs as `python -m msdr_jax.main` runs it on a machine without an
accelerator: on one XLA:CPU device, with `cpu_memory.reuse_step_memory()`.
With --host_devices=1,2 it is also timed with the batch split over two host
devices (as `--xla_force_host_platform_device_count=2` makes them), each row
against the same PyTorch rounds.
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
from msdr_jax import cpu_memory
from msdr_jax import data
from msdr_jax import multi_stage
from msdr_jax import parallel
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps

# What each model trains, as its block's heading says it.
MODELS = {
    "stage1": "stage one (burgess, beta-TCVAE MSS, Adam)",
    "ms_vae": "MS-VAE (16x16x1 w, U-Net refiner, KL warm-up, Adam) on a frozen burgess "
              "stage one",
}

_MODELS = flags.DEFINE_list(
    "models", list(MODELS), f"What to train: any of {','.join(MODELS)}.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "256"], "Images per step.")
_STEPS = flags.DEFINE_integer("timed_steps", 20, "Timed steps per round.")
_ROUNDS = flags.DEFINE_integer("timing_rounds", 3, "Alternating timing rounds.")
_HOST_DEVICES = flags.DEFINE_list(
    "host_devices", ["1"], "XLA host devices the library's batch is split over; "
    "one row each (e.g. 1,2).")
_TORCH_PYTHON = flags.DEFINE_string(
    "torch_python", None, "A Python with torch (default: build/torch-venv, made on "
    "first use).")

TORCH_VERSION = "2.13.0"
NOT_APPLIED = ("cpu_memory.reuse_step_memory() did not apply (its log says why: an "
               "accelerator, not glibc, or JAX already started); the library would not "
               "be timed as the CLI trains on a CPU.")
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


def start_worker(command: list[str], name: str) -> subprocess.Popen:
  """A worker process that prints "ready", then answers each "<steps>" line on
  stdin with the seconds per step of that many steps, until "quit"."""
  worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
  if worker.stdout.readline().strip() != "ready":
    raise RuntimeError(f"The {name} worker did not start; see its error above.")
  return worker


def time_worker(worker: subprocess.Popen, steps: int) -> float:
  """Seconds per step of `steps` steps of a `start_worker` worker."""
  worker.stdin.write(f"{steps}\n")
  worker.stdin.flush()
  return float(worker.stdout.readline())


def stop_worker(worker: subprocess.Popen) -> None:
  worker.stdin.write("quit\n")
  worker.stdin.flush()
  worker.wait()


def library_iteration(model, config, dataset, num_devices):
  """The training loop's compiled body for `model` on `num_devices` devices, and its state.

  As `train.train_stage` builds it, and as `stage_one_throughput.time_round`
  calls it: `iteration(state, rng)`. MS-VAE trains on a frozen stage one of
  fresh parameters (its speed does not depend on their values).
  """
  stage_one = stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, dataset.observation_shape, dataset.num_images)
  if model == "stage1":
    stage, frozen = stage_one, ()
    optimizer = steps.make_optimizer(config.stage1.optimizer)
  else:
    config = config.copy_and_resolve_references()
    config.stage2.family = "vae"
    stage = multi_stage.MultiStageModel.from_config(config, stage_one)
    frozen = (stage_one.init(jax.random.PRNGKey(2)),)
    optimizer = steps.make_optimizer(config.stage2.optimizer, stage.stage2.update_scales)
  mesh = parallel.data_mesh(jax.devices()[:num_devices])
  iteration = steps.make_train_iteration(
      steps.make_train_step(stage.loss), config.batch_size, jax.random.PRNGKey(1), mesh)
  state = parallel.replicate(
      steps.create_train_state(stage.init, optimizer, jax.random.PRNGKey(0), *frozen), mesh)
  frozen, dataset = parallel.replicate((frozen, dataset), mesh)
  return lambda state, rng: iteration(state, frozen, dataset), state


def time_against_peer(model, batch_size, device_counts, python):
  """{name: images per second} of the library's runs and the PyTorch peer's."""
  config = dsprites.get_config("preset=paper")
  config.batch_size = batch_size
  config.stage1.model.architecture = "burgess"
  dataset = data.get_dataset(config.data)
  rng = jax.random.PRNGKey(1)
  runs = {}
  for count in device_counts:
    iteration, state = library_iteration(model, config, dataset, count)
    state, _ = stage_one_throughput.time_round(iteration, state, rng, 2)  # Compile.
    runs[f"msdr_jax, {count} device{'s' if count > 1 else ''}"] = [iteration, state]
  worker = start_worker(
      [python, os.path.join(_REPO, "benchmarks", "pytorch_worker.py"), model,
       str(batch_size), str(dataset.num_images)], "PyTorch")
  seconds = {name: [] for name in [*runs, "PyTorch"]}
  for _ in range(_ROUNDS.value):
    for name, run in runs.items():
      run[1], step_seconds = stage_one_throughput.time_round(*run, rng, _STEPS.value)
      seconds[name].append(step_seconds)
    seconds["PyTorch"].append(time_worker(worker, _STEPS.value))
  stop_worker(worker)
  return {name: batch_size / statistics.median(times) for name, times in seconds.items()}


def main(argv):
  del argv
  unknown = sorted(set(_MODELS.value) - set(MODELS))
  if unknown:
    raise app.UsageError(f"Unknown --models {unknown}; choose from {','.join(MODELS)}.")
  device_counts = sorted(set(map(int, _HOST_DEVICES.value)))
  # Before JAX starts its CPU backend, which reads the flag once.
  os.environ["XLA_FLAGS"] = " ".join(filter(None, [
      os.environ.get("XLA_FLAGS"),
      f"--xla_force_host_platform_device_count={max(device_counts)}"]))
  # As `python -m msdr_jax.main` trains on a machine without an accelerator.
  if not cpu_memory.reuse_step_memory():
    raise RuntimeError(NOT_APPLIED)
  python = torch_python()
  print(f"machine: {conv_formulations.cpu_model()}, {os.cpu_count()} CPU cores; "
        f"jax {jax.__version__} ({jax.default_backend()}); torch {TORCH_VERSION}")
  for batch_size in map(int, _BATCH_SIZES.value):
    for model in _MODELS.value:
      images_per_second = time_against_peer(model, batch_size, device_counts, python)
      print(f"{MODELS[model]}, batch {batch_size}, median of {_ROUNDS.value} alternating "
            f"rounds x {_STEPS.value} steps:")
      for name, speed in images_per_second.items():
        ratio = ("" if name == "PyTorch" else
                 f"  ratio to PyTorch {speed / images_per_second['PyTorch']:.2f}x")
        print(f"  {name:20s} {speed:8.0f} images/s{ratio}", flush=True)


if __name__ == "__main__":
  app.run(main)
