"""Reconstruction metrics for images in [0, 1] (JAX, batched over the leading axis).

* `bernoulli_cross_entropy`, `squared_error`: summed over pixels, the
  convention of `losses` and the evaluators;
* `psnr`: from the per-pixel mean squared error, capped at 100 dB;
* `ssim`: Wang et al. (2004) with the constants of `tf.image.ssim`;
* `reconstruction_metrics`: their means over a batch.
"""

from __future__ import annotations

import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

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
