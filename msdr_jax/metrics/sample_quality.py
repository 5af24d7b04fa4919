r"""Sample quality of images in [0, 1]: numpy float64 on features of a fixed network.

* `frechet_distance` (FID, Heusel et al. 2017) and
  `kernel_inception_distance` (KID, Binkowski et al. 2018);
* `sample_quality`: both, on the features of a `FeatureExtractor`.

Feature extractors are in `feature_extractors`.
"""

from __future__ import annotations

import math

import numpy as np

from msdr_jax.metrics import feature_extractors


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


def sample_quality(real_images: np.ndarray, generated_images: np.ndarray,
                   extractor: feature_extractors.FeatureExtractor, batch_size: int = 100,
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
  real = feature_extractors.extract_features(real_images, extractor, batch_size)
  generated = feature_extractors.extract_features(generated_images, extractor, batch_size)
  kid, kid_std = kernel_inception_distance(
      real, generated, kid_num_subsets, kid_subset_size, seed)
  return {"fid": frechet_distance(real, generated), "kid": kid, "kid_std": kid_std}
