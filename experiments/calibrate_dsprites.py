"""Calibrates the procedural dSprites renderer against genuine frames.

`tests/data/dsprites_reference.gif` is an animation of 320 genuine dSprites
frames without labels. This script

1. infers the factor labels of every frame by searching the factor grid with
   `msdr_jax.data.dsprites.render` (see `infer_label` for how the search is
   kept small),
2. prints the segments of the animation (runs of frames in which a single
   factor steps by +1 or -1), so the traversal structure and the rotation
   direction can be checked by eye,
3. prints the pixel agreement and foreground IoU of the renderer on the
   labelled frames, overall and per shape, and
4. writes the labels to `tests/data/dsprites_reference_factors.csv`
   (frame,shape,scale,orientation,position_x,position_y; integer indices).

With `--refit` it also re-derives the geometry constants of
`msdr_jax/data/dsprites.py` from the labelled frames (this is the code that
produced them) and checks that the heart outline generalises by fitting it on
the even heart frames and scoring it on the odd ones. The fit needs scipy,
which the library itself does not.

How the constants were first obtained: the animation visibly traverses one
factor at a time (scale 0..5, then orientation 0..39, then positions around
the border, for each shape), which gave provisional labels; the geometry was
fitted to those with the code below; the search here then recovered labels
that reproduce every pixel, and refitting on the searched labels gives the
same constants.

Label conventions: orientation 39 (2*pi) renders exactly like orientation 0,
so the search only considers 0..38 and labels such frames 0. Any remaining
ties between grid points that render identically (e.g. squares at
orientations that differ by almost exactly 90 degrees) are broken towards the
label of the previous frame (fewest factors changed, then the smallest index
distance), then towards the smallest indices, because consecutive frames of
the animation differ in one factor by one step.

Usage (from the repository root):
  python -m experiments.calibrate_dsprites [--refit] [--nowrite_csv]
"""

from __future__ import annotations

import csv
import functools
import os
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageSequence

from msdr_jax.data import dsprites

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_REFERENCE = flags.DEFINE_string(
    "reference",
    os.path.join(_REPO_ROOT, "tests", "data", "dsprites_reference.gif"),
    "GIF of genuine dSprites frames.")
_OUTPUT_CSV = flags.DEFINE_string(
    "output_csv",
    os.path.join(_REPO_ROOT, "tests", "data",
                 "dsprites_reference_factors.csv"),
    "Where to write the inferred labels.")
_MISSES = flags.DEFINE_string(
    "misses",
    os.path.join(_REPO_ROOT, "tests", "data", "dsprites_misses.png"),
    "Strip of genuine dSprites frames (64x64 each, side by side) that an "
    "earlier renderer missed; their labels are in the CSV of the same name.")
_WRITE_CSV = flags.DEFINE_bool("write_csv", True, "Write the labels CSV.")
_REFIT = flags.DEFINE_bool(
    "refit", False, "Re-fit the geometry constants from the labelled frames.")

CSV_COLUMNS = ("frame",) + dsprites.FACTOR_NAMES
_NUM_SHAPES, _NUM_SCALES, _NUM_ORIENTATIONS, _NUM_X, _NUM_Y = (
    dsprites.FACTOR_SIZES)
# Orientation 39 duplicates 0 (see module docstring).
_DISTINCT_ORIENTATIONS = _NUM_ORIENTATIONS - 1
# Half-width of the position window searched around the current estimate.
# Centroid-based estimates (see `_appearance_centroid_offsets`) are within one
# step for the right appearance, so 2 leaves a margin.
_POSITION_RADIUS = 2
_MAX_ROUNDS = 6
# Appearances carried from the appearance search into the position search.
_NUM_APPEARANCES = 8


def load_reference_frames(path: str) -> np.ndarray:
  """Returns the GIF's frames as a bool array `[num_frames, 64, 64]`."""
  with Image.open(path) as gif:
    frames = [np.array(f.convert("L")) for f in ImageSequence.Iterator(gif)]
  return np.stack(frames) > 0


def load_misses(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a strip of labelled frames and the CSV beside it.

  Args:
    path: a PNG of `N` 64x64 frames side by side; `path` with `.csv` instead
      of `.png` has one row per frame with its factor indices.

  Returns:
    `(labels [N, 5] int32, frames [N, 64, 64] bool)`.
  """
  with Image.open(path) as strip:
    pixels = np.array(strip.convert("L")) > 0
  size = dsprites.IMAGE_SIZE
  frames = pixels.reshape(size, -1, size).transpose(1, 0, 2)
  with open(os.path.splitext(path)[0] + ".csv", newline="",
            encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  if len(rows) != len(frames):
    raise ValueError(f"{path}: {len(frames)} frames but {len(rows)} labels.")
  labels = np.array(
      [[int(row[name]) for name in dsprites.FACTOR_NAMES] for row in rows],
      dtype=np.int32)
  return labels, frames


def read_labels_csv(path: str) -> np.ndarray:
  """Reads labels written by `write_labels_csv`, `[num_frames, 5]` int32."""
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  frames = [int(row["frame"]) for row in rows]
  if frames != list(range(len(rows))):
    raise ValueError(f"{path}: frames are not 0..{len(rows) - 1} in order.")
  return np.array(
      [[int(row[name]) for name in dsprites.FACTOR_NAMES] for row in rows],
      dtype=np.int32)


def write_labels_csv(path: str, labels: np.ndarray) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for frame, label in enumerate(labels):
      writer.writerow([frame] + [int(x) for x in label])


@jax.jit
def _mismatches(frame: jax.Array, candidates: jax.Array) -> jax.Array:
  """Number of pixels where each candidate's render differs from `frame`."""
  images = dsprites.render(candidates)[..., 0] > 0.5
  return jnp.sum(images != frame, axis=(-2, -1))


def render_bool(labels: np.ndarray, chunk: int = 256) -> np.ndarray:
  """Renders labels to a bool array `[N, 64, 64]`, in chunks to bound memory."""
  render = jax.jit(dsprites.render)
  out = [
      np.asarray(render(labels[i:i + chunk]))[..., 0] > 0.5
      for i in range(0, len(labels), chunk)
  ]
  return np.concatenate(out)


def _all_appearances() -> np.ndarray:
  """Every (shape, scale, orientation) with orientation in 0..38, `[702, 3]`."""
  grid = np.meshgrid(np.arange(_NUM_SHAPES), np.arange(_NUM_SCALES),
                     np.arange(_DISTINCT_ORIENTATIONS), indexing="ij")
  return np.stack([g.ravel() for g in grid], axis=-1).astype(np.int32)


@functools.cache
def _appearance_centroid_offsets() -> tuple[np.ndarray, np.ndarray]:
  """Appearances and their foreground centroid minus the sprite centre.

  Sprites never touch the image border, so this offset (in pixels) barely
  depends on the position; it lets a frame's centroid predict the position
  of each appearance. The bounding-box centre alone is up to 2.5 px off for
  rotated hearts, whose centroid and box are far from the rotation centre.

  Returns:
    `(appearances [A, 3], offsets [A, 2])`, offsets as (x, y).
  """
  appearances = _all_appearances()
  middle = np.array([_NUM_X // 2, _NUM_Y // 2], np.int32)
  labels = np.concatenate(
      [appearances, np.broadcast_to(middle, (len(appearances), 2))], axis=-1)
  images = render_bool(labels)
  centre = (dsprites.POSITION_OFFSET +
            dsprites.POSITION_RANGE * dsprites.POSITIONS[middle])
  offsets = np.stack([_centroid(image) for image in images]) - centre
  return appearances, offsets


def _centroid(image: np.ndarray) -> np.ndarray:
  """Foreground centroid (x, y) in continuous pixel coordinates."""
  rows, cols = np.nonzero(image)
  if rows.size == 0:
    return np.full(2, dsprites.IMAGE_SIZE / 2.0)
  return np.array([cols.mean() + 0.5, rows.mean() + 0.5])


def _appearance_candidates(frame: np.ndarray) -> np.ndarray:
  """Every appearance at the position its centroid offset predicts."""
  appearances, offsets = _appearance_centroid_offsets()
  centre = _centroid(frame) - offsets
  value = (centre - dsprites.POSITION_OFFSET) / dsprites.POSITION_RANGE
  index = np.round(value * (np.array([_NUM_X, _NUM_Y]) - 1)).astype(np.int32)
  index = np.clip(index, 0, np.array([_NUM_X, _NUM_Y]) - 1)
  return np.concatenate([appearances, index], axis=-1)


def _position_candidates(label: np.ndarray) -> np.ndarray:
  """The label's appearance at every position in a window around it."""
  offsets = np.arange(-_POSITION_RADIUS, _POSITION_RADIUS + 1)
  dx, dy = np.meshgrid(offsets, offsets, indexing="ij")
  candidates = np.repeat(label[None], dx.size, axis=0)
  # Clipping keeps the candidate count fixed (one compilation) at the borders.
  candidates[:, 3] = np.clip(label[3] + dx.ravel(), 0, _NUM_X - 1)
  candidates[:, 4] = np.clip(label[4] + dy.ravel(), 0, _NUM_Y - 1)
  return candidates


def _box_candidates(label: np.ndarray) -> np.ndarray:
  """All grid points within one step of the label in every factor."""
  steps = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 4, indexing="ij"), -1)
  steps = steps.reshape(-1, 4)
  candidates = []
  for shape in range(_NUM_SHAPES):
    c = np.empty((len(steps), 5), np.int32)
    c[:, 0] = shape
    c[:, 1] = np.clip(label[1] + steps[:, 0], 0, _NUM_SCALES - 1)
    c[:, 2] = (label[2] + steps[:, 1]) % _DISTINCT_ORIENTATIONS
    c[:, 3] = np.clip(label[3] + steps[:, 2], 0, _NUM_X - 1)
    c[:, 4] = np.clip(label[4] + steps[:, 3], 0, _NUM_Y - 1)
    candidates.append(c)
  return np.concatenate(candidates)


def _distance_to(labels: np.ndarray, previous: np.ndarray) -> np.ndarray:
  """Index distance summed over factors; orientation wraps around."""
  diff = np.abs(labels.astype(np.int64) - previous)
  diff[:, 2] = np.minimum(diff[:, 2], _DISTINCT_ORIENTATIONS - diff[:, 2])
  return diff.sum(axis=-1)


def _pick(candidates: np.ndarray, mismatches: np.ndarray,
          previous: np.ndarray | None) -> tuple[np.ndarray, int]:
  """Best candidate; ties go to the previous frame's label, then lowest.

  Args:
    candidates: `[N, 5]` labels.
    mismatches: `[N]` mismatched pixels of each candidate.
    previous: label of the preceding animation frame, or None.

  Returns:
    `(label, mismatches)` of the chosen candidate. Among equally good
    candidates it prefers the fewest factors changed from `previous`, then
    the smallest index distance to it, then the lexicographically smallest.
  """
  best = int(mismatches.min())
  tied = np.unique(candidates[mismatches == best], axis=0)
  if previous is None:
    changed = distance = np.zeros(len(tied), np.int64)
  else:
    changed = np.sum(tied != previous, axis=-1)
    distance = _distance_to(tied, previous)
  # np.lexsort sorts by the last key first.
  keys = [tied[:, j] for j in reversed(range(tied.shape[1]))]
  return tied[np.lexsort(keys + [distance, changed])[0]], best


def infer_label(frame: np.ndarray,
                previous: np.ndarray | None = None) -> tuple[np.ndarray, int]:
  """Finds the grid point whose render best matches `frame`.

  A full search would render all 737,280 grid points per frame. Instead:
  (a) every shape, scale and orientation (702 renders) is placed at the
      position where its centroid matches the frame's, and the few best
      are kept (a single winner is not trusted because the rounded position
      can be one step off, which can favour a wrong orientation);
  (b) each kept appearance is tried over a 5x5 window of positions;
  (c) the best label is then moved to any better grid point within one step
      in every factor (any shape), and (b)-(c) repeat around it until it
      stops changing.

  Args:
    frame: bool `[64, 64]`.
    previous: label of the preceding animation frame, used to break ties.

  Returns:
    `(label, mismatched_pixels)`.
  """
  frame = np.asarray(frame)
  frame_device = jnp.asarray(frame)

  def score(candidates):
    return np.asarray(_mismatches(frame_device, jnp.asarray(candidates)))

  appearances = _appearance_candidates(frame)
  order = np.argsort(score(appearances), kind="stable")
  kept = appearances[order[:_NUM_APPEARANCES]]
  candidates = np.concatenate([_position_candidates(a) for a in kept])
  label, best = _pick(candidates, score(candidates), previous)
  for _ in range(_MAX_ROUNDS):
    start = label.copy()
    for make in (_position_candidates, _box_candidates):
      # The current label stays among the options so that a tie never moves
      # it away from a choice made by an earlier tie-break.
      candidates = np.concatenate([make(label), label[None]])
      label, best = _pick(candidates, score(candidates), previous)
    if np.array_equal(label, start):
      break
  return label, best


def infer_labels(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Labels every frame in order; returns `(labels, mismatched_pixels)`."""
  labels, errors = [], []
  previous = None
  for frame in frames:
    label, error = infer_label(frame, previous)
    labels.append(label)
    errors.append(error)
    previous = label
  return np.stack(labels).astype(np.int32), np.array(errors)


def agreement(reference: np.ndarray, rendered: np.ndarray) -> dict[str, float]:
  """Pixel agreement and foreground IoU of bool image stacks."""
  union = np.sum(reference | rendered)
  return {
      "pixel_agreement": float(np.mean(reference == rendered)),
      "iou": float(np.sum(reference & rendered) / max(union, 1)),
      "mismatched_pixels": int(np.sum(reference != rendered)),
  }


def per_frame_iou(reference: np.ndarray, rendered: np.ndarray) -> np.ndarray:
  inter = np.sum(reference & rendered, axis=(-2, -1))
  union = np.sum(reference | rendered, axis=(-2, -1))
  return inter / np.maximum(union, 1)


def describe_segments(labels: np.ndarray) -> list[str]:
  """Summarises the animation as runs where one factor steps by +-1."""
  lines = []
  start = 0
  while start < len(labels):
    end = start
    factor, step = None, None
    while end + 1 < len(labels):
      diff = labels[end + 1].astype(int) - labels[end]
      changed = np.nonzero(diff)[0]
      if len(changed) != 1 or abs(diff[changed[0]]) not in (
          1, _DISTINCT_ORIENTATIONS - 1):
        break
      j = int(changed[0])
      # Orientation 38 -> 0 is the last step of a full turn (0 stands in for
      # 39), so it counts as +1.
      s = int(np.sign(diff[j])) * (
          -1 if abs(diff[j]) == _DISTINCT_ORIENTATIONS - 1 else 1)
      if factor is not None and (j, s) != (factor, step):
        break
      factor, step = j, s
      end += 1
    first = labels[start]
    fixed = ", ".join(
        f"{dsprites.FACTOR_NAMES[j]}={first[j]}" for j in range(1, 5)
        if j != factor)
    shape = dsprites.SHAPE_NAMES[first[0]]
    if factor is None:
      lines.append(f"frames {start:3d}-{end:3d}: {shape}, {fixed}")
    else:
      lines.append(
          f"frames {start:3d}-{end:3d}: {shape}, "
          f"{dsprites.FACTOR_NAMES[factor]} {labels[start][factor]} -> "
          f"{labels[end][factor]} (step {step:+d}, {end - start + 1} "
          f"frames); {fixed}")
    start = end + 1
  return lines


# ----------------------------------------------------------------------------
# Geometry fitting (--refit). Everything works in the renderer's own sprite
# coordinates (`dsprites.sprite_coordinates`), so the fitted margins account
# for its float32 rounding.


def _sprite_uv(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  u, v = dsprites.sprite_coordinates(jnp.asarray(labels))
  return np.asarray(u, np.float64), np.asarray(v, np.float64)


def fit_square(labels: np.ndarray, frames: np.ndarray) -> tuple[float, float]:
  """Interval of half-sides consistent with the square frames.

  A pixel is in iff max(|u|, |v|) <= half_side, so the half-side must lie
  between the largest value over foreground pixels and the smallest over
  background pixels.

  Args:
    labels: `[N, 5]` labels of square frames.
    frames: bool `[N, 64, 64]`.

  Returns:
    `(low, high)`; empty (low >= high) if no half-side fits every pixel.
  """
  u, v = _sprite_uv(labels)
  extent = np.maximum(np.abs(u), np.abs(v))
  return float(extent[frames].max()), float(extent[~frames].min())


def fit_ellipse(labels: np.ndarray,
                frames: np.ndarray) -> tuple[float, float, float]:
  """Maximum-margin ellipse semi-axes for the ellipse frames.

  Inclusion (u/a)^2 + (v/b)^2 <= 1 is linear in (A, B) = (1/a^2, 1/b^2), so
  the semi-axes that classify every pixel with the largest margin t solve an
  LP: u^2 A + v^2 B + t <= 1 for foreground, >= 1 + t for background.

  Args:
    labels: `[N, 5]` labels of ellipse frames.
    frames: bool `[N, 64, 64]`.

  Returns:
    `(a, b, margin)`; a negative margin means no ellipse fits every pixel.
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  u, v = _sprite_uv(labels)
  uu, vv, fg = u.ravel() ** 2, v.ravel() ** 2, frames.ravel()
  # Pixels far from the outline cannot be active constraints.
  a0, b0 = dsprites.ELLIPSE_SEMI_AXES
  near = np.abs(uu / a0 ** 2 + vv / b0 ** 2 - 1.0) < 0.3
  uu, vv, fg = uu[near], vv[near], fg[near]
  ones = np.ones_like(uu)
  a_ub = np.concatenate([
      np.stack([uu, vv, ones], -1)[fg],
      np.stack([-uu, -vv, ones], -1)[~fg],
  ])
  b_ub = np.concatenate([ones[fg], -ones[~fg]])
  res = optimize.linprog([0.0, 0.0, -1.0], A_ub=a_ub, b_ub=b_ub,
                         bounds=[(1e-4, 1.0), (1e-4, 1.0), (None, 1.0)],
                         method="highs")
  if res.status != 0:
    raise RuntimeError(f"Ellipse LP failed: {res.message}")
  inv_a2, inv_b2, margin = res.x
  return float(inv_a2 ** -0.5), float(inv_b2 ** -0.5), float(margin)


def _boundary_band(frames: np.ndarray) -> np.ndarray:
  """Pixels within two pixels of a foreground/background edge."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  structure = np.ones((1, 3, 3), bool)
  edge = (ndimage.binary_dilation(frames, structure)
          & ~ndimage.binary_erosion(frames, structure))
  return ndimage.binary_dilation(edge, structure)


def heart_profiles_inside(u: np.ndarray, v: np.ndarray, inner: np.ndarray,
                          outer: np.ndarray) -> np.ndarray:
  """NumPy twin of the renderer's heart test for arbitrary profile tables."""
  num_segments = len(outer) - 1
  t = (v - dsprites.HEART_PROFILE_START) / dsprites.HEART_PROFILE_STEP
  k = np.clip(np.floor(t), 0, num_segments - 1).astype(int)
  f = t - k
  w_in = inner[k] + f * (inner[k + 1] - inner[k])
  w_out = outer[k] + f * (outer[k + 1] - outer[k])
  au = np.abs(u)
  return (t >= 0) & (t <= num_segments) & (au >= w_in) & (au <= w_out)


def fit_heart(labels: np.ndarray, frames: np.ndarray,
              lobe_centre: float = 4.7,
              notch_bottom: float = -5.0) -> tuple[np.ndarray, np.ndarray,
                                                   float]:
  """Fits the heart's inner and outer half-width profile tables.

  Each foreground pixel at (u, v) requires w_in(v) <= |u| <= w_out(v); each
  background pixel requires |u| > w_out(v) or |u| < w_in(v). The profiles are
  linear in the table entries, so after deciding which side each background
  pixel is on, this is an LP. Background pixels between the lobes (|u| below
  the lobe centre line and above the notch bottom) bound w_in; all others
  bound w_out. Only pixels near the outline are used; the rest are implied.

  Stage 1 maximises the common margin m. Stage 2 fixes m at half that and
  picks the tables with the smallest total |second difference|, which keeps
  the outline smooth (and well defined where the data leave it free) while
  still allowing corners at the tip and the notch.

  Args:
    labels: `[N, 5]` labels of heart frames.
    frames: bool `[N, 64, 64]`.
    lobe_centre: |u| of the lobes' centre line (pixels at scale 1).
    notch_bottom: v below which no pixel lies between the lobes.

  Returns:
    `(inner, outer, margin)`: float arrays with one entry per knot, and the
    stage-1 margin (negative if the profile model cannot fit the data).
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  from scipy import sparse  # pylint: disable=g-import-not-at-top
  num_knots = len(dsprites.HEART_OUTER_HALF_WIDTH)
  u, v = _sprite_uv(labels)
  band = _boundary_band(frames)
  span = dsprites.HEART_PROFILE_STEP * (num_knots - 1)
  if np.any(frames & ((v < dsprites.HEART_PROFILE_START) |
                      (v > dsprites.HEART_PROFILE_START + span))):
    raise ValueError("Heart pixels outside the profile table range.")
  band &= (v > dsprites.HEART_PROFILE_START) & (
      v < dsprites.HEART_PROFILE_START + span)
  au, vv, fg = np.abs(u[band]), v[band], frames[band]
  t = (vv - dsprites.HEART_PROFILE_START) / dsprites.HEART_PROFILE_STEP
  k = np.minimum(np.floor(t).astype(int), num_knots - 2)
  f = t - k
  between_lobes = ~fg & (au < lobe_centre) & (vv < notch_bottom)
  beyond_outline = ~fg & ~between_lobes

  # Variables: inner table, outer table, margin. Each constraint reads
  # sign * profile(v) + m <= sign * |u|.
  rows, cols, vals, rhs = [], [], [], []

  def add(mask, table, sign):
    idx = np.nonzero(mask)[0]
    first = sum(len(r) for r in rhs)
    row = first + np.arange(len(idx))
    offset = table * num_knots
    rows.extend([row, row, row])
    cols.extend([offset + k[idx], offset + k[idx] + 1,
                 np.full(len(idx), 2 * num_knots)])
    vals.extend([sign * (1 - f[idx]), sign * f[idx], np.ones(len(idx))])
    rhs.append(sign * au[idx])

  add(fg, 1, -1.0)               # w_out >= |u| + m
  add(fg, 0, 1.0)                # w_in <= |u| - m
  add(beyond_outline, 1, 1.0)    # w_out <= |u| - m
  add(between_lobes, 0, -1.0)    # w_in >= |u| + m
  num_rows = sum(len(r) for r in rhs)
  a_ub = sparse.csr_matrix(
      (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
      shape=(num_rows, 2 * num_knots + 1))
  b_ub = np.concatenate(rhs)
  table_bounds = [(-2.0, 12.0)] * (2 * num_knots)
  cost = np.zeros(2 * num_knots + 1)
  cost[-1] = -1.0
  res = optimize.linprog(cost, A_ub=a_ub, b_ub=b_ub,
                         bounds=table_bounds + [(None, 1.0)], method="highs")
  if res.status != 0:
    raise RuntimeError(f"Heart margin LP failed: {res.message}")
  margin = float(res.x[-1])

  second = sparse.diags([1.0, -2.0, 1.0], [0, 1, 2],
                        shape=(num_knots - 2, num_knots))
  smooth = sparse.block_diag([second, second])
  num_smooth = smooth.shape[0]
  # Variables: tables, margin, |second difference| bounds.
  no_margin = sparse.csr_matrix((num_smooth, 1))
  a2 = sparse.vstack([
      sparse.hstack([a_ub, sparse.csr_matrix((num_rows, num_smooth))]),
      sparse.hstack([smooth, no_margin, -sparse.eye(num_smooth)]),
      sparse.hstack([-smooth, no_margin, -sparse.eye(num_smooth)]),
  ]).tocsr()
  b2 = np.concatenate([b_ub, np.zeros(2 * num_smooth)])
  cost2 = np.concatenate([np.zeros(2 * num_knots + 1), np.ones(num_smooth)])
  bounds2 = (table_bounds + [(margin / 2, margin / 2)] +
             [(0.0, None)] * num_smooth)
  res2 = optimize.linprog(cost2, A_ub=a2, b_ub=b2, bounds=bounds2,
                          method="highs")
  if res2.status != 0:
    raise RuntimeError(f"Heart smoothing LP failed: {res2.message}")
  tables = res2.x[:2 * num_knots]
  inner, outer = tables[:num_knots], tables[num_knots:]
  # Below the notch the inner profile only needs to be <= 0; store 0 there.
  return np.maximum(inner, 0.0), outer, margin


def _format_table(values: Sequence[float], per_line: int = 9) -> str:
  text = [f"{x:.3f}" for x in values]
  return "\n".join("    " + ", ".join(text[i:i + per_line]) + ","
                   for i in range(0, len(text), per_line))


def _square_margin(labels: np.ndarray, frames: np.ndarray) -> float:
  low, high = fit_square(labels, frames)
  return (high - low) / 2


def _ellipse_margin(labels: np.ndarray, frames: np.ndarray) -> float:
  return fit_ellipse(labels, frames)[2]


def _heart_margin(labels: np.ndarray, frames: np.ndarray) -> float:
  return fit_heart(labels, frames)[2]


def calibration_set(
    shape: int, labels: np.ndarray, frames: np.ndarray,
    miss_labels: np.ndarray, miss_frames: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[int]]:
  """The frames of one shape that its outline is fitted to.

  Every animation frame of the shape, plus each miss of the shape (in order)
  with which the outline model still classifies every pixel with a positive
  margin. A miss that no outline of the model can reproduce together with the
  animation is left out and reported rather than traded against it.

  Returns:
    `(labels, frames, excluded)`: the fitting set and the indices of the
    misses of this shape that were left out.
  """
  margin = {dsprites.SQUARE: _square_margin, dsprites.ELLIPSE: _ellipse_margin,
            dsprites.HEART: _heart_margin}[shape]
  keep = labels[:, 0] == shape
  fit_labels, fit_frames = labels[keep], frames[keep]
  excluded = []
  for i in np.nonzero(miss_labels[:, 0] == shape)[0]:
    trial_labels = np.concatenate([fit_labels, miss_labels[i:i + 1]])
    trial_frames = np.concatenate([fit_frames, miss_frames[i:i + 1]])
    if margin(trial_labels, trial_frames) > 0:
      fit_labels, fit_frames = trial_labels, trial_frames
    else:
      excluded.append(int(i))
  return fit_labels, fit_frames, excluded


def refit(labels: np.ndarray, frames: np.ndarray, miss_labels: np.ndarray,
          miss_frames: np.ndarray) -> None:
  """Re-derives and prints the geometry constants; checks generalisation.

  Each outline is fitted to the animation's frames of its shape and to the
  misses that `calibration_set` admits.
  """
  square_labels, square_frames, excluded = calibration_set(
      dsprites.SQUARE, labels, frames, miss_labels, miss_frames)
  low, high = fit_square(square_labels, square_frames)
  print(f"square half-side ({len(square_labels)} frames; misses left out: "
        f"{excluded}): consistent interval ({low:.5f}, {high:.5f}), "
        f"midpoint {(low + high) / 2:.4f} "
        f"(renderer: {dsprites.SQUARE_HALF_SIDE})")

  ellipse_labels, ellipse_frames, excluded = calibration_set(
      dsprites.ELLIPSE, labels, frames, miss_labels, miss_frames)
  a, b, margin = fit_ellipse(ellipse_labels, ellipse_frames)
  print(f"ellipse semi-axes ({len(ellipse_labels)} frames; misses left out: "
        f"{excluded}): a={a:.5f} b={b:.5f} (LP margin {margin:.2e}; "
        f"renderer: {dsprites.ELLIPSE_SEMI_AXES})")

  heart_labels, heart_frames, excluded = calibration_set(
      dsprites.HEART, labels, frames, miss_labels, miss_frames)
  print(f"heart: {len(heart_labels)} frames; misses left out: {excluded}")
  _refit_heart(heart_labels, heart_frames)
  _check_heart_generalises(labels, frames, miss_labels, miss_frames)


def _check_heart_generalises(labels: np.ndarray, frames: np.ndarray,
                             miss_labels: np.ndarray,
                             miss_frames: np.ndarray) -> None:
  """Scores heart tables on frames their fit did not see.

  Two checks: tables fitted on the even animation frames, scored on the odd
  ones; and for each heart miss, tables fitted on the animation and the other
  heart misses, scored on it.
  """
  heart = np.nonzero(labels[:, 0] == dsprites.HEART)[0]
  u, v = _sprite_uv(labels[heart])
  even = heart[::2]
  inner_e, outer_e, _ = fit_heart(labels[even], frames[even])
  held_out = np.ones(len(heart), bool)
  held_out[::2] = False
  predicted = heart_profiles_inside(u, v, inner_e, outer_e)
  errors = np.sum(predicted[held_out] != frames[heart][held_out])
  worst = per_frame_iou(frames[heart][held_out], predicted[held_out]).min()
  print(f"heart fitted on {len(even)} even frames: {errors} mismatched "
        f"pixels on the {held_out.sum()} held-out odd frames "
        f"(worst frame IoU {worst:.4f})")

  misses = np.nonzero(miss_labels[:, 0] == dsprites.HEART)[0]
  for i in misses:
    others = misses[misses != i]
    inner, outer, _ = fit_heart(
        np.concatenate([labels[heart], miss_labels[others]]),
        np.concatenate([frames[heart], miss_frames[others]]))
    u_i, v_i = _sprite_uv(miss_labels[i:i + 1])
    predicted = heart_profiles_inside(u_i, v_i, inner, outer)
    before = np.sum(render_bool(miss_labels[i:i + 1]) != miss_frames[i])
    print(f"heart miss {i} held out: {np.sum(predicted != miss_frames[i])} "
          f"mismatched pixels (the renderer's tables: {before})")


def _refit_heart(labels: np.ndarray, frames: np.ndarray) -> None:
  """Fits, rounds and prints the heart tables; counts what rounding costs."""
  u, v = _sprite_uv(labels)
  inner, outer, margin = fit_heart(labels, frames)
  inner, outer = np.round(inner, 3), np.round(outer, 3)
  errors = np.sum(heart_profiles_inside(u, v, inner, outer) != frames)
  last_inner = int(np.nonzero(inner)[0].max()) + 2
  same = (np.array_equal(outer, dsprites.HEART_OUTER_HALF_WIDTH) and
          np.array_equal(inner[:len(dsprites.HEART_INNER_HALF_WIDTH)],
                         dsprites.HEART_INNER_HALF_WIDTH))
  print(f"heart profiles: LP margin {margin:.4f}; rounded tables mismatch "
        f"{errors} pixels on the {len(labels)} heart frames; identical to the "
        f"renderer's tables: {same}")
  print("HEART_OUTER_HALF_WIDTH = (\n" + _format_table(outer) + "\n)")
  print("HEART_INNER_HALF_WIDTH = (\n" + _format_table(inner[:last_inner]) +
        "\n)")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  frames = load_reference_frames(_REFERENCE.value)
  print(f"{len(frames)} reference frames from {_REFERENCE.value}")

  labels, errors = infer_labels(frames)
  print("\nInferred animation segments:")
  for line in describe_segments(labels):
    print("  " + line)
  print(f"\nframes reproduced exactly: {np.sum(errors == 0)}/{len(frames)}; "
        f"worst frame: {errors.max()} mismatched pixels")

  rendered = render_bool(labels)
  print("\nAgreement of the renderer with the genuine frames:")
  for shape, name in enumerate(dsprites.SHAPE_NAMES):
    sel = labels[:, 0] == shape
    stats = agreement(frames[sel], rendered[sel])
    print(f"  {name:8s} ({sel.sum():3d} frames): "
          f'pixel agreement {stats["pixel_agreement"]:.6f}, '
          f'IoU {stats["iou"]:.6f}, '
          f'{stats["mismatched_pixels"]} mismatched pixels')
  stats = agreement(frames, rendered)
  print(f"  overall  ({len(frames)} frames): "
        f'pixel agreement {stats["pixel_agreement"]:.6f}, '
        f'IoU {stats["iou"]:.6f}, '
        f'{stats["mismatched_pixels"]} mismatched pixels; worst per-frame '
        f"IoU {per_frame_iou(frames, rendered).min():.4f}")

  if _WRITE_CSV.value:
    write_labels_csv(_OUTPUT_CSV.value, labels)
    print(f"\nwrote {_OUTPUT_CSV.value}")

  miss_labels, miss_frames = load_misses(_MISSES.value)
  miss_errors = np.sum(render_bool(miss_labels) != miss_frames, axis=(1, 2))
  print(f"\n{len(miss_frames)} frames from {_MISSES.value}: mismatched "
        f"pixels per frame {miss_errors.tolist()}")

  if _REFIT.value:
    print("\nRefitting the geometry from the labelled frames and the misses:")
    refit(labels, frames, miss_labels, miss_frames)


if __name__ == "__main__":
  app.run(main)
