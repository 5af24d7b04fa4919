r"""Training throughput of each stage-two family next to stage one's, in images/s.

Times the compiled training iterations of `msdr_jax.train` in one process:
stage one's (render a dSprites batch, forward, backward, Adam) and, for each
stage-two family, stage two's (render, frozen stage-one forward, stage-two
forward, backward, Adam). Rounds alternate between the models so that all see
the same machine load; the median is reported, with the ratio to stage one.

  python -m benchmarks.stage_two_throughput
  python -m benchmarks.stage_two_throughput --batch_size=256 --families=vae,flow
"""

import functools
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import jax

from configs import dsprites
from msdr_jax import data
from msdr_jax import multi_stage
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating timing rounds.")
_FAMILIES = flags.DEFINE_list("families", ["vae", "flow", "gan", "gmm"],
                              "Stage-two families to time.")


def _stage_one_iteration(config, dataset):
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


def _stage_two_iteration(config, dataset, stage1_params):
  """The body of train.train_stage's loop for stage two."""
  stage_one = stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, dataset.observation_shape)
  model = multi_stage.MultiStageModel.from_config(config, stage_one)
  train_step = steps.make_train_step(model.loss)

  @functools.partial(jax.jit, donate_argnums=0,
                     compiler_options=steps.training_compiler_options())
  def iteration(state, rng):
    data_rng, model_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    images, _ = dataset.sample(data_rng, config.batch_size)
    return train_step(state, stage1_params, images, model_rng)

  state = steps.create_train_state(
      model.init, steps.make_optimizer(config.stage2.optimizer), jax.random.PRNGKey(1),
      stage1_params)
  return iteration, state


def _time_round(iteration, state, rng, steps):
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = iteration(state, rng)
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - start) / steps


def main(argv):
  del argv
  config = dsprites.get_config("preset=paper")
  config.batch_size = _BATCH_SIZE.value
  dataset = data.get_dataset(config.data)
  rng = jax.random.PRNGKey(2)

  stage_one = _stage_one_iteration(config, dataset)
  stage1_params = stage_one[1].params
  iterations = {"stage one": stage_one}
  for family in _FAMILIES.value:
    family_config = config.copy_and_resolve_references()
    family_config.stage2.family = family
    iterations[f"stage two: {family}"] = _stage_two_iteration(
        family_config, dataset, jax.tree_util.tree_map(lambda x: x.copy(), stage1_params))

  runs = {}
  for name, (iteration, state) in iterations.items():
    start = time.perf_counter()
    state, _ = _time_round(iteration, state, rng, 2)  # Compile and warm up.
    runs[name] = [iteration, state, [], time.perf_counter() - start]
  for _ in range(_ROUNDS.value):
    for run in runs.values():
      run[1], seconds = _time_round(run[0], run[1], rng, _STEPS.value)
      run[2].append(seconds)

  print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"devices {jax.devices()}")
  print(f"batch {config.batch_size}, median of {_ROUNDS.value} rounds x "
        f"{_STEPS.value} steps")
  reference = statistics.median(runs["stage one"][2])
  for name, (_, _, times, compile_seconds) in runs.items():
    seconds = statistics.median(times)
    print(f"  {name:18s} {1e3 * seconds:8.1f} ms/step "
          f"{config.batch_size / seconds:8.0f} images/s  "
          f"x{reference / seconds:.2f} of stage one's speed  "
          f"(compile+warm-up {compile_seconds:.1f} s)")


if __name__ == "__main__":
  app.run(main)
