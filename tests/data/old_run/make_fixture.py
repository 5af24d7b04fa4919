"""Makes the fixture of tests/checkpoints_test.py: run directories of an older version.

Run with the version whose run directories must keep resuming (this fixture:
msdr_jax at commit a687f27, before steps/checkpoints/run_directory existed,
with msdr_jax/data/dsprites.py replaced by the current one: the recorded
trajectories depend on the images, and the renderer's outlines were refitted
after that commit):

  XLA_FLAGS=--xla_backend_optimization_level=0 \
      PYTHONPATH=. python tests/data/old_run/make_fixture.py

(the XLA flag is the test suite's, see tests/conftest.py: on the same kind of
CPU the tests then reproduce the fixture's numbers bit for bit).

It writes, next to this file:
  stage_two/           a run of MS-Flow on a given stage one (tiny preset,
                       checkpoints at stage two's steps 3 and 6): config.json,
                       stage_one.json and checkpoints_stage2/. The flow is
                       small (9k parameters), so the run fits in the repository.
  stage_one_params.npz the given stage one's parameters.
  stage_one_run.json   a tiny preset run of the library's own stage one: the
                       paths, shapes and dtypes of its step-6 checkpoint, and
                       float64 sums of every parameter at steps 3 and 6 (the
                       checkpoint itself is 7.5 MB).
"""

import json
import pathlib
import shutil
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from configs import dsprites
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import train

HERE = pathlib.Path(__file__).resolve().parent
LATENT_DIM = 2


class Encoder(nn.Module):
  @nn.compact
  def __call__(self, images):
    out = nn.Dense(2 * LATENT_DIM)(images.reshape(images.shape[0], -1))
    return out[:, :LATENT_DIM], out[:, LATENT_DIM:]


class Decoder(nn.Module):
  @nn.compact
  def __call__(self, codes):
    return nn.Dense(64 * 64)(codes).reshape(codes.shape[0], 64, 64, 1)


def given_stage_one():
  return stage_one_lib.StageOne.from_flax_modules(
      Encoder(), Decoder(), (64, 64, 1), LATENT_DIM)


def given_params():
  """Parameters from NumPy, so that they are the same bits on every machine."""
  rng = np.random.default_rng(0)
  return {
      "encoder": {"Dense_0": {
          "kernel": (rng.standard_normal((4096, 2 * LATENT_DIM)) / 64).astype(np.float32),
          "bias": np.zeros(2 * LATENT_DIM, np.float32)}},
      "decoder": {"Dense_0": {
          "kernel": rng.standard_normal((LATENT_DIM, 4096)).astype(np.float32),
          "bias": np.zeros(4096, np.float32)}},
  }


def tiny_config(family):
  config = dsprites.get_config("preset=tiny")
  config.stage2.family = family
  config.max_checkpoints_to_keep = 5
  config.eval.num_points = 200
  return config


def leaf_summary(tree):
  return {jax.tree_util.keystr(path): {
      "shape": list(np.shape(leaf)), "dtype": str(np.asarray(leaf).dtype),
      "sum": float(np.asarray(leaf, np.float64).sum())}
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def main():
  out = HERE / "stage_two"
  shutil.rmtree(out, ignore_errors=True)
  params = given_params()
  np.savez(HERE / "stage_one_params.npz", **{
      jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)})
  train.train_and_evaluate(tiny_config("flow"), str(out), given_stage_one(),
                           jax.tree.map(jnp.asarray, params))
  for name in out.iterdir():  # Only what a resumption reads.
    if name.name not in ("config.json", "stage_one.json", "checkpoints_stage2"):
      shutil.rmtree(name) if name.is_dir() else name.unlink()

  with tempfile.TemporaryDirectory() as workdir:
    config = tiny_config("none")
    train.train_and_evaluate(config, workdir)
    checkpointer = ocp.StandardCheckpointer()
    summary = {
        str(step): leaf_summary(checkpointer.restore(
            pathlib.Path(workdir) / "checkpoints" / str(step) / "default"))
        for step in (3, 6)}
  (HERE / "stage_one_run.json").write_text(json.dumps(summary, indent=1, sort_keys=True))


if __name__ == "__main__":
  main()
