"""The training state and the one train step both stages use.

Each stage is a model with two pure methods (stage one: `stage_one.
DisentanglingVAE`; stage two: `multi_stage.MultiStageModel`):

  params = model.init(rng, *frozen)
  loss, metrics = model.loss(params, *frozen, images, rng, step)

`frozen` is `()` for stage one and `(stage1_params,)` for stage two: the
frozen stage-one parameters are an ordinary input of the stage-two loss, never
differentiated. From any JAX code:

  state = steps.create_train_state(model.init, steps.make_optimizer(
      config.stage1.optimizer), rng)
  train_step = jax.jit(steps.make_train_step(model.loss),
                       compiler_options=steps.training_compiler_options())
  state, metrics = train_step(state, images, rng)                 # stage one
  state, metrics = train_step(state, stage1_params, images, rng)  # stage two

`train_step(state, *frozen, batch, rng) -> (state, metrics)` is a pure
function of pytrees; with `axis_name` set it averages gradients over that
axis, so the same function runs under `jax.pmap` or `shard_map`. (The
total-correlation estimators then see each device's share of the batch, as
with any per-device minibatch statistic.) `make_train_iteration` wraps it into
the compiled body of the training loop: data drawn on the devices, sharded
over a mesh, compiled with `training_compiler_options()`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from msdr_jax import data
from msdr_jax import parallel

Metrics = dict[str, jax.Array]
LossFn = Callable[..., tuple[jax.Array, Metrics]]

OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict], optax.GradientTransformation]] = {
    "adam": lambda c: optax.adam(c.learning_rate, b1=c.b1, b2=c.b2, eps=c.eps),
}

# `config.compute_dtype`: what the networks' convolutions and products compute
# in. Parameters, gradients, losses and the optimizer stay float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(train_state.TrainState):
  """step, params and opt_state (pytree leaves); tx is static."""


class NonFiniteLossError(RuntimeError):
  """The loss or the gradients became NaN or infinite."""


def first_nonfinite(
    pending: list[tuple[int, Metrics]],
) -> tuple[int, str, float] | None:
  """(step, name, value) of the first non-finite loss or gradient norm."""
  for step, metrics in pending:
    for name in ("loss", "grad_norm"):
      value = float(metrics[name])
      if not math.isfinite(value):
        return step, name, value
  return None


def make_optimizer(
    optimizer_config: ml_collections.ConfigDict,
    update_scales: dict[str, float] | None = None,
) -> optax.GradientTransformation:
  """The optimizer of `config.stageN.optimizer`.

  `update_scales` (a family's, e.g. MS-GAN's discriminator) multiplies the
  updates of the parameters under those top-level keys: with Adam, exactly a
  learning rate of their own.
  """
  optimizer = OPTIMIZERS[optimizer_config.name](optimizer_config)
  if not update_scales:
    return optimizer

  def scale(updates, params=None):
    del params
    return {key: jax.tree.map(lambda u, s=update_scales.get(key, 1.0): u * s, value)
            for key, value in updates.items()}

  return optax.chain(optimizer, optax.stateless(scale))


def rng_streams(seed: int, stage: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The independent (init, train, eval) keys of a stage of a run.

  One derivation for every stream: mixing `split` and `fold_in` of the same
  key can give identical keys (with threefry_partitionable, `fold_in(k, 1)`
  is `split(k)[1]`). The first three keys of `split(k, 6)` are those of
  `split(k, 3)`, so stage one's streams do not depend on stage two's
  existence.
  """
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  init_rng, train_rng, eval_rng = keys[3 * (stage - 1) : 3 * stage]
  return init_rng, train_rng, eval_rng


# What XLA:CPU is asked for when it compiles a training iteration. jaxlib
# (0.10) hands convolutions, reductions and elementwise ops to YNNPACK by
# default; XLA:CPU's own kernels train these models clearly faster at batch
# 256 and about as fast at batch 64 (docs/performance.md,
# `benchmarks/training_throughput.py --cpu_kernels=xla,ynnpack`). The empty
# string is an empty list of fusion types: no YNNPACK fusion at all. Setting
# this to {} gives jaxlib's defaults back.
CPU_TRAINING_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _compiler_accepts(options: tuple[tuple[str, str], ...]) -> bool:
  """Whether this jaxlib's compiler knows every option (older ones lack some)."""
  try:
    jax.jit(lambda: 0, compiler_options=dict(options)).lower().compile()
  except jax.errors.JaxRuntimeError:
    return False
  return True


def training_compiler_options() -> dict[str, str] | None:
  """`jax.jit`'s `compiler_options` for a training iteration on this backend.

  `CPU_TRAINING_OPTIONS` on CPU when this jaxlib accepts them, else None
  (XLA's defaults). For code that jits `make_train_step` itself:

    jax.jit(train_step, compiler_options=steps.training_compiler_options())
  """
  if jax.default_backend() != "cpu" or not CPU_TRAINING_OPTIONS:
    return None
  if not _compiler_accepts(tuple(sorted(CPU_TRAINING_OPTIONS.items()))):
    return None
  return dict(CPU_TRAINING_OPTIONS)


def jit_run_once(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`jax.jit(fn)` for a program that runs once, such as an initialisation.

  Run eagerly, each of an initialisation's hundreds of small operations would
  be compiled on its own. As one program, on XLA:CPU, LLVM's optimisation
  passes would take longer than the program itself ever runs, so they are
  left out there (see `benchmarks/startup.py`).
  """
  options = ({"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu"
             else None)
  jitted = jax.jit(fn, compiler_options=options)

  @functools.wraps(fn)
  def run(*args):
    # Inside another transformation (e.g. `jax.eval_shape`) compiler options
    # are not allowed, and the enclosing program compiles `fn` anyway.
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args)):
      return fn(*args)
    return jitted(*args)

  return run


def create_train_state(
    init_params: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    *frozen: Any,
) -> TrainState:
  """The state at step 0: `init_params(rng, *frozen)` and `optimizer`'s state.

  The frozen stage-one parameters only shape the stage-two model.
  """

  @jit_run_once
  def create(rng, *frozen):
    return TrainState.create(
        apply_fn=None, params=init_params(rng, *frozen), tx=optimizer)

  return create(rng, *frozen)


def make_train_step(
    loss_fn: LossFn, axis_name: str | None = None
) -> Callable[..., tuple[TrainState, Metrics]]:
  """Returns the pure `train_step(state, *frozen, batch, rng) -> (state, metrics)`.

  Args:
    loss_fn: `(params, *frozen, batch, rng, step) -> (loss, metrics)`; the
      gradient is taken with respect to `params` only.
    axis_name: if set, gradients and metrics are averaged over this mapped
      axis (data parallelism under `jax.pmap` / `shard_map`).
  """

  def train_step(state: TrainState, *args):
    *frozen, batch, rng = args
    grads, metrics = jax.grad(loss_fn, has_aux=True)(
        state.params, *frozen, batch, rng, state.step)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    # Logged, and checked with the loss: a finite loss with non-finite
    # gradients would otherwise put NaN parameters into the next checkpoint.
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state.apply_gradients(grads=grads), metrics

  return train_step


def make_train_iteration(
    train_step: Callable[..., tuple[TrainState, Metrics]],
    batch_size: int,
    train_rng: jax.Array,
    mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, tuple[Any, ...], data.GroundTruthData], tuple[TrainState, Metrics]]:
  """The training loop's compiled body, sharded over `mesh`.

  `iteration(state, frozen, dataset)` draws step `state.step`'s batch on the
  devices (each device renders or gathers its share of the images), then
  calls `train_step(state, *frozen, images, rng)`. Per-step randomness is
  `fold_in(train_rng, step)`, so a resumed run replays exactly the batches and
  noise an uninterrupted run would have seen, and the batch of a step is the
  same on any number of devices. State, `frozen` and the data set are
  replicated; the state's buffers are donated to the updated state. A batch
  the devices cannot split evenly raises `parallel.DeviceCountError`.
  """
  parallel.check_batch_size(batch_size, mesh.size, "config.batch_size")
  draw_images = parallel.map_examples(
      lambda dataset, states: dataset.images_from_state(states), mesh)

  def iteration(state, frozen, dataset):
    step_rng = jax.random.fold_in(train_rng, state.step)
    data_rng, model_rng = jax.random.split(step_rng)
    states = parallel.constrain_batch(dataset.sample_state(data_rng, batch_size), mesh)
    return train_step(state, *frozen, draw_images(dataset, states), model_rng)

  return jax.jit(iteration, in_shardings=parallel.replicated(mesh),
                 out_shardings=parallel.replicated(mesh), donate_argnums=0,
                 compiler_options=training_compiler_options())
