"""Tests of the procedural dSprites renderer against genuine frames.

`tests/data/dsprites_reference.gif` holds 320 genuine dSprites frames and
`tests/data/dsprites_reference_factors.csv` their factor labels, inferred by
`experiments/calibrate_dsprites.py`. The labels are only trustworthy if they
are the best grid points for their frames, so that is tested too.
"""

import csv
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageSequence
import pytest

from experiments import calibrate_dsprites
from msdr_jax.data import dsprites

_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
_GIF = os.path.join(_DATA_DIR, "dsprites_reference.gif")
_CSV = os.path.join(_DATA_DIR, "dsprites_reference_factors.csv")
# Eight genuine frames, with labels, that the renderer fitted to the animation
# alone missed by 1-7 pixels (see the module docstring of dsprites.py).
_MISSES = os.path.join(_DATA_DIR, "dsprites_misses.png")

# On this CPU the renderer reproduces all 320 * 4096 reference pixels (pixel
# agreement 1.0, every per-frame IoU 1.0). The thresholds leave room for a
# handful of pixels that lie within float32 rounding of an outline (the
# tightest fitted margin is ~5e-4 px, for the ellipse) and may flip on another
# backend's sin/cos, but not for a real geometry error: moving any outline by
# 0.02 px already flips ~80 reference pixels.
_MIN_PIXEL_AGREEMENT = 1.0 - 10 / (320 * 64 * 64)
# The smallest sprite (heart at scale 0.5) has 58 pixels; one flipped pixel
# still leaves IoU >= 57/58 = 0.983.
_MIN_FRAME_IOU = 0.98

_render = jax.jit(dsprites.render)


@functools.cache
def _reference_frames() -> np.ndarray:
  with Image.open(_GIF) as gif:
    frames = [np.array(f.convert("L")) for f in ImageSequence.Iterator(gif)]
  return np.stack(frames) > 0


@functools.cache
def _reference_labels() -> np.ndarray:
  with open(_CSV, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["frame"]) for r in rows] == list(range(len(rows)))
  return np.array([[int(r[name]) for name in dsprites.FACTOR_NAMES]
                   for r in rows], np.int32)


def _render_bool(factors) -> np.ndarray:
  return np.asarray(_render(jnp.asarray(factors, jnp.int32)))[..., 0] > 0.5


def test_labels_cover_reference_frames():
  frames, labels = _reference_frames(), _reference_labels()
  assert frames.shape == (320, 64, 64)
  assert labels.shape == (320, 5)
  assert np.all(labels >= 0)
  assert np.all(labels < np.array(dsprites.FACTOR_SIZES))


def test_renders_reproduce_reference_frames():
  frames, labels = _reference_frames(), _reference_labels()
  rendered = _render_bool(labels)
  agreement = float(np.mean(rendered == frames))
  iou = (np.sum(rendered & frames, axis=(1, 2)) /
         np.sum(rendered | frames, axis=(1, 2)))
  per_shape = {
      name: float(np.mean(rendered[labels[:, 0] == s] ==
                          frames[labels[:, 0] == s]))
      for s, name in enumerate(dsprites.SHAPE_NAMES)
  }
  report = (f"pixel agreement {agreement:.7f} (per shape {per_shape}), "
            f"mismatched pixels {np.sum(rendered != frames)}, "
            f"worst frame IoU {iou.min():.4f} (frame {iou.argmin()})")
  assert agreement >= _MIN_PIXEL_AGREEMENT, report
  assert iou.min() >= _MIN_FRAME_IOU, report


def test_renders_the_misses_it_was_calibrated_on():
  labels, frames = calibrate_dsprites.load_misses(_MISSES)
  mismatched = np.sum(_render_bool(labels) != frames, axis=(1, 2))
  # The fit admitted the four hearts and the ellipse at scale 0.7 (frames 0,
  # 1, 3, 6, 7); the two squares and the ellipse at scale 0.5 contradict the
  # animation and keep the mismatches they had before the calibration.
  calibrated = np.array([0, 1, 3, 6, 7])
  assert labels[calibrated, 0].tolist() == [2, 2, 2, 1, 2]
  assert mismatched[calibrated].tolist() == [0] * 5, mismatched
  assert mismatched[[2, 4, 5]].tolist() == [7, 1, 1], mismatched


def _neighbourhoods(labels: np.ndarray) -> np.ndarray:
  """Per label: every grid point within one step in scale, orientation and
  position (same shape), plus the other shapes at the label's factors.

  Returns:
    `[num_labels, 83, 5]` int32; orientation wraps around, position and
    scale are clipped at the grid edges (duplicates are harmless).
  """
  sizes = np.array(dsprites.FACTOR_SIZES)
  steps = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 4, indexing="ij"), -1)
  steps = np.concatenate(
      [np.zeros((81, 1), np.int64), steps.reshape(-1, 4)], axis=-1)
  box = labels[:, None, :] + steps[None]
  box[..., 2] %= sizes[2]
  box = np.clip(box, 0, sizes - 1)
  other_shapes = np.repeat(labels[:, None, :], 2, axis=1)
  other_shapes[:, 0, 0] = (labels[:, 0] + 1) % 3
  other_shapes[:, 1, 0] = (labels[:, 0] + 2) % 3
  return np.concatenate([box, other_shapes], axis=1).astype(np.int32)


@jax.jit
def _neighbour_errors(frames, labels, neighbours):
  """Mismatches of each neighbour with the frame and with the label's render."""
  label_images = dsprites.render(labels)[..., 0] > 0.5
  images = dsprites.render(neighbours)[..., 0] > 0.5
  to_frame = jnp.sum(images != frames[:, None], axis=(-2, -1))
  to_label = jnp.sum(images != label_images[:, None], axis=(-2, -1))
  label_error = jnp.sum(label_images != frames, axis=(-2, -1))
  return label_error, to_frame, to_label


def test_labels_are_best_among_grid_neighbours():
  frames, labels = _reference_frames(), _reference_labels()
  neighbours = _neighbourhoods(labels)
  chunk = 40
  failures = []
  for start in range(0, len(labels), chunk):
    sl = slice(start, start + chunk)
    label_error, to_frame, to_label = map(np.asarray, _neighbour_errors(
        jnp.asarray(frames[sl]), jnp.asarray(labels[sl]),
        jnp.asarray(neighbours[sl])))
    # A neighbour may tie only by rendering the very same image (e.g.
    # orientation 39 vs 0); any neighbour that looks different must match
    # the frame strictly worse than the label does.
    bad = (to_frame <= label_error[:, None]) & (to_label > 0)
    for i, j in zip(*np.nonzero(bad)):
      failures.append(
          f"frame {start + i}: label {labels[start + i].tolist()} has "
          f"{label_error[i]} mismatches, neighbour "
          f"{neighbours[start + i, j].tolist()} has {to_frame[i, j]}")
  assert not failures, "\n".join(failures[:20])


def test_render_shapes_dtypes_values():
  data = dsprites.DSprites()
  factors = data.sample_factors(jax.random.PRNGKey(0), 6).reshape(2, 3, 5)
  images = _render(factors)
  assert images.shape == (2, 3, 64, 64, 1)
  assert images.dtype == jnp.float32
  assert set(np.unique(np.asarray(images))) <= {0.0, 1.0}
  # Every sprite is fully inside the canvas and non-empty.
  assert np.all(np.asarray(images).sum(axis=(-3, -2, -1)) >= 58)
  single = _render(factors[1, 2])
  assert single.shape == (64, 64, 1)
  np.testing.assert_array_equal(np.asarray(single), np.asarray(images[1, 2]))


def test_render_is_deterministic_and_jittable():
  data = dsprites.DSprites()
  factors = data.sample_factors(jax.random.PRNGKey(1), 32)
  # Outside jit, too: op-by-op execution must agree bit for bit.
  with jax.disable_jit():
    eager = np.asarray(dsprites.render(factors))
  np.testing.assert_array_equal(eager, np.asarray(_render(factors)))
  np.testing.assert_array_equal(eager, np.asarray(_render(factors)))
  np.testing.assert_array_equal(
      eager, np.asarray(jax.jit(data.images_from_factors)(factors)))
  # Rendering one at a time equals rendering the batch.
  for i in range(0, 32, 7):
    np.testing.assert_array_equal(eager[i], np.asarray(_render(factors[i])))


def test_dsprites_interface():
  data = dsprites.DSprites()
  assert data.factor_names == ("shape", "scale", "orientation", "position_x",
                               "position_y")
  assert data.factor_sizes == (3, 6, 40, 32, 32)
  assert data.observation_shape == (64, 64, 1)
  assert data.num_images == 737_280
  images, factors = jax.jit(data.sample, static_argnums=1)(
      jax.random.PRNGKey(2), 5)
  assert images.shape == (5, 64, 64, 1)
  np.testing.assert_array_equal(
      np.asarray(images), np.asarray(_render(factors)))
  assert len(dsprites.SCALES) == 6 and len(dsprites.ORIENTATIONS) == 40
  assert len(dsprites.POSITIONS) == 32


def test_index_round_trip():
  data = dsprites.DSprites()
  factors = data.sample_factors(jax.random.PRNGKey(3), 1000)
  index = data.factors_to_index(factors)
  np.testing.assert_array_equal(
      np.asarray(data.index_to_factors(index)), np.asarray(factors))
  last = np.array(data.factor_sizes) - 1
  assert int(data.factors_to_index(jnp.zeros(5, jnp.int32))) == 0
  assert int(data.factors_to_index(jnp.asarray(last))) == data.num_images - 1
  np.testing.assert_array_equal(
      np.asarray(data.index_to_factors(jnp.asarray(0))), np.zeros(5))
  np.testing.assert_array_equal(
      np.asarray(data.index_to_factors(jnp.asarray(data.num_images - 1))),
      last)
  # Row-major in the official order: position_y varies fastest.
  np.testing.assert_array_equal(
      np.asarray(data.index_to_factors(jnp.asarray(1))), [0, 0, 0, 0, 1])


def test_orientation_0_and_39_render_identically():
  shape, scale, x, y = np.meshgrid(
      np.arange(3), np.arange(6), [0, 13, 31], [0, 20, 31], indexing="ij")
  first = np.stack([shape, scale, np.zeros_like(shape), x, y], -1)
  last = first.copy()
  last[..., 2] = 39
  np.testing.assert_array_equal(
      np.asarray(_render(first)), np.asarray(_render(last)))


def test_square_pixel_counts():
  factors = np.zeros((6, 5), np.int32)
  factors[:, 1] = np.arange(6)
  counts = _render_bool(factors).sum(axis=(1, 2))
  side = (20 * dsprites.SCALES).round().astype(int)
  np.testing.assert_array_equal(counts, side ** 2)
  np.testing.assert_array_equal(counts, [100, 144, 196, 256, 324, 400])


@pytest.mark.parametrize("axis", [3, 4])
def test_position_axes(axis):
  """position_x moves along columns, position_y along rows, 0 top-left."""
  factors = np.zeros((32, 5), np.int32)
  factors[:, 1] = 5
  factors[:, axis] = np.arange(32)
  images = _render_bool(factors)
  rows, cols = np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5,
                           indexing="ij")
  coord = cols if axis == 3 else rows
  other = rows if axis == 3 else cols
  centroid = (images * coord).sum(axis=(1, 2)) / images.sum(axis=(1, 2))
  fixed = (images * other).sum(axis=(1, 2)) / images.sum(axis=(1, 2))
  expected = 16 + 32 * dsprites.POSITIONS
  np.testing.assert_allclose(centroid, expected, atol=0.5)
  np.testing.assert_allclose(fixed, 16.0, atol=0.5)


def test_rotation_is_counter_clockwise_on_screen():
  """The heart's lobes (its centroid side) go from up to left, not right."""
  factors = np.array([[2, 5, 0, 15, 15], [2, 5, 10, 15, 15]], np.int32)
  images = _render_bool(factors)
  centre = 16 + 32 * dsprites.POSITIONS[15]
  rows, cols = np.nonzero(images[0])
  assert rows.mean() + 0.5 < centre - 1  # Lobes up at orientation 0.
  rows, cols = np.nonzero(images[1])
  assert cols.mean() + 0.5 < centre - 1  # ~92 degrees later: lobes left.
  assert abs(rows.mean() + 0.5 - centre) < 0.5
