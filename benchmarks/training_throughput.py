r"""Training throughput: the sharded training iteration vs the single-device step.

For stage one and each stage-two family, at each batch size, times two
compiled programs of the same work on the paper-scale dSprites config (the
batch rendered procedurally inside the step):

  sharded -- what the training loop runs: `steps.make_train_iteration` over
             `parallel.data_mesh()` (every device), state, frozen stage-one
             parameters and data set replicated with `parallel.replicate`,
             the batch split over the `data` axis.
  single  -- the baseline, the pre-parallel loop body: `jax.jit` (state
             donated) of "draw `dataset.sample(...)`, then `train_step`" on
             one device, no mesh, no sharding.

Both draw the same batches (`fold_in(train_rng, state.step)`). Reported per
row: ms/step and images/s of each, the ratio of their step times
(sharded/single: below 1 the sharded iteration is faster, above 1 it is a
regression), the FLOPs of a step from XLA's cost analysis of the single-device
program (the whole batch's work), the FLOP/s the sharded iteration achieves
and its fraction of the machine's nominal peak (derived and printed; "peak
unknown" on an unlisted accelerator), and the compile time of each program.
Every program is compiled and warmed up first (not timed); then all run in
one process, in alternating rounds so that they see the same machine load,
and the median round is reported.

  python -m benchmarks.training_throughput
  python -m benchmarks.training_throughput --batch_sizes=256 --models=stage1,gan
  XLA_FLAGS=--xla_force_host_platform_device_count=2 \
      python -m benchmarks.training_throughput --models=stage1 --steps=5
  python -m benchmarks.training_throughput --formulations=plain,reformulated
  python -m benchmarks.training_throughput --cpu_kernels=xla,ynnpack --architecture=burgess

--formulations times the strided convolutions of `msdr_jax.models.layers`
both ways side by side: "plain" (flax's own computation), "reformulated"
(the derivatives rewritten for XLA:CPU) or "default" (what this backend uses,
`layers.REFORMULATED_BACKENDS`). --cpu_kernels does the same for what XLA:CPU
runs the iteration with: "xla" (its own kernels, `steps.CPU_TRAINING_OPTIONS`,
the library's default) or "ynnpack" (jaxlib's default YNNPACK fusions).
"""

import functools
import math
import os
import platform
import statistics
import time
from unittest import mock

from absl import app
from absl import flags
import jax

from msdr_jax import base_config
from msdr_jax import data
from msdr_jax import multi_stage
from msdr_jax import parallel
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps
from msdr_jax.models import architectures
from msdr_jax.models import layers

_MODELS = ("stage1", "vae", "flow", "gan", "gmm")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "256"], "Images per step.")
_MODELS_FLAG = flags.DEFINE_list(
    "models", list(_MODELS), f"What to train: any of {','.join(_MODELS)} "
    "(stage1: stage one; the others: that stage-two family on a frozen stage one).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating timing rounds.")
_COMPUTE_DTYPE = flags.DEFINE_enum(
    "compute_dtype", "float32", sorted(steps.COMPUTE_DTYPES),
    "What the networks compute in (config.compute_dtype).")
_CPU_KERNELS = flags.DEFINE_list(
    "cpu_kernels", ["xla"], "On CPU, the kernels to time side by side: xla (the "
    "library's default, steps.CPU_TRAINING_OPTIONS), ynnpack (jaxlib's default).")
_FORMULATIONS = flags.DEFINE_list(
    "formulations", ["default"], "Strided-convolution formulations to time side by side: "
    "default (this backend's), plain, reformulated.")
_ARCHITECTURE = flags.DEFINE_enum(
    "architecture", None, sorted(architectures.ARCHITECTURES),
    "Stage one's networks (config.stage1.model.architecture; "
    "default: the paper preset's).")
_KERNELS = ("xla", "ynnpack")
_WARMUP_STEPS = 2

# Dense (no sparsity) peak FLOP/s of one GPU, by a substring of
# `device_kind`; the first match wins. "tf32" is what float32 matmuls and
# convolutions run at under JAX's default precision.
_H100_SXM = {"tf32": 494.7e12, "bf16": 989.4e12, "fp32": 66.9e12}
_GPU_PEAKS = (
    ("H100 PCIe", {"tf32": 378e12, "bf16": 756e12, "fp32": 51.2e12}),
    ("H100", _H100_SXM),
    ("H200", _H100_SXM),
    ("A100", {"tf32": 156e12, "bf16": 312e12, "fp32": 19.5e12}),
)


def _read(path):
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return ""


def _cpu_peak():
  """(nominal float32 FLOP/s of the usable cores, how it was derived) or (None, why)."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    cores = os.cpu_count() or 1
  cpuinfo = _read("/proc/cpuinfo")
  max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
  if max_khz.isdigit():
    mhz, clock_source = int(max_khz) / 1e3, "cpufreq cpuinfo_max_freq"
  else:
    clocks = [float(line.split(":")[1]) for line in cpuinfo.splitlines()
              if line.startswith("cpu MHz")]
    mhz, clock_source = (max(clocks), "max 'cpu MHz' of /proc/cpuinfo") if clocks else (0, "")
  isa = set()
  for line in cpuinfo.splitlines():
    if line.startswith("flags"):
      isa = set(line.split(":")[1].split())
      break
  if "avx512f" in isa:
    per_cycle, unit = 64, "avx512f"
  elif {"avx2", "fma"} <= isa:
    per_cycle, unit = 32, "avx2+fma"
  elif "avx" in isa:
    per_cycle, unit = 16, "avx"
  else:
    per_cycle, unit = 8, "no AVX flags found"
  if not mhz:
    return None, f"peak unknown (no clock rate found for the {cores} usable cores)"
  peak = cores * mhz * 1e6 * per_cycle
  return peak, (f"nominal CPU peak {peak / 1e9:,.1f} GFLOP/s = {cores} usable cores "
                f"(sched_getaffinity) x {mhz:,.0f} MHz ({clock_source}) x {per_cycle} "
                f"float32 FLOPs/cycle/core ({unit}); shared by all "
                f"{jax.device_count()} host device(s)")


def _gpu_peak(kind, dtype="float32"):
  """(peak FLOP/s of all devices, how it was derived) or (None, why)."""
  for name, peaks in _GPU_PEAKS:
    if name in kind:
      break
  else:
    return None, f"peak unknown for {kind!r}; no fraction of peak reported"
  precision = str(jax.config.jax_default_matmul_precision or "default").lower()
  if dtype == "bfloat16":
    key, why = "bf16", "bfloat16 is compared with the dense BF16 peak"
  elif precision in ("highest", "float32"):
    key, why = "fp32", (f"jax_default_matmul_precision={precision}: float32 runs "
                        "without TF32, so it is compared with the FP32 peak")
  else:
    key, why = "tf32", ("float32 matmuls/convolutions on this GPU use TF32 under "
                        "JAX's default precision, so float32 is compared with the "
                        f"dense TF32 peak (FP32 peak {peaks['fp32'] / 1e12:.1f} TFLOP/s)")
  count = jax.device_count()
  peak = count * peaks[key]
  return peak, (f"peak {peak / 1e12:,.1f} TFLOP/s = {count} x {peaks[key] / 1e12:.1f} "
                f"TFLOP/s ({key.upper()}, {name} entry); {why}")


def _peak(dtype="float32"):
  if jax.default_backend() == "cpu":
    return _cpu_peak()
  return _gpu_peak(jax.devices()[0].device_kind, dtype)


def _flops(compiled) -> float:
  """FLOPs of one run of `compiled` (XLA's cost analysis), NaN if unknown."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return math.nan
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per program.
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops", -1.0)
  return float(flops) if flops and flops > 0 else math.nan


def _compile(jitted, *args):
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _single_device_iteration(train_step, batch_size, train_rng):
  """The pre-parallel loop body (cf. data_placement.py's `_in_step_iteration`)."""

  @functools.partial(jax.jit, donate_argnums=0,
                     compiler_options=steps.training_compiler_options())
  def iteration(state, frozen, dataset):
    data_rng, model_rng = jax.random.split(jax.random.fold_in(train_rng, state.step))
    images, _ = dataset.sample(data_rng, batch_size)
    return train_step(state, *frozen, images, model_rng)

  return iteration


class _Program:
  """One compiled training iteration and the state it is fed."""

  def __init__(self, jitted, state, frozen, dataset):
    self.compiled, self.compile_seconds = _compile(jitted, state, frozen, dataset)
    self.state, self.frozen, self.dataset = state, frozen, dataset
    self.times = []

  def run(self, steps):
    """Runs `steps` iterations; returns seconds per step."""
    start = time.perf_counter()
    state = self.state
    for _ in range(steps):
      state, metrics = self.compiled(state, self.frozen, self.dataset)
    jax.block_until_ready((state, metrics))
    self.state = state  # The old buffers were donated.
    return (time.perf_counter() - start) / steps


def _reformulated_backends(formulation):
  """`layers.REFORMULATED_BACKENDS` under which models compute as `formulation`."""
  if formulation == "default":
    return layers.REFORMULATED_BACKENDS
  return frozenset({jax.default_backend()}) if formulation == "reformulated" else frozenset()


def _cpu_training_options(kernels):
  """`steps.CPU_TRAINING_OPTIONS` under which iterations run on `kernels`."""
  return steps.CPU_TRAINING_OPTIONS if kernels == "xla" else {}


def _programs(model, batch_size, base, dataset, stage1_params, mesh):
  """(sharded, single) programs of `model` at `batch_size`."""
  config = base.copy_and_resolve_references()
  config.batch_size = batch_size
  shape = dataset.observation_shape
  compute_dtype = steps.COMPUTE_DTYPES[_COMPUTE_DTYPE.value]
  stage_one = stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, shape, dataset.num_images, compute_dtype)
  if model == "stage1":
    init_rng, train_rng, _ = steps.rng_streams(config.seed)
    stage = stage_one
    optimizer = steps.make_optimizer(config.stage1.optimizer)
    frozen = ()
  else:
    config.stage2.family = model
    init_rng, train_rng, _ = steps.rng_streams(config.seed, stage=2)
    stage = multi_stage.MultiStageModel.from_config(config, stage_one, compute_dtype)
    optimizer = steps.make_optimizer(config.stage2.optimizer)
    frozen = (stage1_params,)
  train_step = steps.make_train_step(stage.loss)
  new_state = lambda: steps.create_train_state(stage.init, optimizer, init_rng, *frozen)

  sharded = _Program(
      steps.make_train_iteration(train_step, batch_size, train_rng, mesh),
      parallel.replicate(new_state(), mesh), parallel.replicate(frozen, mesh),
      parallel.replicate(dataset, mesh))
  device = jax.devices()[0]
  single = _Program(
      _single_device_iteration(train_step, batch_size, train_rng),
      jax.device_put(new_state(), device), jax.device_put(frozen, device),
      jax.device_put(dataset, device))
  return sharded, single


def main(argv):
  del argv
  unknown = sorted(set(_MODELS_FLAG.value) - set(_MODELS))
  if unknown:
    raise app.UsageError(f"Unknown --models {unknown}; choose from {','.join(_MODELS)}.")
  unknown = sorted(set(_FORMULATIONS.value) - {"default", *layers.FORMULATIONS})
  if unknown:
    raise app.UsageError(f"Unknown --formulations {unknown}; choose from default,"
                         f"{','.join(layers.FORMULATIONS)}.")
  unknown = sorted(set(_CPU_KERNELS.value) - set(_KERNELS))
  if unknown:
    raise app.UsageError(f"Unknown --cpu_kernels {unknown}; choose from {','.join(_KERNELS)}.")
  if len(_CPU_KERNELS.value) > 1 and steps.training_compiler_options() is None:
    print("Note: no XLA:CPU kernel choice here (not a CPU, or a jaxlib without the "
          "option): the --cpu_kernels rows are one program.")
  batch_sizes = [int(b) for b in _BATCH_SIZES.value]
  mesh = parallel.data_mesh()
  print(f"Machine: {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"jax {jax.__version__}.")
  peak, peak_note = _peak(_COMPUTE_DTYPE.value)
  print(f"Peak: {peak_note}.")

  base = base_config.get_config("preset=paper", "dsprites", "procedural")
  if _ARCHITECTURE.value:
    base.stage1.model.architecture = _ARCHITECTURE.value
  dataset = data.get_dataset(base.data)
  shape = dataset.observation_shape
  stage1_params = steps.create_train_state(
      stage_one_lib.DisentanglingVAE.from_config(base.stage1, shape).init,
      steps.make_optimizer(base.stage1.optimizer), steps.rng_streams(base.seed)[0]).params

  runs = {}
  for batch_size in batch_sizes:
    if batch_size % mesh.size:
      print(f"Skipping batch {batch_size}: does not split over {mesh.size} devices.")
      continue
    for model in _MODELS_FLAG.value:
      for formulation in _FORMULATIONS.value:
        for kernels in _CPU_KERNELS.value:
          with (mock.patch.object(layers, "REFORMULATED_BACKENDS",
                                  _reformulated_backends(formulation)),
                mock.patch.object(steps, "CPU_TRAINING_OPTIONS",
                                  _cpu_training_options(kernels))):
            sharded, single = _programs(model, batch_size, base, dataset, stage1_params,
                                        mesh)
          for program in (sharded, single):
            program.run(_WARMUP_STEPS)  # Warm-up, not timed.
          runs[model, batch_size, formulation, kernels] = (sharded, single)

  for round_index in range(_ROUNDS.value):
    for pair in runs.values():
      # Alternate which of the two goes first, so neither always follows the other.
      for program in pair if round_index % 2 == 0 else pair[::-1]:
        program.times.append(program.run(_STEPS.value))

  print(f"Paper-scale dSprites config (procedural data, {base.stage1.model.architecture} "
        f"stage one), {_COMPUTE_DTYPE.value}; median of "
        f"{_ROUNDS.value} rounds x {_STEPS.value} steps; sharded over a {mesh.size}-device "
        f"mesh vs single device; ratio = sharded/single step time (<1: sharded faster). "
        f"GFLOP/step from the single-device program's cost analysis; GFLOP/s and % of "
        f"peak of the sharded iteration.")
  header = (f"{'model':<7}{'batch':>6}{'layers':>14}{'kernels':>9}{'sharded ms':>12}{'img/s':>9}"
            f"{'single ms':>11}"
            f"{'img/s':>9}{'ratio':>7}{'GFLOP/step':>12}{'GFLOP/s':>11}{'% peak':>8}"
            f"{'compile s sh/si':>17}")
  print(header)
  for (model, batch_size, formulation, kernels), (sharded, single) in runs.items():
    sharded_s = statistics.median(sharded.times)
    single_s = statistics.median(single.times)
    flops = _flops(single.compiled)
    achieved = flops / sharded_s
    fraction = f"{100 * achieved / peak:.1f}" if peak and not math.isnan(achieved) else "-"
    print(f"{model:<7}{batch_size:>6}{formulation:>14}{kernels:>9}"
          f"{1e3 * sharded_s:>12.2f}{batch_size / sharded_s:>9.0f}"
          f"{1e3 * single_s:>11.2f}{batch_size / single_s:>9.0f}"
          f"{sharded_s / single_s:>6.2f}x{flops / 1e9:>12.2f}{achieved / 1e9:>11,.1f}"
          f"{fraction:>8}{sharded.compile_seconds:>9.1f}/{single.compile_seconds:.1f}")


if __name__ == "__main__":
  app.run(main)
