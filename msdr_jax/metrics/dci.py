"""DCI: disentanglement, completeness, informativeness (Eastwood & Williams 2018).

disentanglement_lib's version and study defaults: 10,000 training and 5,000
test points; per factor one gradient-boosted tree classifier
(`GradientBoostingClassifier()` with scikit-learn's defaults) on all latents;
its feature importances form column f of the importance matrix R [K, F].

* disentanglement = sum_i rho_i (1 - H_F(P_i.)), P_i. = R_i. / sum_f R_if the
  distribution of latent i's importance over factors, H_F the entropy with
  log base F, rho_i = sum_f R_if / sum R the weight of latent i;
* completeness = the same with the roles of latents and factors swapped
  (log base K);
* informativeness = the classifiers' mean accuracy, on the training and on
  the test points.

Two implementations of the same learner are selectable (`learner=`):
"gbt" (default) fits it in JAX (`gbt.py`), every factor's classifier in one
compiled program;
"sklearn" calls scikit-learn itself, the reference. disentanglement_lib leaves
scikit-learn's `random_state` unset, and its trees break ties between equally
good splits at random, so its scores differ from run to run (by 0.009 in
test accuracy on `tests/dci_test.py`'s data); here it is fixed, so that the
same codes always give the same scores.
"""

from __future__ import annotations

import jax
import numpy as np
from scipy import stats
from sklearn import ensemble

from msdr_jax.metrics import data
from msdr_jax.metrics import gbt

LEARNERS = ("gbt", "sklearn")
_SCIKIT_LEARN_SEED = 0  # See the module docstring: reproducible reference scores.


def importance_matrix(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    learner: str = "gbt",
    boosting_stages: int = 100,
) -> tuple[np.ndarray, float, float]:
  """R [K, F] and the mean train and test accuracies of the classifiers.

  Each factor's classifier is boosted for `boosting_stages` stages
  (scikit-learn's and disentanglement_lib's 100 by default).
  """
  if learner not in LEARNERS:
    raise ValueError(f"Unknown DCI learner {learner!r}; choose one of {list(LEARNERS)}.")
  if learner == "gbt":
    # Every factor's classifier in one compiled program, and every
    # prediction (training and test points together) in another.
    ensembles = gbt.fit_each(train_codes, train_factors, num_stages=boosting_stages)
    importance = np.stack([trees.feature_importances for trees in ensembles], axis=1)
    predicted = gbt.predict_each(ensembles, np.concatenate([train_codes, test_codes]))
    train_predicted, test_predicted = np.split(predicted, [len(train_codes)])
  else:
    importance, train_predicted, test_predicted = _scikit_learn_fits(
        train_codes, train_factors, test_codes, boosting_stages)
  train_accuracy = np.mean(train_predicted == train_factors, axis=0)
  test_accuracy = np.mean(test_predicted == test_factors, axis=0)
  return importance, float(np.mean(train_accuracy)), float(np.mean(test_accuracy))


def _scikit_learn_fits(train_codes, train_factors, test_codes, boosting_stages):
  """R [K, F] and the predicted training and test factors, scikit-learn's way."""
  importance = np.zeros((train_codes.shape[1], train_factors.shape[1]))
  train_predicted = np.zeros_like(train_factors)
  test_predicted = np.zeros((len(test_codes), train_factors.shape[1]), train_factors.dtype)
  for j in range(train_factors.shape[1]):
    model = ensemble.GradientBoostingClassifier(
        n_estimators=boosting_stages, random_state=_SCIKIT_LEARN_SEED)
    model.fit(train_codes, train_factors[:, j])
    importance[:, j] = np.abs(model.feature_importances_)
    train_predicted[:, j] = model.predict(train_codes)
    test_predicted[:, j] = model.predict(test_codes)
  return importance, train_predicted, test_predicted


def _weighted_one_minus_entropy(importance: np.ndarray) -> float:
  """sum_i rho_i (1 - H_base(P_i.)) over rows i, base = number of columns."""
  if importance.shape[1] == 1:
    per_row = np.ones(importance.shape[0])  # One column: trivially exclusive.
  else:
    per_row = 1.0 - stats.entropy(importance.T + 1e-11, base=importance.shape[1])
  if importance.sum() == 0.0:
    importance = np.ones_like(importance)
  weights = importance.sum(axis=1) / importance.sum()
  return float(np.sum(per_row * weights))


def dci_from_importance(importance: np.ndarray) -> dict[str, float]:
  """Disentanglement and completeness of an importance matrix R [K, F]."""
  return {
      "dci/disentanglement": _weighted_one_minus_entropy(importance),
      "dci/completeness": _weighted_one_minus_entropy(importance.T),
  }


def dci_scores(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    learner: str = "gbt",
    boosting_stages: int = 100,
) -> dict[str, float]:
  """DCI of fixed codes; see the module docstring.

  Returns {"dci/disentanglement", "dci/completeness",
  "dci/informativeness_train", "dci/informativeness_test"}.
  """
  train_codes, train_factors = data.check_codes_and_factors(
      train_codes, train_factors, "DCI")
  test_codes, test_factors = data.check_codes_and_factors(
      test_codes, test_factors, "DCI", min_points=1)
  if test_codes.shape[1] != train_codes.shape[1]:
    raise ValueError(
        f"DCI got {train_codes.shape[1]} training latents but "
        f"{test_codes.shape[1]} test latents.")
  data.check_factors_vary(train_factors, "DCI")
  importance, train_accuracy, test_accuracy = importance_matrix(
      train_codes, train_factors, test_codes, test_factors, learner, boosting_stages)
  return {
      **dci_from_importance(importance),
      "dci/informativeness_train": train_accuracy,
      "dci/informativeness_test": test_accuracy,
  }


def compute_dci(
    representation_fn: data.RepresentationFn,
    dataset,
    seed: int | jax.Array,
    num_train: int = 10_000,
    num_test: int = 5_000,
    learner: str = "gbt",
    boosting_stages: int = 100,
) -> dict[str, float]:
  """DCI of `representation_fn` on points drawn from `dataset`."""
  return dci_scores(*data.sample_train_test(
      representation_fn, dataset, seed, num_train, num_test), learner=learner,
      boosting_stages=boosting_stages)
