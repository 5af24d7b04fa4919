r"""Time to build the training states, by how their initialisation is compiled.

`msdr_jax.steps` builds each stage's initial state (parameters and optimizer
state) as one jitted program that runs once, compiled on XLA:CPU without
LLVM's optimisation passes (`steps.jit_run_once`). This script measures that
choice against the two alternatives, each in a fresh process with no
compilation cache, side by side in one run:

  eager      every operation of the initialisation dispatched (and compiled) alone
  jit        one program, XLA's default optimisation level
  jit_once   one program, no backend optimisation on CPU (the library's choice)

For stage one and for each stage-two family it reports the median seconds to
the first state over `--rounds` alternating rounds and the ratio to eager.

  python -m benchmarks.startup
  python -m benchmarks.startup --rounds=3 --families=vae,flow
"""

import os
import statistics
import subprocess
import sys

from absl import app
from absl import flags

from benchmarks import conv_formulations

_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating rounds (fresh processes).")
_FAMILIES = flags.DEFINE_list("families", ["vae", "flow", "gan", "gmm"],
                              "Stage-two families to time.")
_MODES = ("eager", "jit", "jit_once")

# Run in a fresh process: times one stage's state creation under `mode`.
_CHILD = r"""
import sys, time
import jax
from configs import dsprites
from msdr_jax import multi_stage
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps

mode, family = sys.argv[1], sys.argv[2]
if mode == "eager":
  steps.jit_run_once = lambda fn: fn
elif mode == "jit":
  steps.jit_run_once = jax.jit
config = dsprites.get_config("preset=tiny")
shape = (64, 64, 1)
rng = jax.random.PRNGKey(0)
if family == "stage1":
  start = time.perf_counter()
  stage_one = stage_one_lib.DisentanglingVAE.from_config(config.stage1, shape)
  state = steps.create_train_state(
      stage_one.init, steps.make_optimizer(config.stage1.optimizer), rng)
else:
  config.stage2.family = family
  stage_one = stage_one_lib.DisentanglingVAE.from_config(config.stage1, shape)
  stage1 = steps.create_train_state(
      stage_one.init, steps.make_optimizer(config.stage1.optimizer), rng).params
  jax.block_until_ready(stage1)
  start = time.perf_counter()
  model = multi_stage.MultiStageModel.from_config(config, stage_one)
  state = steps.create_train_state(
      model.init, steps.make_optimizer(config.stage2.optimizer), rng, stage1)
jax.block_until_ready(state)
print(time.perf_counter() - start)
"""


def _time(mode: str, model: str) -> float:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
  output = subprocess.run([sys.executable, "-c", _CHILD, mode, model], env=env,
                          capture_output=True, text=True, check=True).stdout
  return float(output.split()[-1])


def main(argv):
  del argv
  models = ["stage1", *_FAMILIES.value]
  seconds = {(mode, model): [] for mode in _MODES for model in models}
  for round_index in range(_ROUNDS.value):
    for model in models:
      for mode in _MODES:
        seconds[mode, model].append(_time(mode, model))
    print(f"round {round_index + 1}/{_ROUNDS.value} done", file=sys.stderr)
  print(f"Seconds to the initial training state, median of {_ROUNDS.value} fresh "
        f"processes ({conv_formulations.cpu_model()}, "
        f"{os.cpu_count()} cores); ratio to eager in brackets.\n")
  print("| model | " + " | ".join(_MODES) + " |")
  print("|---|" + "---|" * len(_MODES))
  for model in models:
    eager = statistics.median(seconds["eager", model])
    cells = [f"{statistics.median(seconds[mode, model]):.1f} "
             f"({statistics.median(seconds[mode, model]) / eager:.2f}x)" for mode in _MODES]
    print(f"| {model} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  app.run(main)
