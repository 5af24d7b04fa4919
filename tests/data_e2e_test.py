"""End-to-end runs on the other data sets: both stages on the procedural scenes,
the training loop on dSprites prepared by TFDS's own builder (in device and
host memory) and on a data set without factors, and the CLI's error when TFDS
data are absent."""

import io
import pathlib
import subprocess
import sys
from unittest import mock

import h5py
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.features import image_feature

from msdr_jax import base_config
from msdr_jax import train
from msdr_jax.data import dsprites
from msdr_jax.data import tfds_data
from tests import data_sources_test

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args):
  process = subprocess.run(
      [sys.executable, "-m", "msdr_jax.main", *args], cwd=REPO, capture_output=True,
      text=True, timeout=600)
  return process.returncode, process.stdout, process.stderr


def test_both_stages_on_the_procedural_scenes(tmp_path):
  # In-process: the CLI's path is main_test's; what is new here is the data.
  # MS-Flow, the stage two that compiles fastest, stands for the families.
  config = base_config.get_config("preset=tiny", "shapes3d", "procedural")
  config.stage2.family = "flow"
  config.eval.disentanglement.metrics = "mig,sap"
  config.eval.sample_quality.num_samples = 0
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics["metric_factors"] == [
      "floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
  assert [key for key in metrics if key.startswith("mig/")] == [f"mig/{j}" for j in range(6)]
  assert metrics["step"] == 6 and metrics["stage2_step"] == 6
  for key in ("reconstruction_mse", "multi_stage/reconstruction_mse", "mig", "sap"):
    assert np.isfinite(metrics[key]), key
  # Colour figures: the inputs row of the side-by-side grid is RGB.
  grid = np.asarray(Image.open(tmp_path / "side_by_side.png"))
  assert grid.ndim == 3 and grid.shape[-1] == 3
  assert np.abs(grid[..., 0].astype(int) - grid[..., 1]).max() > 50


# dSprites at a smaller grid, so that TFDS's builder prepares it in a second.
_LABELS = ("label_shape", "label_scale", "label_orientation", "label_x_position",
           "label_y_position")
_SIZES = (3, 6, 4, 4, 4)


def _write_dsprites_hdf5(path):
  """The official HDF5's layout (`imgs`, `latents/classes`, `latents/values`),
  drawn by the procedural renderer; returns its labels and images."""
  classes = np.stack(np.unravel_index(np.arange(np.prod(_SIZES)), _SIZES), -1)
  images = np.asarray(dsprites.render(classes))[..., 0].astype(np.uint8)
  value_sets = (dsprites.SHAPES, dsprites.SCALES, dsprites.ORIENTATIONS,
                dsprites.POSITIONS_X, dsprites.POSITIONS_Y)
  values = np.stack([value_sets[j][classes[:, j]] for j in range(5)], -1)
  colour = np.zeros((len(classes), 1))
  with h5py.File(path, "w") as h5:
    h5.create_dataset("imgs", data=images, compression="gzip")
    h5.create_dataset("latents/classes", data=np.concatenate([colour, classes], 1).astype(np.int64))
    h5.create_dataset("latents/values", data=np.concatenate([colour + 1, values], 1))
  return classes, images


def _png_with_pil(self, image):
  # TFDS encodes a builder's numpy images with TensorFlow, which is not a
  # dependency here; PIL writes a PNG with the same pixels.
  del self
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="png")
  return buffer.getvalue()


def _small_grid():
  """The dSprites builder with label features of sizes `_SIZES`."""
  builder_cls = tfds.builder_cls("dsprites")
  full_info = builder_cls._info  # pylint: disable=protected-access

  def info(self):
    features = dict(full_info(self).features)
    features.update({label: tfds.features.ClassLabel(num_classes=size)
                     for label, size in zip(_LABELS, _SIZES)})
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  return mock.patch.object(builder_cls, "_info", info)


@pytest.fixture(scope="module")
def prepared_dsprites(tmp_path_factory):
  """dSprites prepared by TFDS's own builder, its download redirected to a
  local HDF5: (data_dir, labels, images)."""
  root = tmp_path_factory.mktemp("tfds")
  hdf5 = root / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.hdf5"
  labels, images = _write_dsprites_hdf5(hdf5)
  downloads = []

  def download(self, url):
    del self
    downloads.append(url)
    return str(hdf5)

  with _small_grid(), \
      mock.patch.object(tfds.download.DownloadManager, "download", download), \
      mock.patch.object(image_feature._ImageEncoder, "_encode_image", _png_with_pil):
    builder = tfds.builder("dsprites", data_dir=str(root / "data"))
    builder.download_and_prepare(file_format="array_record")
  assert downloads == ["https://github.com/deepmind/dsprites-dataset/blob/master/"
                       "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.hdf5?raw=true"]
  assert list(pathlib.Path(builder.data_path).glob("dsprites-train.array_record-*"))
  return str(root / "data"), labels, images


def test_tfds_prepared_dsprites_is_read_image_for_image(prepared_dsprites):
  data_dir, labels, images = prepared_dsprites
  with _small_grid():
    dataset = tfds_data.load("dsprites", data_dir)
  assert dataset.factor_sizes == _SIZES
  assert dataset.nbytes == len(labels) * 64 * 64 // 8  # Binary: stored bit-packed.
  np.testing.assert_array_equal(dataset.factors_to_index(labels), np.arange(len(labels)))
  np.testing.assert_array_equal(dataset.images_from_factors(labels)[..., 0], images)


def _run_on_prepared_dsprites(data_dir, workdir, placement, num_steps=6, metrics="mig,sap"):
  config = base_config.get_config("preset=tiny,source=tfds", "dsprites", "procedural")
  config.data.data_dir = data_dir
  config.data.placement = placement
  config.stage1.num_steps = num_steps
  config.stage2.family = "none"
  config.eval.disentanglement.metrics = metrics
  config.eval.sample_quality.num_samples = 0
  with _small_grid():
    return train.train_and_evaluate(config, str(workdir))


def test_training_on_prepared_data_is_the_same_in_device_and_host_memory(
    prepared_dsprites, tmp_path):
  data_dir = prepared_dsprites[0]
  on_device = _run_on_prepared_dsprites(data_dir, tmp_path / "device", "device")
  assert on_device["metric_factors"] == list(dsprites.FACTOR_NAMES)
  # Half the steps in device memory, the rest (and the evaluation) after
  # resuming in host memory (checkpoints every 3 steps in the tiny preset):
  # the same run, and the same scores.
  _run_on_prepared_dsprites(data_dir, tmp_path / "switched", "device", num_steps=3,
                            metrics="none")
  switched = _run_on_prepared_dsprites(data_dir, tmp_path / "switched", "host")
  assert switched["step"] == 6
  for key in ("reconstruction_mse", "kl", "mig", "sap"):
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
