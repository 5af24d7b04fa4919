"""Data parallelism: 8 devices train as 1 does, pmap, resharding, two processes.

The multi-device checks run in subprocesses with 8 host CPU devices
(`--xla_force_host_platform_device_count=8`), the two-process check as two
real CLI processes on localhost talking through CPU collectives.
"""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import dsprites
from msdr_jax import parallel
from msdr_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]

# The parameters of two runs differ by float rounding only (the order of the
# all-reduce's additions), measured relative to how far training moved them:
# 3.4e-4 for stage one (Adam's first steps turn rounding in near-zero
# gradients into whole steps), 6e-6 for stage two, 2e-6 for pmap. A step on
# another batch, or without the gradient mean, moves the parameters as far as
# training does: a relative distance of order 1.
_RELATIVE_TOLERANCE = 5e-3

_EIGHT_DEVICES = textwrap.dedent("""
    import shutil, sys, time
    import jax
    import numpy as np
    from configs import dsprites
    from msdr_jax import data, parallel, train, writers

    workdir = sys.argv[1]
    assert jax.device_count() == 8, jax.devices()
    config = dsprites.get_config("preset=tiny")
    config.stage2.family = "vae"
    dataset = data.get_dataset(config.data)
    shape = dataset.observation_shape
    writer = writers.MetricWriter(workdir, enabled=False)
    mesh = {n: parallel.data_mesh(jax.devices()[:n]) for n in (1, 8)}
    start = time.time()
    save = lambda name, params: print(name, time.time() - start) or np.savez(
        f"{workdir}/{name}.npz", *map(np.asarray, jax.tree.leaves(parallel.to_host(params))))

    # Sharded jit, stage one: 8 devices and 1 device; then the 1-device run's
    # checkpoint at step 3 resumed on 8 devices.
    stage1 = {}
    for name, devices in (("8", 8), ("1", 1)):
      state = train.train_stage_one(config, f"{workdir}/s1_{name}", dataset, writer,
                                    mesh[devices])
      assert len(state.params["encoder"]["Dense_0"]["kernel"].sharding.device_set) == devices
      stage1[name] = parallel.to_host(state.params)
      save(f"stage1_{name}", state.params)
    shutil.copytree(f"{workdir}/s1_1", f"{workdir}/s1_resharded")
    shutil.rmtree(f"{workdir}/s1_resharded/checkpoints/{config.stage1.num_steps}")
    state = train.train_stage_one(config, f"{workdir}/s1_resharded", dataset, writer, mesh[8])
    save("stage1_resharded", state.params)

    # Sharded jit, stage two on the same frozen stage one.
    initial = train.create_stage_two_state(
        config, shape, stage1["1"], train.rng_streams(config.seed, stage=2)[0])
    save("stage2_initial", initial.params)
    for name, devices in (("8", 8), ("1", 1)):
      state = train.train_stage_two(config, f"{workdir}/s2_{name}", dataset, stage1["1"],
                                    writer, mesh[devices])
      save(f"stage2_{name}", state.params)

    # pmap: the steps with an axis name, 3 steps on 8 devices and the same
    # mapped program on one device (vmap), from the same shards.
    def run_mapped(step, state, frozen, mapper):
      mapped = mapper(step, axis_name="batch", in_axes=(None,) * (1 + len(frozen)) + (0, 0))
      if mapper is jax.vmap:
        mapped = jax.jit(mapped)
      for i in range(3):
        # Two images a device: the stratified TC estimator needs two.
        images, _ = dataset.sample(jax.random.PRNGKey(10 + i), 16)
        rngs = jax.random.split(jax.random.PRNGKey(20 + i), 8)
        new, metrics = mapped(state, *frozen, parallel.split_for_pmap(images, 8), rngs)
        for leaf in jax.tree.leaves(new.params):
          np.testing.assert_array_equal(leaf[0], leaf[-1])  # Replicas agree.
        state = jax.tree.map(lambda x: x[0], new)
      return state.params

    state1 = train.create_train_state(config.stage1, shape, jax.random.PRNGKey(1))
    step1 = train.make_train_step(config.stage1, shape, dataset.num_images, axis_name="batch")
    state2 = train.create_stage_two_state(config, shape, stage1["1"], jax.random.PRNGKey(2))
    step2 = train.make_stage_two_train_step(config, shape, axis_name="batch")
    for mapper, name in ((jax.pmap, "pmap"), (jax.vmap, "vmap")):
      save(f"stage1_{name}", run_mapped(step1, state1, (), mapper))
      save(f"stage2_{name}", run_mapped(step2, state2, (stage1["1"],), mapper))
    np.savez(f"{workdir}/initial.npz", *jax.tree.leaves(state1.params))

    # jit_sharded: a step fed from the host, its batch split over 8 devices.
    step = train.make_train_step(config.stage1, shape, dataset.num_images)
    images, _ = dataset.sample(jax.random.PRNGKey(30), 16)
    rng = jax.random.PRNGKey(31)
    sharded, _ = parallel.jit_sharded(step, mesh[8], batch_argnums=(1,))(
        parallel.replicate(state1, mesh[8]), parallel.shard_batch(images, mesh[8]), rng)
    save("stage1_jit_sharded", sharded.params)
    save("stage1_jit", jax.jit(step)(state1, images, rng)[0].params)
    np.savez(f"{workdir}/initial2.npz", *jax.tree.leaves(state2.params))

    # A batch the devices cannot split: refused before the work directory exists.
    odd = config.copy_and_resolve_references()
    odd.batch_size = 12
    try:
      train.train_and_evaluate(odd, f"{workdir}/odd")
    except parallel.DeviceCountError as e:
      print("refused:", e)
    import os
    assert not os.path.exists(f"{workdir}/odd")
    print("eight devices ok")
""")


def _run(args, env_update, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **env_update)
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("eight_devices")
  result = _run([sys.executable, "-c", _EIGHT_DEVICES, str(workdir)],
                {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
                              + " --xla_force_host_platform_device_count=8"})
  assert result.returncode == 0, result.stderr[-4000:]
  assert "eight devices ok" in result.stdout
  return workdir, result.stdout


def _load(path):
  with np.load(path) as arrays:
    return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def _relative_distance(params, reference, initial):
  """|params - reference| / |reference - initial| over all parameters."""
  diff = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(params, reference)))
  moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(reference, initial)))
  assert moved > 0
  return diff / moved


def _initial_stage_one():
  config = dsprites.get_config("preset=tiny")
  init_rng, _, _ = train.rng_streams(config.seed)
  state = train.create_train_state(config.stage1, (64, 64, 1), init_rng)
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def test_eight_devices_train_stage_one_as_one_device_does(eight_devices):
  workdir, _ = eight_devices
  one, eight = _load(workdir / "stage1_1.npz"), _load(workdir / "stage1_8.npz")
  assert _relative_distance(eight, one, _initial_stage_one()) < _RELATIVE_TOLERANCE


def test_a_checkpoint_of_one_device_resumes_on_eight(eight_devices):
  workdir, _ = eight_devices
  resumed = _load(workdir / "stage1_resharded.npz")
  uninterrupted = _load(workdir / "stage1_8.npz")
  assert _relative_distance(resumed, uninterrupted, _initial_stage_one()) < _RELATIVE_TOLERANCE


def test_eight_devices_train_stage_two_as_one_device_does(eight_devices):
  workdir, _ = eight_devices
  one, eight = _load(workdir / "stage2_1.npz"), _load(workdir / "stage2_8.npz")
  initial = _load(workdir / "stage2_initial.npz")
  assert _relative_distance(eight, one, initial) < _RELATIVE_TOLERANCE


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_pmap_on_eight_devices_matches_the_mapped_program_on_one(eight_devices, stage):
  workdir, _ = eight_devices
  initial = _load(workdir / ("initial.npz" if stage == "stage1" else "initial2.npz"))
  pmapped, vmapped = _load(workdir / f"{stage}_pmap.npz"), _load(workdir / f"{stage}_vmap.npz")
  assert _relative_distance(pmapped, vmapped, initial) < _RELATIVE_TOLERANCE


def test_jit_sharded_matches_the_unsharded_step(eight_devices):
  workdir, _ = eight_devices
  sharded, plain = _load(workdir / "stage1_jit_sharded.npz"), _load(workdir / "stage1_jit.npz")
  initial = _load(workdir / "initial.npz")
  assert _relative_distance(sharded, plain, initial) < _RELATIVE_TOLERANCE


def test_a_batch_the_devices_cannot_split_is_refused(eight_devices):
  _, stdout = eight_devices
  assert ("refused: config.batch_size=12 does not split evenly over 8 devices. Use a "
          "multiple of 8 (e.g. --config.batch_size=8 or 16)") in stdout
  with pytest.raises(parallel.DeviceCountError, match="batch size=6 does not split"):
    parallel.split_for_pmap(np.zeros((6, 2)), 4)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_as_one_does(eight_devices, tmp_path):
  """Two CLI processes (a CPU device each) on localhost, then the checkpoint."""
  workdir, _ = eight_devices
  port = _free_port()
  command = [
      sys.executable, "-m", "msdr_jax.main", "--config=configs/dsprites.py:preset=tiny",
      "--config.stage2.family=none", "--config.eval.disentanglement.metrics=none",
      "--config.eval.sample_quality.num_samples=0", f"--workdir={tmp_path / 'run'}",
      f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  processes = [subprocess.Popen(command + [f"--process_id={i}"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=420))
  finally:
    for process in processes:
      process.kill()
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-4000:]
  assert "Process 1 of 2; 1 local of 2 devices." in outputs[1][1]
  # Only the first process writes summaries and results.
  assert (tmp_path / "run" / "metrics.json").exists()
  assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 1

  config = dsprites.get_config("preset=tiny")
  config.stage1.checkpoint = str(tmp_path / "run")
  params, step = train.load_stage_one(config, (64, 64, 1))
  assert step == config.stage1.num_steps
  one_device = _load(workdir / "stage1_1.npz")
  two_processes = [np.asarray(x) for x in jax.tree.leaves(params)]
  assert _relative_distance(two_processes, one_device, _initial_stage_one()) < _RELATIVE_TOLERANCE
