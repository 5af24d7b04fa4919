r"""Where training batches come from: step time and memory of each data path.

Times the whole compiled stage-one training iteration (draw a batch, forward,
backward, Adam update) on full-size dSprites (737,280 images; the array is
rendered once by the procedural renderer, so the numbers hold for the real
npz/TFDS data, which have the same size and bit-packing), with the batch
coming from:

  procedural  -- rendered inside the step (`data.dsprites.DSprites`).
  device      -- `ArrayData(placement="device")`: the bit-packed array in
                 device memory, the batch gathered and unpacked in the step.
  host        -- `ArrayData(placement="host")`: the array in host memory, the
                 step gathers its batch through a host callback.
  host_fed    -- a conventional host input pipeline: the host draws indices,
                 gathers and unpacks the batch in NumPy and `device_put`s it;
                 the step takes the images as an argument (no prefetching).

All four run in one process, in alternating rounds so that they see the same
machine load; the median round is reported, with the ratio to `device`.

  python -m benchmarks.data_placement
  python -m benchmarks.data_placement --batch_size=256
"""

import functools
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np

from msdr_jax import base_config
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps
from msdr_jax.data import arrays
from msdr_jax.data import dsprites

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per step.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating timing rounds.")
_RENDER_CHUNK = 16_384


def render_full_grid() -> np.ndarray:
  """Every dSprites image, uint8 0/1 [737280, 64, 64, 1], in official order."""
  dataset = dsprites.DSprites()
  render = jax.jit(lambda index: dataset.images_from_state(dataset.index_to_state(index)))
  chunks = []
  for start in range(0, dataset.num_images, _RENDER_CHUNK):
    index = np.arange(start, min(start + _RENDER_CHUNK, dataset.num_images))
    chunks.append(np.asarray(render(index)).astype(np.uint8))
  return np.concatenate(chunks)


def _in_step_iteration(config, train_step, dataset):
  @functools.partial(jax.jit, donate_argnums=0,
                     compiler_options=steps.training_compiler_options())
  def iteration(state, dataset, rng):
    data_rng, model_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    images, _ = dataset.sample(data_rng, config.batch_size)
    return train_step(state, images, model_rng)
  return lambda state, rng, step: iteration(state, dataset, rng)


def _host_fed_iteration(config, train_step, packed: np.ndarray):
  @functools.partial(jax.jit, donate_argnums=0,
                     compiler_options=steps.training_compiler_options())
  def iteration(state, images, rng):
    model_rng = jax.random.fold_in(rng, state.step)
    return train_step(state, images, model_rng)

  def run(state, rng, step):
    index = np.random.default_rng(step).integers(0, len(packed), config.batch_size)
    images = np.unpackbits(packed[index], axis=-1).astype(np.float32)
    images = jax.device_put(images.reshape(-1, 64, 64, 1))
    return iteration(state, images, rng)
  return run


def _time_round(run, state, rng, steps, first_step):
  start = time.perf_counter()
  for step in range(first_step, first_step + steps):
    state, metrics = run(state, rng, step)
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - start) / steps


def main(argv):
  del argv
  config = base_config.get_config("preset=paper", "dsprites", "procedural")
  config.batch_size = _BATCH_SIZE.value
  print(f"Machine: {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"jax {jax.__version__}; batch {config.batch_size}.")
  start = time.perf_counter()
  images = render_full_grid()
  print(f"Rendered the 737,280-image grid in {time.perf_counter() - start:.1f} s.")
  names = dict(factor_names=dsprites.FACTOR_NAMES, factor_sizes=dsprites.FACTOR_SIZES,
               binary=True)
  on_device = arrays.ArrayData(images, placement="device", **names)
  on_host = arrays.ArrayData(images, placement="host", **names)
  packed = np.packbits(images.reshape(len(images), -1), axis=-1)
  del images
  shape = (64, 64, 1)
  stage_one = stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, shape, dsprites.DSprites().num_images)
  train_step = steps.make_train_step(stage_one.loss)
  optimizer = steps.make_optimizer(config.stage1.optimizer)
  paths = {
      "procedural": (_in_step_iteration(config, train_step, dsprites.DSprites()), 0),
      "device": (_in_step_iteration(config, train_step, on_device), on_device.nbytes),
      "host": (_in_step_iteration(config, train_step, on_host), on_host.nbytes),
      "host_fed": (_host_fed_iteration(config, train_step, packed), packed.nbytes),
  }
  rng = jax.random.PRNGKey(1)
  states, times = {}, {name: [] for name in paths}
  for name, (run, _) in paths.items():  # Compile and warm up.
    state = steps.create_train_state(stage_one.init, optimizer, jax.random.PRNGKey(0))
    states[name], _ = _time_round(run, state, rng, 2, 0)
  for round_index in range(_ROUNDS.value):
    for name, (run, _) in paths.items():
      states[name], seconds = _time_round(
          run, states[name], rng, _STEPS.value, 2 + round_index * _STEPS.value)
      times[name].append(seconds)
  reference = statistics.median(times["device"])
  print(f"{'path':<12}{'data memory':>14}{'ms/step':>10}{'images/s':>10}{'vs device':>11}")
  for name, (_, nbytes) in paths.items():
    median = statistics.median(times[name])
    memory = f"{nbytes / 2**20:,.0f} MiB" if nbytes else "none"
    print(f"{name:<12}{memory:>14}{1e3 * median:>10.2f}{config.batch_size / median:>10.0f}"
          f"{median / reference:>10.2f}x")


if __name__ == "__main__":
  app.run(main)
