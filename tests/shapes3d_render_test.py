"""Tests of the procedural Shapes3D renderer.

There are no genuine 3dshapes frames to compare with, so these tests pin down
the properties the data set's factors promise: exact hues per surface, an
object that grows with `scale`, four distinct silhouettes, an orientation
that turns a mirror-symmetric scene, and a visible change for every one-step
change of any factor.

Pixels are classified by hue: with three different hues for floor, wall and
object, a pixel belongs to a surface if it has that surface's hue. The
renderer only ever scales a surface's base colour, so every pixel that sees
one surface has its hue exactly (up to float32 rounding). Anti-aliased edge
pixels mix two colours and are left unclassified: how they mix depends on
the two surfaces' shading, which the light makes asymmetric.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msdr_jax.data import shapes3d_render

_render = jax.jit(shapes3d_render.render)

EDGE, FLOOR, WALL, OBJECT = -1, 0, 1, 2
CUBE, CYLINDER = shapes3d_render.CUBE, shapes3d_render.CYLINDER
# Distinct hues (red, cyan-blue, green) for pixel classification.
_HUES = (0, 6, 3)

# Rows that show the floor (wall) in every image: the object spans rows 8..46
# at most (largest cube, all orientations) and the horizon is above row 30.
_FLOOR_ROWS = slice(56, 64)
_WALL_ROWS = slice(0, 6)

# Pure pixels are exact up to float32 rounding (~1e-7); a mixed pixel's hue
# lies between two hues that are 0.3 apart here, typically 0.01 or more from
# both even with only one ray of four on the other surface.
_PURE_HUE_TOLERANCE = 0.005


def _render_np(factors) -> np.ndarray:
  return np.asarray(_render(jnp.asarray(np.asarray(factors), jnp.int32)))


def _hue(images: np.ndarray) -> np.ndarray:
  """RGB -> HSV hue in [0, 1), as `colorsys.rgb_to_hsv`, vectorised."""
  images = np.asarray(images, np.float64)
  red, green, blue = images[..., 0], images[..., 1], images[..., 2]
  high = images.max(axis=-1)
  spread = high - images.min(axis=-1)
  spread = np.where(spread > 0, spread, 1.0)
  hue = np.where(
      high == red, (green - blue) / spread,
      np.where(high == green, 2.0 + (blue - red) / spread,
               4.0 + (red - green) / spread))
  return (hue / 6.0) % 1.0


def _hue_distance(a, b) -> np.ndarray:
  d = np.abs(np.asarray(a, np.float64) - b) % 1.0
  return np.minimum(d, 1.0 - d)


def _labels(images: np.ndarray, hue_indices=_HUES) -> np.ndarray:
  """FLOOR / WALL / OBJECT per pixel by hue, EDGE for mixed pixels."""
  hues = np.asarray(shapes3d_render.FLOOR_HUES)[list(hue_indices)]
  distances = _hue_distance(_hue(images)[..., None], hues)
  pure = distances.min(axis=-1) < _PURE_HUE_TOLERANCE
  return np.where(pure, np.argmin(distances, axis=-1), EDGE)


def _factors(scale, shape, orientation, hues=_HUES) -> np.ndarray:
  return np.array(list(hues) + [scale, shape, orientation], np.int32)


@functools.cache
def _geometry_grid() -> np.ndarray:
  """Label maps `[8 scales, 4 shapes, 15 orientations, 64, 64]`."""
  grid = np.stack(np.meshgrid(np.arange(8), np.arange(4), np.arange(15),
                              indexing="ij"), axis=-1).reshape(-1, 3)
  factors = np.concatenate(
      [np.broadcast_to(np.array(_HUES), (len(grid), 3)), grid], axis=-1)
  return _labels(_render_np(factors)).reshape(8, 4, 15, 64, 64)


def test_constants():
  assert shapes3d_render.FACTOR_NAMES == (
      "floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
  assert shapes3d_render.FACTOR_SIZES == (10, 10, 10, 8, 4, 15)
  assert shapes3d_render.SHAPE_NAMES == (
      "cube", "cylinder", "sphere", "capsule")
  values = (shapes3d_render.FLOOR_HUES, shapes3d_render.WALL_HUES,
            shapes3d_render.OBJECT_HUES, shapes3d_render.SCALES,
            shapes3d_render.SHAPES, shapes3d_render.ORIENTATIONS)
  for v, size in zip(values, shapes3d_render.FACTOR_SIZES):
    assert v.dtype == np.float32 and v.shape == (size,)
  np.testing.assert_allclose(shapes3d_render.FLOOR_HUES,
                             np.arange(10) / 10, atol=1e-7)
  np.testing.assert_allclose(shapes3d_render.SCALES[[0, -1]], [0.75, 1.25])
  np.testing.assert_allclose(shapes3d_render.ORIENTATIONS[[0, 7, -1]],
                             [-30.0, 0.0, 30.0])


@pytest.mark.parametrize("leading", [(), (5,), (2, 3)])
def test_shapes_dtype_range(leading):
  rng = np.random.default_rng(0)
  flat = rng.integers(0, shapes3d_render.FACTOR_SIZES,
                      size=(int(np.prod(leading, dtype=int)), 6))
  images = _render(jnp.asarray(flat.reshape(leading + (6,)), jnp.int32))
  assert images.shape == leading + (64, 64, 3)
  assert images.dtype == jnp.float32
  images = np.asarray(images)
  assert images.min() >= 0.0 and images.max() <= 1.0
  # Leading dimensions are only a batch: same pixels as the flat batch.
  np.testing.assert_array_equal(
      images.reshape(-1, 64, 64, 3), _render_np(flat))


def test_deterministic_and_jit_matches_eager():
  rng = np.random.default_rng(1)
  factors = rng.integers(0, shapes3d_render.FACTOR_SIZES, size=(8, 6))
  factors[:, 4] = np.arange(8) % 4  # Every shape.
  first = _render_np(factors)
  np.testing.assert_array_equal(first, _render_np(factors))
  # A fresh compilation gives the same bits too.
  np.testing.assert_array_equal(
      first, np.asarray(jax.jit(shapes3d_render.render)(factors)))
  eager = np.asarray(shapes3d_render.render(jnp.asarray(factors, jnp.int32)))
  # Fused (jitted) and op-by-op float32 rounding differ slightly; the
  # renderer's discriminants are well-conditioned so that this never flips
  # which surface an edge ray hits (which would be a difference of up to
  # 0.25, one ray of four).
  np.testing.assert_allclose(first, eager, rtol=0, atol=1e-4)


def test_every_factor_step_changes_the_image():
  # A mean |difference| of 1e-3 over the 12,288 values is about 4 pixels
  # changing completely; float32 rounding is ~1e-7, so any real change of
  # the scene clears it. The smallest one-step changes are orientation steps
  # of the round shapes, where only the walls' corners and the shadow move
  # (by about a pixel): ~3e-3.
  for shape in range(4):
    base = _factors(scale=4, shape=shape, orientation=7, hues=(2, 5, 8))
    for j, size in enumerate(shapes3d_render.FACTOR_SIZES):
      factors = np.repeat(base[None], size, axis=0)
      factors[:, j] = np.arange(size)
      images = _render_np(factors)
      step = np.abs(np.diff(images, axis=0)).mean(axis=(1, 2, 3))
      assert step.min() > 1e-3, (shapes3d_render.FACTOR_NAMES[j], shape, step)


def test_surfaces_have_their_factor_hues():
  # Every hue on every surface, with the other factors varied alongside.
  index = np.arange(10)
  factors = np.stack([index, (index + 3) % 10, (index + 6) % 10, index % 8,
                      index % 4, (index * 4) % 15], axis=-1)
  hues = _hue(_render_np(factors))
  floor_hue = shapes3d_render.FLOOR_HUES[factors[:, 0]][:, None, None]
  wall_hue = shapes3d_render.WALL_HUES[factors[:, 1]][:, None, None]
  object_hue = shapes3d_render.OBJECT_HUES[factors[:, 2]][:, None, None]
  # Shading scales the base colour, so the hue is exact up to float32
  # rounding (~1e-7); neighbouring factor values are 0.1 apart.
  tolerance = 1e-3
  assert _hue_distance(hues[:, _FLOOR_ROWS], floor_hue).max() < tolerance
  assert _hue_distance(hues[:, _WALL_ROWS], wall_hue).max() < tolerance
  centre = hues[:, 31:33, 31:33]
  assert _hue_distance(centre, object_hue).max() < tolerance


def test_surfaces_are_shaded():
  image = _render_np(_factors(scale=7, shape=2, orientation=7))
  value = image.max(axis=-1)
  labels = _labels(image)
  ambient = shapes3d_render.AMBIENT
  # Lambertian shading: the sphere runs from ambient only (facing away from
  # the light) to nearly full brightness.
  sphere = value[labels == OBJECT]
  assert sphere.min() < ambient + 0.05 and sphere.max() > 0.9
  # The floor is evenly lit except for the object's soft shadow.
  floor = value[labels == FLOOR]
  lit_floor = np.median(floor)
  assert 0.75 < lit_floor < 0.95
  assert np.sum(floor < ambient + 0.05) > 30
  assert np.sum((floor > ambient + 0.1) & (floor < lit_floor - 0.1)) > 0
  # The back wall gets less light than the floor, more than ambient only.
  back_wall = value[:_WALL_ROWS.stop, 24:40]
  assert ambient + 0.1 < back_wall.min() <= back_wall.max() < lit_floor - 0.05


def test_positive_orientation_shows_the_left_side_wall():
  # The camera swings to +x (right) and looks back at the object, so the
  # left side wall, which faces away from the light and shows ambient light
  # only, fills the top-left corner; at -30 degrees it is the right one,
  # which the light does reach.
  images = _render_np(np.stack([
      _factors(scale=0, shape=2, orientation=14),
      _factors(scale=0, shape=2, orientation=0)]))
  value = images.max(axis=-1)
  np.testing.assert_allclose(value[0, 1, 1], shapes3d_render.AMBIENT,
                             atol=1e-5)
  assert value[0, 1, 62] > shapes3d_render.AMBIENT + 0.1
  assert value[1, 1, 62] > shapes3d_render.AMBIENT + 0.1
  assert abs(value[1, 1, 62] - value[0, 1, 62]) > 0.05


def test_edges_are_few():
  # Only outline pixels mix surfaces (~2% of an image), so the label maps
  # that the geometry tests compare are almost complete.
  edge_fraction = np.mean(_geometry_grid() == EDGE, axis=(-2, -1))
  assert edge_fraction.max() < 0.04, edge_fraction.max()


def test_object_area_grows_with_scale():
  labels = _geometry_grid()
  area = (labels == OBJECT).sum(axis=(-2, -1))  # [scale, shape, orientation]
  assert np.all(np.diff(area, axis=0) > 0), area[:, :, 7]
  # Scale 1.25 / 0.75 should multiply the projected area by about
  # (5/3)^2 = 2.8, a little more because a bigger object also reaches
  # closer to the camera and its pure interior grows faster than its
  # outline.
  ratio = area[-1] / area[0]
  assert np.all((ratio > 2.5) & (ratio < 3.8)), ratio


def _differing_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pixels classified in both label maps, differently."""
  return np.sum((a != b) & (a != EDGE) & (b != EDGE), axis=(-2, -1))


def test_shapes_have_different_silhouettes():
  labels = _geometry_grid()
  silhouettes = np.where(labels == EDGE, EDGE, labels == OBJECT)
  for a in range(4):
    for b in range(a + 1, 4):
      # Over all [scale, orientation]. Classified pixels carry no noise (see
      # the mirror test), so a few pixels are a real difference. The closest
      # pair, cube and cylinder at the smallest scale seen head-on, differ
      # only in the outlines of their top and bottom: 8 pixels; every other
      # pair differs in >= 31.
      differ = _differing_pixels(silhouettes[:, a], silhouettes[:, b])
      assert differ.min() >= (5 if (a, b) == (CUBE, CYLINDER) else 20), (
          a, b, differ.min())


def test_orientations_are_mirror_images():
  # Room and object are symmetric under x -> -x, which maps orientation a to
  # -a; only the light (from the left) is not, so compare label maps, not
  # colours. Geometry is symmetric up to float32 rounding, so no classified
  # pixel should disagree (a couple are allowed for rounding near a tie).
  labels = _geometry_grid()
  mismatch = _differing_pixels(labels, labels[:, :, ::-1, :, ::-1])
  assert mismatch.max() <= 2, mismatch.max()
  # Orientation 0 degrees is itself symmetric, the others are not, and the
  # comparison tells: one step (4.3 degrees) already moves the horizon and
  # the corners by >= 12 classified pixels.
  self_mismatch = _differing_pixels(labels, labels[..., ::-1])
  assert self_mismatch[:, :, 7].max() <= 2
  assert np.delete(self_mismatch, 7, axis=2).min() >= 10
  # The colours are not symmetric: the light comes from the left.
  sphere = _render_np(_factors(scale=4, shape=2, orientation=7))
  assert np.abs(sphere - sphere[:, ::-1]).max() > 0.2
