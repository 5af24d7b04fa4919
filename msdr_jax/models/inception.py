"""The FID Inception-v3 network of pytorch-fid, in Flax.

FID is only comparable with published numbers when it is computed with the
network of the original TensorFlow FID code (`inception-2015-12-05`). The
reference port of that network to PyTorch is pytorch-fid's
`pt_inception-2015-12-05` weights on torchvision's `Inception3` layout, with
four blocks patched to reproduce TensorFlow's graph:

* `FIDInceptionA` (Mixed_5b-d), `FIDInceptionC` (Mixed_6b-e) and
  `FIDInceptionE_1` (Mixed_7b) average-pool their pooling branch without
  counting the zero padding (TensorFlow's SAME average pool; torchvision
  counts it);
* `FIDInceptionE_2` (Mixed_7c) max-pools its pooling branch.

This module is that network up to pool3, the 2048-d global average pool that
FID and KID use. Module names are the PyTorch attribute names, so every
variable has a PyTorch state_dict name (`Mixed_6b.branch7x7_2.conv.weight`,
`Conv2d_1a_3x3.bn.running_mean`, ...); `variables_from_state_dict` and
`state_dict_from_variables` convert between the two. Every convolution is a
`BasicConv2d`: bias-free convolution, batch norm with eps 1e-3 (running
statistics only) and ReLU.

With the same (random) weights its features agree with pytorch-fid 0.3.0's
to about 1e-6 of their scale; tests/image_metrics_test.py pins them.

The weights cannot be bundled or downloaded here: make an `.npz` of them with
`experiments/convert_inception_weights.py` on a machine with torch.

Its length: the network is pytorch-fid's, block for block, so that it can be
read side by side with the original (and converted weights map one to one).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# The input size the network was trained at; pytorch-fid resizes every image
# to it.
INPUT_SIZE = 299
FEATURE_DIM = 2048

# TensorFlow's default batch-norm epsilon, kept by torchvision's BasicConv2d.
_BATCH_NORM_EPSILON = 1e-3

# Flax collection and leaf name -> PyTorch state_dict leaf name.
_TORCH_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}

# PyTorch convolution weights are [out, in, kh, kw] (OIHW), Flax's
# [kh, kw, in, out] (HWIO).
_OIHW_FROM_HWIO = (3, 2, 0, 1)
_HWIO_FROM_OIHW = (2, 3, 1, 0)


def preprocess(images: jax.Array) -> jax.Array:
  """pytorch-fid's input pipeline: [N, H, W, C] in [0, 1] -> [N, 299, 299, 3].

  Grey images are repeated to three channels (as pytorch-fid's loader
  converts them to RGB), resized bilinearly to 299x299 and mapped from [0, 1]
  to [-1, 1] by 2x - 1.

  The resize is PyTorch's `F.interpolate(mode='bilinear',
  align_corners=False)`: output pixel i samples the input at
  (i + 1/2) * in/out - 1/2, interpolating the two nearest pixels and
  clamping at the border. `jax.image.resize` computes the same with
  `antialias=False`; with its default antialiasing a downscale would
  average over more pixels than PyTorch does.
  """
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(
        "The Inception network needs images [N, H, W, C] with C = 1 or 3, "
        f"got shape {images.shape}.")
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  resized = jax.image.resize(
      images, (images.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="bilinear",
      antialias=False)
  return 2.0 * resized - 1.0


def _average_pool_excluding_padding(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool that averages only the pixels inside the image.

  The FID patch of the A, C and E_1 blocks (`count_include_pad=False`).
  """
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 max pool, padding 1 (the FID patch of the E_2 block)."""
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_reduce(x: jax.Array) -> jax.Array:
  """3x3 stride-2 max pool without padding (PyTorch's floor mode)."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class BasicConv2d(nn.Module):
  """torchvision's BasicConv2d: conv (no bias) -> batch norm -> ReLU.

  `padding` is PyTorch's symmetric (rows, columns) zero padding.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(
        self.features, self.kernel_size, strides=self.strides,
        padding=tuple((p, p) for p in self.padding), use_bias=False,
        # Full float32 everywhere: features must not depend on whether the
        # device would otherwise run convolutions in TF32 or bfloat16.
        precision=lax.Precision.HIGHEST, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=_BATCH_NORM_EPSILON,
                     name="bn")(x)
    return nn.relu(x)


def _conv(features: int, kernel_size: tuple[int, int], name: str,
          strides: tuple[int, int] = (1, 1)) -> BasicConv2d:
  """The two kinds of BasicConv2d inside the Inception blocks.

  Stride 1 is zero-padded by half the (odd) kernel size to keep the spatial
  size; a strided one is unpadded (VALID). The stem's unpadded stride-1
  convolutions are written as BasicConv2d directly.
  """
  if strides == (1, 1):
    padding = (kernel_size[0] // 2, kernel_size[1] // 2)
  else:
    padding = (0, 0)
  return BasicConv2d(features, kernel_size, strides, padding, name=name)


class FIDInceptionA(nn.Module):
  """Mixed_5b-d: 35x35 block with 1x1, 5x5, double 3x3 and pool branches."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = _conv(64, (1, 1), "branch1x1")(x)

    branch5x5 = _conv(48, (1, 1), "branch5x5_1")(x)
    branch5x5 = _conv(64, (5, 5), "branch5x5_2")(branch5x5)

    branch3x3dbl = _conv(64, (1, 1), "branch3x3dbl_1")(x)
    branch3x3dbl = _conv(96, (3, 3), "branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = _conv(96, (3, 3), "branch3x3dbl_3")(branch3x3dbl)

    branch_pool = _average_pool_excluding_padding(x)
    branch_pool = _conv(self.pool_features, (1, 1), "branch_pool")(branch_pool)
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], -1)


class InceptionB(nn.Module):
  """Mixed_6a: 35x35 -> 17x17 reduction."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = _conv(384, (3, 3), "branch3x3", strides=(2, 2))(x)

    branch3x3dbl = _conv(64, (1, 1), "branch3x3dbl_1")(x)
    branch3x3dbl = _conv(96, (3, 3), "branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = _conv(96, (3, 3), "branch3x3dbl_3", strides=(2, 2))(
        branch3x3dbl)

    branch_pool = _max_pool_reduce(x)
    return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], -1)


class FIDInceptionC(nn.Module):
  """Mixed_6b-e: 17x17 block with factorised 7x7 convolutions."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    branch1x1 = _conv(192, (1, 1), "branch1x1")(x)

    branch7x7 = _conv(c7, (1, 1), "branch7x7_1")(x)
    branch7x7 = _conv(c7, (1, 7), "branch7x7_2")(branch7x7)
    branch7x7 = _conv(192, (7, 1), "branch7x7_3")(branch7x7)

    branch7x7dbl = _conv(c7, (1, 1), "branch7x7dbl_1")(x)
    branch7x7dbl = _conv(c7, (7, 1), "branch7x7dbl_2")(branch7x7dbl)
    branch7x7dbl = _conv(c7, (1, 7), "branch7x7dbl_3")(branch7x7dbl)
    branch7x7dbl = _conv(c7, (7, 1), "branch7x7dbl_4")(branch7x7dbl)
    branch7x7dbl = _conv(192, (1, 7), "branch7x7dbl_5")(branch7x7dbl)

    branch_pool = _average_pool_excluding_padding(x)
    branch_pool = _conv(192, (1, 1), "branch_pool")(branch_pool)
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], -1)


class InceptionD(nn.Module):
  """Mixed_7a: 17x17 -> 8x8 reduction."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = _conv(192, (1, 1), "branch3x3_1")(x)
    branch3x3 = _conv(320, (3, 3), "branch3x3_2", strides=(2, 2))(branch3x3)

    branch7x7x3 = _conv(192, (1, 1), "branch7x7x3_1")(x)
    branch7x7x3 = _conv(192, (1, 7), "branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = _conv(192, (7, 1), "branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = _conv(192, (3, 3), "branch7x7x3_4", strides=(2, 2))(
        branch7x7x3)

    branch_pool = _max_pool_reduce(x)
    return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], -1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (`pooling='average'`, FIDInceptionE_1) and Mixed_7c ('max', E_2).

  The 3x3 branches split into parallel 1x3 and 3x1 convolutions whose outputs
  are concatenated.
  """

  pooling: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = _conv(320, (1, 1), "branch1x1")(x)

    branch3x3 = _conv(384, (1, 1), "branch3x3_1")(x)
    branch3x3 = jnp.concatenate([
        _conv(384, (1, 3), "branch3x3_2a")(branch3x3),
        _conv(384, (3, 1), "branch3x3_2b")(branch3x3),
    ], -1)

    branch3x3dbl = _conv(448, (1, 1), "branch3x3dbl_1")(x)
    branch3x3dbl = _conv(384, (3, 3), "branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([
        _conv(384, (1, 3), "branch3x3dbl_3a")(branch3x3dbl),
        _conv(384, (3, 1), "branch3x3dbl_3b")(branch3x3dbl),
    ], -1)

    if self.pooling == "average":
      branch_pool = _average_pool_excluding_padding(x)
    elif self.pooling == "max":
      branch_pool = _max_pool_same(x)
    else:
      raise ValueError(f"pooling must be 'average' or 'max', got {self.pooling!r}.")
    branch_pool = _conv(192, (1, 1), "branch_pool")(branch_pool)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], -1)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's InceptionV3 up to pool3.

  Takes `preprocess`ed images [N, 299, 299, 3] in [-1, 1] and returns the
  [N, 2048] global average of Mixed_7c (pool3), the FID features.
  Spatial sizes at 299x299: 149, 147, 147, pool 73, 73, 71, pool 35, the A
  blocks at 35, the C blocks at 17, the E blocks at 8.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _conv(32, (3, 3), "Conv2d_1a_3x3", strides=(2, 2))(x)
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = _conv(64, (3, 3), "Conv2d_2b_3x3")(x)
    x = _max_pool_reduce(x)
    x = _conv(80, (1, 1), "Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_reduce(x)
    x = FIDInceptionA(pool_features=32, name="Mixed_5b")(x)
    x = FIDInceptionA(pool_features=64, name="Mixed_5c")(x)
    x = FIDInceptionA(pool_features=64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = FIDInceptionC(channels_7x7=128, name="Mixed_6b")(x)
    x = FIDInceptionC(channels_7x7=160, name="Mixed_6c")(x)
    x = FIDInceptionC(channels_7x7=160, name="Mixed_6d")(x)
    x = FIDInceptionC(channels_7x7=192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = FIDInceptionE(pooling="average", name="Mixed_7b")(x)
    x = FIDInceptionE(pooling="max", name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))


# ----------------------------------------------------------------------------
# PyTorch state_dict <-> Flax variables.


def _torch_name(path: Sequence[Any]) -> str:
  """'params'/'Mixed_5b'/'branch1x1'/'conv'/'kernel' -> 'Mixed_5b.branch1x1.conv.weight'."""
  keys = [entry.key for entry in path]
  collection, *modules, leaf = keys
  return ".".join([*modules, _TORCH_LEAF_NAMES[(collection, leaf)]])


def _is_kernel(path: Sequence[Any]) -> bool:
  return path[-1].key == "kernel"


@functools.lru_cache(maxsize=1)
def _variable_shapes() -> Any:
  """Shapes of FIDInceptionV3's variables, without computing anything.

  The variable shapes do not depend on the spatial size, so the smallest
  input the network accepts (75x75) is enough.
  """
  return jax.eval_shape(
      FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """PyTorch name -> PyTorch shape of every tensor the network needs.

  These are pytorch-fid's state_dict entries minus `fc.*` (the classifier
  after pool3) and the batch norms' `num_batches_tracked` counters.
  """
  shapes = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(_variable_shapes()):
    shape = leaf.shape
    if _is_kernel(path):
      shape = tuple(shape[axis] for axis in _OIHW_FROM_HWIO)
    shapes[_torch_name(path)] = tuple(shape)
  return shapes


def state_dict_from_variables(variables: Any) -> dict[str, np.ndarray]:
  """Flax variables of FIDInceptionV3 -> PyTorch-named float32 numpy arrays."""
  state_dict = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    value = np.asarray(leaf, np.float32)
    if _is_kernel(path):
      value = value.transpose(_OIHW_FROM_HWIO)
    state_dict[_torch_name(path)] = value
  return state_dict


def variables_from_state_dict(state_dict: Mapping[str, Any]) -> Any:
  """pytorch-fid's state_dict (as numpy arrays) -> FIDInceptionV3 variables.

  Entries the network does not use (`fc.*`, `*.num_batches_tracked`) are
  ignored.

  Raises:
    ValueError: naming the entries that are missing or have the wrong shape.
  """
  expected = state_dict_shapes()
  missing = [name for name in expected if name not in state_dict]
  misshaped = [
      f"{name} has shape {tuple(np.shape(state_dict[name]))}, expected {shape}"
      for name, shape in expected.items()
      if name in state_dict and tuple(np.shape(state_dict[name])) != shape
  ]
  problems = []
  if missing:
    problems.append(
        f"{len(missing)} of the {len(expected)} Inception weights are missing: "
        + ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "") + ".")
  if misshaped:
    problems.append("Wrong shapes: " + "; ".join(misshaped[:5])
                    + ("; ..." if len(misshaped) > 5 else "") + ".")
  if problems:
    raise ValueError(" ".join(problems))

  def convert(path, leaf):
    value = np.asarray(state_dict[_torch_name(path)], np.float32)
    if _is_kernel(path):
      value = value.transpose(_HWIO_FROM_OIHW)
    return jnp.asarray(value)

  return jax.tree_util.tree_map_with_path(convert, _variable_shapes())
