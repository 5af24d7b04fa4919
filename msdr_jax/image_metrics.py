r"""Reconstruction and sample-quality metrics for images in [0, 1].

Reconstruction (per image, batched over the leading axis; JAX):

* `bernoulli_cross_entropy`, `squared_error`: summed over pixels, the
  convention of `losses` and `evaluators`;
* `psnr`: from the per-pixel mean squared error, capped at 100 dB;
* `ssim`: Wang et al. (2004) with the constants of `tf.image.ssim`;
* `reconstruction_metrics`: their means over a batch.

Sample quality (numpy float64 on features of a fixed network):

* `frechet_distance` (FID, Heusel et al. 2017) and
  `kernel_inception_distance` (KID, Binkowski et al. 2018);
* `sample_quality`: both, on the features of a `FeatureExtractor`.

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

# ----------------------------------------------------------------------------
# Reconstruction metrics.

# Probabilities are clipped to [eps, 1 - eps] before the logarithms, so that a
# decoder that is certain and wrong costs -log(1e-7) = 16.1 nats per pixel
# instead of infinity.
_BCE_EPSILON = 1e-7

# PSNR is computed from max(mse, _PSNR_MSE_FLOOR * data_range^2), i.e. capped
# at 100 dB: an exact reconstruction gets 100 dB instead of +inf (which would
# make any mean over images infinite), and any reconstruction better than
# that (errors of 1e-5 of the range per pixel) is indistinguishable from it.
_PSNR_MSE_FLOOR = 1e-10

# Wang et al. (2004) / tf.image.ssim constants.
_SSIM_WINDOW_SIZE = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def _per_image_sum(values: jax.Array) -> jax.Array:
  return values.reshape(values.shape[0], -1).sum(-1)


def bernoulli_cross_entropy(images: jax.Array, probabilities: jax.Array) -> jax.Array:
  r"""Per-image summed Bernoulli cross-entropy in nats, shape [N].

  BCE(x, p) = -\sum_pixels [x log p + (1 - x) log(1 - p)], with x in [0, 1]
  (not necessarily binary) and p clipped to [1e-7, 1 - 1e-7].

  Args:
    images: [N, ...] targets in [0, 1].
    probabilities: [N, ...] decoder means, same shape.
  """
  images = jnp.asarray(images, jnp.float32)
  p = jnp.clip(jnp.asarray(probabilities, jnp.float32), _BCE_EPSILON,
               1.0 - _BCE_EPSILON)
  return -_per_image_sum(images * jnp.log(p) + (1.0 - images) * jnp.log1p(-p))


def squared_error(images: jax.Array, reconstructions: jax.Array) -> jax.Array:
  r"""Per-image summed squared error \sum_pixels (x - \hat x)^2, shape [N]."""
  difference = (jnp.asarray(images, jnp.float32)
                - jnp.asarray(reconstructions, jnp.float32))
  return _per_image_sum(difference ** 2)


def psnr(images: jax.Array, reconstructions: jax.Array,
         data_range: float = 1.0) -> jax.Array:
  r"""Per-image peak signal-to-noise ratio in dB, shape [N].

  PSNR = 10 log10(L^2 / max(MSE, 1e-10 L^2)), with L = `data_range` and MSE
  the mean over pixels (and channels) of one image: at most 100 dB, which is
  also the value of an exact reconstruction. Never NaN or infinite.
  """
  images = jnp.asarray(images, jnp.float32)
  mse = squared_error(images, reconstructions) / math.prod(images.shape[1:])
  mse = jnp.maximum(mse, _PSNR_MSE_FLOOR * data_range ** 2)
  return 10.0 * jnp.log10(data_range ** 2 / mse)


def _gaussian_window() -> np.ndarray:
  """Normalised 1-D Gaussian taps, 11 of them, sigma 1.5.

  The 2-D window of Wang et al. is their outer product (it sums to 1 like
  the 1-D one), the same as tf.image.ssim's and as scipy's gaussian_filter
  truncated at 3.5 sigma (scikit-image's `gaussian_weights=True`).
  """
  offsets = np.arange(_SSIM_WINDOW_SIZE) - (_SSIM_WINDOW_SIZE - 1) / 2
  taps = np.exp(-offsets ** 2 / (2 * _SSIM_SIGMA ** 2))
  return taps / taps.sum()


def _gaussian_filter_valid(maps: jax.Array) -> jax.Array:
  """Gaussian-weighted local means of [B, H, W] maps -> [B, H - 10, W - 10].

  'valid' filtering: only windows that lie inside the image. The 2-D window
  is separable, so it is applied as an 11x1 then a 1x11 convolution.
  """
  window = jnp.asarray(_gaussian_window(), maps.dtype)
  x = maps[..., None]
  for kernel_shape in ((_SSIM_WINDOW_SIZE, 1, 1, 1), (1, _SSIM_WINDOW_SIZE, 1, 1)):
    x = lax.conv_general_dilated(
        x, window.reshape(kernel_shape), window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        # Full float32 on every device (no TF32 / bfloat16 passes).
        precision=lax.Precision.HIGHEST)
  return x[..., 0]


@jax.jit
def _ssim(images: jax.Array, reconstructions: jax.Array,
          data_range: jax.Array) -> jax.Array:
  c1 = (_SSIM_K1 * data_range) ** 2
  c2 = (_SSIM_K2 * data_range) ** 2
  num_images, height, width, channels = images.shape
  # One [H, W] map per (image, channel): SSIM treats channels separately.
  x = images.transpose(0, 3, 1, 2).reshape(-1, height, width)
  y = reconstructions.transpose(0, 3, 1, 2).reshape(-1, height, width)
  # The (co)variances are computed from values centred on each map's global
  # mean: E[x^2] - E[x]^2 then cancels far less in float32, and is exactly 0
  # on a constant map.
  x_offset = x.mean(axis=(1, 2), keepdims=True)
  y_offset = y.mean(axis=(1, 2), keepdims=True)
  x, y = x - x_offset, y - y_offset
  local = _gaussian_filter_valid(
      jnp.concatenate([x, y, x * x, y * y, x * y], axis=0))
  mean_x, mean_y, mean_xx, mean_yy, mean_xy = jnp.split(local, 5, axis=0)
  var_x = mean_xx - mean_x ** 2
  var_y = mean_yy - mean_y ** 2
  cov_xy = mean_xy - mean_x * mean_y
  mu_x, mu_y = mean_x + x_offset, mean_y + y_offset
  luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
  contrast_structure = (2 * cov_xy + c2) / (var_x + var_y + c2)
  per_map = (luminance * contrast_structure).mean(axis=(1, 2))
  return per_map.reshape(num_images, channels).mean(axis=1)


def ssim(images: jax.Array, reconstructions: jax.Array,
         data_range: float = 1.0) -> jax.Array:
  r"""Per-image structural similarity (Wang et al. 2004), shape [N].

  With Gaussian-weighted local statistics (11x11 window, sigma 1.5) mu_x,
  mu_y, sigma_x^2, sigma_y^2, sigma_xy at every position where the window
  fits inside the image ('valid', no padding):

    SSIM = (2 mu_x mu_y + C1) (2 sigma_xy + C2)
           / ((mu_x^2 + mu_y^2 + C1) (sigma_x^2 + sigma_y^2 + C2)),

  C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = `data_range`; averaged over positions
  and then channels. The variances are the window-weighted ones (no N/(N-1)
  correction), as in tf.image.ssim and scikit-image's
  `structural_similarity(gaussian_weights=True, use_sample_covariance=False)`.

  Args:
    images: [N, H, W, C] with H, W >= 11.
    reconstructions: same shape.
    data_range: L, the range of pixel values (1 for images in [0, 1]).

  Raises:
    ValueError: for shapes that differ, are not [N, H, W, C] or are smaller
      than the window.
  """
  images = jnp.asarray(images, jnp.float32)
  reconstructions = jnp.asarray(reconstructions, jnp.float32)
  if images.shape != reconstructions.shape:
    raise ValueError(
        f"SSIM needs images and reconstructions of one shape, got {images.shape} "
        f"and {reconstructions.shape}.")
  if images.ndim != 4:
    raise ValueError(f"SSIM needs images [N, H, W, C], got shape {images.shape}.")
  if min(images.shape[1:3]) < _SSIM_WINDOW_SIZE:
    raise ValueError(
        f"SSIM needs images of at least {_SSIM_WINDOW_SIZE}x{_SSIM_WINDOW_SIZE} "
        f"pixels (its Gaussian window), got {images.shape[1]}x{images.shape[2]}.")
  return _ssim(images, reconstructions, jnp.float32(data_range))


def reconstruction_metrics(images: jax.Array,
                           probabilities: jax.Array) -> dict[str, float]:
  """Means over a batch of the per-image reconstruction metrics.

  The decoder's mean image `probabilities` is the reconstruction for every
  metric.

  Args:
    images: [N, H, W, C] in [0, 1], H, W >= 11.
    probabilities: [N, H, W, C] decoder means in [0, 1].

  Returns:
    {"bce": `bernoulli_cross_entropy` (nats per image), "mse":
    `squared_error` (summed over an image's pixels, like the evaluators'
    reconstruction_mse), "psnr": `psnr` (dB), "ssim": `ssim`}, each the mean
    over the N images.
  """
  return {
      "bce": float(bernoulli_cross_entropy(images, probabilities).mean()),
      "mse": float(squared_error(images, probabilities).mean()),
      "psnr": float(psnr(images, probabilities).mean()),
      "ssim": float(ssim(images, probabilities).mean()),
  }


# ----------------------------------------------------------------------------
# Distances between feature distributions.


def _feature_matrix(features: np.ndarray, what: str) -> np.ndarray:
  features = np.asarray(features, np.float64)
  if features.ndim != 2:
    raise ValueError(f"{what} must be [N, D] features, got shape {features.shape}.")
  if features.shape[0] < 2:
    raise ValueError(
        f"{what} has {features.shape[0]} sample(s); a covariance or an "
        "unbiased MMD needs at least 2.")
  if not np.all(np.isfinite(features)):
    raise ValueError(f"{what} contains NaN or infinite values.")
  return features


def _feature_pair(features_a, features_b) -> tuple[np.ndarray, np.ndarray]:
  a = _feature_matrix(features_a, "features_a")
  b = _feature_matrix(features_b, "features_b")
  if a.shape[1] != b.shape[1]:
    raise ValueError(
        f"Feature dimensions differ: {a.shape[1]} (features_a) and "
        f"{b.shape[1]} (features_b).")
  return a, b


def _covariance_factor(features: np.ndarray) -> np.ndarray:
  r"""R with R^T R = the sample covariance (N - 1 in the denominator).

  The triangular factor of a QR decomposition of the centred features
  X_c = Q R: X_c^T X_c = R^T Q^T Q R = R^T R. Shape [min(N, D), D].
  """
  centred = features - features.mean(axis=0)
  return np.linalg.qr(centred, mode="r") / math.sqrt(features.shape[0] - 1)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  r"""Fréchet distance between Gaussians fitted to two feature sets (FID).

    d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}),

  with sample means mu and sample covariances S (N - 1 in the denominator),
  as pytorch-fid and the TTUR code compute them.

  The trace of the matrix square root is computed without forming one: for
  any factors S_a = R_a^T R_a, S_b = R_b^T R_b, the eigenvalues of S_a S_b
  are the squared singular values of R_a R_b^T, so
  Tr (S_a S_b)^{1/2} = ||R_a R_b^T||_* (nuclear norm). With R from a QR of
  the centred features this costs two QRs and one SVD of at most D x D, has
  no complex part to discard (scipy.linalg.sqrtm's usual problem) and stays
  accurate when the covariances are singular (fewer samples than feature
  dimensions), where sqrtm loses accuracy. Computed in float64; rounding can
  leave a value of about -1e-12 times the covariance scale for equal sets.

  Args:
    features_a: [N_a, D] features, N_a >= 2.
    features_b: [N_b, D] features, N_b >= 2.

  Raises:
    ValueError: for fewer than 2 samples, mismatched D, or non-finite values.
  """
  a, b = _feature_pair(features_a, features_b)
  mean_difference = a.mean(axis=0) - b.mean(axis=0)
  factor_a, factor_b = _covariance_factor(a), _covariance_factor(b)
  trace_a = np.sum(factor_a ** 2)  # Tr S_a = ||R_a||_F^2.
  trace_b = np.sum(factor_b ** 2)
  trace_sqrt = np.linalg.svd(factor_a @ factor_b.T, compute_uv=False).sum()
  return float(mean_difference @ mean_difference + trace_a + trace_b
               - 2.0 * trace_sqrt)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x . y / d + 1)^3 for all pairs of rows."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  r"""Unbiased MMD^2 between two samples of m rows, polynomial kernel.

    MMD^2_u = 1/(m(m-1)) \sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)]
              - 2/m^2 \sum_{i, j} k(x_i, y_j),

  with k(x, y) = (x . y / d + 1)^3 (Binkowski et al. 2018, eq. 3 with
  their kernel). Unbiased, hence negative at times for equal distributions.
  """
  if x.shape != y.shape or x.shape[0] < 2:
    raise ValueError(
        f"The unbiased MMD^2 needs two [m, d] samples with m >= 2, got shapes "
        f"{x.shape} and {y.shape}.")
  m = x.shape[0]
  k_xx, k_yy = _polynomial_kernel(x, x), _polynomial_kernel(y, y)
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * _polynomial_kernel(x, y).sum() / (m * m))


def kernel_inception_distance(
    features_a: np.ndarray, features_b: np.ndarray, num_subsets: int = 100,
    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """KID (Binkowski et al. 2018): `unbiased_mmd2` averaged over subsets.

  Each of the `num_subsets` draws takes `subset_size` rows of each set
  without replacement (independently per set and draw, numpy generator
  seeded with `seed`), as the reference implementation does. `subset_size`
  is capped at the smaller set's size.

  Args:
    features_a: [N_a, D] features, N_a >= 2.
    features_b: [N_b, D] features, N_b >= 2.
    num_subsets: number of subset draws.
    subset_size: rows per set and draw.
    seed: seed of the subset draws.

  Returns:
    (mean, standard deviation) of the MMD^2 over the draws; the standard
    deviation is that of one draw, not the standard error of the mean.

  Raises:
    ValueError: for fewer than 2 samples, mismatched D, non-finite values or
      a non-positive `num_subsets`.
  """
  a, b = _feature_pair(features_a, features_b)
  if num_subsets < 1:
    raise ValueError(f"num_subsets must be positive, got {num_subsets}.")
  m = min(subset_size, a.shape[0], b.shape[0])
  if m < 2:
    raise ValueError(f"subset_size must be at least 2, got {subset_size}.")
  rng = np.random.default_rng(seed)
  values = [
      unbiased_mmd2(a[rng.choice(a.shape[0], m, replace=False)],
                    b[rng.choice(b.shape[0], m, replace=False)])
      for _ in range(num_subsets)
  ]
  return float(np.mean(values)), float(np.std(values))


# ----------------------------------------------------------------------------
# Feature extractors.

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


def sample_quality(real_images: np.ndarray, generated_images: np.ndarray,
                   extractor: FeatureExtractor, batch_size: int = 100,
                   kid_num_subsets: int = 100, kid_subset_size: int = 1000,
                   seed: int = 0) -> dict[str, float]:
  """FID and KID between real and generated images, on `extractor`'s features.

  Args:
    real_images: [N_r, H, W, C] in [0, 1], N_r >= 2.
    generated_images: [N_g, H', W', C'] in [0, 1], N_g >= 2.
    extractor: see `make_feature_extractor`.
    batch_size: images per extractor call.
    kid_num_subsets, kid_subset_size, seed: see `kernel_inception_distance`.

  Returns:
    {"fid": `frechet_distance`, "kid": mean and "kid_std": standard deviation
    of `kernel_inception_distance`}. Both estimators are biased or noisy at
    small N: compare numbers computed from equal sample sizes.
  """
  real = extract_features(real_images, extractor, batch_size)
  generated = extract_features(generated_images, extractor, batch_size)
  kid, kid_std = kernel_inception_distance(
      real, generated, kid_num_subsets, kid_subset_size, seed)
  return {"fid": frechet_distance(real, generated), "kid": kid, "kid_std": kid_std}
