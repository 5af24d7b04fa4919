r"""What `cpu_memory.reuse_step_memory()` gains on a CPU, side by side.

The setting is process-wide and taken before JAX's first computation, so each
side is its own worker process: the library's training iteration (as
`benchmarks.pytorch_peer` times it) with glibc's and JAX's defaults, and with
`reuse_step_memory()`, as `python -m msdr_jax.main` runs on a machine without
an accelerator. Rounds alternate between the two; medians are reported, with
the ratio reuse / defaults in images per second.

  python -m benchmarks.step_memory
  python -m benchmarks.step_memory --models=ms_vae --batch_sizes=64

Its flags are `benchmarks.pytorch_peer`'s (--host_devices and --torch_python
aside).
"""

import os
import statistics
import sys

from absl import app
from absl import flags

from benchmarks import conv_formulations
from benchmarks import pytorch_peer

SETTINGS = ("defaults", "reuse_step_memory")
FLAGS = flags.FLAGS  # --models, --batch_sizes, --timed_steps, --timing_rounds: pytorch_peer's.


def serve(setting: str, model: str, batch_size: int) -> None:
  """A `pytorch_peer.start_worker` worker timing the library's iteration."""
  # pylint: disable=g-import-not-at-top
  if setting == "reuse_step_memory":
    from msdr_jax import cpu_memory
    if not cpu_memory.reuse_step_memory():
      raise RuntimeError(pytorch_peer.NOT_APPLIED)
  import jax
  from benchmarks import stage_one_throughput
  from configs import dsprites
  from msdr_jax import data
  # pylint: enable=g-import-not-at-top
  config = dsprites.get_config("preset=paper")
  config.batch_size = batch_size
  config.stage1.model.architecture = "burgess"
  dataset = data.get_dataset(config.data)
  iteration, state = pytorch_peer.library_iteration(model, config, dataset, 1)
  rng = jax.random.PRNGKey(1)
  state, _ = stage_one_throughput.time_round(iteration, state, rng, 2)  # Compile.
  print("ready", flush=True)
  for line in sys.stdin:
    if line.strip() == "quit":
      return
    state, seconds = stage_one_throughput.time_round(iteration, state, rng, int(line))
    print(seconds, flush=True)


def time_settings(model: str, batch_size: int) -> dict[str, float]:
  """{setting: images per second}, medians of alternating rounds."""
  workers = {
      setting: pytorch_peer.start_worker(
          [sys.executable, "-m", "benchmarks.step_memory", "--", "serve", setting, model,
           str(batch_size)], setting)
      for setting in SETTINGS}
  seconds = {setting: [] for setting in SETTINGS}
  for _ in range(FLAGS.timing_rounds):
    for setting, worker in workers.items():
      seconds[setting].append(pytorch_peer.time_worker(worker, FLAGS.timed_steps))
  for worker in workers.values():
    pytorch_peer.stop_worker(worker)
  return {s: batch_size / statistics.median(times) for s, times in seconds.items()}


def main(argv):
  if argv[1:2] == ["serve"]:
    setting, model, batch_size = argv[2:]
    return serve(setting, model, int(batch_size))
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = sorted(set(FLAGS.models) - set(pytorch_peer.MODELS))
  if unknown:
    raise app.UsageError(
        f"Unknown --models {unknown}; choose from {','.join(pytorch_peer.MODELS)}.")
  print(f"machine: {conv_formulations.cpu_model()}, {os.cpu_count()} CPU cores")
  for batch_size in map(int, FLAGS.batch_sizes):
    for model in FLAGS.models:
      speeds = time_settings(model, batch_size)
      ratio = speeds["reuse_step_memory"] / speeds["defaults"]
      print(f"{model}, batch {batch_size}, median of {FLAGS.timing_rounds} alternating "
            f"rounds x {FLAGS.timed_steps} steps: defaults {speeds['defaults']:.0f} images/s, "
            f"reuse_step_memory {speeds['reuse_step_memory']:.0f} images/s, "
            f"ratio {ratio:.2f}x", flush=True)


if __name__ == "__main__":
  app.run(main)
