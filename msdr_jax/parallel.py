"""Data parallelism over every device of every host.

Two ways to run the same pure train steps of `steps.py` on many devices:

* **Sharded jit** (what the training loop uses). One program over a 1-D
  device mesh with a `data` axis: the batch is split over the axis, the
  parameters, optimizer state and data set are replicated, and XLA inserts
  the gradient all-reduce. Its numbers are those of the single-device step on
  the whole batch (up to the order of float additions): the total-correlation
  estimators see the whole batch, and the random draws do not depend on the
  number of devices (`jax_threefry_partitionable`). So a run may resume on a
  different number of devices.

    mesh = parallel.data_mesh()
    step = parallel.jit_sharded(
        steps.make_train_step(stage_one.loss), mesh, batch_argnums=(1,))
    state, metrics = step(parallel.replicate(state, mesh),
                          parallel.shard_batch(images, mesh), rng)

* **pmap**: the steps built with an `axis_name` average gradients with
  `jax.lax.pmean`, for code written around `jax.pmap`:

    step = jax.pmap(steps.make_train_step(stage_one.loss, axis_name="batch"),
                    axis_name="batch", in_axes=(None, 0, 0))
    state, metrics = step(state, parallel.split_for_pmap(images), rngs)

  Each device then computes its own minibatch statistics (the
  total-correlation estimators see 1/n of the batch) with its own random key,
  as in any pmapped program.

Several hosts: start every process with the same command and the flags of
`initialize_distributed` (`main.py`); `jax.devices()` then spans all hosts,
and every process runs the same sharded program.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from msdr_jax import configuration

DATA_AXIS = "data"


class DeviceCountError(ValueError):
  """The batch cannot be split evenly over the devices."""


class ProcessMismatchError(ValueError):
  """The processes of a multi-host job were started differently."""


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
  """Joins a multi-process JAX job (`jax.distributed.initialize`).

  With no arguments the cluster is detected (Cloud TPU pods, SLURM, Open MPI,
  Kubernetes); otherwise every process names the same coordinator
  (`host:port` of process 0), the number of processes, and its own id. Must
  run before anything else touches JAX.
  """
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id)
  logging.info("Process %d of %d; %d local of %d devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def is_main_process() -> bool:
  """The process that writes logs, summaries and evaluation results."""
  return jax.process_index() == 0


def sync_processes(name: str) -> None:
  """Waits until every process has reached the barrier `name` (no-op alone)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis `data` over `devices` (default: all, all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Leading (batch) axis split over `data`, other axes whole."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, num_devices: int, flag: str | None = None) -> None:
  """Raises DeviceCountError unless `batch_size` splits evenly over the devices.

  `flag` is the command-line flag that sets the batch size, if any.
  """
  if batch_size % num_devices:
    lower = batch_size // num_devices * num_devices
    higher = lower + num_devices
    multiples = f"{lower} or {higher}" if lower else f"{higher}"
    what = f"{flag}={batch_size}" if flag else f"A batch of {batch_size}"
    fix = f"--{flag}={multiples}" if flag else multiples
    raise DeviceCountError(
        f"{what} does not split evenly over {num_devices} devices. Use a multiple "
        f"of {num_devices} (e.g. {fix}), or fewer devices (CUDA_VISIBLE_DEVICES / "
        "TPU_VISIBLE_CHIPS).")


def _memory_bytes(device: jax.Device) -> int:
  """What `device` can hold: its allocator's limit, or the host's memory (CPU)."""
  stats = device.memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_batch_fits(
    batch_size: int, image_shape: Sequence[int], num_devices: int, flag: str
) -> None:
  """Raises ConfigError when a device's share of a batch cannot fit on it.

  Counts the float32 images alone, a lower bound (activations and gradients
  take many times more), so it refuses only a batch that cannot run at all,
  before anything is written, instead of failing inside XLA.
  """
  needed = -(-batch_size // num_devices) * int(np.prod(image_shape)) * 4
  available = _memory_bytes(jax.local_devices()[0])
  if needed > available:
    raise configuration.ConfigError(
        f"{flag}={batch_size} cannot fit: a device's share of its images alone "
        f"takes {needed / 2**30:,.1f} GiB, more than the device's "
        f"{available / 2**30:,.1f} GiB. Use a smaller --{flag} (the presets use 64).")


def _put(leaf: Any, sharding: jax.sharding.NamedSharding) -> jax.Array:
  """`leaf` laid out as `sharding`; no copy if it already is.

  On one process a device-to-device copy. When the mesh spans several
  processes, whose devices this one cannot address, the global array is
  built from this process's host value (every process passes the same one).
  """
  # Equal, not merely equivalent: a jitted step is compiled for its inputs'
  # sharding objects, so a one-device array of another kind would compile the
  # step a second time once the step's own outputs come back.
  if isinstance(leaf, jax.Array) and leaf.is_fully_addressable and leaf.sharding == sharding:
    return leaf
  if jax.process_count() == 1:
    return jax.device_put(leaf, sharding)
  host = np.asarray(jax.device_get(leaf))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """`tree` on every device of `mesh`: the leaves already there are kept.

  The result may share buffers with `tree` (always on a one-device mesh), so
  donating it to a jitted step invalidates `tree` too.
  """
  sharding = replicated(mesh)
  return jax.tree_util.tree_map(lambda leaf: _put(leaf, sharding), tree)


def _local_replica(leaf: Any) -> Any:
  if not isinstance(leaf, jax.Array):
    return leaf
  if not leaf.is_fully_replicated:
    raise ValueError(
        f"Expected a replicated array, got one laid out as {leaf.sharding}.")
  return leaf.addressable_data(0)


def local_replica(tree: Any) -> Any:
  """This process's first replica of replicated (possibly multi-host) arrays.

  No copy: one device's buffer of each array, usable by single-device code
  (the evaluation) in any process of a multi-host job.
  """
  return jax.tree_util.tree_map(_local_replica, tree)


def to_host(tree: Any) -> Any:
  """NumPy copies of replicated (possibly multi-host) arrays."""
  return jax.tree_util.tree_map(lambda leaf: np.asarray(_local_replica(leaf)), tree)


def assert_same_in_all_processes(value: int, what: str) -> None:
  """Raises ProcessMismatchError unless every process passes the same `value`."""
  if jax.process_count() > 1:
    values = multihost_utils.process_allgather(np.asarray(value, np.int64))
    if len(set(np.asarray(values).reshape(-1).tolist())) > 1:
      raise ProcessMismatchError(
          f"The processes of this job run different {what}; start every process "
          "with the same command line.")


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Splits the leading axis of every leaf of a global batch over `data`."""
  sharding = batch_sharded(mesh)

  def put(leaf):
    check_batch_size(leaf.shape[0], mesh.size)
    return _put(leaf, sharding)

  return jax.tree_util.tree_map(put, batch)


def constrain_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Inside jit: lay a batch computed on the devices out along `data`."""
  return jax.lax.with_sharding_constraint(batch, batch_sharded(mesh))


def jit_sharded(
    step: Callable[..., Any],
    mesh: jax.sharding.Mesh,
    batch_argnums: Sequence[int],
    donate_argnums: Sequence[int] = (0,),
) -> Callable[..., Any]:
  """`jax.jit` of `step` with its `batch_argnums` split over `data`.

  Every other argument and every output is replicated. Argument 0 (the train
  state) is donated by default, so the updated state reuses its buffers: pass
  `replicate(state, mesh)` and use only the returned state afterwards
  (`replicate` may share the buffers of the state it is given).
  """
  compiled_by_num_args = {}  # `step` may take a variable number of arguments.

  def sharded_step(*args):
    num_args = len(args)
    if num_args not in compiled_by_num_args:
      in_shardings = tuple(
          batch_sharded(mesh) if i in batch_argnums else replicated(mesh)
          for i in range(num_args))
      compiled_by_num_args[num_args] = jax.jit(
          step, in_shardings=in_shardings, out_shardings=replicated(mesh),
          donate_argnums=tuple(donate_argnums))
    return compiled_by_num_args[num_args](*args)

  return sharded_step


def split_for_pmap(batch: Any, num_devices: int | None = None) -> Any:
  """[B, ...] -> [n, B / n, ...] for `jax.pmap` over n local devices."""
  num_devices = num_devices or jax.local_device_count()

  def split(leaf):
    check_batch_size(leaf.shape[0], num_devices)
    return leaf.reshape(num_devices, leaf.shape[0] // num_devices, *leaf.shape[1:])

  return jax.tree_util.tree_map(split, batch)


def map_examples(
    fn: Callable[[Any, jax.Array], jax.Array], mesh: jax.sharding.Mesh
) -> Callable[[Any, jax.Array], jax.Array]:
  """`fn(context, examples)` run by each device on its own shard of `examples`.

  For per-example work inside a sharded step, e.g. rendering or gathering the
  images of a batch of states: every device produces only its share, from its
  replica of `context` (the data set), and the result is split along `data`.
  `fn` must treat the examples independently.
  """
  spec = jax.sharding.PartitionSpec
  # check_vma=False: host callbacks (data sets kept in host memory) have no
  # replication rule, and per-example work needs none.
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec(), spec(DATA_AXIS)),
                       out_specs=spec(DATA_AXIS), check_vma=False)
