"""A straightforward numpy / scikit-learn implementation of the metric suite.

This is the yardstick of `benchmarks/metrics_suite.py`: the definitions of
`msdr_jax.metrics`, written the way disentanglement_lib writes them (its
`generate_batch_factor_code` loop with batch 16, one Python iteration per
BetaVAE point and per FactorVAE vote, one scikit-learn
`GradientBoostingClassifier()` per DCI factor, one `LinearSVC` per SAP cell).
It consumes factor arrays drawn by `msdr_jax.metrics`, so both
implementations score the very same images. Not part of the library.

`images_fn(factors [n, F]) -> images` and `representation_fn(images) ->
codes` are plain callables; codes come back as numpy arrays.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.stats
from sklearn import ensemble
from sklearn import exceptions as sk_exceptions
from sklearn import linear_model
from sklearn import metrics as sk_metrics
from sklearn import preprocessing
from sklearn import svm

warnings.simplefilter("ignore", sk_exceptions.ConvergenceWarning)


def obtain_codes(images_fn, representation_fn, factors, batch_size=16):
  """disentanglement_lib's `generate_batch_factor_code`, on given factors."""
  codes = []
  for start in range(0, len(factors), batch_size):
    images = images_fn(factors[start : start + batch_size])
    codes.append(np.asarray(representation_fn(images), np.float64))
  return np.concatenate(codes)


def _histogram_discretize(target, num_bins=20):
  discretized = np.zeros_like(target, dtype=np.int64)
  for i in range(target.shape[0]):
    discretized[i, :] = np.digitize(
        target[i, :], np.histogram(target[i, :], num_bins)[1][:-1])
  return discretized


def _discrete_mutual_info(mus, ys):
  m = np.zeros([mus.shape[0], ys.shape[0]])
  for i in range(mus.shape[0]):
    for j in range(ys.shape[0]):
      m[i, j] = sk_metrics.mutual_info_score(ys[j, :], mus[i, :])
  return m


def _discrete_entropy(ys):
  h = np.zeros(ys.shape[0])
  for j in range(ys.shape[0]):
    h[j] = sk_metrics.mutual_info_score(ys[j, :], ys[j, :])
  return h


def mig(codes, factors, num_bins=20):
  mus, ys = codes.T, factors.T
  m = _discrete_mutual_info(_histogram_discretize(mus, num_bins), ys)
  entropy = _discrete_entropy(ys)
  sorted_m = np.sort(m, axis=0)[::-1]
  return {"mig": float(np.mean((sorted_m[0, :] - sorted_m[1, :]) / entropy))}


def dci(train_codes, train_factors, test_codes, test_factors):
  x_train, y_train = train_codes.T, train_factors.T
  x_test, y_test = test_codes.T, test_factors.T
  importance = np.zeros([x_train.shape[0], y_train.shape[0]])
  train_loss, test_loss = [], []
  for i in range(y_train.shape[0]):
    model = ensemble.GradientBoostingClassifier()
    model.fit(x_train.T, y_train[i, :])
    importance[:, i] = np.abs(model.feature_importances_)
    train_loss.append(np.mean(model.predict(x_train.T) == y_train[i, :]))
    test_loss.append(np.mean(model.predict(x_test.T) == y_test[i, :]))

  def weighted(matrix):
    per_row = 1.0 - scipy.stats.entropy(matrix.T + 1e-11, base=matrix.shape[1])
    if matrix.sum() == 0.0:
      matrix = np.ones_like(matrix)
    return float(np.sum(per_row * matrix.sum(axis=1) / matrix.sum()))

  return {"dci/disentanglement": weighted(importance),
          "dci/completeness": weighted(importance.T),
          "dci/informativeness_train": float(np.mean(train_loss)),
          "dci/informativeness_test": float(np.mean(test_loss))}


def sap(train_codes, train_factors, test_codes, test_factors):
  mus, ys, mus_test, ys_test = train_codes.T, train_factors.T, test_codes.T, test_factors.T
  score_matrix = np.zeros([mus.shape[0], ys.shape[0]])
  for i in range(mus.shape[0]):
    for j in range(ys.shape[0]):
      classifier = svm.LinearSVC(C=0.01, class_weight="balanced")
      classifier.fit(mus[i, :][:, np.newaxis], ys[j, :])
      pred = classifier.predict(mus_test[i, :][:, np.newaxis])
      score_matrix[i, j] = np.mean(pred == ys_test[j, :])
  sorted_matrix = np.sort(score_matrix, axis=0)
  return {"sap": float(np.mean(sorted_matrix[-1, :] - sorted_matrix[-2, :]))}


def modularity_explicitness(train_codes, train_factors, test_codes, test_factors,
                            num_bins=20):
  mus_train, ys_train = train_codes.T, train_factors.T
  mus_test, ys_test = test_codes.T, test_factors.T
  mutual_information = _discrete_mutual_info(
      _histogram_discretize(mus_train, num_bins), ys_train)
  squared_mi = np.square(mutual_information)
  max_squared_mi = np.max(squared_mi, axis=1)
  numerator = np.sum(squared_mi, axis=1) - max_squared_mi
  denominator = max_squared_mi * (squared_mi.shape[1] - 1.0)
  modularity_score = 1.0 - numerator / denominator
  modularity_score[max_squared_mi == 0.0] = 0.0
  mean, std = mus_train.mean(axis=1), mus_train.std(axis=1)
  x_train = ((mus_train - mean[:, None]) / std[:, None]).T
  x_test = ((mus_test - mean[:, None]) / std[:, None]).T
  train_scores, test_scores = [], []
  for i in range(ys_train.shape[0]):
    clf = linear_model.LogisticRegression().fit(x_train, ys_train[i, :])
    mlb = preprocessing.MultiLabelBinarizer()
    train_scores.append(sk_metrics.roc_auc_score(
        mlb.fit_transform(np.expand_dims(ys_train[i, :], 1)), clf.predict_proba(x_train)))
    test_scores.append(sk_metrics.roc_auc_score(
        mlb.fit_transform(np.expand_dims(ys_test[i, :], 1)), clf.predict_proba(x_test)))
  return {"modularity": float(np.mean(modularity_score)),
          "explicitness/train": float(np.mean(train_scores)),
          "explicitness/test": float(np.mean(test_scores))}


def beta_vae(images_fn, representation_fn, train_pairs, train_labels,
             eval_pairs, eval_labels, seed=0):
  """`*_pairs`: [n, 2B, F] factors (first batch, then second) per point."""

  def features(pairs):
    points = []
    for factors in pairs:  # One point per iteration, as disentanglement_lib.
      half = len(factors) // 2
      first = np.asarray(representation_fn(images_fn(factors[:half])))
      second = np.asarray(representation_fn(images_fn(factors[half:])))
      points.append(np.mean(np.abs(first - second), axis=0))
    return np.array(points)

  train_points = features(train_pairs)
  model = linear_model.LogisticRegression(random_state=seed)
  model.fit(train_points, train_labels)
  eval_points = features(eval_pairs)
  return {"beta_vae/train_accuracy": float(model.score(train_points, train_labels)),
          "beta_vae/eval_accuracy": float(model.score(eval_points, eval_labels))}


def factor_vae(images_fn, representation_fn, variance_factors, train_batches,
               train_labels, eval_batches, eval_labels, num_factors,
               prune_threshold=0.05):
  """`*_batches`: [n, B, F] factors per vote; `variance_factors` [m, F]."""
  representations = obtain_codes(images_fn, representation_fn, variance_factors, 64)
  global_variances = np.var(representations, axis=0, ddof=1)
  active_dims = np.sqrt(global_variances) >= prune_threshold

  def votes(batches, labels):
    counts = np.zeros((num_factors, global_variances.shape[0]), dtype=np.int64)
    for factors, factor_index in zip(batches, labels):
      local = np.var(np.asarray(representation_fn(images_fn(factors))), axis=0, ddof=1)
      argmin = np.argmin(local[active_dims] / global_variances[active_dims])
      counts[factor_index, argmin] += 1
    return counts

  training_votes = votes(train_batches, train_labels)
  classifier = np.argmax(training_votes, axis=0)
  other_index = np.arange(training_votes.shape[1])
  eval_votes = votes(eval_batches, eval_labels)
  return {
      "factor_vae/train_accuracy": float(
          np.sum(training_votes[classifier, other_index]) / np.sum(training_votes)),
      "factor_vae/eval_accuracy": float(
          np.sum(eval_votes[classifier, other_index]) / np.sum(eval_votes)),
      "factor_vae/num_active_latents": float(active_dims.sum()),
  }
