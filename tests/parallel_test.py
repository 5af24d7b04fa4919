"""Data parallelism: 8 devices train as 1 does, pmap, resharding, two processes.

The multi-device checks run in subprocesses with 8 host CPU devices
(`--xla_force_host_platform_device_count=8`), the two-process check as two
real CLI processes on localhost talking through CPU collectives.
"""

import json
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
from msdr_jax import checkpoints
from msdr_jax import parallel
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps

REPO = pathlib.Path(__file__).resolve().parents[1]

# Parameters are compared by their distance relative to how far training
# moved them; each tolerance is about 10x the distance measured (float
# rounding: the order of the all-reduce's additions; docs/python_api.md gives
# the measurements). Adam's first steps turn rounding in near-zero gradients
# into whole steps, hence the larger figures of stage one. Stage two is
# MS-Flow: the family whose programs compile fastest; data parallelism does
# not depend on the family. Adam hardly sees a gradient's scale, so the
# scale-sensitive logged loss and gradient norm are compared as well (a
# gradient summed instead of averaged over 8 devices has 8 times the norm).
_TOLERANCES = {
    "sharded_stage1": 3e-3,
    "sharded_stage2": 3e-5,
    "pmap": 1e-5,
    "jit_sharded": 3e-3,
}
_METRIC_RTOL = 1e-4

_EIGHT_DEVICES = textwrap.dedent("""
    import json, os, shutil, sys
    import jax
    import numpy as np
    import optax
    from configs import dsprites
    from msdr_jax import data, multi_stage, parallel, stage_one as stage_one_lib, steps, train

    workdir = sys.argv[1]
    assert jax.device_count() == 8, jax.devices()
    config = dsprites.get_config("preset=tiny")
    config.stage2.family = "flow"
    config.log_every_steps = 1  # The first step's metrics, as the loop logs them.
    dataset = data.get_dataset(config.data)
    shape = dataset.observation_shape
    stage_one = stage_one_lib.DisentanglingVAE.from_config(
        config.stage1, shape, dataset.num_images)
    model = multi_stage.MultiStageModel.from_config(config, stage_one)
    optimizer1 = steps.make_optimizer(config.stage1.optimizer)
    optimizer2 = steps.make_optimizer(config.stage2.optimizer)

    class LoggedScalars:  # A MetricWriter that keeps what the training loop logs.
      def __init__(self):
        self.scalars = {}
      def write_scalars(self, step, scalars):
        self.scalars.setdefault(step, {}).update(scalars)
      def write_image(self, step, name, image):
        pass

    logged = {n: LoggedScalars() for n in (8, 1)}
    writer = LoggedScalars()
    mesh = {n: parallel.data_mesh(jax.devices()[:n]) for n in (1, 8)}
    metrics = {}
    save = lambda name, params: np.savez(
        f"{workdir}/{name}.npz", *map(np.asarray, jax.tree.leaves(parallel.to_host(params))))

    # Sharded jit, stage one: 8 devices and 1 device; then the 1-device run's
    # checkpoint at step 3 resumed on 8 devices.
    stage1 = {}
    for n in (8, 1):
      state = train.train_stage(config, f"{workdir}/s1_{n}", "stage1", stage_one, dataset,
                                logged[n], mesh[n])
      assert len(state.params["encoder"]["Dense_0"]["kernel"].sharding.device_set) == n
      stage1[n] = parallel.to_host(state.params)
      save(f"stage1_{n}", state.params)
    shutil.copytree(f"{workdir}/s1_1", f"{workdir}/s1_resharded")
    shutil.rmtree(f"{workdir}/s1_resharded/checkpoints/{config.stage1.num_steps}")
    state = train.train_stage(config, f"{workdir}/s1_resharded", "stage1", stage_one, dataset,
                              writer, mesh[8])
    save("stage1_resharded", state.params)

    # Sharded jit, stage two on the same frozen stage one.
    init_rng2, _, _ = steps.rng_streams(config.seed, stage=2)
    initial2 = steps.create_train_state(model.init, optimizer2, init_rng2, stage1[1])
    save("stage2_initial", initial2.params)
    for n in (8, 1):
      state = train.train_stage(config, f"{workdir}/s2_{n}", "stage2", model, dataset,
                                logged[n], mesh[n], frozen=(stage1[1],))
      save(f"stage2_{n}", state.params)

    # The first step's metrics as the loop logged them on 8 and 1 devices.
    for n in (8, 1):
      for stage in ("stage1", "stage2"):
        for key in ("loss", "grad_norm"):
          metrics[f"sharded_{stage}_{n}_{key}"] = logged[n].scalars[1][f"{stage}/{key}"]

    # pmap: the steps with an axis name, one step on 8 devices, two images
    # each (the stratified TC estimator needs two). Its known answer: the
    # optimizer's step on the mean of the 8 shards' own gradients, each
    # computed unmapped.
    images, _ = dataset.sample(jax.random.PRNGKey(10), 16)
    shards = parallel.split_for_pmap(images, 8)
    rngs = jax.random.split(jax.random.PRNGKey(20), 8)

    def pmap_one_step(loss_fn, state, frozen, stage):
      mapped = jax.pmap(steps.make_train_step(loss_fn, axis_name="batch"), axis_name="batch",
                        in_axes=(None,) * (1 + len(frozen)) + (0, 0))
      new, m = mapped(state, *frozen, shards, rngs)
      # Indexed on the host: each eager slice of a mapped array compiles.
      replicas = jax.tree.map(np.asarray, new.params)
      for leaf in jax.tree.leaves(replicas):
        np.testing.assert_array_equal(leaf[0], leaf[-1])  # Replicas agree.
      metrics[f"{stage}_pmap_grad_norm"] = float(np.asarray(m["grad_norm"])[0])
      save(f"{stage}_pmap", jax.tree.map(lambda x: x[0], replicas))
      # At the train state's step, as the mapped step computes it.
      grad = jax.jit(jax.grad(lambda *a: loss_fn(*a, state.step), has_aux=True))
      grads = [grad(state.params, *frozen, shard, rng)[0] for shard, rng in zip(shards, rngs)]

      @jax.jit
      def expected_step(grads):
        mean_grad = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
        return optax.tree.norm(mean_grad), state.apply_gradients(grads=mean_grad).params

      grad_norm, params = expected_step(grads)
      metrics[f"{stage}_expected_grad_norm"] = float(grad_norm)
      save(f"{stage}_expected", params)

    state1 = steps.create_train_state(stage_one.init, optimizer1, jax.random.PRNGKey(1))
    state2 = steps.create_train_state(model.init, optimizer2, jax.random.PRNGKey(2), stage1[1])
    pmap_one_step(stage_one.loss, state1, (), "stage1")
    pmap_one_step(model.loss, state2, (stage1[1],), "stage2")
    save("initial", state1.params)
    save("initial2", state2.params)

    # jit_sharded: a step fed from the host, its batch split over 8 devices.
    images, _ = dataset.sample(jax.random.PRNGKey(30), 16)
    rng = jax.random.PRNGKey(31)
    step1 = steps.make_train_step(stage_one.loss)
    plain, m_plain = jax.jit(step1)(state1, images, rng)
    # Last use of state1: its replicas may share its buffers, and are donated.
    sharded, m = parallel.jit_sharded(step1, mesh[8], batch_argnums=(1,))(
        parallel.replicate(state1, mesh[8]), parallel.shard_batch(images, mesh[8]), rng)
    save("stage1_jit_sharded", sharded.params)
    save("stage1_jit", plain.params)
    metrics["jit_sharded_grad_norm"] = float(m["grad_norm"])
    metrics["jit_grad_norm"] = float(m_plain["grad_norm"])

    # A batch the devices cannot split: refused before anything is written.
    odd = config.copy_and_resolve_references()
    odd.batch_size = 12
    try:
      train.train_and_evaluate(odd, f"{workdir}/odd")
    except parallel.DeviceCountError as e:
      print("refused:", e)
    try:
      train.train_stage(odd, f"{workdir}/odd_stage_one", "stage1", stage_one, dataset, writer,
                        mesh[8])
    except parallel.DeviceCountError as e:
      print("stage one refused:", e)
    assert not os.path.exists(f"{workdir}/odd")
    assert not os.path.exists(f"{workdir}/odd_stage_one")
    with open(f"{workdir}/metrics.json", "w") as f:
      json.dump(metrics, f)
    print("eight devices ok")
""")


def _run(args, env_update, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **env_update)
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


# XLA:CPU's simulated host devices occasionally deadlock in a collective:
# one of the eight device threads never reaches the rendezvous, and XLA gives
# up ("... but only 7 of them arrived on time"). It was seen under load and
# once in an otherwise idle run, in the pmap section; the same program passes
# on a second attempt. Only that failure is retried, once; any other failure
# is reported as it is.
_SIMULATED_DEVICE_DEADLOCK = "arrived on time"


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  env = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
                      + " --xla_force_host_platform_device_count=8"}
  for attempt in range(2):
    workdir = tmp_path_factory.mktemp("eight_devices")
    result = _run([sys.executable, "-c", _EIGHT_DEVICES, str(workdir)], env)
    if result.returncode == 0 or _SIMULATED_DEVICE_DEADLOCK not in result.stderr:
      break
    print(f"attempt {attempt + 1}: simulated devices deadlocked in a collective")
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
  init_rng, _, _ = steps.rng_streams(config.seed)
  stage_one = stage_one_lib.DisentanglingVAE.from_config(config.stage1, (64, 64, 1))
  state = steps.create_train_state(
      stage_one.init, steps.make_optimizer(config.stage1.optimizer), init_rng)
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def _metrics(workdir):
  return json.loads((workdir / "metrics.json").read_text())


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_eight_devices_train_as_one_device_does(eight_devices, stage):
  workdir, _ = eight_devices
  one, eight = _load(workdir / f"{stage}_1.npz"), _load(workdir / f"{stage}_8.npz")
  initial = (_initial_stage_one() if stage == "stage1"
             else _load(workdir / "stage2_initial.npz"))
  assert _relative_distance(eight, one, initial) < _TOLERANCES[f"sharded_{stage}"]
  metrics = _metrics(workdir)
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(metrics[f"sharded_{stage}_8_{key}"],
                               metrics[f"sharded_{stage}_1_{key}"], rtol=_METRIC_RTOL)


def test_a_checkpoint_of_one_device_resumes_on_eight(eight_devices):
  workdir, _ = eight_devices
  resumed = _load(workdir / "stage1_resharded.npz")
  uninterrupted = _load(workdir / "stage1_8.npz")
  assert (_relative_distance(resumed, uninterrupted, _initial_stage_one())
          < _TOLERANCES["sharded_stage1"])


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_pmap_on_eight_devices_averages_the_shards_gradients(eight_devices, stage):
  workdir, _ = eight_devices
  metrics = _metrics(workdir)
  # The known answer: the optimizer's step on the mean of the shards' gradients.
  np.testing.assert_allclose(metrics[f"{stage}_pmap_grad_norm"],
                             metrics[f"{stage}_expected_grad_norm"], rtol=_METRIC_RTOL)
  initial = _load(workdir / ("initial.npz" if stage == "stage1" else "initial2.npz"))
  pmapped, expected = (_load(workdir / f"{stage}_pmap.npz"),
                       _load(workdir / f"{stage}_expected.npz"))
  assert _relative_distance(pmapped, expected, initial) < _TOLERANCES["pmap"]


def test_jit_sharded_matches_the_unsharded_step(eight_devices):
  workdir, _ = eight_devices
  sharded, plain = _load(workdir / "stage1_jit_sharded.npz"), _load(workdir / "stage1_jit.npz")
  initial = _load(workdir / "initial.npz")
  assert _relative_distance(sharded, plain, initial) < _TOLERANCES["jit_sharded"]
  metrics = _metrics(workdir)
  np.testing.assert_allclose(metrics["jit_sharded_grad_norm"], metrics["jit_grad_norm"],
                             rtol=_METRIC_RTOL)


def test_a_batch_the_devices_cannot_split_is_refused(eight_devices):
  _, stdout = eight_devices
  message = ("config.batch_size=12 does not split evenly over 8 devices. Use a "
             "multiple of 8 (e.g. --config.batch_size=8 or 16)")
  assert f"refused: {message}" in stdout
  assert f"stage one refused: {message}" in stdout
  with pytest.raises(parallel.DeviceCountError,
                     match=r"A batch of 6 does not split evenly over 4 devices\. Use a "
                           r"multiple of 4 \(e\.g\. 4 or 8\)"):
    parallel.split_for_pmap(np.zeros((6, 2)), 4)
  with pytest.raises(parallel.DeviceCountError, match=r"\(e\.g\. 8\)"):
    parallel.check_batch_size(3, 8)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_as_one_does(eight_devices, tmp_path):
  """Two CLI processes (a CPU device each) on localhost train both stages."""
  workdir, _ = eight_devices
  port = _free_port()
  command = [
      sys.executable, "-m", "msdr_jax.main", "--config=configs/dsprites.py:preset=tiny",
      "--config.stage2.family=flow", "--config.eval.disentanglement.metrics=none",
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
    assert "stage two step 6/6" in stderr
  assert "Process 1 of 2; 1 local of 2 devices." in outputs[1][1]
  # Only the first process evaluates and writes summaries and results.
  assert "Multi-stage evaluation" in outputs[0][1]
  assert "Multi-stage evaluation" not in outputs[1][1]
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["stage2_step"] == 6
  assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 1

  config = dsprites.get_config("preset=tiny")
  config.stage1.checkpoint = str(tmp_path / "run")
  params, step = checkpoints.load_stage_one(
      config, stage_one_lib.DisentanglingVAE.from_config(config.stage1, (64, 64, 1)))
  assert step == config.stage1.num_steps
  one_device = _load(workdir / "stage1_1.npz")
  two_processes = [np.asarray(x) for x in jax.tree.leaves(params)]
  assert (_relative_distance(two_processes, one_device, _initial_stage_one())
          < _TOLERANCES["sharded_stage1"])
