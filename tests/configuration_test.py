"""Config validation and run identity (`msdr_jax.configuration`)."""

import importlib
import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

from configs import dsprites
from msdr_jax import base_config
from msdr_jax import configuration
from msdr_jax import run_directory
from msdr_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(path.stem for path in (REPO / "configs").glob("*.py")
                      if path.stem != "__init__")


def _tiny_config():
  config = dsprites.get_config("preset=tiny")
  config.eval.num_points = 200
  return config


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_preset_of_every_config_file_is_valid(name):
  module = importlib.import_module(f"configs.{name}")
  for preset in base_config.PRESETS:
    config = module.get_config(f"preset={preset}")
    if config.data.source == "file":  # Only the user knows where the file is.
      with pytest.raises(configuration.ConfigError, match="needs --config.data.path="):
        configuration.validate(config)
      config.data.path = "/data/set"
    configuration.validate(config)
    assert config.name.endswith(f"-{preset}")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("data.name", "mnist", r"config.data.name='mnist' is unknown; choose one of \['cars3d', 'celeb_a', 'dsprites', "),
        ("stage1.model.architecture", "resnet", "config.stage1.model.architecture='resnet' is unknown"),
        ("stage1.model.likelihood", "poisson", "config.stage1.model.likelihood='poisson' is unknown"),
        ("stage1.objective.name", "vae", "config.stage1.objective.name='vae' is unknown"),
        ("stage1.objective.tc_estimator", "exact", "tc_estimator='exact' is unknown"),
        ("stage1.objective.beta", -1.0, r"config.stage1.objective.beta=-1.0 must be >= 0"),
        ("stage1.model.latent_dim", 0, "latent_dim=0 must be >= 1"),
        ("batch_size", 1, "config.batch_size=1 must be >= 2"),
        ("stage1.optimizer.learning_rate", 0.0, r"learning_rate=0.0 must be in \(0, 1\]"),
        ("stage2.optimizer.learning_rate", 1e6, r"learning_rate=1000000.0 must be in \(0, 1\]"),
        ("eval.num_points", 250, "multiple of config.eval.batch_size"),
        ("stage1.objective.beta", float("inf"), "beta=inf must be a finite number"),
        ("name", "", "config.name='' must be a non-empty name"),
    ],
)
def test_bad_config_values_name_the_key(key, value, message, tmp_path):
  config = _tiny_config()
  node = config
  *parents, leaf = key.split(".")
  for part in parents:
    node = node[part]
  node[leaf] = value
  with pytest.raises(configuration.ConfigError, match=message) as info:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(info.value)
  assert not (tmp_path / "run").exists(), "a rejected config must not touch the workdir"


def test_workdir_of_another_config_is_refused(tmp_path):
  config = _tiny_config()
  run_directory.bind_workdir(config, str(tmp_path))
  config.stage1.num_steps = 100  # Resumable: still the same run.
  run_directory.bind_workdir(config, str(tmp_path))
  config.stage1.objective.beta = 2.0
  with pytest.raises(run_directory.RunDirectoryError,
                     match=r"stage1.objective.beta is 6.0 there but 2.0 here"):
    run_directory.bind_workdir(config, str(tmp_path))
  assert run_directory.fingerprint(config) != run_directory.fingerprint(_tiny_config())


def test_corrupt_run_config_is_a_run_directory_error(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(run_directory.RunDirectoryError, match=r"Cannot use .*config.json"):
    run_directory.bind_workdir(_tiny_config(), str(tmp_path))


def test_only_the_run_defining_keys_change_the_fingerprint_and_default_workdir():
  config = _tiny_config()
  fingerprint = run_directory.fingerprint(config)
  assert len(fingerprint) == 8 and int(fingerprint, 16) >= 0
  assert run_directory.default_workdir(config) == f"runs/{config.name}-{fingerprint}"
  resumed = _tiny_config()
  resumed.stage1.num_steps, resumed.stage2.num_steps = 1_000, 500
  resumed.log_every_steps, resumed.checkpoint_every_steps = 7, 9
  resumed.eval.num_points = 400
  resumed.data.placement = "host"
  assert run_directory.fingerprint(resumed) == fingerprint
  for key, value in (("seed", 1), ("batch_size", 16), ("stage2.family", "gmm"),
                     ("stage1.objective.beta", 2.0)):
    changed = _tiny_config()
    *sections, leaf = key.split(".")
    node = changed
    for section in sections:
      node = node[section]
    node[leaf] = value
    assert run_directory.fingerprint(changed) != fingerprint, key
  # A family's hyperparameters define that family's runs only (the tiny
  # preset trains MS-VAE).
  other_family = _tiny_config()
  other_family.stage2.gan.adversarial_weight = 0.5
  del other_family.stage2.flow["base"]  # A key an older version lacked.
  assert run_directory.fingerprint(other_family) == fingerprint
  own_family = _tiny_config()
  own_family.stage2.vae.beta = 0.5
  assert run_directory.fingerprint(own_family) != fingerprint


def test_a_run_recorded_before_newer_keys_existed_still_resumes(tmp_path):
  config = _tiny_config()
  recorded = json.loads(config.to_json())
  for key in run_directory.LEGACY_DEFAULTS:  # As an older version wrote it.
    *sections, leaf = key.split(".")
    node = recorded
    for section in sections:
      node = node[section]
    del node[leaf]
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  run_directory.check_workdir(config, str(tmp_path))
  run_directory.bind_workdir(config, str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text()) == recorded  # Kept as it was.
  config.compute_dtype = "bfloat16"  # Not the value the old run implicitly had.
  with pytest.raises(run_directory.RunDirectoryError,
                     match=r"compute_dtype is '<absent>' there but 'bfloat16' here"):
    run_directory.check_workdir(config, str(tmp_path))
  # A new default in one family's section changes that family's runs only:
  # an older MS-Flow run had the Gaussian base, the default is now stage one's.
  config.compute_dtype = "float32"
  assert config.stage2.family != "flow" and config.stage2.flow.base == "stage_one"
  config.stage2.family = "flow"
  recorded["stage2"]["family"] = "flow"
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  with pytest.raises(run_directory.RunDirectoryError,
                     match=r"stage2\.flow\.base is '<absent>' there but 'stage_one' here"):
    run_directory.check_workdir(config, str(tmp_path))
  config.stage2.flow.base = "gaussian"
  run_directory.check_workdir(config, str(tmp_path))


def test_a_checkpoint_record_names_what_differs():
  config = dsprites.get_config("preset=tiny")
  ours = {"config": run_directory.run_identity(config),
          "stage1": {"params_sha256": "ab" * 32, "step": 40}}
  assert run_directory.record_difference(ours, ours) is None
  assert run_directory.record_difference({}, ours) is None  # Saved before records.
  retrained = {**ours, "stage1": {"params_sha256": "cd" * 32, "step": 12}}
  assert run_directory.record_difference(retrained, ours) == (
      "was trained on another stage one (parameter digest cdcdcdcdcdcd at step 12 "
      "there, abababababab at step 40 here)")
  config.stage1.num_steps += 1  # Resumable: the same run.
  assert run_directory.record_difference(
      ours, {"config": run_directory.run_identity(config)}) is None
  config.stage1.objective.beta += 2
  assert run_directory.record_difference(
      ours, {"config": run_directory.run_identity(config)}) == (
          "was trained with another config: stage1.objective.beta is 6.0 there but 8.0 "
          "here (1 key(s) differ)")


def test_a_locked_work_directory_is_refused_naming_its_holder(tmp_path):
  workdir = tmp_path / "run"
  with run_directory.locked(str(workdir)):
    holder = (workdir / "lock").read_text().strip()
    assert holder.startswith(f"process {os.getpid()} on {socket.gethostname()} (started ")
    with pytest.raises(run_directory.RunDirectoryError,
                       match=rf"{workdir} is in use by {re.escape(holder)}\. Wait for it "
                             r"to finish, or use another --workdir\.$"):
      with run_directory.locked(str(workdir)):
        pass
  with run_directory.locked(str(workdir)):  # Released: usable again.
    pass
  (tmp_path / "file").write_text("")  # A directory that cannot be made.
  with pytest.raises(run_directory.RunDirectoryError,
                     match=rf"^Cannot write in {tmp_path / 'file' / 'run'}: .*Not a directory"):
    with run_directory.locked(str(tmp_path / "file" / "run")):
      pass


def test_flatten_names_every_leaf_by_its_path():
  assert run_directory.flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": "x"}) == {
      "a.b": 1, "a.c.d": [2], "e": "x"}


def test_config_files_load_without_importing_jax():
  # In a fresh interpreter: this one has imported JAX already.
  script = ("import sys\n"
            "from configs import dsprites, shapes3d\n"
            "dsprites.get_config('preset=tiny'); shapes3d.get_config('preset=quick')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')))")
  process = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                           text=True, timeout=60, check=True)
  assert process.stdout.strip() == "[]"


def test_the_evaluation_defaults_are_disentanglement_libs():
  config = dsprites.get_config("preset=paper")
  assert config.eval.disentanglement.to_dict() == base_config.metric_settings().to_dict()
  assert config.eval.disentanglement.metrics.split(",") == list(base_config.METRICS)
  assert (config.eval.disentanglement.num_train, config.eval.disentanglement.num_test) == (
      10_000, 5_000)


def test_each_family_section_is_its_constructors_schema():
  """config.stage2.<family> holds exactly the hyperparameters the family checks
  and its constructor takes, so from_config and validate cannot drift apart."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  from msdr_jax import families  # pylint: disable=import-outside-toplevel
  config = _tiny_config()
  assert sorted(families.FAMILIES) == sorted(base_config.FAMILY_SECTIONS)
  for name, family in families.FAMILIES.items():
    assert family.NAME == name
    assert sorted(config.stage2[name]) == sorted(family.HYPERPARAMETERS), name
    fields = {field.name for field in dataclasses.fields(family)}
    assert set(family.HYPERPARAMETERS) <= fields, name
    built = family.from_config(config.stage2, (64, 64, 1), "bernoulli")
    for key in family.HYPERPARAMETERS:
      assert getattr(built, key) == config.stage2[name][key], (name, key)
