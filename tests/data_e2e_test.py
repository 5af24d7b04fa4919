"""End-to-end runs on the other data sets: the CLI on the procedural scenes,
the training loop on a loaded (TFDS) data set in device and host memory and
on one without factors, and the CLI's error when TFDS data are absent."""

import json
import pathlib
import subprocess
import sys
from unittest import mock

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from msdr_jax import base_config
from msdr_jax import train
from tests import data_sources_test

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args):
  process = subprocess.run(
      [sys.executable, "-m", "msdr_jax.main", *args], cwd=REPO, capture_output=True,
      text=True, timeout=600)
  return process.returncode, process.stdout, process.stderr


def test_cli_quick_run_on_the_procedural_scenes(tmp_path):
  workdir = tmp_path / "shapes3d"
  code, stdout, stderr = _cli(
      "--config=configs/shapes3d.py:preset=tiny", f"--workdir={workdir}",
      "--config.eval.disentanglement.metrics=mig,sap",
      "--config.eval.sample_quality.num_samples=0")
  assert code == 0, stderr[-3000:]
  assert f"results in {workdir}" in stdout
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["metric_factors"] == [
      "floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
  assert [key for key in metrics if key.startswith("mig/")] == [f"mig/{j}" for j in range(6)]
  assert metrics["step"] == 6 and metrics["stage2_step"] == 6
  for key in ("reconstruction_mse", "multi_stage/reconstruction_mse", "mig", "sap"):
    assert np.isfinite(metrics[key]), key
  # Colour figures: the inputs row of the side-by-side grid is RGB.
  grid = np.asarray(Image.open(workdir / "side_by_side.png"))
  assert grid.ndim == 3 and grid.shape[-1] == 3
  assert np.abs(grid[..., 0].astype(int) - grid[..., 1]).max() > 50


def _run_on_small_tfds_shapes3d(workdir, placement, num_steps=6, metrics="mig,sap"):
  # 324 images: at least an evaluation batch (200), as the estimators need.
  labels = {"label_floor_hue": 3, "label_wall_hue": 3, "label_object_hue": 3,
            "label_scale": 2, "label_shape": 2, "label_orientation": 3}
  patches, _ = data_sources_test._small_tfds("shapes3d", labels, (64, 64, 3), ("train",))
  config = base_config.get_config("preset=tiny,source=tfds", "shapes3d", "procedural")
  config.data.placement = placement
  config.stage1.num_steps = num_steps
  config.stage2.family = "none"
  config.eval.disentanglement.metrics = metrics
  config.eval.sample_quality.num_samples = 0
  with data_sources_test._with(patches):
    return train.train_and_evaluate(config, str(workdir))


def test_training_on_loaded_data_is_the_same_in_device_and_host_memory(tmp_path):
  on_device = _run_on_small_tfds_shapes3d(tmp_path / "device", "device")
  on_host = _run_on_small_tfds_shapes3d(tmp_path / "host", "host")
  assert on_device["metric_factors"][0] == "floor_hue"
  for key in ("reconstruction_mse", "kl", "mig", "sap"):
    assert on_device[key] == pytest.approx(on_host[key], rel=1e-6), key
  # Half the steps in device memory, the rest after resuming in host memory
  # (checkpoints every 3 steps in the tiny preset): the same run.
  _run_on_small_tfds_shapes3d(tmp_path / "switched", "device", num_steps=3, metrics="none")
  switched = _run_on_small_tfds_shapes3d(tmp_path / "switched", "host")
  assert switched["step"] == 6
  for key in ("reconstruction_mse", "kl", "mig"):
    assert switched[key] == pytest.approx(on_device[key], rel=1e-6), key


def test_cli_without_prepared_tfds_data_says_how_to_prepare_it(tmp_path):
  workdir = tmp_path / "run"
  code, _, stderr = _cli(
      "--config=configs/smallnorb.py:preset=tiny", f"--workdir={workdir}",
      f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert code == 1
  assert "msdr_jax: error: The TFDS data set 'smallnorb' is not prepared" in stderr
  assert "tfds build smallnorb" in stderr and "Traceback" not in stderr
  assert not workdir.exists()


def test_training_on_a_data_set_without_factors(tmp_path):
  # CelebA's path: photos only, so the evaluation skips the disentanglement
  # suite and reports reconstruction (256 photos: at least one evaluation
  # batch, as the TC estimators need).
  photos = np.random.default_rng(0).integers(0, 256, (256, 218, 178, 3), dtype=np.uint8)
  by_split = {"train": [dict(image=p) for p in photos[:200]],
              "validation": [dict(image=p) for p in photos[200:230]],
              "test": [dict(image=p) for p in photos[230:]]}
  features = {"image": tfds.features.Image(shape=(218, 178, 3))}
  info = lambda self: tfds.core.DatasetInfo(
      builder=self, features=tfds.features.FeaturesDict(features))
  config = base_config.get_config("preset=tiny", "celeb_a", "tfds")
  config.stage2.family = "none"
  config.eval.sample_quality.num_samples = 0
  with mock.patch.object(tfds.builder_cls("celeb_a"), "_info", info), \
      tfds.testing.mock_data(as_data_source_fn=lambda self, split, **kwargs:
                             data_sources_test._Source(by_split[split])):
    metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics["step"] == 6 and np.isfinite(metrics["reconstruction_mse"])
  assert "mig" not in metrics and "metric_factors" not in metrics
  assert (tmp_path / "reconstructions.png").exists()
