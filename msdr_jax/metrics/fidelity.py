"""Conditioning fidelity: does stage two keep the factors it is given?"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sk_metrics


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
