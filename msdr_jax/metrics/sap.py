"""SAP, the Separated Attribute Predictability score (Kumar et al. 2018).

disentanglement_lib's version for discrete factors and its study defaults:
10,000 training and 5,000 test points. For every (latent i, factor f) a
linear SVM on latent i alone (`LinearSVC(C=0.01, class_weight="balanced")`)
predicts factor f; its test accuracy is S_if. SAP is the mean over factors
of the gap between the two best latents, max_i S_if - second_i S_if.

With discrete factors a perfect latent does not score 1: a one-dimensional
linear one-vs-rest SVM cannot single out the middle values of a factor, and
the second-best (uninformative) latent still scores about chance. For the
identity representation of a balanced binary factor, for instance, the gap
is 1 - 1/2. `continuous_factors=True` selects disentanglement_lib's other
variant, S_if = Cov(z_i, v_f)^2 / (Var z_i Var v_f) on the training points,
for which the identity representation scores 1.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
from sklearn import exceptions as sk_exceptions
from sklearn import svm

from msdr_jax.metrics import data


def score_matrix(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    continuous_factors: bool = False,
) -> np.ndarray:
  """S [K, F]: test accuracy of a linear SVM from latent i to factor f.

  With `continuous_factors`, the squared correlation on the training points
  instead (0 for a latent of variance below 1e-12).
  """
  num_codes, num_factors = train_codes.shape[1], train_factors.shape[1]
  if continuous_factors:
    codes = train_codes - train_codes.mean(0)
    factors = train_factors - train_factors.mean(0)
    covariance = codes.T @ factors / (len(codes) - 1)
    code_variance = codes.var(0, ddof=1)[:, None]
    factor_variance = factors.var(0, ddof=1)[None, :]
    return np.where(code_variance > 1e-12,
                    covariance**2 / np.maximum(code_variance * factor_variance, 1e-300),
                    0.0)
  scores = np.zeros((num_codes, num_factors))
  for i in range(num_codes):
    for j in range(num_factors):
      classifier = svm.LinearSVC(C=0.01, class_weight="balanced")
      with warnings.catch_warnings():
        # A constant latent gives liblinear nothing to fit; it still predicts.
        warnings.simplefilter("ignore", sk_exceptions.ConvergenceWarning)
        classifier.fit(train_codes[:, i : i + 1], train_factors[:, j])
      predicted = classifier.predict(test_codes[:, i : i + 1])
      scores[i, j] = np.mean(predicted == test_factors[:, j])
  return scores


def sap_score(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    continuous_factors: bool = False,
) -> dict[str, float]:
  """SAP of fixed codes: {"sap": score}. Needs two or more latents."""
  train_codes, train_factors = data.check_codes_and_factors(
      train_codes, train_factors, "SAP")
  test_codes, test_factors = data.check_codes_and_factors(
      test_codes, test_factors, "SAP", min_points=1)
  if train_codes.shape[1] < 2:
    raise ValueError("SAP needs at least two latents to compute a gap.")
  data.check_factors_vary(train_factors, "SAP")
  scores = np.sort(score_matrix(
      train_codes, train_factors, test_codes, test_factors, continuous_factors), 0)
  return {"sap": float(np.mean(scores[-1] - scores[-2]))}


def compute_sap(
    representation_fn: data.RepresentationFn,
    dataset,
    seed: int | jax.Array,
    num_train: int = 10_000,
    num_test: int = 5_000,
    continuous_factors: bool = False,
) -> dict[str, float]:
  """SAP of `representation_fn` on points drawn from `dataset`."""
  return sap_score(*data.sample_train_test(
      representation_fn, dataset, seed, num_train, num_test), continuous_factors)
