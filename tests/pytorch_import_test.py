"""Importing PyTorch disentanglers: same function as PyTorch, clear errors.

The fixtures in tests/data/pytorch/ were made once with PyTorch by
`tests/data/pytorch/make_fixtures.py`: random-weight Burgess models (1 and 3
channels) saved in both `torch.save` formats with PyTorch's outputs on fixed
inputs, and two of the public pretrained checkpoints (the CelebA and dSprites
beta-TCVAEs of disentangling-vae, MIT licence) with PyTorch's outputs for the
CelebA one.
"""

import csv
import os
import pickle
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msdr_jax import losses
from msdr_jax import pytorch_import
from msdr_jax import torch_checkpoint
from msdr_jax.data import dsprites

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "pytorch")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fixture(name):
  return os.path.join(FIXTURES, name)


def _assert_same_function(stage_one, params, outputs_file):
  """Encoder mean / log-variance and decoder logits equal PyTorch's to 1e-5."""
  reference = np.load(_fixture(outputs_file))
  images = jnp.asarray(reference["images"].transpose(0, 2, 3, 1))  # NCHW -> NHWC.
  mean, log_var = stage_one.encode(params, images)
  interleaved = reference["encoder_outputs"].reshape(len(images), -1, 2)
  logits = stage_one.decode(params, jnp.asarray(reference["codes"]))
  np.testing.assert_allclose(mean, interleaved[..., 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(log_var, interleaved[..., 1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      logits, reference["logits"].transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
  # Not a vacuous comparison: the outputs differ between inputs.
  assert np.ptp(np.asarray(mean), axis=0).max() > 1e-3
  assert np.ptp(np.asarray(logits), axis=0).max() > 1e-3


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("file_format", ["legacy", "zip"])
def test_import_computes_pytorchs_function(channels, file_format):
  stage_one, params = pytorch_import.load_stage_one(
      _fixture(f"burgess_c{channels}.{file_format}.pt"))
  assert stage_one.image_shape == (64, 64, channels)
  assert stage_one.latent_dim == 10 and stage_one.likelihood == "bernoulli"
  _assert_same_function(stage_one, params, f"burgess_c{channels}_outputs.npz")


def test_both_formats_read_the_same_state_dict():
  legacy = torch_checkpoint.load_state_dict(_fixture("burgess_c3.legacy.pt"))
  zipped = torch_checkpoint.load_state_dict(_fixture("burgess_c3.zip.pt"))
  assert list(legacy) == list(zipped)
  assert legacy["encoder.conv1.weight"].shape == (32, 3, 4, 4)
  for name in legacy:
    np.testing.assert_array_equal(legacy[name], zipped[name])


def test_pretrained_celeba_checkpoint_matches_pytorch():
  stage_one, params = pytorch_import.load_stage_one(_fixture("btcvae_celeba"))
  assert stage_one.image_shape == (64, 64, 3)
  _assert_same_function(stage_one, params, "btcvae_celeba_outputs.npz")


def test_pretrained_btcvae_per_latent_kl_matches_its_training_log():
  """On procedural dSprites, the KL of each latent is that of its last epoch.

  The log averages the last training epoch over genuine dSprites while the
  weights still move; the tolerance is five standard errors of the mean over
  5,000 images plus 0.01 nats.
  """
  stage_one, params = pytorch_import.load_stage_one(_fixture("btcvae_dsprites"))
  images, _ = jax.jit(lambda key: dsprites.DSprites().sample(key, 5000))(
      jax.random.PRNGKey(0))
  mean, log_var = jax.jit(stage_one.encode)(params, images)
  kl = np.asarray(losses.kl_to_standard_normal(mean, log_var))
  with open(_fixture("btcvae_dsprites/train_losses.log")) as file:
    rows = list(csv.DictReader(file))
  last_epoch = max(int(row["Epoch"]) for row in rows)
  logged = {row["Loss"]: float(row["Value"]) for row in rows
            if int(row["Epoch"]) == last_epoch}
  expected = np.array([logged[f"kl_loss_{j}"] for j in range(10)])
  standard_error = kl.std(0) / np.sqrt(len(kl))
  np.testing.assert_array_less(np.abs(kl.mean(0) - expected), 5 * standard_error + 0.01)
  # Five active latents carry the information, as in the log.
  assert (kl.mean(0) > 0.5).sum() == (expected > 0.5).sum() == 5


def _write_truncations(source, tmp_path):
  data = open(source, "rb").read()
  for fraction in (0.0, 0.001, 0.3, 0.9, 0.9999):
    path = tmp_path / f"cut{fraction}_{os.path.basename(source)}"
    path.write_bytes(data[: int(len(data) * fraction)])
    yield path


@pytest.mark.parametrize("file_format", ["legacy", "zip"])
def test_truncated_file_is_a_one_line_error(file_format, tmp_path):
  for path in _write_truncations(_fixture(f"burgess_c1.{file_format}.pt"), tmp_path):
    with pytest.raises(torch_checkpoint.CheckpointError) as error:
      torch_checkpoint.load_state_dict(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message


def test_corrupt_and_missing_files_are_one_line_errors(tmp_path):
  garbage = tmp_path / "garbage.pt"
  garbage.write_bytes(np.random.default_rng(0).bytes(5000))
  with pytest.raises(torch_checkpoint.CheckpointError, match="garbage.pt"):
    torch_checkpoint.load_state_dict(garbage)
  flipped = tmp_path / "flipped.pt"
  data = bytearray(open(_fixture("burgess_c1.legacy.pt"), "rb").read())
  data[40:60] = b"\xff" * 20  # Inside the system-information pickle.
  flipped.write_bytes(bytes(data))
  with pytest.raises(torch_checkpoint.CheckpointError, match="flipped.pt"):
    torch_checkpoint.load_state_dict(flipped)
  with pytest.raises(torch_checkpoint.CheckpointError, match="does not exist"):
    torch_checkpoint.load_state_dict(tmp_path / "absent.pt")


def test_a_pickled_object_other_than_a_state_dict_is_refused_unexecuted(tmp_path):
  """Like torch.load(weights_only=True): a pickle cannot run code here."""
  marker = tmp_path / "executed"

  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = tmp_path / "payload.pt"
  with open(path, "wb") as file:
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
      pickle.dump(header, file)
    pickle.dump(Payload(), file)
  with pytest.raises(torch_checkpoint.CheckpointError, match="not part of a state dict"):
    torch_checkpoint.load_state_dict(path)
  assert not marker.exists()


def _model_config(**overrides):
  from configs import dsprites as dsprites_config  # pylint: disable=import-outside-toplevel
  config = dsprites_config.get_config("preset=tiny")
  config.stage1.model.architecture = "burgess"
  config.stage1.model.update(overrides)
  return config.stage1.model


def test_shape_mismatch_names_both_shapes():
  with pytest.raises(pytorch_import.IncompatibleCheckpointError) as error:
    pytorch_import.load_params(_fixture("burgess_c1.zip.pt"), _model_config(latent_dim=8),
                               (64, 64, 1))
  message = str(error.value)
  assert "\n" not in message
  assert "(20, 256)" in message and "(16, 256)" in message, message
  with pytest.raises(pytorch_import.IncompatibleCheckpointError) as error:
    pytorch_import.load_params(_fixture("burgess_c3.zip.pt"), _model_config(), (64, 64, 1))
  assert "(32, 3, 4, 4)" in str(error.value) and "(32, 1, 4, 4)" in str(error.value)


def test_other_architecture_is_refused_with_the_fix():
  with pytest.raises(pytorch_import.IncompatibleCheckpointError,
                     match="architecture=burgess"):
    pytorch_import.load_params(_fixture("burgess_c1.zip.pt"),
                               _model_config(architecture="dlib_conv"), (64, 64, 1))


def test_import_equals_config_load():
  """The CLI's path (config shapes) gives the Python path's parameters."""
  _, params = pytorch_import.load_stage_one(_fixture("burgess_c1.legacy.pt"))
  loaded = pytorch_import.load_params(_fixture("burgess_c1.legacy.pt"), _model_config(),
                                      (64, 64, 1))
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, loaded)


def test_cli_refuses_a_corrupt_checkpoint_in_one_line(tmp_path):
  broken = tmp_path / "model.pt"
  broken.write_bytes(open(_fixture("burgess_c1.zip.pt"), "rb").read()[:100_000])
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "msdr_jax.main", "--config=configs/dsprites.py:preset=tiny",
       f"--workdir={workdir}", "--config.stage1.model.architecture=burgess",
       f"--config.stage1.checkpoint={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1] == (
      f"msdr_jax: error: Cannot read PyTorch checkpoint {broken}: it is a zip-format "
      "checkpoint that is truncated or damaged."), result.stderr
  assert "Traceback" not in result.stderr
  assert not workdir.exists()  # Refused before the run directory is made.


@pytest.fixture(scope="module")
def readme_example():
  """docs/python_api.md's "Bring your own stage one" block, executed."""
  readme = open(os.path.join(REPO, "docs", "python_api.md")).read()
  block = re.search(r"<!-- bring-your-own-stage-one-example -->\s*```python\n(.*?)```",
                    readme, re.S)
  assert block, "docs/python_api.md lost its bring-your-own-stage-one example"
  namespace = {}
  cwd = os.getcwd()
  os.chdir(REPO)  # The example names the fixture by a path relative to the repository.
  try:
    exec(compile(block.group(1), "docs/python_api.md", "exec"), namespace)  # pylint: disable=exec-used
  finally:
    os.chdir(cwd)
  return namespace


def test_readme_example_trains_stage_two_on_all_three_kinds(readme_example):
  namespace = readme_example
  assert namespace["yours"].latent_dim == 4 and namespace["imported"].latent_dim == 10
  # The last loop iteration: one step on the user's own networks.
  assert int(namespace["state2"].step) == 1
  assert np.isfinite(float(namespace["metrics2"]["loss"]))
  assert namespace["reconstructions"].shape == namespace["images"].shape


def test_train_and_evaluate_on_a_users_own_stage_one(readme_example, tmp_path):
  """The whole job on the README's own networks; resuming on others is refused."""
  from msdr_jax import run_directory  # pylint: disable=import-outside-toplevel
  from msdr_jax import train  # pylint: disable=import-outside-toplevel
  namespace = readme_example
  config = namespace["config"]
  config.eval.disentanglement.metrics = "mig"
  config.stage2.family = "gmm"
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir, stage_one=namespace["yours"],
                                     stage1_params=namespace["your_params"])
  assert len(results["kl_per_latent"]) == 4 and results["stage2_step"] == 6
  assert np.isfinite(results["multi_stage/reconstruction_mse"])
  assert 0 <= results["mig"] <= 1
  for figure in ("traversals.png", "side_by_side.png", "samples.png"):
    assert os.path.getsize(os.path.join(workdir, figure)) > 0
  other = jax.tree_util.tree_map(lambda x: x + 1, namespace["your_params"])
  with pytest.raises(run_directory.RunDirectoryError, match="another stage one"):
    train.train_and_evaluate(config, workdir, stage_one=namespace["yours"],
                             stage1_params=other)
