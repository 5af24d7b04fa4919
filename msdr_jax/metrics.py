"""Disentanglement metrics on ground-truth factors.

Definitions follow disentanglement_lib (Locatello et al. 2019) and its study
defaults, so numbers are comparable with published tables.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sk_metrics


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
  representation = np.asarray(representation, np.float64)
  factors = np.asarray(factors)
  if representation.ndim != 2 or factors.ndim != 2:
    raise ValueError(
        "MIG needs a [N, K] representation and [N, F] factors, got shapes "
        f"{representation.shape} and {factors.shape}."
    )
  if representation.shape[0] != factors.shape[0]:
    raise ValueError(
        f"MIG got {representation.shape[0]} codes but {factors.shape[0]} factor rows."
    )
  if representation.shape[1] < 2:
    raise ValueError("MIG needs at least two latents to compute a gap.")
  if not np.all(np.isfinite(representation)):
    raise ValueError("MIG got a representation with NaN or infinite values.")
  entropy = discrete_entropy(factors)
  constant = np.flatnonzero(entropy == 0)
  if constant.size:
    raise ValueError(
        f"MIG is undefined for factors with a single value (factor(s) "
        f"{constant.tolist()} have zero entropy); drop them."
    )
  mutual_info = discrete_mutual_info(
      histogram_discretize(representation, num_bins), factors
  )
  top_two = np.sort(mutual_info, axis=0)[::-1][:2]
  gaps = (top_two[0] - top_two[1]) / entropy
  result = {"mig": float(np.mean(gaps))}
  result.update({f"mig/{j}": float(g) for j, g in enumerate(gaps)})
  return result


def conditioning_fidelity(
    codes: np.ndarray, recovered: np.ndarray, active: np.ndarray
) -> dict[str, float | list[float] | None]:
  """How well stage one recovers the codes z it generated from (R^2).

  Args:
    codes: [N, K] codes z that images were generated from.
    recovered: [N, K] stage one's codes of those images.
    active: [K] booleans, the latents to average over (inactive latents
      carry no factor, so their R^2 says nothing about the factors).

  Returns:
    "r2_per_latent": the coefficient of determination of every latent;
    "r2": its plain mean over the active latents;
    "r2_variance_weighted": 1 - sum SS_res / sum SS_tot over the active
      latents, i.e. the fraction of the active code variance recovered
      (scikit-learn's `variance_weighted`). Unlike the plain mean it is not
      dragged down by latents that barely clear the activity threshold and
      whose little variance is mostly encoder noise.
    Both averages are None when no latent is active.
  """
  codes, recovered = np.asarray(codes, np.float64), np.asarray(recovered, np.float64)
  active = np.asarray(active, bool)
  if codes.shape != recovered.shape or codes.shape[1:] != active.shape:
    raise ValueError(
        f"codes {codes.shape}, recovered codes {recovered.shape} and active "
        f"{active.shape} must be [N, K], [N, K] and [K].")
  per_latent = sk_metrics.r2_score(codes, recovered, multioutput="raw_values")
  if not active.any():
    return {"r2_per_latent": per_latent.tolist(), "r2": None,
            "r2_variance_weighted": None}
  return {
      "r2_per_latent": per_latent.tolist(),
      "r2": float(per_latent[active].mean()),
      "r2_variance_weighted": float(sk_metrics.r2_score(
          codes[:, active], recovered[:, active], multioutput="variance_weighted")),
  }
