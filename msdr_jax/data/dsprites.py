"""A procedural re-implementation of DeepMind's dSprites, calibrated on genuine frames.

dSprites is the 737,280-image grid of one white sprite on a black 64x64
canvas, indexed in row-major order by shape (square, ellipse, heart), scale
(6 values in [0.5, 1]), orientation (40 values in [0, 2*pi]), position_x and
position_y (32 values each in [0, 1]). The original `.npz` cannot be fetched
here, so `render` draws any grid point on demand. It is pure JAX and cheap
enough to run inside every jitted training step, which also means a training
loop never has to hold the 737k-image array in memory.

Geometry (everything below was measured on genuine frames, see "Calibration"):

* Pixel (row r, column c) is *in* the sprite iff its centre
  (x, y) = (c + 0.5, r + 0.5) lies inside the sprite's outline; there is no
  anti-aliasing, so images are exactly 0.0 / 1.0.
* A position value p in [0, 1] puts the sprite centre at 16 + 32 * p pixels.
  position_x moves along columns, position_y along rows with value 0 at the
  *top* of the image.
* A pixel centre is mapped into the sprite's own frame by translating by the
  sprite centre, rotating by the orientation and dividing by the scale:
      u = ( cos(t) * dx - sin(t) * dy) / scale
      v = ( sin(t) * dx + cos(t) * dy) / scale
  with dx, dy the offsets in image axes (y down). Equivalently, increasing
  orientation turns the sprite counter-clockwise *as displayed* (row 0 on
  top). Rotation is about the position centre, not the shape's centroid,
  which matters for the heart: its centroid orbits the centre as it turns.
* In that frame (units: pixels at scale 1, v pointing down at orientation 0):
  - square: max(|u|, |v|) <= 9.5982, i.e. side 19.2 px at scale 1. Its
    axis-aligned renders are 20 * scale pixels wide because the edges fall
    between pixel centres, but rotated squares cover only ~368 pixels at
    scale 1, which pins the true side down to 19.193-19.200 px.
  - ellipse: (u / 12.7659)^2 + (v / 7.2123)^2 <= 1 (wide at orientation 0);
    the reference pixels confine the semi-axes to 12.7654-12.7664 and
    7.2121-7.2145 px.
  - heart: lobes up (negative v), tip down. It is mirror-symmetric in u and
    every row v of its own frame meets it in one interval of |u|:
    w_in(v) <= |u| <= w_out(v), where w_in > 0 only between the lobes (the
    notch) and w_in > w_out above and below the heart. Both half-width
    profiles are stored as piecewise-linear tables on a 0.25-pixel grid in v.
    The outline is not a simple textbook heart: the lobes top out at
    v ~ -9.6 and are widest (|u| ~ 9.57) at v ~ -4.7; the lower sides are
    straight at 45 degrees between v ~ -1 and v ~ 5.5 but then taper into a
    thin concave tip that reaches v ~ 9.6; and the notch reaches down to
    v ~ -5, deeper than the "diamond plus two semicircles" heart. A table
    captures that exactly and is evaluated in O(1) per pixel (one small
    gather), whereas a point-in-polygon test would cost O(vertices).

Calibration: `tests/data/dsprites_reference.gif` holds 320 genuine frames.
Their factor labels were inferred by searching the factor grid with this
renderer (`experiments/calibrate_dsprites.py`, which also holds the fitting
code and writes `tests/data/dsprites_reference_factors.csv`). Given labels, the
square half-side is the midpoint of the interval that the pixels allow, the
ellipse semi-axes are the maximum-margin solution of a linear program in
(1/a^2, 1/b^2), and the heart profiles are the smoothest piecewise-linear
tables that classify every boundary pixel with a positive margin (another
linear program). Fitting the heart on the even frames alone reproduces the
odd frames exactly.

`tests/data/dsprites_misses.png` holds eight more genuine frames, with labels,
from an independent sample of 100 genuine images on which the renderer fitted
to the animation alone matched 84 exactly; these eight differed by 1-7 pixels.
Each outline is fitted to the animation plus every miss of its shape with
which the outline can still classify every pixel (`calibration_set` in the
script). That admits the four hearts and one ellipse; with these constants all
320 animation frames and those five are reproduced exactly. The other three
cannot be reproduced by any outline of this model together with the animation:
a square at scale 0.6 (7 pixels along one edge; it would need the square 4%
smaller or its centre 0.25 px lower, while the animation pins the half-side to
within 0.02%), another square at scale 0.6 (1 corner pixel; that frame's own
pixels admit no centred square, since one needs a half-side of at least 9.5994
and another at most 9.5991) and an ellipse at scale 0.5 (1 pixel). They stay
as they are. The refit is not evidence that unseen frames now match: fitting
the hearts without one heart miss and scoring that miss, in turn for each of
the four, leaves 7 of their 8 mismatched pixels.

The rotation direction cannot be read off images alone: the angle set
{2*pi*k/39} is closed under negation, so flipping the sign only relabels
orientation k as 39 - k. It is fixed by the reference animation, which
traverses one factor at a time with the index going up (scale 0..5, position
0..31): with the sign above, its three rotation segments also run
0, 1, ..., 39, whereas the opposite sign would make them run backwards.

Orientation index 39 is 2*pi, the same angle as index 0; the renderer reduces
orientations modulo 39 steps so the two render bit-identically, as they do in
the real data set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from msdr_jax.data import ground_truth

FACTOR_NAMES = ("shape", "scale", "orientation", "position_x", "position_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
IMAGE_SIZE = 64

SHAPE_NAMES = ("square", "ellipse", "heart")
SQUARE, ELLIPSE, HEART = 0, 1, 2

# Official factor values (dSprites' `latents_values`).
SHAPES = np.arange(1, 4, dtype=np.float32)
SCALES = np.linspace(0.5, 1.0, 6, dtype=np.float32)
ORIENTATIONS = np.linspace(0.0, 2.0 * np.pi, 40, dtype=np.float32)
POSITIONS = np.linspace(0.0, 1.0, 32, dtype=np.float32)
POSITIONS_X = POSITIONS
POSITIONS_Y = POSITIONS

# A position value p puts the sprite centre at POSITION_OFFSET + POSITION_RANGE
# * p pixels from the top-left image corner.
POSITION_OFFSET = 16.0
POSITION_RANGE = 32.0

# Fitted outlines, in pixels at scale 1 in the sprite's own frame.
SQUARE_HALF_SIDE = 9.5982
ELLIPSE_SEMI_AXES = (12.7659, 7.2139)  # (along u, along v)

# Heart half-width profiles, sampled at v = HEART_PROFILE_START + k *
# HEART_PROFILE_STEP. Values between knots are linearly interpolated.
HEART_PROFILE_START = -10.0
HEART_PROFILE_STEP = 0.25
# Outer boundary |u| <= w_out(v), v = -10.0, -9.75, ..., 10.0 (81 knots). The
# negative values at both ends keep rows beyond the lobes and the tip empty.
HEART_OUTER_HALF_WIDTH = (
    -0.350, 1.616, 3.583, 5.549, 6.406, 6.882, 7.305, 7.610, 7.864,
    8.118, 8.372, 8.572, 8.721, 8.869, 9.018, 9.128, 9.228, 9.329,
    9.406, 9.483, 9.510, 9.538, 9.566, 9.594, 9.579, 9.565, 9.541,
    9.518, 9.494, 9.440, 9.369, 9.299, 9.203, 9.094, 8.985, 8.865,
    8.745, 8.625, 8.462, 8.300, 8.138, 7.955, 7.745, 7.536, 7.325,
    7.114, 6.903, 6.669, 6.422, 6.174, 5.927, 5.680, 5.417, 5.154,
    4.890, 4.627, 4.364, 4.101, 3.838, 3.575, 3.312, 3.051, 2.811,
    2.571, 2.331, 2.091, 1.874, 1.656, 1.465, 1.273, 1.082, 0.905,
    0.749, 0.592, 0.466, 0.362, 0.258, 0.154, 0.050, -0.054, -0.158,
)
# Inner boundary |u| >= w_in(v) (the notch between the lobes), for the first
# knots v = -10.0, ..., -4.5; below the notch w_in is 0 (no hole).
HEART_INNER_HALF_WIDTH = (
    9.304, 7.488, 5.673, 3.857, 3.002, 2.539, 2.179, 1.819, 1.570,
    1.358, 1.147, 0.943, 0.740, 0.628, 0.516, 0.404, 0.292, 0.218,
    0.144, 0.069, 0.035, 0.002, 0.000,
)

_NUM_DISTINCT_ORIENTATIONS = FACTOR_SIZES[2] - 1  # 2*pi repeats 0.


def _heart_segments() -> np.ndarray:
  """Per-segment (w_in, dw_in, w_out, dw_out) so one gather evaluates both.

  Returns:
    float32 array [num_knots - 1, 4]: the value at the segment's first knot
    and the change across the segment, for the inner and outer profiles.
  """
  outer = np.asarray(HEART_OUTER_HALF_WIDTH, np.float64)
  inner = np.zeros_like(outer)
  inner[:len(HEART_INNER_HALF_WIDTH)] = HEART_INNER_HALF_WIDTH
  return np.stack(
      [inner[:-1], np.diff(inner), outer[:-1], np.diff(outer)], axis=-1
  ).astype(np.float32)


_HEART_SEGMENTS = _heart_segments()


def sprite_coordinates(factors: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Maps every pixel centre into each sprite's own frame.

  This is the half of `render` that does not depend on the shape; it is public
  so that calibration fits outlines in exactly the coordinates (and float32
  rounding) that rendering uses.

  Args:
    factors: int array `[..., 5]` of factor indices.

  Returns:
    `(u, v)`, each float32 `[..., 64, 64]`, in pixels at scale 1; v points
    down the image at orientation 0.
  """
  factors = jnp.asarray(factors, jnp.int32)
  scale = jnp.asarray(SCALES)[factors[..., 1]]
  # Reducing modulo 39 steps makes orientation 39 (2*pi) exactly orientation 0
  # instead of differing by float32 rounding of sin(2*pi).
  step = factors[..., 2] % _NUM_DISTINCT_ORIENTATIONS
  angle = step.astype(jnp.float32) * np.float32(
      2.0 * np.pi / _NUM_DISTINCT_ORIENTATIONS)
  centre = POSITION_OFFSET + POSITION_RANGE * jnp.asarray(POSITIONS)
  centre_x = centre[factors[..., 3]]
  centre_y = centre[factors[..., 4]]
  cos = (jnp.cos(angle) / scale)[..., None, None]
  sin = (jnp.sin(angle) / scale)[..., None, None]
  pixel = jnp.arange(IMAGE_SIZE, dtype=jnp.float32) + 0.5
  # Offsets along columns ([..., 1, W]) and rows ([..., H, 1]); the rotation
  # is separable, so the per-pixel work is two multiply-adds.
  dx = (pixel - centre_x[..., None])[..., None, :]
  dy = (pixel - centre_y[..., None])[..., :, None]
  u = cos * dx - sin * dy
  v = sin * dx + cos * dy
  return u, v


def _inside_heart(u: jax.Array, v: jax.Array) -> jax.Array:
  num_segments = _HEART_SEGMENTS.shape[0]
  t = (v - HEART_PROFILE_START) * (1.0 / HEART_PROFILE_STEP)
  segment = jnp.clip(jnp.floor(t), 0, num_segments - 1)
  frac = t - segment
  table = jnp.asarray(_HEART_SEGMENTS)[segment.astype(jnp.int32)]
  w_in = table[..., 0] + frac * table[..., 1]
  w_out = table[..., 2] + frac * table[..., 3]
  abs_u = jnp.abs(u)
  in_range = (t >= 0.0) & (t <= num_segments)
  return in_range & (abs_u >= w_in) & (abs_u <= w_out)


def render(factors: jax.Array) -> jax.Array:
  """Renders dSprites images from integer factor indices.

  Args:
    factors: int array `[..., 5]` of indices in the official factor order
      (shape, scale, orientation, position_x, position_y).

  Returns:
    float32 `[..., 64, 64, 1]` with values exactly 0.0 or 1.0.
  """
  factors = jnp.asarray(factors, jnp.int32)
  u, v = sprite_coordinates(factors)
  square = jnp.maximum(jnp.abs(u), jnp.abs(v)) <= SQUARE_HALF_SIDE
  semi_u, semi_v = ELLIPSE_SEMI_AXES
  ellipse = (
      jnp.square(u * (1.0 / semi_u)) + jnp.square(v * (1.0 / semi_v)) <= 1.0)
  heart = _inside_heart(u, v)
  # Every shape is evaluated and one is selected: under jit a per-sprite
  # branch would be lowered to the same selects anyway.
  shape = factors[..., 0][..., None, None]
  inside = jnp.where(
      shape == SQUARE, square, jnp.where(shape == ELLIPSE, ellipse, heart))
  return inside.astype(jnp.float32)[..., None]


class DSprites(ground_truth.GroundTruthData):
  """dSprites, rendered procedurally on demand (see module docstring)."""

  @property
  def factor_names(self) -> tuple[str, ...]:
    return FACTOR_NAMES

  @property
  def factor_sizes(self) -> tuple[int, ...]:
    return FACTOR_SIZES

  @property
  def observation_shape(self) -> tuple[int, int, int]:
    return (IMAGE_SIZE, IMAGE_SIZE, 1)

  def images_from_state(self, state: jax.Array) -> jax.Array:
    return render(state)
