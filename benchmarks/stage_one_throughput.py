r"""Stage-one training throughput in images/s, reference layers vs ours.

Times the whole compiled training iteration of `msdr_jax.train` (render a
dSprites batch on the device, forward, backward, Adam update) twice in one
process: once with the library's convolution layers (`msdr_jax.models.layers`)
and once with plain `flax.linen.Conv` / `ConvTranspose`, which compute the same
function (tests/layers_test.py). Rounds alternate between the two so that both
see the same machine load; the median is reported.

  python -m benchmarks.stage_one_throughput
  python -m benchmarks.stage_one_throughput --batch_size=256 --architecture=burgess
"""

import contextlib
import functools
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax

from configs import dsprites
from msdr_jax import data
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps
from msdr_jax.models import architectures

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per step.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating timing rounds.")
_ARCHITECTURE = flags.DEFINE_enum(
    "architecture", "dlib_conv", sorted(architectures.ARCHITECTURES), "Model."
)


class _FlaxLayers:
  """The reference: flax.linen's strided convolutions with SAME padding."""

  @staticmethod
  def Stride2Conv(features, kernel_size, dtype=None):  # pylint: disable=invalid-name
    return nn.Conv(features, (kernel_size,) * 2, strides=(2, 2), padding="SAME",
                   dtype=dtype)

  @staticmethod
  def Stride2ConvTranspose(features, kernel_size, dtype=None):  # pylint: disable=invalid-name
    return nn.ConvTranspose(
        features, (kernel_size,) * 2, strides=(2, 2), padding="SAME", dtype=dtype)


@contextlib.contextmanager
def _layers(implementation):
  original = architectures.layers
  architectures.layers = implementation
  try:
    yield
  finally:
    architectures.layers = original


def make_iteration(config, dataset):
  """The training loop's compiled body (see train.train_stage)."""
  stage_one = stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, dataset.observation_shape, dataset.num_images)
  train_step = steps.make_train_step(stage_one.loss)

  @functools.partial(jax.jit, donate_argnums=0,
                     compiler_options=steps.training_compiler_options())
  def iteration(state, rng):
    data_rng, model_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    images, _ = dataset.sample(data_rng, config.batch_size)
    return train_step(state, images, model_rng)

  state = steps.create_train_state(
      stage_one.init, steps.make_optimizer(config.stage1.optimizer), jax.random.PRNGKey(0))
  return iteration, state


def time_round(iteration, state, rng, steps):
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = iteration(state, rng)
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - start) / steps


def main(argv):
  del argv
  config = dsprites.get_config("preset=paper")
  config.batch_size = _BATCH_SIZE.value
  config.stage1.model.architecture = _ARCHITECTURE.value
  dataset = data.get_dataset(config.data)
  rng = jax.random.PRNGKey(1)

  implementations = {"flax.linen layers": _FlaxLayers, "msdr_jax layers": None}
  runs = {}
  for name, implementation in implementations.items():
    with _layers(implementation or architectures.layers):
      iteration, state = make_iteration(config, dataset)
      start = time.perf_counter()
      state, _ = time_round(iteration, state, rng, 2)  # Compile and warm up.
      runs[name] = [iteration, state, [], time.perf_counter() - start]

  for _ in range(_ROUNDS.value):
    for run in runs.values():
      run[1], seconds = time_round(run[0], run[1], rng, _STEPS.value)
      run[2].append(seconds)

  print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"devices {jax.devices()}")
  print(f"stage one, {_ARCHITECTURE.value}, batch {config.batch_size}, median of "
        f"{_ROUNDS.value} rounds x {_STEPS.value} steps")
  reference = statistics.median(runs["flax.linen layers"][2])
  for name, (_, _, times, compile_seconds) in runs.items():
    seconds = statistics.median(times)
    print(f"  {name:18s} {1e3 * seconds:8.1f} ms/step "
          f"{config.batch_size / seconds:8.0f} images/s  "
          f"speed-up x{reference / seconds:.2f}  (compile+warm-up {compile_seconds:.1f} s)")


if __name__ == "__main__":
  app.run(main)
