"""Shapes3D as a ground-truth data set, rendered procedurally.

The scene and its constants are in `shapes3d_render`; DeepMind's real data
come through TFDS (`tfds_data`, name "shapes3d") with the same factor names
and sizes, so configs and metrics are shared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msdr_jax.data import ground_truth
from msdr_jax.data import shapes3d_render


class Shapes3D(ground_truth.GroundTruthData):
  """Floor, wall and object hue, scale, shape and orientation; 64x64x3."""

  @property
  def factor_names(self) -> tuple[str, ...]:
    return shapes3d_render.FACTOR_NAMES

  @property
  def factor_sizes(self) -> tuple[int, ...]:
    return shapes3d_render.FACTOR_SIZES

  @property
  def observation_shape(self) -> tuple[int, int, int]:
    size = shapes3d_render.IMAGE_SIZE
    return (size, size, 3)

  def images_from_state(self, state: jax.Array) -> jax.Array:
    # Rounded to 8 bits like the real data set's images, which the flow
    # family's dequantisation (256 levels) assumes.
    return jnp.round(shapes3d_render.render(state) * 255.0) / 255.0
