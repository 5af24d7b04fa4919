"""A procedural, pure-JAX renderer of DeepMind's 3dshapes (Shapes3D).

3dshapes is the 480,000-image grid of one object standing on the floor of a
room, indexed in row-major order by floor hue, wall hue, object hue (10 values
each in [0, 0.9]), scale (8 values in [0.75, 1.25]), shape (cube, cylinder,
sphere, capsule) and orientation (15 values in [-30, 30] degrees). The
original images were rendered with MuJoCo and cannot be fetched here, so
`render` ray-casts an equivalent scene on demand. It is pure JAX, jittable,
deterministic (no randomness anywhere) and cheap enough to run inside every
jitted training step (docs/data.md gives its speed), so a training loop never
has to hold the real data set (5.9 GB as uint8).

It is a look-alike, not a pixel-exact copy: the layout, the colours (exact
hues, saturation 1) and how each factor changes the image follow the real data
set; camera, light and object proportions were chosen by eye.

Scene (world units; x right at orientation 0, y up, z away from the camera):

* Floor: the plane y = 0. Walls: a back wall z = BACK_WALL_Z and two side
  walls x = +-SIDE_WALL_X, all unbounded upwards, so the top of every image is
  wall and, as in 3dshapes, the wall visibly wraps around the object: the
  side walls and the vertical corners appear towards the image edges, and
  which one shows (and where its corner is) changes with orientation.
* Object: centred on the y axis, standing on the floor, sized by `scale`:
  - cube: half side CUBE_HALF_SIDE * scale, axis-aligned;
  - cylinder: upright, radius CYLINDER_RADIUS * scale, height
    2 * CYLINDER_HALF_HEIGHT * scale;
  - sphere: radius SPHERE_RADIUS * scale;
  - capsule: upright, radius CAPSULE_RADIUS * scale around a vertical segment
    of length 2 * CAPSULE_HALF_LENGTH * scale.
* Camera: a pinhole at horizontal distance CAMERA_DISTANCE from the y axis and
  height CAMERA_HEIGHT, looking at (0, LOOK_AT_HEIGHT, 0) with a square field
  of view of half-angle atan(TAN_HALF_FOV). The floor/back-wall horizon
  falls around row 27 of 64, the object fills the lower centre.
* Orientation rotates the camera about the y axis through the object (the
  room and the light stay put): the camera sits at
  (D sin(a), H, -D cos(a)), so a positive angle swings it to the right, the
  scene appears to turn left and the left side wall comes into view. The
  round shapes look the same from every angle; the cube turns to show two
  faces; the walls, corners and shadow move.
* Light: one directional light from the front-left, above (LIGHT_DIRECTION
  points towards it) plus ambient light. A surface with unit normal n shows
  base_rgb * (AMBIENT + DIFFUSE * max(n . l, 0) * lit), where base_rgb is the
  factor's hue at saturation 1 and value 1. The shade only scales the colour,
  so every pixel that sees one surface has exactly that surface's hue. The
  floor, the back wall and the two side walls each get their own mild shade
  (the left side wall faces away from the light and shows ambient only); the
  object shows Lambertian shading.
* Shadow: `lit` is 1 except on the floor, where the object casts a soft
  shadow to the back-right. Light and object do not move with the camera, so
  the shadow on the floor depends on (shape, scale) only: it is computed once,
  in NumPy on the first trace, as a 64x64 visibility map of the floor around
  the object per (shape, scale) (hard shadow rays through the same
  intersection code, then a Gaussian blur for the soft edge), and rendering
  reads it with one gather per ray. The shadow never reaches a wall.

Rendering: 2x2 rays per pixel (a 128x128 grid of rays, averaged in 2x2 blocks)
for anti-aliased edges; edge pixels therefore mix the colours of the surfaces
they straddle. Every surface is intersected analytically: floor and walls are
planes; the cube is a slab test; the cylinder, sphere and capsule share one
infinite-vertical-cylinder test followed by one end test (a sphere for the
sphere and the capsule, a flat cap for the cylinder), so per ray there are two
quadratics, one cap plane and one slab test whatever the shape. Normals are
analytic. The shape is chosen per image with selects, not branches, so a batch
can mix shapes and everything lowers to fused elementwise code.

Its length: the scene (room, object shapes, lighting, colours) is one ray
caster whose parts only make sense together.
"""

from __future__ import annotations

import functools
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

FACTOR_NAMES = (
    "floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
IMAGE_SIZE = 64

SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")
CUBE, CYLINDER, SPHERE, CAPSULE = 0, 1, 2, 3

# Official factor values (3dshapes' `labels`). Hues are in [0, 1).
FLOOR_HUES = np.linspace(0.0, 0.9, 10, dtype=np.float32)
WALL_HUES = np.linspace(0.0, 0.9, 10, dtype=np.float32)
OBJECT_HUES = np.linspace(0.0, 0.9, 10, dtype=np.float32)
SCALES = np.linspace(0.75, 1.25, 8, dtype=np.float32)
SHAPES = np.arange(4, dtype=np.float32)
ORIENTATIONS = np.linspace(-30.0, 30.0, 15, dtype=np.float32)  # Degrees.

# Camera (see the module docstring).
CAMERA_DISTANCE = 4.0
CAMERA_HEIGHT = 2.0
LOOK_AT_HEIGHT = 0.45
TAN_HALF_FOV = 0.42
# Rays per pixel along each image axis.
SUPERSAMPLING = 2

# Room. The side walls are far enough out that the camera (at most
# CAMERA_DISTANCE * sin(30 deg) = 2 from the middle) always stays inside.
BACK_WALL_Z = 2.6
SIDE_WALL_X = 2.6

# Object dimensions at scale 1. The sphere is a little larger than the cube's
# half side so that the four shapes look about equally big.
CUBE_HALF_SIDE = 0.5
CYLINDER_RADIUS = 0.5
CYLINDER_HALF_HEIGHT = 0.5
SPHERE_RADIUS = 0.55
CAPSULE_RADIUS = 0.35
CAPSULE_HALF_LENGTH = 0.35

# Lighting: towards the light (front-left, above), and the ambient/diffuse
# split. AMBIENT + DIFFUSE = 1 keeps every value in [0, 1].
LIGHT_DIRECTION = (-0.5, 1.0, -0.7)
AMBIENT = 0.45
DIFFUSE = 0.55

# Floor shadow maps: SHADOW_MAP_SIZE^2 texels covering the floor square
# [SHADOW_MAP_MIN, SHADOW_MAP_MIN + SHADOW_MAP_EXTENT]^2 in (x, z). It holds
# every shadow (the largest one, blur included, ends at x = 1.4, z = 1.7)
# with a lit margin, so clamping lookups to the border is exact.
SHADOW_MAP_SIZE = 64
SHADOW_MAP_MIN = -1.0
SHADOW_MAP_EXTENT = 3.0
# Standard deviation of the blur that softens the shadow edge, in world units:
# about one texel, and about one pixel's width on the floor next to the
# object (~0.06 units), so the edge spreads over 2-3 pixels.
SHADOW_SOFTNESS = 0.05

# Distance that stands for "no hit". Finite, so that no inf * 0 can make NaNs.
_FAR = 1e6
# Replaces ray direction components that are (almost) 0 before dividing.
_TINY = 1e-12

_LIGHT = np.asarray(LIGHT_DIRECTION, np.float64)
_LIGHT = (_LIGHT / np.linalg.norm(_LIGHT)).astype(np.float32)


def _hue_to_rgb(hue: np.ndarray) -> np.ndarray:
  """HSV (hue, 1, 1) -> RGB, float32 `[..., 3]`."""
  hue = np.asarray(hue, np.float64)[..., None]
  # The standard piecewise-linear hexcone: channel k peaks at hue k / 3.
  rgb = np.clip(np.abs(6.0 * hue - np.array([3.0, 2.0, 4.0])) - 1.0, 0.0, 1.0)
  rgb[..., 1:] = 1.0 - rgb[..., 1:]
  return rgb.astype(np.float32)


def _camera_rays() -> tuple[np.ndarray, np.ndarray]:
  """Eye position and unit ray directions at orientation 0.

  Returns:
    `(eye [3], directions [S, S, 3])` with S = IMAGE_SIZE * SUPERSAMPLING;
    row 0 is the top of the image.
  """
  eye = np.array([0.0, CAMERA_HEIGHT, -CAMERA_DISTANCE])
  forward = np.array([0.0, LOOK_AT_HEIGHT, 0.0]) - eye
  forward /= np.linalg.norm(forward)
  right = np.array([forward[2], 0.0, -forward[0]])
  right /= np.linalg.norm(right)
  up = np.cross(forward, right)
  num_rays = IMAGE_SIZE * SUPERSAMPLING
  offsets = (np.arange(num_rays) + 0.5) / num_rays * 2.0 - 1.0
  directions = forward + TAN_HALF_FOV * (
      offsets[None, :, None] * right - offsets[:, None, None] * up)
  directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
  return eye.astype(np.float32), directions.astype(np.float32)


_EYE, _RAYS = _camera_rays()


def _safe(xp: ModuleType, v):
  """`v` with (near) zeros replaced by a tiny positive number, to divide by."""
  return xp.where(xp.abs(v) < _TINY, _TINY, v)


def _object_hit(xp: ModuleType, origin, direction, shape, scale):
  """First intersection of rays with the object, for NumPy or JAX.

  One function serves both the per-pixel rays of `render` (JAX) and the
  shadow rays of `_shadow_maps` (NumPy), so the shadow always matches the
  rendered object.

  Args:
    xp: `numpy` or `jax.numpy`.
    origin: `(x, y, z)` ray origins in world coordinates, arrays that
      broadcast with everything else.
    direction: `(x, y, z)` unit ray directions.
    shape: int shape indices.
    scale: float scale values.

  Returns:
    `(t, (nx, ny, nz))`: distance to the first hit in front of the origin
    (`_FAR` on a miss) and the unit outward normal there.
  """
  ox, oy, oz = origin
  dx, dy, dz = direction
  is_cube = shape == CUBE
  is_cylinder = shape == CYLINDER
  is_sphere = shape == SPHERE
  # The round shapes are all "radius r around the vertical segment y in
  # [lo, hi]": flat ends for the cylinder (lo = 0), round ends for the capsule
  # and the sphere (a capsule with lo = hi).
  radius = scale * xp.where(
      is_cylinder, CYLINDER_RADIUS,
      xp.where(is_sphere, SPHERE_RADIUS, CAPSULE_RADIUS))
  lo = xp.where(is_cylinder, 0.0, radius)
  hi = xp.where(
      is_cylinder, 2.0 * CYLINDER_HALF_HEIGHT * scale,
      xp.where(is_sphere, radius,
               radius + 2.0 * CAPSULE_HALF_LENGTH * scale))
  # Entry into the infinite vertical cylinder of that radius. Every round
  # shape lies inside it, so missing it misses the object. The discriminants
  # here and below are written as radius^2 minus the squared distance of the
  # ray from the axis (centre), not as the textbook b^2 - a * c. Near the
  # silhouette that is a tiny difference of two numbers ~|origin|^2 ~ 20, so
  # its float32 rounding, which differs between backends and between jitted
  # (fused, FMA-contracted) and op-by-op execution, would decide which
  # surface those rays hit: jitted and eager renders differed by up to 0.2
  # in a few edge pixels. Now they agree to ~1e-5.
  a = dx * dx + dz * dz
  b = ox * dx + oz * dz
  cross = ox * dz - oz * dx
  disc = a * radius * radius - cross * cross
  t_side = (-b - xp.sqrt(xp.maximum(disc, 0.0))) / xp.maximum(a, _TINY)
  y_side = oy + t_side * dy
  on_side = (y_side > lo) & (y_side < hi)
  # Entering below (above) the segment, the ray can only hit the bottom (top)
  # end: a sphere around the segment's end point, or the cylinder's cap.
  end_y = xp.where(y_side <= lo, lo, hi)
  rel_y = oy - end_y
  b_end = ox * dx + rel_y * dy + oz * dz
  # Offset of the sphere's centre from the ray's closest point to it.
  off_x = ox - b_end * dx
  off_y = rel_y - b_end * dy
  off_z = oz - b_end * dz
  disc_end = radius * radius - (off_x * off_x + off_y * off_y + off_z * off_z)
  t_ball = -b_end - xp.sqrt(xp.maximum(disc_end, 0.0))
  t_cap = -rel_y / _safe(xp, dy)
  cap_x = ox + t_cap * dx
  cap_z = oz + t_cap * dz
  t_end = xp.where(is_cylinder, t_cap, t_ball)
  in_cap = cap_x * cap_x + cap_z * cap_z < radius * radius
  end_ok = xp.where(is_cylinder, in_cap, disc_end > 0.0)
  t_round = xp.where(on_side, t_side, t_end)
  round_ok = (disc > 0.0) & (on_side | end_ok) & (t_round > 0.0)
  # Cube: the slab test on [-s, s] x [0, 2s] x [-s, s].
  half = CUBE_HALF_SIDE * scale
  inv_x = 1.0 / _safe(xp, dx)
  inv_y = 1.0 / _safe(xp, dy)
  inv_z = 1.0 / _safe(xp, dz)
  tx0, tx1 = (-half - ox) * inv_x, (half - ox) * inv_x
  ty0, ty1 = -oy * inv_y, (2.0 * half - oy) * inv_y
  tz0, tz1 = (-half - oz) * inv_z, (half - oz) * inv_z
  near_x = xp.minimum(tx0, tx1)
  near_y = xp.minimum(ty0, ty1)
  near_z = xp.minimum(tz0, tz1)
  t_near = xp.maximum(xp.maximum(near_x, near_y), near_z)
  t_far = xp.minimum(xp.minimum(xp.maximum(tx0, tx1), xp.maximum(ty0, ty1)),
                     xp.maximum(tz0, tz1))
  cube_ok = (t_near < t_far) & (t_near > 0.0)

  t = xp.where(is_cube, t_near, t_round)
  t = xp.where(xp.where(is_cube, cube_ok, round_ok), t, _FAR)

  # Normals. Round shapes: away from the nearest point of the segment, which
  # is radial on the sides; the cylinder's caps face straight up (down).
  hit_x, hit_y, hit_z = ox + t * dx, oy + t * dy, oz + t * dz
  on_cap = is_cylinder & ~on_side
  inv_radius = 1.0 / radius
  round_nx = xp.where(on_cap, 0.0, hit_x * inv_radius)
  round_nz = xp.where(on_cap, 0.0, hit_z * inv_radius)
  round_ny = xp.where(
      on_cap, xp.where(end_y > lo, 1.0, -1.0),
      xp.where(is_cylinder, 0.0, (hit_y - xp.clip(hit_y, lo, hi)) * inv_radius))
  # Cube: the face of the slab the ray entered last, facing the ray.
  cube_nx = xp.where(t_near == near_x, -xp.sign(dx), 0.0)
  cube_ny = xp.where((t_near == near_y) & (t_near != near_x), -xp.sign(dy), 0.0)
  cube_nz = xp.where((t_near == near_z) & (t_near != near_x)
                     & (t_near != near_y), -xp.sign(dz), 0.0)
  normal = (xp.where(is_cube, cube_nx, round_nx),
            xp.where(is_cube, cube_ny, round_ny),
            xp.where(is_cube, cube_nz, round_nz))
  return t, normal


@functools.cache
def _shadow_maps() -> np.ndarray:
  """Soft floor visibility per (shape, scale), float32 `[4 * 8 * M * M]`.

  Entry `((shape * 8 + scale) * M + row) * M + col` (M = SHADOW_MAP_SIZE) is
  the fraction of the light that reaches floor point
  x = SHADOW_MAP_MIN + (col + 0.5) * texel, z = ... (row + 0.5) * texel.
  """
  size, sub = SHADOW_MAP_SIZE, 2
  texel = SHADOW_MAP_EXTENT / size
  coords = SHADOW_MAP_MIN + (np.arange(size * sub) + 0.5) * (texel / sub)
  x = coords[None, None, None, :]
  z = coords[None, None, :, None]
  shape = np.arange(4)[:, None, None, None]
  scale = SCALES.astype(np.float64)[None, :, None, None]
  # Shadow rays start a hair above the floor so that the cube's and the
  # cylinder's bottom faces (in the floor plane) cannot catch them.
  t, _ = _object_hit(np, (x, np.full_like(x, 1e-4), z), tuple(_LIGHT), shape,
                     scale)
  lit = t >= _FAR
  # Floor under the object is never seen, but the blur would spread it: it is
  # dark, as it would be under a real object.
  half = CUBE_HALF_SIDE * scale
  cylinder_radius = CYLINDER_RADIUS * scale
  under = np.where(
      shape == CUBE, (np.abs(x) < half) & (np.abs(z) < half),
      (shape == CYLINDER) & (x * x + z * z < cylinder_radius**2))
  lit = (lit & ~under).astype(np.float64)
  lit = lit.reshape(4, 8, size, sub, size, sub).mean(axis=(3, 5))
  # Separable Gaussian blur; clamping at the border keeps the lit margin lit.
  centres = np.arange(size)
  sigma = SHADOW_SOFTNESS / texel
  radius = int(np.ceil(3.0 * sigma))
  offsets = np.arange(-radius, radius + 1)
  weights = np.exp(-0.5 * (offsets / sigma)**2)
  weights /= weights.sum()
  blur = np.zeros((size, size))
  np.add.at(blur, (np.repeat(centres, len(offsets)),
                   np.clip(centres[:, None] + offsets, 0, size - 1).ravel()),
            np.tile(weights, size))
  lit = blur @ lit @ blur.T
  return lit.reshape(-1).astype(np.float32)


def render(factors: jax.Array) -> jax.Array:
  """Renders Shapes3D images from integer factor indices.

  Args:
    factors: int array `[..., 6]` of indices in the official factor order
      (floor_hue, wall_hue, object_hue, scale, shape, orientation).

  Returns:
    float32 `[..., 64, 64, 3]` RGB images in [0, 1].
  """
  factors = jnp.asarray(factors, jnp.int32)
  batch_shape = factors.shape[:-1]
  factors = factors.reshape(-1, len(FACTOR_NAMES))

  def per_image(values, index):
    # [N] -> [N, 1, 1] so that it broadcasts against the [S, S] ray grid.
    return jnp.asarray(values)[index][:, None, None]

  scale_index = factors[:, 3]
  scale = per_image(SCALES, scale_index)
  shape = factors[:, 4][:, None, None]
  angle = per_image(np.deg2rad(ORIENTATIONS), factors[:, 5])
  cos, sin = jnp.cos(angle), jnp.sin(angle)

  # Rotating the camera about the y axis rotates its position (which starts
  # at x = 0) and every ray; the vertical components do not change.
  eye_y, eye_z = float(_EYE[1]), float(_EYE[2])
  ox, oy, oz = -sin * eye_z, eye_y, cos * eye_z
  rays = jnp.asarray(_RAYS)
  dx = cos * rays[..., 0] - sin * rays[..., 2]
  dy = rays[..., 1]
  dz = sin * rays[..., 0] + cos * rays[..., 2]

  # Room: the camera is inside, so the first plane a ray meets is the
  # surface it sees.
  t_floor = jnp.where(dy < 0.0, -oy / _safe(jnp, dy), _FAR)
  t_back = jnp.where(dz > 0.0, (BACK_WALL_Z - oz) / _safe(jnp, dz), _FAR)
  safe_dx = _safe(jnp, dx)
  t_side = (jnp.sign(safe_dx) * SIDE_WALL_X - ox) / safe_dx
  on_floor = t_floor < jnp.minimum(t_back, t_side)
  t_room = jnp.minimum(t_floor, jnp.minimum(t_back, t_side))
  # Inward wall normals: (0, 0, -1) for the back wall, (-sign(dx), 0, 0) for
  # the side wall a ray runs into.
  wall_cos = jnp.where(t_back <= t_side, -_LIGHT[2],
                       -jnp.sign(safe_dx) * _LIGHT[0])
  wall_shade = AMBIENT + DIFFUSE * jnp.maximum(wall_cos, 0.0)

  # Floor: one nearest-texel gather from this image's shadow map. Rays that do
  # not end on the floor read a clamped (unused) texel.
  texels_per_unit = SHADOW_MAP_SIZE / SHADOW_MAP_EXTENT
  t_hit_floor = jnp.minimum(t_floor, 100.0)
  col = jnp.clip((ox + t_hit_floor * dx - SHADOW_MAP_MIN) * texels_per_unit,
                 0.0, SHADOW_MAP_SIZE - 1).astype(jnp.int32)
  row = jnp.clip((oz + t_hit_floor * dz - SHADOW_MAP_MIN) * texels_per_unit,
                 0.0, SHADOW_MAP_SIZE - 1).astype(jnp.int32)
  map_index = (shape * len(SCALES) + scale_index[:, None, None])
  lit = jnp.asarray(_shadow_maps())[
      (map_index * SHADOW_MAP_SIZE + row) * SHADOW_MAP_SIZE + col]
  floor_shade = AMBIENT + DIFFUSE * _LIGHT[1] * lit

  t_object, (nx, ny, nz) = _object_hit(
      jnp, (ox, oy, oz), (dx, dy, dz), shape, scale)
  on_object = t_object < t_room
  object_cos = nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2]
  object_shade = AMBIENT + DIFFUSE * jnp.maximum(object_cos, 0.0)

  shade = jnp.where(on_object, object_shade,
                    jnp.where(on_floor, floor_shade, wall_shade))
  floor_rgb = per_image(_hue_to_rgb(FLOOR_HUES), factors[:, 0])
  wall_rgb = per_image(_hue_to_rgb(WALL_HUES), factors[:, 1])
  object_rgb = per_image(_hue_to_rgb(OBJECT_HUES), factors[:, 2])
  base = jnp.where(on_object[..., None], object_rgb,
                   jnp.where(on_floor[..., None], floor_rgb, wall_rgb))
  rays_rgb = base * shade[..., None]
  images = rays_rgb.reshape(-1, IMAGE_SIZE, SUPERSAMPLING, IMAGE_SIZE,
                            SUPERSAMPLING, 3).mean(axis=(2, 4))
  return images.reshape(batch_shape + (IMAGE_SIZE, IMAGE_SIZE, 3))
