"""The mutual information gap (MIG) and its discrete information estimators.

MIG (and modularity, `modularity.py`) discretise each latent into equal-width histogram bins (20 in
disentanglement_lib's study) and measure discrete mutual information with
the factors, as disentanglement_lib does.
"""

from __future__ import annotations

import jax
import numpy as np
from sklearn import metrics as sk_metrics

from msdr_jax.metrics import data


def histogram_discretize(values: np.ndarray, num_bins: int = 20) -> np.ndarray:
  """Discretises each column into `num_bins` equal-width bins over its range.

  disentanglement_lib's `_histogram_discretize`: bin edges from
  `np.histogram`, indices from `np.digitize` on the left edges, so values lie
  in 1..num_bins and the maximum falls into the last bin.
  """
  values = np.asarray(values)
  discretized = np.zeros(values.shape, np.int64)
  for j in range(values.shape[1]):
    edges = np.histogram(values[:, j], num_bins)[1][:-1]
    discretized[:, j] = np.digitize(values[:, j], edges)
  return discretized


def discrete_mutual_info(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
  """I(code_i; factor_j) in nats for discrete columns, shape [codes, factors]."""
  return np.array([
      [sk_metrics.mutual_info_score(factors[:, j], codes[:, i])
       for j in range(factors.shape[1])]
      for i in range(codes.shape[1])
  ])


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
  """H(factor_j) in nats for each discrete column."""
  return np.array([
      sk_metrics.mutual_info_score(factors[:, j], factors[:, j])
      for j in range(factors.shape[1])
  ])


def mutual_information_gap(
    representation: np.ndarray, factors: np.ndarray, num_bins: int = 20
) -> dict[str, float]:
  """MIG (Chen et al. 2018) as computed by disentanglement_lib.

  For each factor v_k: (I(z_a; v_k) - I(z_b; v_k)) / H(v_k), with z_a and z_b
  the two latents sharing the most information with v_k, after discretising
  every latent into `num_bins` equal-width bins; averaged over factors.

  Args:
    representation: [N, K] latent codes (the encoder means), K >= 2.
    factors: [N, F] integer ground-truth factors, each taking >= 2 values.
    num_bins: histogram bins per latent (20 in disentanglement_lib).

  Returns:
    {'mig': mean gap, 'mig/<j>': gap of factor j}.
  """
  representation, factors = data.check_codes_and_factors(
      representation, factors, "MIG")
  if representation.shape[1] < 2:
    raise ValueError("MIG needs at least two latents to compute a gap.")
  data.check_factors_vary(factors, "MIG")
  entropy = discrete_entropy(factors)
  mutual_info = discrete_mutual_info(
      histogram_discretize(representation, num_bins), factors
  )
  top_two = np.sort(mutual_info, axis=0)[::-1][:2]
  gaps = (top_two[0] - top_two[1]) / entropy
  result = {"mig": float(np.mean(gaps))}
  result.update({f"mig/{j}": float(g) for j, g in enumerate(gaps)})
  return result


def compute_mig(
    representation_fn: data.RepresentationFn,
    dataset,
    seed: int | jax.Array,
    num_train: int = 10_000,
    num_bins: int = 20,
) -> dict[str, float]:
  """MIG of `representation_fn` on `num_train` points drawn from `dataset`."""
  codes, factors = data.sample_codes(
      representation_fn, dataset, data.as_key(seed), num_train)
  return mutual_information_gap(codes, factors, num_bins)

