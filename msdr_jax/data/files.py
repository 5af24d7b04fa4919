"""dSprites, Shapes3D, MPI3D and Cars3D from their official files.

  * dSprites: `dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz` from
    github.com/deepmind/dsprites-dataset, keys `imgs` (uint8 0/1
    [737280, 64, 64]) and `latents_classes` ([737280, 6], colour first). The
    images are placed by their labels, so the file's order does not matter,
    and stored bit-packed (377 MB).
  * Shapes3D: `3dshapes.h5` from github.com/deepmind/3d-shapes, datasets
    `images` (uint8 [480000, 64, 64, 3]) and `labels` (float64 [480000, 6]:
    the factor *values*, e.g. hues in [0, 1) and orientations in degrees).
    Each column's distinct values, sorted, are that factor's classes, as in
    TFDS's builder. The official file is in row-major factor order and is
    used as it is (5.9 GB in memory); any other order is placed by the
    labels.
  * MPI3D (github.com/rr-learning/disentanglement_dataset): `mpi3d_toy.npz`,
    `mpi3d_realistic.npz` or `mpi3d_real.npz`, key `images` (uint8
    [1036800, 64, 64, 3]) in row-major order of the 7 factors below; the files
    carry no labels. 12.7 GB in memory: `placement="host"` keeps it off the
    accelerator.
  * Cars3D (Reed et al. 2015, "Deep Visual Analogy-Making"): the `cars/`
    directory of 183 `*_mesh.mat` files, one per car model, each with `im`
    (uint8 [128, 128, 3, 24 azimuths, 4 elevations]). Factors elevation (4),
    azimuth (24), object (183, the files in sorted name order), as in
    disentanglement_lib; images are resized to 64x64 (antialiased).

`factor_sizes` is a parameter only so that tests can use small fixtures; the
defaults are the real data sets'.
"""

from __future__ import annotations

import math
from typing import Sequence
import zipfile

from etils import epath
import h5py
import numpy as np
import scipy.io

from msdr_jax.data import arrays
from msdr_jax.data import dsprites
from msdr_jax.data import shapes3d_render

MPI3D_FACTOR_NAMES = ("object_color", "object_shape", "object_size", "camera_height",
                      "background_color", "horizontal_axis", "vertical_axis")
MPI3D_FACTOR_SIZES = (6, 6, 2, 3, 3, 40, 40)

_DSPRITES_URL = "https://github.com/deepmind/dsprites-dataset"
_SHAPES3D_URL = "https://github.com/deepmind/3d-shapes"
_MPI3D_URL = "https://github.com/rr-learning/disentanglement_dataset"
_CARS3D_URL = "http://www.scottreed.info (Deep Visual Analogy-Making data, cars/)"

CARS3D_FACTOR_NAMES = ("elevation", "azimuth", "object")
CARS3D_FACTOR_SIZES = (4, 24, 183)


def _check_file(path: str, what: str, file_name: str, url: str) -> None:
  """One-line errors for a missing path or file; `file_name` says which file."""
  if not path:
    raise arrays.DataError(
        f"{what} from a file needs --config.data.path=<{file_name}> (from {url}).")
  if not epath.Path(path).is_file():
    raise arrays.DataError(
        f"{what}: {path} does not exist or is not a file. Download {file_name} from "
        f"{url} and pass its path as --config.data.path.")


def _open_npz(path: str, what: str, url: str, keys: Sequence[str]):
  _check_file(path, what, "the .npz file", url)
  try:
    archive = np.load(path)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise arrays.DataError(f"{what}: {path} is not a readable .npz file ({e}).") from e
  missing = [key for key in keys if key not in archive.files]
  if missing:
    raise arrays.DataError(
        f"{what}: {path} has arrays {archive.files}, not {missing}; is it the "
        f"official file from {url}?")
  return archive


def load_dsprites(path: str, placement: str = "device",
                  factor_sizes: Sequence[int] = dsprites.FACTOR_SIZES) -> arrays.ArrayData:
  """dSprites from DeepMind's npz, placed by its `latents_classes`."""
  description = f"dsprites (file {path})"
  with _open_npz(path, "dSprites", _DSPRITES_URL, ("imgs", "latents_classes")) as archive:
    images, classes = archive["imgs"], archive["latents_classes"]
  if images.ndim != 3 or classes.ndim != 2 or classes.shape[1] != 6 or len(images) != len(classes):
    raise arrays.DataError(
        f"{description}: expected imgs [N, 64, 64] and latents_classes [N, 6], got "
        f"{images.shape} and {classes.shape}.")
  # Column 0 is the colour, which has a single value.
  return arrays.ArrayData(
      _place(images[..., None], classes[:, 1:], factor_sizes, description),
      factor_names=dsprites.FACTOR_NAMES, factor_sizes=factor_sizes,
      binary=True, placement=placement, description=description)


def _place(images: np.ndarray, states: np.ndarray, factor_sizes: Sequence[int],
           description: str) -> np.ndarray:
  """Images in row-major factor order; the input itself when already so."""
  in_order = (len(states) == math.prod(factor_sizes)
              and np.all(states.max(0) < np.asarray(factor_sizes))
              and np.array_equal(np.ravel_multi_index(tuple(states.T), factor_sizes),
                                 np.arange(len(states))))
  if in_order:  # The official files: no second copy of gigabytes.
    return images
  assembler = arrays.Assembler(factor_sizes, images.shape[1:], description)
  assembler.add(images, states)
  return assembler.finish()


def load_shapes3d(path: str, placement: str = "device",
                  factor_sizes: Sequence[int] = shapes3d_render.FACTOR_SIZES
                  ) -> arrays.ArrayData:
  """Shapes3D from DeepMind's `3dshapes.h5`, placed by its `labels`."""
  description = f"shapes3d (file {path})"
  _check_file(path, "Shapes3D", "3dshapes.h5", _SHAPES3D_URL)
  try:
    with h5py.File(path, "r") as h5:
      missing = [key for key in ("images", "labels") if key not in h5]
      if missing:
        raise arrays.DataError(
            f"{description} has datasets {sorted(h5)}, not {missing}; is it the official "
            f"3dshapes.h5 from {_SHAPES3D_URL}?")
      images, values = h5["images"][()], h5["labels"][()]
  except OSError as e:
    raise arrays.DataError(f"Shapes3D: {path} is not a readable HDF5 file ({e}).") from e
  if (images.ndim != 4 or images.shape[1:] != (64, 64, 3) or values.shape != (len(images), 6)):
    raise arrays.DataError(
        f"{description}: expected images [N, 64, 64, 3] and labels [N, 6], got "
        f"{images.shape} and {values.shape}.")
  # The labels are values; their sorted distinct values are the classes.
  columns = [np.unique(column, return_inverse=True) for column in values.T]
  found = tuple(len(classes) for classes, _ in columns)
  if found != tuple(factor_sizes):
    raise arrays.DataError(
        f"{description}: its labels take {found} distinct values per factor "
        f"{shapes3d_render.FACTOR_NAMES}, not {tuple(factor_sizes)}.")
  states = np.stack([index.reshape(-1) for _, index in columns], axis=-1)
  return arrays.ArrayData(
      _place(images, states, factor_sizes, description),
      factor_names=shapes3d_render.FACTOR_NAMES, factor_sizes=factor_sizes,
      placement=placement, description=description)


def load_mpi3d(path: str, placement: str = "device",
               factor_sizes: Sequence[int] = MPI3D_FACTOR_SIZES) -> arrays.ArrayData:
  """MPI3D (toy, realistic or real) from its npz, in official factor order."""
  description = f"mpi3d (file {path})"
  with _open_npz(path, "MPI3D", _MPI3D_URL, ("images",)) as archive:
    images = archive["images"]
  expected = math.prod(factor_sizes)
  if images.ndim != 4 or images.shape[0] != expected:
    raise arrays.DataError(
        f"{description}: expected images [{expected:,}, 64, 64, 3] (factor grid "
        f"{tuple(factor_sizes)}), got {images.shape}. Is it one of the official "
        f"MPI3D files from {_MPI3D_URL}?")
  return arrays.ArrayData(
      images, factor_names=MPI3D_FACTOR_NAMES, factor_sizes=factor_sizes,
      placement=placement, description=description)


def load_cars3d(directory: str, placement: str = "device",
                factor_sizes: Sequence[int] = CARS3D_FACTOR_SIZES) -> arrays.ArrayData:
  """Cars3D from its directory of `*.mat` files (one car model each)."""
  description = f"cars3d (directory {directory})"
  folder = epath.Path(directory) if directory else None
  if folder is None or not folder.is_dir():
    raise arrays.DataError(
        f"Cars3D needs --config.data.path=<the cars/ directory of *.mat files> (from "
        f"{_CARS3D_URL}); {directory or 'no path'} is not a directory.")
  paths = sorted(path for path in folder.iterdir() if path.suffix == ".mat")
  num_elevations, num_azimuths, num_objects = factor_sizes
  if len(paths) != num_objects:
    raise arrays.DataError(
        f"{description} has {len(paths)} .mat files; Cars3D has {num_objects} car models.")
  images = np.zeros((math.prod(factor_sizes), 64, 64, 3), np.uint8)
  for index, path in enumerate(paths):
    try:
      mesh = scipy.io.loadmat(str(path))["im"]
    except (OSError, ValueError, KeyError) as e:
      raise arrays.DataError(f"{description}: cannot read `im` from {path.name} ({e}).") from e
    if mesh.shape[2:] != (3, num_azimuths, num_elevations):
      raise arrays.DataError(
          f"{description}: {path.name} has `im` of shape {mesh.shape}, expected "
          f"[H, W, 3, {num_azimuths}, {num_elevations}].")
    # [H, W, 3, azimuth, elevation] -> [elevation, azimuth, H, W, 3].
    views = np.transpose(mesh, (4, 3, 0, 1, 2)).reshape(-1, *mesh.shape[:3])
    car = arrays.resize_images(views, 64)
    # Row-major (elevation, azimuth, object): this car's views are every
    # num_objects-th image.
    images[index::num_objects] = car
  return arrays.ArrayData(
      images, factor_names=CARS3D_FACTOR_NAMES, factor_sizes=factor_sizes,
      placement=placement, description=description)
