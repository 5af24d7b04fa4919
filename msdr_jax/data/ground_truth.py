"""The ground-truth data-set interface shared by every data source.

A ground-truth data set has named factors of variation, each with a finite
number of values, and a deterministic map from factor indices to images. The
procedural renderers, the TFDS loaders and the file loaders all implement it,
so training and the disentanglement metrics never care where images come from.

Factors are always integer *indices* (`factors[..., j]` in
`[0, factor_sizes[j])`); images are float32 in [0, 1] with shape
`observation_shape` (height, width, channels).
"""

from __future__ import annotations

import abc
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


class GroundTruthData(abc.ABC):
  """Images determined by a finite grid of named factors."""

  @property
  @abc.abstractmethod
  def factor_names(self) -> tuple[str, ...]:
    """Names of the factors, in the data set's official order."""

  @property
  @abc.abstractmethod
  def factor_sizes(self) -> tuple[int, ...]:
    """Number of values of each factor."""

  @property
  @abc.abstractmethod
  def observation_shape(self) -> tuple[int, int, int]:
    """(height, width, channels) of one image."""

  @abc.abstractmethod
  def images_from_factors(self, factors: jax.Array) -> jax.Array:
    """Maps integer factors `[..., num_factors]` to images `[..., H, W, C]`."""

  @property
  def num_factors(self) -> int:
    return len(self.factor_sizes)

  @property
  def num_images(self) -> int:
    return int(np.prod(self.factor_sizes))

  def sample_factors(self, rng: jax.Array, num: int) -> jax.Array:
    """Draws `num` factor vectors uniformly from the grid, `[num, F]` int32."""
    keys = jax.random.split(rng, self.num_factors)
    columns = [
        jax.random.randint(key, (num,), 0, size)
        for key, size in zip(keys, self.factor_sizes)
    ]
    return jnp.stack(columns, axis=-1).astype(jnp.int32)

  def sample(self, rng: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
    """Returns an `(images, factors)` batch drawn uniformly from the grid."""
    factors = self.sample_factors(rng, num)
    return self.images_from_factors(factors), factors

  def factors_to_index(self, factors: jax.Array) -> jax.Array:
    """Row-major (official order) index of each factor vector."""
    return _ravel(factors, self.factor_sizes)

  def index_to_factors(self, index: jax.Array) -> jax.Array:
    """Inverse of `factors_to_index`."""
    return _unravel(index, self.factor_sizes)


def _ravel(factors: jax.Array, sizes: Sequence[int]) -> jax.Array:
  index = jnp.zeros(factors.shape[:-1], jnp.int32)
  for j, size in enumerate(sizes):
    index = index * size + factors[..., j]
  return index


def _unravel(index: jax.Array, sizes: Sequence[int]) -> jax.Array:
  columns = []
  for size in reversed(sizes):
    columns.append(index % size)
    index = index // size
  return jnp.stack(columns[::-1], axis=-1).astype(jnp.int32)
