"""Ground-truth data sets held as arrays: device-resident batches by index.

A loaded data set (TFDS or file) is one uint8 array of all its images in
row-major *state* order (see `ground_truth`), so an image's position is
`state_to_index(state)` and a batch is a gather. With `placement="device"`
the array is put in accelerator memory once and every batch is gathered
inside the jitted train step: the step never waits on the host, and no
batch crosses from host to device. Binary data sets (dSprites) are stored
bit-packed, 8 pixels a byte: dSprites takes 377 MB instead of 3 GB.

With `placement="host"` the array stays in host memory and the jitted step
gathers its batch through `jax.pure_callback`, for data sets larger than the
accelerator's memory (MPI3D-real is 12.7 GB). Both placements draw the very
same batches, so a run may switch between them when it resumes.

`Assembler` builds the array from labelled examples in any order and checks
that they cover the factor grid exactly once, as the real data sets do.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from msdr_jax.data import ground_truth

PLACEMENTS = ("device", "host")


class DataError(ValueError):
  """Data are missing, incomplete or not what the data set expects."""


class _Spec:
  """The static (non-array) part of an `ArrayData`; hashed by identity.

  Shared by every flatten/unflatten of one data set, so jitted functions
  taking the data set compile once.
  """

  def __init__(self, **fields):
    self.__dict__.update(fields)


class ArrayData(ground_truth.GroundTruthData):
  """A ground-truth data set whose images are one uint8 array."""

  def __init__(
      self,
      images: np.ndarray,
      *,
      factor_names: Sequence[str],
      factor_sizes: Sequence[int],
      nuisance_names: Sequence[str] = (),
      nuisance_sizes: Sequence[int] = (),
      binary: bool = False,
      placement: str = "device",
      description: str = "",
  ):
    """Wraps `images`, uint8 [num_states, H, W, C] in row-major state order.

    Args:
      images: every image, at position `state_to_index(state)`.
      factor_names: the labelled factors, in official order.
      factor_sizes: the number of values of each factor.
      nuisance_names: unlabelled variation (see `ground_truth`), after the
        factors in the state.
      nuisance_sizes: the number of values of each nuisance factor.
      binary: pixels are 0 or 1 (not 0..255); stored 8 pixels a byte.
      placement: "device" (accelerator memory) or "host".
      description: what the data are, for logs and errors.
    """
    if placement not in PLACEMENTS:
      raise ValueError(f"Unknown placement {placement!r}; choose one of {PLACEMENTS}.")
    if len(factor_names) != len(factor_sizes) or len(nuisance_names) != len(nuisance_sizes):
      raise ValueError("Each factor and nuisance factor needs a name and a size.")
    images = np.asarray(images)
    state_sizes = (*factor_sizes, *nuisance_sizes)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise DataError(
          f"{description or 'ArrayData'} needs uint8 images [N, H, W, C], got "
          f"{images.dtype} {images.shape}.")
    if images.shape[0] != math.prod(state_sizes):
      raise DataError(
          f"{description or 'ArrayData'} has {images.shape[0]} images but its grid "
          f"{tuple(state_sizes)} has {math.prod(state_sizes)} points.")
    rows = images.reshape(images.shape[0], -1)
    if binary:
      if rows.size and rows.max() > 1:
        raise DataError(f"{description or 'ArrayData'} is declared binary but has "
                        f"pixel values up to {rows.max()}.")
      rows = np.packbits(rows, axis=-1)
    host_rows = None
    if placement == "device":
      rows = jax.device_put(rows)
    else:
      host_rows = rows
    self._spec = _Spec(
        factor_names=tuple(factor_names), factor_sizes=tuple(int(s) for s in factor_sizes),
        nuisance_names=tuple(nuisance_names),
        nuisance_sizes=tuple(int(s) for s in nuisance_sizes),
        observation_shape=tuple(int(s) for s in images.shape[1:]), binary=binary,
        placement=placement, host_rows=host_rows, description=description,
        row_shape=tuple(rows.shape[1:]))
    self._rows = rows
    logging.info("%s: %s", description or "ArrayData", self.memory_summary())

  def tree_flatten(self):
    if self._spec.placement == "device":
      return (self._rows,), self._spec
    return (), self._spec

  @classmethod
  def tree_unflatten(cls, spec, leaves):
    data = object.__new__(cls)
    data._spec = spec
    data._rows = leaves[0] if spec.placement == "device" else spec.host_rows
    return data

  @property
  def factor_names(self) -> tuple[str, ...]:
    return self._spec.factor_names

  @property
  def factor_sizes(self) -> tuple[int, ...]:
    return self._spec.factor_sizes

  @property
  def nuisance_names(self) -> tuple[str, ...]:
    return self._spec.nuisance_names

  @property
  def nuisance_sizes(self) -> tuple[int, ...]:
    return self._spec.nuisance_sizes

  @property
  def observation_shape(self) -> tuple[int, int, int]:
    return self._spec.observation_shape

  @property
  def placement(self) -> str:
    return self._spec.placement

  @property
  def description(self) -> str:
    return self._spec.description

  @property
  def nbytes(self) -> int:
    """Bytes the images take where they are placed."""
    return math.prod(self._rows.shape) * self._rows.dtype.itemsize

  def memory_summary(self) -> str:
    packing = "bit-packed" if self._spec.binary else "uint8"
    return (f"{self.num_images:,} images, {self.nbytes / 2**20:,.1f} MiB {packing} "
            f"in {self.placement} memory")

  def rows_from_state(self, state: jax.Array) -> jax.Array:
    """The stored (uint8, maybe bit-packed) rows of the images of `state`."""
    index = self.state_to_index(state)
    # Out-of-range states (a caller's bug) are clipped the same way in both
    # placements, so the two never disagree.
    if self.placement == "device":
      return jnp.take(self._rows, index, axis=0, mode="clip")
    out = jax.ShapeDtypeStruct((*index.shape, *self._spec.row_shape), jnp.uint8)
    host_rows = self._spec.host_rows
    last = len(host_rows) - 1
    return jax.pure_callback(
        lambda i: host_rows[np.clip(np.asarray(i), 0, last)], out, index,
        vmap_method="sequential")

  def decode_rows(self, rows: jax.Array) -> jax.Array:
    """Stored rows `[..., row]` -> float32 images `[..., H, W, C]` in [0, 1]."""
    shape = self.observation_shape
    if self._spec.binary:
      pixels = jnp.unpackbits(rows, axis=-1, count=math.prod(shape)).astype(jnp.float32)
    else:
      pixels = rows.astype(jnp.float32) / 255.0
    return pixels.reshape(*rows.shape[:-1], *shape)

  def images_from_state(self, state: jax.Array) -> jax.Array:
    return self.decode_rows(self.rows_from_state(state))


def resize_images(images: np.ndarray, size: int,
                  crop: tuple[int, int] | None = None) -> np.ndarray:
  """uint8 [N, H, W, C] -> [N, size, size, C]: optional centre crop, then an
  antialiased bilinear resize, rounded back to uint8.

  One compilation per input shape: loaders call it on fixed-size batches.
  """
  return np.asarray(_resizer(crop, size)(images))


@functools.lru_cache(maxsize=4)
def _resizer(crop: tuple[int, int] | None, size: int) -> Callable:
  @jax.jit
  def resize(images):
    if crop is not None:
      height, width = images.shape[1:3]
      top, left = (height - crop[0]) // 2, (width - crop[1]) // 2
      images = images[:, top : top + crop[0], left : left + crop[1]]
    resized = jax.image.resize(
        images.astype(jnp.float32), (images.shape[0], size, size, images.shape[-1]),
        method="linear", antialias=True)
    return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)
  return resize


class Assembler:
  """Puts labelled examples, arriving in any order, at their state's index.

    assembler = Assembler(state_sizes, (64, 64, 3), "Shapes3D (TFDS)")
    for images, states in batches:
      assembler.add(images, states)
    images = assembler.finish()  # uint8 [prod(state_sizes), 64, 64, 3]

  Writes into one preallocated array (no second copy of a multi-GB data set)
  and checks, at the end, that every grid point got exactly one image.
  """

  def __init__(self, state_sizes: Sequence[int], image_shape: Sequence[int],
               description: str):
    self._sizes = tuple(int(s) for s in state_sizes)
    self._description = description
    num = math.prod(self._sizes)
    self._images = np.zeros((num, *image_shape), np.uint8)
    self._counts = np.zeros(num, np.int32)

  def add(self, images: np.ndarray, states: np.ndarray) -> None:
    states = np.asarray(states, np.int64)
    sizes = np.asarray(self._sizes)
    bad = np.any((states < 0) | (states >= sizes), axis=-1)
    if bad.any():
      raise DataError(
          f"{self._description}: example labels {states[bad][0].tolist()} are outside "
          f"the factor grid {self._sizes}.")
    index = np.ravel_multi_index(tuple(states.T), self._sizes)
    self._images[index] = images
    np.add.at(self._counts, index, 1)

  def finish(self) -> np.ndarray:
    missing = int(np.sum(self._counts == 0))
    repeated = int(np.sum(self._counts > 1))
    if missing or repeated:
      raise DataError(
          f"{self._description} does not cover its factor grid {self._sizes} exactly "
          f"once: {missing:,} of {len(self._counts):,} factor combinations have no "
          f"image and {repeated:,} have several. Is the data set complete (prepared "
          "to the end, every split present)?")
    return self._images
