"""The BetaVAE score (Higgins et al. 2017), disentanglement_lib's version.

One training point: pick a factor k uniformly, draw `batch_size` pairs of
factor vectors that agree on factor k (and are independent otherwise), and
take the mean absolute difference of the pairs' codes, a [K] vector; its
label is k. A linear classifier (scikit-learn's default `LogisticRegression`)
learns k from it; the score is its accuracy. Study defaults: batch 64,
10,000 training and 5,000 evaluation points.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import exceptions as sk_exceptions
from sklearn import linear_model

from msdr_jax.metrics import data


def draw_pairs(
    dataset, rng: jax.Array, num_points: int, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
  """Factors of the image pairs of `num_points` training points.

  Returns ([num_points, 2 * batch_size, F] factors: the first batch, then the
  second, whose row b equals row b of the first in the label's factor;
  [num_points] labels, the fixed factor).
  """
  num_factors = dataset.num_factors
  index_rng, first_rng, second_rng = jax.random.split(rng, 3)
  labels = jax.random.randint(index_rng, (num_points,), 0, num_factors)
  shape = (num_points, batch_size, num_factors)
  first = dataset.sample_factors(first_rng, num_points * batch_size).reshape(shape)
  second = dataset.sample_factors(second_rng, num_points * batch_size).reshape(shape)
  keep = jax.nn.one_hot(labels, num_factors, dtype=jnp.bool_)[:, None, :]
  second = jnp.where(keep, first, second)
  return np.asarray(jnp.concatenate([first, second], axis=1)), np.asarray(labels)


def pair_features(codes: np.ndarray) -> np.ndarray:
  """Mean |z1 - z2| over each point's pairs: [P, 2B, K] codes -> [P, K]."""
  half = codes.shape[1] // 2
  return np.mean(np.abs(codes[:, :half] - codes[:, half:]), axis=1)


def sample_points(
    representation_fn: data.RepresentationFn, dataset, rng: jax.Array,
    num_points: int, batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
  """([num_points, K] mean |z1 - z2| features, [num_points] fixed factors)."""
  factors, labels = draw_pairs(dataset, rng, num_points, batch_size)
  codes = data.encode_factors(representation_fn, dataset, factors, data.nuisance_key(rng))
  return pair_features(codes), labels


def beta_vae_score(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    eval_features: np.ndarray,
    eval_labels: np.ndarray,
    seed: int = 0,
) -> dict[str, float]:
  """Accuracy of the linear classifier from features to the fixed factor.

  Returns {"beta_vae/train_accuracy", "beta_vae/eval_accuracy"}.
  """
  train_features, train_labels = _check(train_features, train_labels)
  eval_features, eval_labels = _check(eval_features, eval_labels)
  if np.unique(train_labels).size < 2:
    raise ValueError(
        "BetaVAE score needs training points of at least two fixed factors; draw "
        "more points (or use a data set with two or more factors).")
  with warnings.catch_warnings():
    # The default 100 lbfgs iterations are part of the published definition.
    warnings.simplefilter("ignore", sk_exceptions.ConvergenceWarning)
    model = linear_model.LogisticRegression(random_state=seed)
    model.fit(train_features, train_labels)
  return {
      "beta_vae/train_accuracy": float(model.score(train_features, train_labels)),
      "beta_vae/eval_accuracy": float(model.score(eval_features, eval_labels)),
  }


def _check(features, labels):
  features, labels2d = data.check_codes_and_factors(
      features, np.asarray(labels).reshape(-1, 1), "BetaVAE score", min_points=1)
  return features, labels2d[:, 0]


def compute_beta_vae(
    representation_fn: data.RepresentationFn,
    dataset,
    seed: int | jax.Array,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
) -> dict[str, float]:
  """BetaVAE score of `representation_fn` on `dataset`."""
  data.check_dataset(dataset, "BetaVAE score")
  train_rng, eval_rng = jax.random.split(data.as_key(seed))
  train = sample_points(representation_fn, dataset, train_rng, num_train, batch_size)
  evaluation = sample_points(representation_fn, dataset, eval_rng, num_eval, batch_size)
  return beta_vae_score(*train, *evaluation, seed=data.int_seed(seed))

