"""The disentanglement suite: every metric of a representation, in one call.

`evaluate(representation_fn, dataset, seed)` computes the metrics named in
`settings.metrics` with disentanglement_lib's study defaults
(`msdr_jax.base_config.metric_settings()`) and returns one flat dict of named floats, the form
`metrics.json` stores.

MIG, DCI, SAP and modularity/explicitness are all defined on `num_train`
(and `num_test`) points drawn uniformly from the factor grid; the suite draws
those points once and scores every metric on them, where disentanglement_lib
draws a fresh set per metric. Each score still has its published
distribution; the scores of one evaluation are merely computed on the same
points. BetaVAE and FactorVAE draw their own batches with a fixed factor.
"""

from __future__ import annotations

import time
from typing import Iterable, NamedTuple

from absl import logging
import jax
import ml_collections
import numpy as np

from msdr_jax import base_config
from msdr_jax.data import ground_truth
from msdr_jax.metrics import beta_vae
from msdr_jax.metrics import data
from msdr_jax.metrics import dci
from msdr_jax.metrics import factor_vae
from msdr_jax.metrics import information
from msdr_jax.metrics import modularity
from msdr_jax.metrics import sap

METRICS = base_config.METRICS
_ON_SHARED_POINTS = ("mig", "dci", "sap", "modularity")


def parse_metrics(names: str | Iterable[str]) -> tuple[str, ...]:
  """Metric names from "mig,dci" (or a list); "" or "none" selects none."""
  if isinstance(names, str):
    names = [] if names.strip() in ("", "none") else names.split(",")
  names = tuple(name.strip() for name in names)
  unknown = [name for name in names if name not in METRICS]
  if unknown:
    raise ValueError(
        f"Unknown metric(s) {unknown}; choose from {list(METRICS)} (comma-separated).")
  return names


class Draws(NamedTuple):
  """The factors a suite evaluation scores (None where a metric is off)."""

  train_factors: np.ndarray | None  # [num_train, F], shared by four metrics.
  test_factors: np.ndarray | None  # [num_test, F]
  beta_vae_train: tuple[np.ndarray, np.ndarray] | None  # (pairs, labels)
  beta_vae_eval: tuple[np.ndarray, np.ndarray] | None
  factor_vae_variance: np.ndarray | None  # [num_variance_estimate, F]
  factor_vae_train: tuple[np.ndarray, np.ndarray] | None  # (batches, labels)
  factor_vae_eval: tuple[np.ndarray, np.ndarray] | None


def draw(
    dataset: ground_truth.GroundTruthData,
    seed: int | jax.Array,
    settings: ml_collections.ConfigDict | None = None,
) -> Draws:
  """Draws every factor array the selected metrics need (cheap: no images)."""
  settings = settings or base_config.metric_settings()
  names = parse_metrics(settings.metrics)
  data.check_dataset(dataset, "The disentanglement metrics")
  shared_rng, beta_rng, factor_rng = jax.random.split(data.as_key(seed), 3)
  draws = dict.fromkeys(Draws._fields)
  if any(name in _ON_SHARED_POINTS for name in names):
    train_rng, test_rng = jax.random.split(shared_rng)
    draws["train_factors"] = np.asarray(dataset.sample_factors(train_rng, settings.num_train))
    draws["test_factors"] = np.asarray(dataset.sample_factors(test_rng, settings.num_test))
  if "beta_vae" in names:
    config = settings.beta_vae
    train_rng, eval_rng = jax.random.split(beta_rng)
    draws["beta_vae_train"] = beta_vae.draw_pairs(
        dataset, train_rng, config.num_train, config.batch_size)
    draws["beta_vae_eval"] = beta_vae.draw_pairs(
        dataset, eval_rng, config.num_eval, config.batch_size)
  if "factor_vae" in names:
    config = settings.factor_vae
    if config.batch_size < 2 or config.num_variance_estimate < 2:
      raise ValueError(
          "FactorVAE score needs batch_size >= 2 and num_variance_estimate >= 2.")
    variance_rng, train_rng, eval_rng = jax.random.split(factor_rng, 3)
    draws["factor_vae_variance"] = np.asarray(
        dataset.sample_factors(variance_rng, config.num_variance_estimate))
    draws["factor_vae_train"] = factor_vae.draw_votes(
        dataset, train_rng, config.num_train, config.batch_size)
    draws["factor_vae_eval"] = factor_vae.draw_votes(
        dataset, eval_rng, config.num_eval, config.batch_size)
  return Draws(**draws)


def evaluate(
    representation_fn: data.RepresentationFn,
    dataset: ground_truth.GroundTruthData,
    seed: int | jax.Array,
    settings: ml_collections.ConfigDict | None = None,
) -> dict[str, float]:
  """Scores `representation_fn` on every metric in `settings.metrics`.

  Args:
    representation_fn: a JAX function from images [B, H, W, C] to codes
      [B, K] (for a VAE, the encoder mean).
    dataset: the ground-truth data set to draw images from.
    seed: an integer seed or a PRNG key; the same seed gives the same scores.
    settings: `base_config.metric_settings()` (the default) or a variant of it.

  Returns:
    A flat dict: "mig", "mig/<factor>", "dci/disentanglement", ...,
    "sap", "modularity", "explicitness/{train,test}",
    "beta_vae/{train,eval}_accuracy", "factor_vae/{train,eval}_accuracy",
    "factor_vae/num_active_latents".
  """
  settings = settings or base_config.metric_settings()
  return evaluate_draws(representation_fn, dataset, draw(dataset, seed, settings),
                        settings, data.int_seed(seed))


def evaluate_draws(
    representation_fn: data.RepresentationFn,
    dataset: ground_truth.GroundTruthData,
    draws: Draws,
    settings: ml_collections.ConfigDict | None = None,
    classifier_seed: int = 0,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
  """The suite on factors drawn by `draw` (see `evaluate`).

  `timings`, if given, receives the seconds spent encoding ("encode") and
  scoring each metric.
  """
  timings = {} if timings is None else timings
  settings = settings or base_config.metric_settings()
  names = parse_metrics(settings.metrics)
  if not names:
    return {}
  # Every image of every metric is encoded in one pass over their union.
  start = time.perf_counter()
  present = [(field, value) for field, value in _factor_arrays(draws) if value is not None]
  codes = dict(zip(
      [field for field, _ in present],
      data.encode_all(representation_fn, dataset, [value for _, value in present],
                      data.nuisance_key(classifier_seed))))
  _log_time("encode", start, timings)
  results: dict[str, float] = {}
  if draws.train_factors is not None:
    results.update(evaluate_codes(
        codes["train_factors"], draws.train_factors,
        codes["test_factors"], draws.test_factors, settings, names, timings))
  if "beta_vae" in names:
    start = time.perf_counter()
    results.update(beta_vae.beta_vae_score(
        beta_vae.pair_features(codes["beta_vae_train"]), draws.beta_vae_train[1],
        beta_vae.pair_features(codes["beta_vae_eval"]), draws.beta_vae_eval[1],
        classifier_seed))
    _log_time("beta_vae", start, timings)
  if "factor_vae" in names:
    start = time.perf_counter()
    variance_of = lambda name: np.var(codes[name], axis=-2, ddof=1)
    results.update(factor_vae.factor_vae_score(
        variance_of("factor_vae_variance"),
        variance_of("factor_vae_train"), draws.factor_vae_train[1],
        variance_of("factor_vae_eval"), draws.factor_vae_eval[1],
        num_factors=dataset.num_factors,
        prune_threshold=settings.factor_vae.prune_threshold))
    _log_time("factor_vae", start, timings)
  return results


def _factor_arrays(draws: Draws):
  """(field, factor array) of every drawn array; labels are left out."""
  for field, value in zip(Draws._fields, draws):
    yield field, value[0] if isinstance(value, tuple) else value


def evaluate_codes(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    settings: ml_collections.ConfigDict | None = None,
    names: Iterable[str] = _ON_SHARED_POINTS,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
  """MIG, DCI, SAP and modularity/explicitness of fixed codes (those in `names`).

  `timings`, if given, receives the seconds spent on each metric.
  """
  settings = settings or base_config.metric_settings()
  timings = {} if timings is None else timings
  scorers = {
      "mig": lambda: information.mutual_information_gap(
          train_codes, train_factors, settings.histogram_bins),
      "dci": lambda: dci.dci_scores(train_codes, train_factors, test_codes, test_factors,
                                    settings.dci_learner, settings.dci_boosting_stages),
      "sap": lambda: sap.sap_score(train_codes, train_factors, test_codes, test_factors,
                                   settings.sap_continuous_factors),
      "modularity": lambda: modularity.modularity_explicitness(
          train_codes, train_factors, test_codes, test_factors, settings.histogram_bins),
  }
  results = {}
  for name in names:
    if name in scorers:
      start = time.perf_counter()
      results.update(scorers[name]())
      _log_time(name, start, timings)
  return results


def _log_time(name: str, start: float, timings: dict[str, float]) -> None:
  timings[name] = time.perf_counter() - start
  logging.info("Metrics: %s took %.1f s.", name, timings[name])
