"""Both stages' train steps under a real `jax.pmap` over two host devices."""

import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import jax
    import numpy as np
    from configs import dsprites
    from msdr_jax import data, train

    assert jax.device_count() == 2, jax.devices()
    config = dsprites.get_config("preset=tiny")
    dataset = data.get_dataset(config.data)
    shape = dataset.observation_shape
    images, _ = dataset.sample(jax.random.PRNGKey(0), 8)
    shards = images.reshape(2, 4, *shape)
    rngs = jax.random.split(jax.random.PRNGKey(2), 2)
    state = train.create_train_state(config.stage1, shape, jax.random.PRNGKey(1))
    step = train.make_train_step(config.stage1, shape, dataset.num_images,
                                 axis_name="devices")
    pmapped, metrics = jax.pmap(step, axis_name="devices", in_axes=(None, 0, 0))(
        state, shards, rngs)
    vmapped, _ = jax.jit(jax.vmap(step, axis_name="devices", in_axes=(None, 0, 0)))(
        state, shards, rngs)
    for a, b in zip(jax.tree_util.tree_leaves(pmapped.params),
                    jax.tree_util.tree_leaves(vmapped.params)):
      np.testing.assert_array_equal(a[0], a[1])  # Replicas stay identical.
      np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)

    # Stage two: the frozen stage-one parameters are a broadcast input.
    config.stage2.family = "vae"
    stage1 = state.params
    state2 = train.create_stage_two_state(config, shape, stage1, jax.random.PRNGKey(3))
    step2 = train.make_stage_two_train_step(config, shape, axis_name="devices")
    pmapped2, metrics2 = jax.pmap(step2, axis_name="devices", in_axes=(None, None, 0, 0))(
        state2, stage1, shards, rngs)
    vmapped2, _ = jax.jit(jax.vmap(step2, axis_name="devices",
                                   in_axes=(None, None, 0, 0)))(state2, stage1, shards, rngs)
    for a, b in zip(jax.tree_util.tree_leaves(pmapped2.params),
                    jax.tree_util.tree_leaves(vmapped2.params)):
      np.testing.assert_array_equal(a[0], a[1])
      np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    print("pmap ok", float(metrics["loss"][0]), float(metrics2["loss"][0]))
""")


def test_train_step_under_pmap_matches_the_mapped_reference():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "pmap ok" in result.stdout
