"""The ground-truth data-set interface shared by every data source.

A ground-truth data set has named factors of variation, each with a finite
number of values, and a map from factor indices to images. The procedural
renderers, the TFDS loaders and the file loaders all implement it, so training
and the disentanglement metrics never care where images come from.

Factors are always integer *indices* (`factors[..., j]` in
`[0, factor_sizes[j])`); images are float32 in [0, 1] with shape
`observation_shape` (height, width, channels).

Some data sets have **nuisance factors**: variation that is not a labelled
factor and that the representation is not scored on, e.g. SmallNORB's object
instance, the texture of textured dSprites, or, for CelebA, which has no
labelled factors at all, the photo itself. As in disentanglement_lib, the
labelled factors do not determine the image there: each image draws its
nuisance values uniformly. The *state* of an image is its factors followed by
its nuisance values, `[..., num_factors + num_nuisance]`, and determines the
image. A data set without nuisance factors has state == factors.

Data sets are pytrees: the arrays of a device-resident data set are its leaves
(everything else is static), so jitted functions take the data set as an
argument, `jax.jit(lambda dataset, rng: dataset.sample(rng, 64))(dataset,
rng)`, instead of closing over it; a closed-over array would be baked into the
compiled program as a constant (seconds of compile time and a copy per
program for a 400 MB array). Procedural data sets have no leaves.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Nuisance values of `sample` come from `fold_in(rng, NUISANCE_STREAM)`, so a
# data set without nuisance factors draws exactly what it drew before they
# existed. The metrics fold their keys with the same constant.
NUISANCE_STREAM = 0x6E75


class GroundTruthData(abc.ABC):
  """Images determined by a finite grid of named factors (plus nuisance)."""

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    jax.tree_util.register_pytree_node(
        cls, lambda data: data.tree_flatten(), cls.tree_unflatten)

  def tree_flatten(self) -> tuple[tuple[Any, ...], Any]:
    """(array leaves, static part); procedural data sets are all static."""
    return (), self

  @classmethod
  def tree_unflatten(cls, static, leaves):
    del leaves
    return static

  @property
  @abc.abstractmethod
  def factor_names(self) -> tuple[str, ...]:
    """Names of the factors, in the data set's official order."""

  @property
  @abc.abstractmethod
  def factor_sizes(self) -> tuple[int, ...]:
    """Number of values of each factor."""

  @property
  def nuisance_names(self) -> tuple[str, ...]:
    """Names of the nuisance factors (see the module docstring)."""
    return ()

  @property
  def nuisance_sizes(self) -> tuple[int, ...]:
    return ()

  @property
  @abc.abstractmethod
  def observation_shape(self) -> tuple[int, int, int]:
    """(height, width, channels) of one image."""

  @abc.abstractmethod
  def images_from_state(self, state: jax.Array) -> jax.Array:
    """Maps integer states `[..., F + N]` to images `[..., H, W, C]`."""

  @property
  def num_factors(self) -> int:
    return len(self.factor_sizes)

  @property
  def state_sizes(self) -> tuple[int, ...]:
    return tuple(self.factor_sizes) + tuple(self.nuisance_sizes)

  @property
  def num_images(self) -> int:
    """The number of distinct images (states): N of the TC estimators."""
    return math.prod(self.state_sizes)

  def sample_factors(self, rng: jax.Array, num: int) -> jax.Array:
    """Draws `num` factor vectors uniformly from the grid, `[num, F]` int32."""
    return _uniform_grid(rng, num, self.factor_sizes)

  def complete_factors(self, factors: jax.Array, rng: jax.Array | None) -> jax.Array:
    """Appends uniformly drawn nuisance values: factors `[..., F]` -> states."""
    factors = jnp.asarray(factors, jnp.int32)
    if not self.nuisance_sizes:
      return factors
    if rng is None:
      raise ValueError(
          f"{type(self).__name__} has nuisance factors {self.nuisance_names}, so "
          "its images are random given the factors: pass an rng.")
    num = math.prod(factors.shape[:-1])
    nuisance = _uniform_grid(rng, num, self.nuisance_sizes)
    return jnp.concatenate(
        [factors, nuisance.reshape(*factors.shape[:-1], -1)], axis=-1)

  def images_from_factors(self, factors: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Images of factors `[..., F]`; `rng` draws the nuisance values, if any."""
    return self.images_from_state(self.complete_factors(factors, rng))

  def sample_state(self, rng: jax.Array, num: int) -> jax.Array:
    """`num` states drawn uniformly, `[num, F + N]` int32."""
    factors = self.sample_factors(rng, num)
    return self.complete_factors(factors, jax.random.fold_in(rng, NUISANCE_STREAM))

  def sample(self, rng: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
    """Returns an `(images, factors)` batch drawn uniformly from the grid."""
    state = self.sample_state(rng, num)
    return self.images_from_state(state), state[:, : self.num_factors]

  def factors_to_index(self, factors: jax.Array) -> jax.Array:
    """Row-major (official order) index of each factor vector."""
    return ravel_index(factors, self.factor_sizes)

  def index_to_factors(self, index: jax.Array) -> jax.Array:
    """Inverse of `factors_to_index`."""
    return unravel_index(index, self.factor_sizes)

  def state_to_index(self, state: jax.Array) -> jax.Array:
    """Row-major index of each state: the image's position in the data set."""
    return ravel_index(state, self.state_sizes)

  def index_to_state(self, index: jax.Array) -> jax.Array:
    """Inverse of `state_to_index`."""
    return unravel_index(index, self.state_sizes)


def _uniform_grid(rng: jax.Array, num: int, sizes: Sequence[int]) -> jax.Array:
  if not sizes:
    return jnp.zeros((num, 0), jnp.int32)
  keys = jax.random.split(rng, len(sizes))
  columns = [jax.random.randint(key, (num,), 0, size) for key, size in zip(keys, sizes)]
  return jnp.stack(columns, axis=-1).astype(jnp.int32)


def _check_int32(sizes: Sequence[int]) -> None:
  if math.prod(sizes) > np.iinfo(np.int32).max:
    raise ValueError(
        f"A grid of sizes {tuple(sizes)} has more than 2**31 - 1 points; "
        "its row-major index does not fit in int32.")


def ravel_index(factors: jax.Array, sizes: Sequence[int]) -> jax.Array:
  """Row-major index of integer vectors `[..., len(sizes)]` on a grid."""
  _check_int32(sizes)
  factors = jnp.asarray(factors)
  index = jnp.zeros(factors.shape[:-1], jnp.int32)
  for j, size in enumerate(sizes):
    index = index * size + factors[..., j].astype(jnp.int32)
  return index


def unravel_index(index: jax.Array, sizes: Sequence[int]) -> jax.Array:
  """Inverse of `ravel_index`: `[...]` -> `[..., len(sizes)]` int32."""
  _check_int32(sizes)
  index = jnp.asarray(index, jnp.int32)
  columns = []
  for size in reversed(sizes):
    columns.append(index % size)
    index = index // size
  if not columns:
    return jnp.zeros((*index.shape, 0), jnp.int32)
  return jnp.stack(columns[::-1], axis=-1).astype(jnp.int32)
