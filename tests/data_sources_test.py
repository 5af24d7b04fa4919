"""Array-backed data sets, the file and TFDS loaders, nuisance factors, configs.

Real data cannot be downloaded here, so the loaders read small fixtures: npz
files written by the tests and TFDS under `tfds.testing.mock_data`, whose
builders are given small factor grids. Each fixture image encodes its own
factors, so a test can check that every image lands at its factors' index.
"""

import contextlib
import importlib.util
import json
import math
import pathlib
from unittest import mock

import jax
import jax.numpy as jnp
import h5py
import ml_collections
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from msdr_jax import configuration
from msdr_jax import run_directory
from msdr_jax import data
from msdr_jax.data import arrays
from msdr_jax.data import dsprites
from msdr_jax.data import files
from msdr_jax.data import ground_truth
from msdr_jax.data import shapes3d_render
from msdr_jax.data import textured_dsprites
from msdr_jax.data import tfds_data
from msdr_jax.metrics import data as metrics_data

REPO = pathlib.Path(__file__).resolve().parents[1]


def _labelled_images(sizes, shape, binary=False):
  """Images whose pixels spell out their row-major index: [N, *shape] uint8."""
  num = math.prod(sizes)
  index = np.arange(num)
  pixels = math.prod(shape)
  if binary:  # The index's bits, repeated over the image.
    bits = (index[:, None] >> np.arange(pixels) % 16) & 1
    return bits.astype(np.uint8).reshape(num, *shape)
  values = (index[:, None] * 7 + np.arange(pixels)) % 251
  return values.astype(np.uint8).reshape(num, *shape)


# ArrayData and Assembler.


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("placement", ["device", "host"])
def test_array_data_gathers_the_image_of_each_state(binary, placement):
  sizes, shape = (3, 4, 5), (4, 8, 2)
  images = _labelled_images(sizes, shape, binary)
  dataset = arrays.ArrayData(
      images, factor_names=("a", "b"), factor_sizes=sizes[:2], nuisance_names=("n",),
      nuisance_sizes=sizes[2:], binary=binary, placement=placement)
  index = np.array([0, 7, 59, 33, 33])
  state = dataset.index_to_state(index)
  np.testing.assert_array_equal(dataset.state_to_index(state), index)
  np.testing.assert_array_equal(state, np.stack(np.unravel_index(index, sizes), -1))
  expected = images[index].astype(np.float32) / (1.0 if binary else 255.0)
  gather = jax.jit(lambda d, s: d.images_from_state(s))
  # XLA may scale by 1/255 instead of dividing: equal up to float32 rounding.
  np.testing.assert_allclose(gather(dataset, state), expected, rtol=1e-6)
  np.testing.assert_allclose(dataset.images_from_state(state), expected, rtol=1e-6)
  bytes_per_image = math.prod(shape) // 8 if binary else math.prod(shape)
  assert dataset.nbytes == math.prod(sizes) * bytes_per_image


def test_device_and_host_placement_draw_identical_batches():
  sizes, shape = (6, 5, 4), (8, 8, 3)
  images = _labelled_images(sizes, shape)
  kwargs = dict(factor_names=("a", "b", "c"), factor_sizes=sizes)
  on_device = arrays.ArrayData(images, placement="device", **kwargs)
  on_host = arrays.ArrayData(images, placement="host", **kwargs)
  sample = jax.jit(lambda d, key: d.sample(key, 32))
  for seed in range(3):
    device_images, device_factors = sample(on_device, jax.random.PRNGKey(seed))
    host_images, host_factors = sample(on_host, jax.random.PRNGKey(seed))
    np.testing.assert_array_equal(device_images, host_images)
    np.testing.assert_array_equal(device_factors, host_factors)
    index = on_device.factors_to_index(device_factors)
    np.testing.assert_allclose(device_images, images[index] / np.float32(255), rtol=1e-6)


def test_a_data_set_argument_is_not_compiled_into_the_program():
  # The reason data sets are pytrees: a closed-over array becomes a constant
  # of the compiled program (its full size in the HLO); an argument does not.
  images = _labelled_images((64, 64), (16, 16, 1))  # 1 MiB.
  dataset = arrays.ArrayData(images, factor_names=("a", "b"), factor_sizes=(64, 64))
  key = jax.random.PRNGKey(0)
  as_argument = jax.jit(lambda d, k: d.sample(k, 4)[0]).lower(dataset, key).as_text()
  closed_over = jax.jit(lambda k: dataset.sample(k, 4)[0]).lower(key).as_text()
  assert len(as_argument) < 50_000 < images.nbytes < len(closed_over)


def test_array_data_rejects_bad_arrays():
  kwargs = dict(factor_names=("a",), factor_sizes=(4,))
  with pytest.raises(arrays.DataError, match="has 3 images but its grid"):
    arrays.ArrayData(np.zeros((3, 2, 2, 1), np.uint8), **kwargs)
  with pytest.raises(arrays.DataError, match="needs uint8 images"):
    arrays.ArrayData(np.zeros((4, 2, 2, 1), np.float32), **kwargs)
  with pytest.raises(arrays.DataError, match="declared binary but has pixel values up to 255"):
    arrays.ArrayData(np.full((4, 2, 2, 1), 255, np.uint8), binary=True, **kwargs)
  with pytest.raises(ValueError, match="Unknown placement 'tpu'"):
    arrays.ArrayData(np.zeros((4, 2, 2, 1), np.uint8), placement="tpu", **kwargs)


def test_assembler_orders_shuffled_examples_and_checks_coverage():
  sizes = (3, 4, 2)
  images = _labelled_images(sizes, (2, 2, 1))
  states = np.stack(np.unravel_index(np.arange(24), sizes), -1)
  order = np.random.default_rng(0).permutation(24)
  assembler = arrays.Assembler(sizes, (2, 2, 1), "fixture")
  assembler.add(images[order[:10]], states[order[:10]])
  assembler.add(images[order[10:]], states[order[10:]])
  np.testing.assert_array_equal(assembler.finish(), images)

  incomplete = arrays.Assembler(sizes, (2, 2, 1), "fixture")
  incomplete.add(images[order[:20]], states[order[:20]])
  incomplete.add(images[order[:1]], states[order[:1]])
  with pytest.raises(arrays.DataError,
                     match="4 of 24 factor combinations have no image and 1 have several"):
    incomplete.finish()
  with pytest.raises(arrays.DataError, match=r"labels \[3, 0, 0\] are outside"):
    arrays.Assembler(sizes, (2, 2, 1), "fixture").add(images[:1], [[3, 0, 0]])


# Nuisance factors and data sets without factors.


def test_nuisance_values_are_drawn_per_image_and_need_an_rng():
  dataset = textured_dsprites.TexturedDSprites()
  factors = jnp.array([[2, 5, 10, 16, 16]] * 64)
  with pytest.raises(ValueError, match=r"nuisance factors \('texture',\).*pass an rng"):
    dataset.images_from_factors(factors)
  # Compiled: eagerly, each of the renderer's operations compiles alone.
  images = np.asarray(jax.jit(dataset.images_from_factors)(factors, jax.random.PRNGKey(0)))
  # Same factors, same sprite; the textures differ between images.
  mask = np.asarray(jax.jit(dsprites.render)(factors[:1]))[0]
  np.testing.assert_array_equal(images > 0, np.broadcast_to(mask > 0, images.shape))
  distinct = {image.tobytes() for image in images}
  assert len(distinct) > 55
  sample = jax.jit(dataset.sample, static_argnums=1)
  images_again, factors_drawn = sample(jax.random.PRNGKey(3), 16)
  assert factors_drawn.shape == (16, 5)
  np.testing.assert_array_equal(images_again, sample(jax.random.PRNGKey(3), 16)[0])


def test_textured_dsprites_textures_are_deterministic_and_in_range():
  state = jnp.array([[0, 5, 0, 16, 16, t] for t in (0, 1, 1023)])
  first, second = textured_dsprites.render(state), jax.jit(textured_dsprites.render)(state)
  np.testing.assert_allclose(first, second, atol=1e-6)
  inside = np.asarray(first)[np.asarray(dsprites.render(state[:, :5])) > 0]
  assert inside.min() >= textured_dsprites.MIN_INTENSITY - 1e-6 and inside.max() <= 1.0
  assert inside.std() > 0.1  # Textured, not flat.
  assert not np.allclose(first[0], first[1]) and not np.allclose(first[1], first[2])
  dataset = textured_dsprites.TexturedDSprites()
  np.testing.assert_array_equal(dataset.index_to_state(dataset.state_to_index(state)), state)
  assert dataset.num_images == 737_280 * 1024 < 2**31


def test_metrics_see_fresh_nuisance_per_image_but_are_reproducible():
  dataset = textured_dsprites.TexturedDSprites()
  factors = np.array([[1, 2, 3, 4, 5]] * 8)
  mean_pixel = lambda images: images.reshape(images.shape[0], -1).mean(-1, keepdims=True)
  codes = metrics_data.encode_factors(mean_pixel, dataset, factors, jax.random.PRNGKey(1))
  again = metrics_data.encode_factors(mean_pixel, dataset, factors, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(codes, again)
  assert np.unique(codes).size > 4  # One texture per image, not per factor vector.
  with pytest.raises(ValueError, match="pass an rng"):
    metrics_data.encode_factors(mean_pixel, dataset, factors)


def test_a_data_set_without_factors_samples_by_its_nuisance_index():
  images = _labelled_images((10,), (4, 4, 3))
  photos = arrays.ArrayData(images, factor_names=(), factor_sizes=(),
                            nuisance_names=("photo",), nuisance_sizes=(10,))
  batch, factors = photos.sample(jax.random.PRNGKey(0), 6)
  assert batch.shape == (6, 4, 4, 3) and factors.shape == (6, 0)
  assert photos.num_images == 10 and photos.num_factors == 0
  with pytest.raises(ValueError, match="needs labelled factors, and ArrayData has none"):
    metrics_data.check_dataset(photos, "MIG")


def test_index_round_trip_of_every_built_in_grid():
  grids = [dsprites.DSprites(), textured_dsprites.TexturedDSprites(),
           data.shapes3d.Shapes3D()]
  for dataset in grids:
    state = dataset.sample_state(jax.random.PRNGKey(0), 1000)
    index = dataset.state_to_index(state)
    np.testing.assert_array_equal(dataset.index_to_state(index), state)
    np.testing.assert_array_equal(
        index, np.ravel_multi_index(tuple(np.asarray(state).T), dataset.state_sizes))
    corners = np.array([0, dataset.num_images - 1])
    np.testing.assert_array_equal(
        dataset.state_to_index(dataset.index_to_state(corners)), corners)
  np.testing.assert_array_equal(
      ground_truth.unravel_index(
          np.array([0, 1_036_799]), files.MPI3D_FACTOR_SIZES)[-1],
      np.array(files.MPI3D_FACTOR_SIZES) - 1)
  with pytest.raises(ValueError, match="does not fit in int32"):
    ground_truth.ravel_index(jnp.zeros((1, 3), jnp.int32), (2**11, 2**11, 2**10))


# File loaders.

_SMALL_DSPRITES = (3, 2, 3, 2, 2)


def _dsprites_npz(path, sizes=_SMALL_DSPRITES, drop=0):
  images = _labelled_images(sizes, (64, 64), binary=True)
  classes = np.stack(np.unravel_index(np.arange(len(images)), sizes), -1)
  classes = np.concatenate([np.zeros((len(images), 1), np.int64), classes], 1)
  order = np.random.default_rng(1).permutation(len(images))[drop:]
  np.savez(path, imgs=images[order], latents_classes=classes[order],
           latents_values=classes[order].astype(np.float64))
  return images


def test_dsprites_npz_is_placed_by_its_labels_and_bit_packed(tmp_path):
  images = _dsprites_npz(tmp_path / "dsprites.npz")
  dataset = files.load_dsprites(str(tmp_path / "dsprites.npz"), factor_sizes=_SMALL_DSPRITES)
  assert dataset.factor_names == dsprites.FACTOR_NAMES
  assert dataset.nbytes == len(images) * 64 * 64 // 8
  factors = dataset.index_to_factors(np.arange(len(images)))
  np.testing.assert_array_equal(dataset.images_from_factors(factors), images[..., None])


def test_dsprites_npz_errors_name_the_problem(tmp_path):
  with pytest.raises(arrays.DataError, match="does not exist.*github.com/deepmind"):
    files.load_dsprites(str(tmp_path / "missing.npz"))
  _dsprites_npz(tmp_path / "partial.npz", drop=5)
  with pytest.raises(arrays.DataError, match="5 of 72 factor combinations have no image"):
    files.load_dsprites(str(tmp_path / "partial.npz"), factor_sizes=_SMALL_DSPRITES)
  np.savez(tmp_path / "other.npz", images=np.zeros((2, 64, 64), np.uint8))
  with pytest.raises(arrays.DataError, match=r"has arrays \['images'\]"):
    files.load_dsprites(str(tmp_path / "other.npz"))
  (tmp_path / "text.npz").write_text("not a zip file")
  with pytest.raises(arrays.DataError, match="not a readable .npz"):
    files.load_dsprites(str(tmp_path / "text.npz"))


def _shapes3d_h5(path, sizes, order=None):
  """A 3dshapes.h5 in the official layout: images, and labels as *values*."""
  images = _labelled_images(sizes, (64, 64, 3))
  classes = np.stack(np.unravel_index(np.arange(len(images)), sizes), -1)
  # The official value sets, truncated to the fixture's sizes.
  value_sets = [np.linspace(0.0, 0.9, 10), np.linspace(0.0, 0.9, 10),
                np.linspace(0.0, 0.9, 10), np.linspace(0.75, 1.25, 8),
                np.arange(4.0), np.linspace(-30.0, 30.0, 15)]
  values = np.stack([value_sets[j][classes[:, j]] for j in range(6)], -1)
  order = np.arange(len(images)) if order is None else order
  with h5py.File(path, "w") as h5:
    h5.create_dataset("images", data=images[order])
    h5.create_dataset("labels", data=values[order])
  return images


@pytest.mark.parametrize("shuffled", [False, True])
def test_shapes3d_h5_is_placed_by_its_label_values(tmp_path, shuffled):
  sizes = (2, 1, 3, 2, 2, 3)
  order = np.random.default_rng(3).permutation(72) if shuffled else None
  images = _shapes3d_h5(tmp_path / "3dshapes.h5", sizes, order)
  dataset = files.load_shapes3d(str(tmp_path / "3dshapes.h5"), factor_sizes=sizes)
  assert dataset.factor_names == shapes3d_render.FACTOR_NAMES
  factors = dataset.index_to_factors(np.arange(72))
  np.testing.assert_allclose(np.asarray(dataset.images_from_factors(factors)) * 255,
                             images, atol=1e-3)


def test_shapes3d_h5_errors_name_the_problem(tmp_path):
  with pytest.raises(arrays.DataError, match="does not exist.*github.com/deepmind/3d-shapes"):
    files.load_shapes3d(str(tmp_path / "missing.h5"))
  _shapes3d_h5(tmp_path / "3dshapes.h5", (2, 1, 3, 2, 2, 3))
  with pytest.raises(arrays.DataError, match=r"take \(2, 1, 3, 2, 2, 3\) distinct values per "
                     r"factor .* not \(10, 10, 10, 8, 4, 15\)"):
    files.load_shapes3d(str(tmp_path / "3dshapes.h5"))
  with h5py.File(tmp_path / "other.h5", "w") as h5:
    h5.create_dataset("imgs", data=np.zeros((2, 64, 64, 3), np.uint8))
  with pytest.raises(arrays.DataError, match=r"has datasets \['imgs'\], not \['images', 'labels'\]"):
    files.load_shapes3d(str(tmp_path / "other.h5"))
  (tmp_path / "text.h5").write_text("not an HDF5 file")
  with pytest.raises(arrays.DataError, match="not a readable HDF5 file"):
    files.load_shapes3d(str(tmp_path / "text.h5"))


def test_mpi3d_npz_is_read_in_official_order(tmp_path):
  sizes = (2, 3, 2, 1, 1, 2, 2)
  images = _labelled_images(sizes, (64, 64, 3))
  np.savez(tmp_path / "mpi3d_toy.npz", images=images)
  dataset = files.load_mpi3d(str(tmp_path / "mpi3d_toy.npz"), factor_sizes=sizes)
  assert dataset.factor_names[0] == "object_color" and dataset.num_images == 48
  state = dataset.sample_state(jax.random.PRNGKey(0), 20)
  np.testing.assert_allclose(
      dataset.images_from_state(state),
      images[dataset.state_to_index(state)] / np.float32(255), rtol=1e-6)
  with pytest.raises(arrays.DataError, match=r"expected images \[1,036,800, 64, 64, 3\]"):
    files.load_mpi3d(str(tmp_path / "mpi3d_toy.npz"))


def test_cars3d_mat_files_are_resized_and_indexed(tmp_path):
  sizes = (4, 24, 2)
  for car in range(2):
    # Every view a flat colour that spells out (car, elevation, azimuth).
    elevation, azimuth = np.meshgrid(np.arange(4), np.arange(24))  # [24, 4] each.
    colour = np.stack([np.full_like(azimuth, 100 * car), 10 * elevation, 10 * azimuth], -1)
    mesh = np.broadcast_to(colour.astype(np.uint8), (16, 16, 24, 4, 3))
    scipy.io.savemat(tmp_path / f"car_{car:03d}_mesh.mat",
                     {"im": np.moveaxis(mesh, -1, 2)})  # [H, W, 3, 24, 4].
  dataset = files.load_cars3d(str(tmp_path), factor_sizes=sizes)
  assert dataset.factor_names == ("elevation", "azimuth", "object")
  assert dataset.observation_shape == (64, 64, 3)
  factors = dataset.index_to_factors(np.arange(dataset.num_images))
  np.testing.assert_array_equal(dataset.factors_to_index(factors), np.arange(192))
  images = np.asarray(dataset.images_from_factors(factors)) * 255
  expected = np.stack([100 * factors[:, 2], 10 * factors[:, 0], 10 * factors[:, 1]], -1)
  np.testing.assert_allclose(images[:, 31, 17], expected, atol=1e-3)
  with pytest.raises(arrays.DataError, match="has 2 .mat files; Cars3D has 183 car models"):
    files.load_cars3d(str(tmp_path))
  with pytest.raises(arrays.DataError, match="is not a directory"):
    files.load_cars3d(str(tmp_path / "missing"))


# TFDS loaders, under tfds.testing.mock_data.


class _Source:
  """A random-access source over a list of examples, like TFDS's."""

  def __init__(self, examples):
    self._examples = examples

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, i):
    return self._examples[i]

  def __getitems__(self, indices):
    return [self._examples[i] for i in indices]


def _small_tfds(name, label_sizes, image_shape, splits, label_order=None):
  """Patches TFDS `name` to a small complete grid; returns (patches, images)."""
  features = {"image": tfds.features.Image(shape=image_shape)}
  features.update({label: tfds.features.ClassLabel(num_classes=size)
                   for label, size in label_sizes.items()})
  builder_cls = tfds.builder_cls(name)

  def info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  sizes = tuple(label_sizes.values())
  images = _labelled_images(sizes, image_shape)
  if name == "dsprites":
    images = _labelled_images(sizes, image_shape, binary=True)
  labels = np.stack(np.unravel_index(np.arange(len(images)), sizes), -1)
  examples = [dict(image=image, **dict(zip(label_sizes, label)))
              for image, label in zip(images, labels)]
  order = np.random.default_rng(2).permutation(len(examples))
  shards = np.array_split(order, len(splits))
  by_split = {split: [examples[i] for i in shard] for split, shard in zip(splits, shards)}
  patches = [
      mock.patch.object(builder_cls, "_info", info),
      tfds.testing.mock_data(
          as_data_source_fn=lambda self, split, **kwargs: _Source(by_split[split])),
  ]
  return patches, images


def _with(patches):
  stack = contextlib.ExitStack()
  for patch in patches:
    stack.enter_context(patch)
  return stack


def test_tfds_shapes3d_reads_factor_sizes_from_the_builder():
  labels = {"label_floor_hue": 2, "label_wall_hue": 2, "label_object_hue": 3,
            "label_scale": 2, "label_shape": 2, "label_orientation": 3}
  patches, images = _small_tfds("shapes3d", labels, (64, 64, 3), ("train",))
  with _with(patches):
    dataset = tfds_data.load("shapes3d", "/data/unused")
  assert dataset.factor_sizes == (2, 2, 3, 2, 2, 3)
  assert dataset.factor_names == data.shapes3d.Shapes3D().factor_names
  factors = dataset.index_to_factors(np.arange(dataset.num_images))
  np.testing.assert_allclose(
      jax.jit(lambda d, f: d.images_from_factors(f))(dataset, factors),
      images / np.float32(255), rtol=1e-6)


def test_tfds_dsprites_is_binary_and_bit_packed():
  labels = {"label_shape": 3, "label_scale": 2, "label_orientation": 2,
            "label_x_position": 2, "label_y_position": 2}
  patches, images = _small_tfds("dsprites", labels, (64, 64, 1), ("train",))
  with _with(patches):
    dataset = tfds_data.load("dsprites", "", placement="host")
  assert dataset.nbytes == len(images) * 512 and dataset.placement == "host"
  factors = dataset.index_to_factors(np.arange(dataset.num_images))
  np.testing.assert_array_equal(dataset.images_from_factors(factors), images)


def test_tfds_smallnorb_combines_splits_resizes_and_keeps_instance_as_nuisance():
  labels = {"label_category": 2, "instance": 3, "label_elevation": 2,
            "label_azimuth": 2, "label_lighting": 2}
  patches, images = _small_tfds("smallnorb", labels, (96, 96, 1), ("train", "test"))
  with _with(patches):
    dataset = tfds_data.load("smallnorb", "")
  assert dataset.factor_names == ("category", "elevation", "azimuth", "lighting")
  assert dataset.nuisance_names == ("instance",) and dataset.nuisance_sizes == (3,)
  assert dataset.observation_shape == (64, 64, 1)
  # State order is (factors..., instance); the fixture's label order has the
  # instance second, so image i of the fixture sits at a permuted index.
  state = dataset.sample_state(jax.random.PRNGKey(0), 8)
  fixture_index = np.ravel_multi_index(
      tuple(np.asarray(state)[:, [0, 4, 1, 2, 3]].T), (2, 3, 2, 2, 2))
  expected = jax.image.resize(images[fixture_index].astype(np.float32),
                              (8, 64, 64, 1), "linear", antialias=True)
  np.testing.assert_allclose(dataset.images_from_state(state),
                             np.round(np.clip(expected, 0, 255)) / 255, atol=1e-6)


def test_tfds_celeb_a_crops_resizes_and_indexes_photos():
  features = {"image": tfds.features.Image(shape=(218, 178, 3))}
  builder_cls = tfds.builder_cls("celeb_a")
  photos = np.random.default_rng(0).integers(0, 256, (5, 218, 178, 3), dtype=np.uint8)
  by_split = {"train": [dict(image=p) for p in photos[:3]],
              "validation": [dict(image=photos[3])], "test": [dict(image=photos[4])]}
  info = lambda self: tfds.core.DatasetInfo(
      builder=self, features=tfds.features.FeaturesDict(features))
  with mock.patch.object(builder_cls, "_info", info), tfds.testing.mock_data(
      as_data_source_fn=lambda self, split, **kwargs: _Source(by_split[split])):
    dataset = tfds_data.load("celeb_a", "")
  assert dataset.num_factors == 0 and dataset.nuisance_sizes == (5,)
  crop = photos[:, 35:183, 15:163].astype(np.float32)  # The centred 148x148.
  expected = np.round(np.asarray(jax.image.resize(
      crop, (5, 64, 64, 3), "linear", antialias=True))) / 255
  np.testing.assert_allclose(
      dataset.images_from_state(np.arange(5)[:, None]), expected, atol=1e-6)


@pytest.mark.parametrize("name, factor_sizes, nuisance_sizes", [
    ("dsprites", (3, 6, 40, 32, 32), ()),
    ("shapes3d", (10, 10, 10, 8, 4, 15), ()),
    ("smallnorb", (5, 9, 18, 6), (10,)),
])
def test_tfds_grids_of_the_real_builders(name, factor_sizes, nuisance_sizes, tmp_path):
  # The unpatched builders (their features are defined in code, offline):
  # catches a TFDS version whose labels no longer match the loader.
  builder = tfds.builder(name, data_dir=str(tmp_path))
  assert tfds_data._grid(tfds_data.SPECS[name], builder, []) == (factor_sizes, nuisance_sizes)


def test_tfds_celeb_a_builder_has_the_expected_photos(tmp_path):
  builder = tfds.builder("celeb_a", data_dir=str(tmp_path))
  assert builder.info.features["image"].shape == (218, 178, 3)
  assert set(tfds_data.SPECS["celeb_a"].splits) == {"train", "validation", "test"}


def test_tfds_incomplete_or_absent_data_fail_clearly(tmp_path):
  with tfds.testing.mock_data(num_examples=5):
    with pytest.raises(arrays.DataError, match=r"holds 5 examples .* has 480,000 points"):
      tfds_data.load("shapes3d", str(tmp_path))
  with pytest.raises(arrays.DataError) as error:
    tfds_data.load("smallnorb", str(tmp_path))
  message = str(error.value)
  assert "'smallnorb' is not prepared" in message
  assert f"tfds build smallnorb --data_dir={tmp_path} --file_format=array_record" in message
  assert not any(tmp_path.iterdir())  # Nothing was downloaded or written.
  with mock.patch.dict("sys.modules", {"tensorflow_datasets": None}):  # Not installed.
    with pytest.raises(arrays.DataError,
                       match=r"TensorFlow Datasets, which is not installed .*: pip install "
                             r"'msdr_jax\[tfds\]'\.$"):
      tfds_data.load("smallnorb", str(tmp_path))


# Configs.


def _load_config(name, arg=""):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", ["dsprites", "dsprites_textured", "shapes3d",
                                  "mpi3d", "smallnorb", "celeb_a", "cars3d"])
def test_every_config_validates_for_each_source(name):
  for source in data.sources_of(name):
    config = _load_config(name, f"preset=tiny,source={source}")
    assert config.data.name == name and config.data.source == source
    if source == "file":
      with pytest.raises(configuration.ConfigError, match="needs --config.data.path"):
        configuration.validate(config)
      config.data.path = "some.npz"
    configuration.validate(config)
  config = _load_config(name, "preset=tiny")
  config.data.source = "nowhere"
  with pytest.raises(configuration.ConfigError, match="not available for data set"):
    configuration.validate(config)


def test_config_arguments_are_checked():
  with pytest.raises(ValueError, match="Unknown config argument"):
    _load_config("shapes3d", "preset=tiny,colour=red")
  config = _load_config("dsprites", "source=tfds")
  assert config.name == "dsprites-tfds-paper"
  assert _load_config("dsprites", "preset=quick").name == "dsprites-quick"


def test_placement_may_change_when_a_run_resumes(tmp_path):
  config = _load_config("dsprites", "preset=tiny")
  run_directory.bind_workdir(config, str(tmp_path))
  config.data.placement = "host"
  run_directory.bind_workdir(config, str(tmp_path))
  config.data.source = "tfds"
  with pytest.raises(run_directory.RunDirectoryError, match="data.source"):
    run_directory.bind_workdir(config, str(tmp_path))


def test_run_directories_recorded_before_data_sources_still_resume(tmp_path):
  config = _load_config("dsprites", "preset=tiny")
  recorded = json.loads(config.to_json())
  for key in ("source", "data_dir", "path", "placement"):
    del recorded["data"][key]  # What a run recorded before these keys existed.
  del recorded["compute_dtype"]
  (tmp_path / run_directory.CONFIG_FILENAME).write_text(json.dumps(recorded))
  run_directory.check_workdir(config, str(tmp_path))
  run_directory.bind_workdir(config, str(tmp_path))
  # What `python -m msdr_jax.evaluate` does with a recorded config.
  restored = ml_collections.ConfigDict(recorded)
  run_directory.fill_legacy_defaults(restored)
  assert restored.data.source == "procedural" and restored.data.placement == "device"
  assert restored.compute_dtype == "float32"
  configuration.validate(restored)
  # Their default work directory names are unchanged too.
  old_identity = run_directory._identity(run_directory.flatten(recorded))
  assert run_directory.run_identity(config) == old_identity
  config.data.source = "tfds"
  with pytest.raises(run_directory.RunDirectoryError, match="data.source is '<absent>'"):
    run_directory.check_workdir(config, str(tmp_path))
