"""dSprites, Shapes3D, SmallNORB and CelebA from a prepared TFDS `data_dir`.

Each is read once, through TFDS's random-access data sources (array_record
files, which need no TensorFlow), into one `arrays.ArrayData` in row-major
factor order. Factor names and sizes come from the builder's features, so a
new TFDS version with other sizes is read correctly or refused clearly.

This module never downloads: TFDS cannot reach the internet from every
machine, and a silent multi-GB download inside a training job is a bad
surprise. When the data are not prepared the error prints the commands that
prepare them on a connected machine.

  * dsprites: 5 factors, binary 64x64x1 (stored bit-packed).
  * shapes3d: 6 factors, 64x64x3.
  * smallnorb: category, elevation, azimuth, lighting; the object instance
    is a nuisance factor (as in disentanglement_lib). The train and test
    splits are combined (24,300 images each, instances 4, 6-9 and 0-3, 5),
    and the 96x96 left-camera images are resized to 64x64 (antialiased).
  * celeb_a: no labelled factors; train, validation and test combined
    (202,599 photos), each centre-cropped to 148x148 and resized to 64x64,
    the usual crop of the VAE literature. The photo itself is the nuisance
    "factor", so sampling is uniform over the photos.
"""

from __future__ import annotations

import dataclasses
import math
import time

from absl import logging
import numpy as np

from msdr_jax.data import arrays

# Examples read and resized per batch.
_READ_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """How one TFDS data set maps to a ground-truth data set."""

  tfds_name: str
  splits: tuple[str, ...]
  # (label feature, factor name) in the data set's official factor order.
  factors: tuple[tuple[str, str], ...]
  nuisance: tuple[tuple[str, str], ...] = ()
  binary: bool = False
  # Centre crop (height, width) applied before resizing; None: no crop.
  crop: tuple[int, int] | None = None
  image_size: int = 64
  # A nuisance factor "photo" indexing the examples (data without labels).
  index_is_nuisance: bool = False


SPECS = {
    "dsprites": TfdsSpec(
        "dsprites", ("train",),
        factors=(("label_shape", "shape"), ("label_scale", "scale"),
                 ("label_orientation", "orientation"),
                 ("label_x_position", "position_x"), ("label_y_position", "position_y")),
        binary=True),
    "shapes3d": TfdsSpec(
        "shapes3d", ("train",),
        factors=(("label_floor_hue", "floor_hue"), ("label_wall_hue", "wall_hue"),
                 ("label_object_hue", "object_hue"), ("label_scale", "scale"),
                 ("label_shape", "shape"), ("label_orientation", "orientation"))),
    "smallnorb": TfdsSpec(
        "smallnorb", ("train", "test"),
        factors=(("label_category", "category"), ("label_elevation", "elevation"),
                 ("label_azimuth", "azimuth"), ("label_lighting", "lighting")),
        nuisance=(("instance", "instance"),)),
    "celeb_a": TfdsSpec(
        "celeb_a", ("train", "validation", "test"), factors=(), crop=(148, 148),
        index_is_nuisance=True),
}


def not_prepared_message(name: str, data_dir: str, reason: str) -> str:
  where = data_dir or "TFDS's default data_dir (~/tensorflow_datasets)"
  out = data_dir or "~/tensorflow_datasets"
  return (
      f"The TFDS data set {name!r} is not prepared in {where} ({reason}). This "
      "library does not download. On a machine with internet access run\n"
      f"  pip install tensorflow-datasets tensorflow h5py\n"
      f"  tfds build {name} --data_dir={out} --file_format=array_record\n"
      f"then copy {out}/{name} to this machine and pass "
      f"--config.data.data_dir=<its parent directory>. (A copy prepared earlier in "
      f"the tfrecord format converts with `tfds convert_format "
      f"--dataset_version_dir=<.../{name}/<version>> --out_file_format=array_record "
      f"--out_dir=<new .../{name}/<version>>`.)")


def _open_sources(spec: TfdsSpec, data_dir: str):
  """The builder and one random-access source per split; clear errors."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise arrays.DataError(
        f"config.data.source='tfds' reads data sets prepared by TensorFlow Datasets, "
        f"which is not installed ({e}): pip install 'msdr_jax[tfds]'.") from None

  builder = tfds.builder(spec.tfds_name, data_dir=data_dir or None)
  try:
    sources = [builder.as_data_source(split) for split in spec.splits]
  except Exception as e:  # pylint: disable=broad-except
    # TFDS raises assorted errors for a missing or unreadable data set;
    # diagnose it here, where the cause is known.
    if not builder.is_prepared():
      raise arrays.DataError(not_prepared_message(
          spec.tfds_name, data_dir, f"nothing at {builder.data_path}")) from e
    raise arrays.DataError(not_prepared_message(
        spec.tfds_name, data_dir,
        f"{builder.data_path} exists but cannot be opened for random access, which "
        "needs the array_record file format, every split and the array_record "
        f"package: {type(e).__name__}: {' '.join(str(e).split())[:300]}")) from e
  return builder, sources


def _grid(spec: TfdsSpec, builder, sources) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(factor sizes, nuisance sizes) from the builder's features."""
  features = builder.info.features

  def size(feature: str) -> int:
    if feature not in features or getattr(features[feature], "num_classes", None) is None:
      raise arrays.DataError(
          f"The TFDS data set {spec.tfds_name!r} has no class-label feature {feature!r}; "
          "its version is not one this loader knows.")
    return int(features[feature].num_classes)

  factor_sizes = tuple(size(feature) for feature, _ in spec.factors)
  if spec.index_is_nuisance:
    return factor_sizes, (sum(len(source) for source in sources),)
  return factor_sizes, tuple(size(feature) for feature, _ in spec.nuisance)


def _to_image_size(spec: TfdsSpec, images: np.ndarray) -> np.ndarray:
  if spec.crop is None and images.shape[1:3] == (spec.image_size, spec.image_size):
    return images
  num = len(images)
  padded = np.concatenate([images, np.zeros((_READ_BATCH - num, *images.shape[1:]),
                                            images.dtype)])  # One compilation.
  return arrays.resize_images(padded, spec.image_size, spec.crop)[:num]


def load(name: str, data_dir: str = "", placement: str = "device") -> arrays.ArrayData:
  """Reads the TFDS data set `name` (a key of `SPECS`) into an ArrayData."""
  spec = SPECS[name]
  builder, sources = _open_sources(spec, data_dir)
  factor_sizes, nuisance_sizes = _grid(spec, builder, sources)
  description = f"{name} (TFDS, {builder.data_path})"
  state_sizes = (*factor_sizes, *nuisance_sizes)
  total = sum(len(source) for source in sources)
  if total != math.prod(state_sizes):
    # Checked before reading: a partial copy fails in seconds, not minutes.
    raise arrays.DataError(
        f"{description} holds {total:,} examples in splits {spec.splits}, but its "
        f"factor grid {state_sizes} has {math.prod(state_sizes):,} points. Is the "
        "data set prepared completely?")
  channels = builder.info.features["image"].shape[-1]
  assembler = arrays.Assembler(
      state_sizes, (spec.image_size, spec.image_size, channels), description)
  label_features = [feature for feature, _ in (*spec.factors, *spec.nuisance)]
  start, done = time.time(), 0
  for source in sources:
    for begin in range(0, len(source), _READ_BATCH):
      examples = source.__getitems__(list(range(begin, min(begin + _READ_BATCH, len(source)))))
      images = np.stack([np.asarray(example["image"], np.uint8) for example in examples])
      if spec.index_is_nuisance:
        states = np.arange(done, done + len(examples))[:, None]
      else:
        states = np.array([[int(example[f]) for f in label_features] for example in examples],
                          np.int64).reshape(len(examples), len(label_features))
      assembler.add(_to_image_size(spec, images), states)
      done += len(examples)
      if done % (50 * _READ_BATCH) < _READ_BATCH or done == total:
        logging.info("%s: read %d / %d examples (%.0f s).", name, done, total,
                     time.time() - start)
  return arrays.ArrayData(
      assembler.finish(),
      factor_names=[factor for _, factor in spec.factors], factor_sizes=factor_sizes,
      nuisance_names=(("photo",) if spec.index_is_nuisance
                      else [factor for _, factor in spec.nuisance]),
      nuisance_sizes=nuisance_sizes, binary=spec.binary, placement=placement,
      description=description)

