"""Modularity and explicitness (Ridgeway & Mozer 2018), disentanglement_lib's way.

Study defaults: 10,000 training and 5,000 test points; latents discretised
into 20 equal-width bins for the mutual information.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
from sklearn import exceptions as sk_exceptions
from sklearn import linear_model
from sklearn import metrics as sk_metrics
from sklearn import preprocessing

from msdr_jax.metrics import data
from msdr_jax.metrics import information


def modularity(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> float:
  """Mean over latents of how exclusively each latent informs about one factor.

  With m_if = I(z_i; v_f) after discretising z_i, latent i scores
  1 - (sum_f m_if^2 - max_f m_if^2) / (max_f m_if^2 (F - 1)): 1 when it
  informs about a single factor, 0 when it informs equally about all. A
  latent with no information about any factor scores 0.
  """
  codes, factors = data.check_codes_and_factors(codes, factors, "Modularity")
  if factors.shape[1] < 2:
    raise ValueError("Modularity needs at least two factors.")
  squared = information.discrete_mutual_info(
      information.histogram_discretize(codes, num_bins), factors) ** 2
  largest = squared.max(axis=1)
  deviation = (squared.sum(axis=1) - largest) / np.where(
      largest > 0, largest * (squared.shape[1] - 1.0), 1.0)
  return float(np.mean(np.where(largest > 0, 1.0 - deviation, 0.0)))


def explicitness(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
) -> dict[str, float]:
  """How well a linear classifier on all latents predicts each factor.

  Per factor: scikit-learn's default `LogisticRegression` on the codes
  standardised with the training mean and standard deviation, scored by the
  macro-averaged one-vs-rest ROC AUC of its class probabilities; averaged
  over factors. As in disentanglement_lib the solver stops after its default
  100 iterations (its convergence warning is silenced: the published numbers
  are computed that way). Two documented departures that only matter where
  disentanglement_lib would fail: a constant latent is left unscaled instead
  of divided by a zero deviation (NaN), and a class absent from the scored
  labels is left out of the macro average instead of raising.
  """
  train_codes, train_factors = data.check_codes_and_factors(
      train_codes, train_factors, "Explicitness")
  test_codes, test_factors = data.check_codes_and_factors(
      test_codes, test_factors, "Explicitness")
  data.check_factors_vary(train_factors, "Explicitness")
  mean = train_codes.mean(axis=0)
  scale = train_codes.std(axis=0)
  scale = np.where(scale > 0, scale, 1.0)
  train_inputs = (train_codes - mean) / scale
  test_inputs = (test_codes - mean) / scale
  train_scores, test_scores = [], []
  for j in range(train_factors.shape[1]):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", sk_exceptions.ConvergenceWarning)
      classifier = linear_model.LogisticRegression().fit(train_inputs, train_factors[:, j])
    train_scores.append(_macro_auc(classifier, train_inputs, train_factors[:, j]))
    test_scores.append(_macro_auc(classifier, test_inputs, test_factors[:, j]))
  return {"explicitness/train": float(np.mean(train_scores)),
          "explicitness/test": float(np.mean(test_scores))}


def _macro_auc(classifier, inputs: np.ndarray, labels: np.ndarray) -> float:
  probabilities = classifier.predict_proba(inputs)
  if len(classifier.classes_) == 2:  # label_binarize gives one column then.
    probabilities = probabilities[:, 1:]
  indicators = preprocessing.label_binarize(labels, classes=classifier.classes_)
  scorable = (indicators.min(axis=0) == 0) & (indicators.max(axis=0) == 1)
  if not scorable.any():
    raise ValueError("Explicitness needs labels of at least two classes to score.")
  return float(sk_metrics.roc_auc_score(
      indicators[:, scorable], probabilities[:, scorable], average="macro"))


def modularity_explicitness(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    num_bins: int = 20,
) -> dict[str, float]:
  """{"modularity", "explicitness/train", "explicitness/test"}."""
  return {"modularity": modularity(train_codes, train_factors, num_bins),
          **explicitness(train_codes, train_factors, test_codes, test_factors)}


def compute_modularity_explicitness(
    representation_fn: data.RepresentationFn,
    dataset,
    seed: int | jax.Array,
    num_train: int = 10_000,
    num_test: int = 5_000,
    num_bins: int = 20,
) -> dict[str, float]:
  """Modularity and explicitness of `representation_fn` on `dataset`."""
  return modularity_explicitness(*data.sample_train_test(
      representation_fn, dataset, seed, num_train, num_test), num_bins)
