r"""Fixed networks whose features FID and KID compare (`sample_quality`).

Feature extractors (`make_feature_extractor(name, weights_path)`):

* `"random_conv"`, the default: a fixed, randomly initialised conv net. It is
  the default because the Inception weights cannot be downloaded at run time
  here. Its weights are the same on every run and machine, so its FID/KID
  compare runs *of this library* with each other; they are on an unrelated
  scale and can never be compared with published FID or KID.
* `"inception_v3"`: pytorch-fid's FID Inception-v3 (pool3, 2048-d;
  `models/inception.py`) with weights from a local `.npz` made by
  `experiments/convert_inception_weights.py`. Only these features give FID
  and KID comparable with the literature (for the same number of samples:
  both estimators depend on it).
"""

from __future__ import annotations

import functools
import math
import pathlib
from typing import Callable, Sequence
import zipfile

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from msdr_jax.models import inception

# Images [N, H, W, C] float in [0, 1], C = 1 or 3 -> features [N, D].
FeatureExtractor = Callable[[jax.Array], jax.Array]

_CONVERT_HINT = (
    "Make the weights file on a machine with torch and internet access: "
    "`python -m experiments.convert_inception_weights --output=pt_inception.npz` "
    "(see experiments/convert_inception_weights.py), copy it here and pass its "
    "path as weights_path.")

# NumPy's legacy RandomState stream is frozen by NumPy's compatibility policy;
# jax.random's values for a given key are not (they changed with JAX 0.5's
# `jax_threefry_partitionable` default), and the random features must never
# change, or FIDs of different runs stop being comparable.
_RANDOM_CONV_SEED = 0


def _three_channels(images: jax.Array) -> jax.Array:
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(
        f"Feature extractors need images [N, H, W, C] with C = 1 or 3, got "
        f"shape {images.shape}.")
  return jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


class RandomConvFeatures(nn.Module):
  """A fixed random conv net: stride-2 3x3 convs with ReLU, pooled per stage.

  Images in [0, 1] are mapped to [-1, 1] and grey images repeated to three
  channels (so a grey image and its RGB copy have the same features). The
  features are the global averages of every stage's activations,
  concatenated (64 + 128 + 256 + 512 = 960): a random network has no learned
  hierarchy, so its early stages (intensity, edges) carry as much of the
  image statistics as its last one.
  """

  widths: Sequence[int] = (64, 128, 256, 512)

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = 2.0 * _three_channels(images) - 1.0
    pooled = []
    for width in self.widths:
      x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2), padding="SAME",
                          precision=lax.Precision.HIGHEST)(x))
      pooled.append(x.mean(axis=(1, 2)))
    return jnp.concatenate(pooled, axis=-1)


def _random_conv_params(module: RandomConvFeatures) -> dict:
  """He-normal kernels and zero biases from RandomState(_RANDOM_CONV_SEED).

  Leaves are filled in the (sorted) order of jax.tree_util, so the values
  depend only on the architecture.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jnp.zeros((1, 8, 8, 3)))["params"]
  rng = np.random.RandomState(_RANDOM_CONV_SEED)

  def fill(path, leaf):
    if path[-1].key == "bias":
      return jnp.zeros(leaf.shape, jnp.float32)
    fan_in = math.prod(leaf.shape[:-1])
    values = rng.standard_normal(leaf.shape) * math.sqrt(2.0 / fan_in)
    return jnp.asarray(values, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _make_random_conv(weights_path: str | None) -> FeatureExtractor:
  if weights_path is not None:
    raise ValueError(
        "The 'random_conv' extractor has fixed random weights and takes no "
        f"weights_path (got {weights_path!r}).")
  module = RandomConvFeatures()
  params = _random_conv_params(module)
  return functools.partial(jax.jit(module.apply), {"params": params})


def _load_inception_variables(weights_path: str | None):
  if weights_path is None:
    raise ValueError(
        "The 'inception_v3' extractor needs weights_path, a local .npz of "
        f"pytorch-fid's FID Inception weights. {_CONVERT_HINT}")
  path = pathlib.Path(weights_path)
  if not path.is_file():
    raise ValueError(f"Inception weights file {path} does not exist. {_CONVERT_HINT}")
  try:
    with np.load(path) as archive:
      state_dict = {name: archive[name] for name in archive.files}
  except (OSError, ValueError, zipfile.BadZipFile) as error:
    raise ValueError(
        f"Inception weights file {path} is not a readable .npz ({error}). "
        f"{_CONVERT_HINT}") from error
  try:
    return inception.variables_from_state_dict(state_dict)
  except ValueError as error:
    raise ValueError(
        f"Inception weights file {path} does not fit the network: {error} "
        f"{_CONVERT_HINT}") from error


def _make_inception_v3(weights_path: str | None) -> FeatureExtractor:
  variables = _load_inception_variables(weights_path)
  model = inception.FIDInceptionV3()

  # The weights are an argument, not a closure: XLA would otherwise embed
  # 22M parameters as constants and spend minutes folding them.
  @jax.jit
  def features(variables, images):
    return model.apply(variables, inception.preprocess(images))

  return functools.partial(features, variables)


FEATURE_EXTRACTORS: dict[str, Callable[[str | None], FeatureExtractor]] = {
    "random_conv": _make_random_conv,
    "inception_v3": _make_inception_v3,
}


def make_feature_extractor(name: str = "random_conv",
                           weights_path: str | None = None) -> FeatureExtractor:
  """A jitted function images [N, H, W, C] in [0, 1] (C = 1 or 3) -> [N, D].

  Args:
    name: "random_conv" (D = 960, no weights; comparable only between runs of
      this library) or "inception_v3" (D = 2048, pytorch-fid's FID network;
      comparable with published FID).
    weights_path: for "inception_v3", the `.npz` written by
      experiments/convert_inception_weights.py; None for "random_conv".

  Raises:
    ValueError: for an unknown name, or weights that are missing, unreadable
      or do not fit the network.
  """
  if name not in FEATURE_EXTRACTORS:
    raise ValueError(
        f"Unknown feature extractor {name!r}; known: {', '.join(sorted(FEATURE_EXTRACTORS))}.")
  return FEATURE_EXTRACTORS[name](weights_path)


def extract_features(images: np.ndarray, extractor: FeatureExtractor,
                     batch_size: int = 100) -> np.ndarray:
  """Runs `extractor` over `images` in batches -> float64 features [N, D].

  Every batch has the same size (the last one is zero-padded and the padding
  dropped), so a jitted extractor compiles once.
  """
  images = np.asarray(images, np.float32)
  if images.shape[0] == 0 or batch_size < 1:
    raise ValueError(
        f"Need at least one image and a positive batch size, got {images.shape[0]} "
        f"images and batch_size {batch_size}.")
  batch_size = min(batch_size, images.shape[0])
  features = []
  for start in range(0, images.shape[0], batch_size):
    batch = images[start:start + batch_size]
    num_real = batch.shape[0]
    if num_real < batch_size:
      padding = np.zeros((batch_size - num_real, *batch.shape[1:]), batch.dtype)
      batch = np.concatenate([batch, padding])
    features.append(np.asarray(extractor(jnp.asarray(batch)), np.float64)[:num_real])
  return np.concatenate(features)


