"""Known-answer tests of SAP, modularity/explicitness, BetaVAE, FactorVAE and the suite.

A tiny ground-truth data set whose "images" are the factor values themselves
makes the representations exact: the identity, a rotation, a duplicated
latent, noise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import reference_metrics
from msdr_jax import base_config
from msdr_jax import metrics
from msdr_jax.data import ground_truth
from msdr_jax.metrics import beta_vae
from msdr_jax.metrics import factor_vae
from msdr_jax.metrics import modularity
from msdr_jax.metrics import sap
from msdr_jax.metrics import suite


class FactorImages(ground_truth.GroundTruthData):
  """Images [1, 1, F] holding the factor indices, scaled to [0, 1]."""

  def __init__(self, sizes=(3, 4, 5)):
    self._sizes = tuple(sizes)

  @property
  def factor_names(self):
    return tuple(f"factor{j}" for j in range(len(self._sizes)))

  @property
  def factor_sizes(self):
    return self._sizes

  @property
  def observation_shape(self):
    return (1, 1, len(self._sizes))

  def images_from_state(self, factors):
    scaled = factors / (jnp.asarray(self._sizes) - 1.0)
    return scaled.reshape(*factors.shape[:-1], 1, 1, len(self._sizes)).astype(jnp.float32)


def identity(images):
  return images.reshape(images.shape[0], -1)


def _factors(num, sizes, seed):
  rng = np.random.default_rng(seed)
  return np.stack([rng.integers(0, s, num) for s in sizes], axis=1)


# --------------------------------------------------------------------------- SAP


def test_sap_of_balanced_binary_factors_is_one_minus_chance():
  # The perfect latent scores accuracy 1, the other (independent) latent at
  # best the majority class, about 1/2.
  train, test = _factors(2000, (2, 2), 0), _factors(1000, (2, 2), 1)
  score = sap.sap_score(train.astype(float), train, test.astype(float), test)["sap"]
  assert score == pytest.approx(0.5, abs=0.04)


def test_sap_continuous_variant_is_one_for_the_factors_and_zero_for_duplicates():
  train, test = _factors(2000, (3, 6, 10), 0), _factors(1000, (3, 6, 10), 1)
  codes = train.astype(float)
  perfect = sap.sap_score(codes, train, test.astype(float), test, continuous_factors=True)
  assert perfect["sap"] > 0.99
  duplicated = np.concatenate([codes, codes[:, :1]], axis=1)
  scores = sap.score_matrix(duplicated, train, None, None, continuous_factors=True)
  assert np.sort(scores[:, 0])[-1] == pytest.approx(np.sort(scores[:, 0])[-2])
  # A constant latent scores 0 instead of dividing by a zero variance.
  constant = np.concatenate([codes, np.ones((len(codes), 1))], axis=1)
  assert np.all(sap.score_matrix(constant, train, None, None, True)[-1] == 0)


def test_sap_matches_the_reference_and_ignores_latent_order():
  train, test = _factors(1000, (3, 4), 0), _factors(500, (3, 4), 1)
  rng = np.random.default_rng(2)
  codes = train + 0.3 * rng.normal(size=train.shape)
  test_codes = test + 0.3 * rng.normal(size=test.shape)
  ours = sap.sap_score(codes, train, test_codes, test)["sap"]
  assert ours == pytest.approx(
      reference_metrics.sap(codes, train, test_codes, test)["sap"], abs=1e-12)
  assert ours == pytest.approx(
      sap.sap_score(codes[:, ::-1], train, test_codes[:, ::-1], test)["sap"], abs=1e-12)


# ---------------------------------------------------------- modularity, explicitness


def test_modularity_hand_computed():
  # Latent 0 informs about factor 0 only; latent 1 equally about both
  # (modularity 1 - 1 = 0); latent 2 about nothing (0 by definition).
  factors = np.array([[a, b] for a in range(2) for b in range(2)] * 50)
  codes = np.stack([factors[:, 0], factors[:, 0] + 2 * factors[:, 1],
                    np.zeros(len(factors))], axis=1).astype(float)
  # I(z1; v0) = I(z1; v1) = log 2: z1 determines both factors.
  assert modularity.modularity(codes, factors, num_bins=4) == pytest.approx(1 / 3)


def test_modularity_and_explicitness_of_the_factors_and_of_noise():
  train, test = _factors(2000, (3, 6, 10), 0), _factors(1000, (3, 6, 10), 1)
  perfect = modularity.modularity_explicitness(
      train.astype(float), train, test.astype(float), test)
  assert perfect["modularity"] > 0.99
  assert perfect["explicitness/test"] > 0.95
  rng = np.random.default_rng(3)
  noise = modularity.modularity_explicitness(
      rng.normal(size=train.shape), train, rng.normal(size=test.shape), test)
  assert noise["explicitness/test"] == pytest.approx(0.5, abs=0.05)  # Chance AUC.
  codes = train + 0.5 * rng.normal(size=train.shape)
  test_codes = test + 0.5 * rng.normal(size=test.shape)
  reference = reference_metrics.modularity_explicitness(codes, train, test_codes, test)
  ours = modularity.modularity_explicitness(codes, train, test_codes, test)
  for key, value in reference.items():
    assert ours[key] == pytest.approx(value, abs=1e-9), key


def test_explicitness_survives_a_constant_latent():
  train, test = _factors(500, (3, 4), 0), _factors(200, (3, 4), 1)
  codes = np.concatenate([train, np.zeros((500, 1))], axis=1).astype(float)
  test_codes = np.concatenate([test, np.zeros((200, 1))], axis=1).astype(float)
  scores = modularity.explicitness(codes, train, test_codes, test)
  assert all(np.isfinite(v) for v in scores.values())


# ------------------------------------------------------------- BetaVAE, FactorVAE


@pytest.fixture(scope="module")
def dataset():
  return FactorImages()


def test_beta_vae_pairs_share_exactly_the_labelled_factor(dataset):
  pairs, labels = beta_vae.draw_pairs(dataset, jax.random.key(0), 50, batch_size=8)
  assert pairs.shape == (50, 16, 3) and labels.shape == (50,)
  same = pairs[:, :8] == pairs[:, 8:]
  np.testing.assert_array_equal(same[np.arange(50), :, labels], True)


def test_beta_vae_score_is_one_for_the_factors_and_chance_for_noise(dataset):
  perfect = metrics.compute_beta_vae(identity, dataset, 0, batch_size=16,
                                     num_train=300, num_eval=200)
  assert perfect["beta_vae/eval_accuracy"] == 1.0

  def noise(images):  # A deterministic function of the image, unrelated to factors.
    flat = identity(images)
    return jnp.sin(1e3 * flat @ jnp.array([[1.3, 0.2, 2.1], [0.7, 1.9, 0.4], [2.3, 1.1, 0.5]]))

  chance = metrics.compute_beta_vae(noise, dataset, 0, batch_size=16,
                                    num_train=300, num_eval=300)
  assert chance["beta_vae/eval_accuracy"] < 0.6  # Chance: 1/3.


def test_factor_vae_votes_keep_the_labelled_factor_fixed(dataset):
  batches, labels = factor_vae.draw_votes(dataset, jax.random.key(1), 40, batch_size=6)
  fixed = batches[np.arange(40), :, labels]
  assert np.all(fixed == fixed[:, :1])
  # The other factors vary within a batch.
  free = (labels + 1) % 3
  assert np.mean(batches[np.arange(40), :, free].std(axis=1) > 0) > 0.9


def test_factor_vae_score_known_answers(dataset):
  kwargs = dict(batch_size=16, num_train=200, num_eval=200, num_variance_estimate=500)
  perfect = metrics.compute_factor_vae(identity, dataset, 0, **kwargs)
  assert perfect["factor_vae/eval_accuracy"] == 1.0
  assert perfect["factor_vae/num_active_latents"] == 3
  # A constant latent is pruned and changes nothing.
  padded = lambda images: jnp.concatenate([identity(images), 0 * identity(images)], 1)
  assert metrics.compute_factor_vae(padded, dataset, 0, **kwargs) == {
      **perfect, "factor_vae/num_active_latents": 3.0}
  # Nothing active: both accuracies 0, as in disentanglement_lib.
  silent = metrics.compute_factor_vae(lambda images: 0 * identity(images), dataset, 0,
                                      **kwargs)
  assert silent == {"factor_vae/train_accuracy": 0.0, "factor_vae/eval_accuracy": 0.0,
                    "factor_vae/num_active_latents": 0.0}


def test_factor_vae_score_matches_the_reference_loop(dataset):
  rng = np.random.default_rng(5)
  mixing = rng.normal(size=(3, 4))
  representation = lambda images: jnp.tanh(identity(images) @ mixing)
  settings = base_config.metric_settings()
  settings.metrics = "factor_vae,beta_vae"
  settings.factor_vae.update(batch_size=8, num_train=150, num_eval=100,
                             num_variance_estimate=300)
  settings.beta_vae.update(batch_size=8, num_train=150, num_eval=100)
  draws = suite.draw(dataset, 3, settings)
  ours = suite.evaluate_draws(representation, dataset, draws, settings)
  images_fn = lambda factors: np.asarray(dataset.images_from_factors(jnp.asarray(factors)))
  codes_fn = lambda images: np.asarray(representation(jnp.asarray(images)))
  reference = {
      **reference_metrics.factor_vae(
          images_fn, codes_fn, draws.factor_vae_variance, *draws.factor_vae_train,
          *draws.factor_vae_eval, num_factors=3),
      **reference_metrics.beta_vae(
          images_fn, codes_fn, *draws.beta_vae_train, *draws.beta_vae_eval),
  }
  for key, value in reference.items():
    assert ours[key] == pytest.approx(value, abs=1e-6), key


# ------------------------------------------------------------------------- suite


def _small_settings():
  settings = base_config.metric_settings()
  settings.num_train, settings.num_test = 600, 300
  settings.beta_vae.update(batch_size=8, num_train=200, num_eval=100)
  settings.factor_vae.update(batch_size=8, num_train=200, num_eval=100,
                             num_variance_estimate=300)
  return settings


def test_suite_scores_the_factors_near_one_and_is_deterministic(dataset):
  settings = _small_settings()
  settings.sap_continuous_factors = True
  scores = metrics.evaluate(identity, dataset, 7, settings)
  for key in ("mig", "dci/disentanglement", "dci/completeness", "sap", "modularity",
              "beta_vae/eval_accuracy", "factor_vae/eval_accuracy"):
    assert scores[key] > 0.95, key
  assert metrics.evaluate(identity, dataset, 7, settings) == scores
  rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
  rotated = metrics.evaluate(lambda x: identity(x) @ rotation, dataset, 7, settings)
  assert rotated["mig"] < 0.5 and rotated["dci/disentanglement"] < 0.7


def test_suite_selects_metrics_and_refuses_unknown_ones(dataset):
  settings = _small_settings()
  settings.metrics = "mig,sap"
  assert {k.split("/")[0] for k in metrics.evaluate(identity, dataset, 0, settings)} == {
      "mig", "sap"}
  for none in ("", "none"):
    settings.metrics = none
    assert metrics.evaluate(identity, dataset, 0, settings) == {}
  settings.metrics = "mig,beta"
  with pytest.raises(ValueError, match=r"Unknown metric\(s\) \['beta'\]"):
    metrics.evaluate(identity, dataset, 0, settings)


def test_suite_refuses_non_finite_codes_and_bad_shapes(dataset):
  settings = _small_settings()
  settings.metrics = "mig"
  with pytest.raises(ValueError, match="NaN or infinite"):
    metrics.evaluate(lambda x: identity(x) / 0.0, dataset, 0, settings)
  with pytest.raises(ValueError, match=r"\[B, K\] codes"):
    metrics.evaluate(lambda x: x, dataset, 0, settings)


def test_suite_refuses_a_factor_with_a_single_value():
  settings = _small_settings()
  with pytest.raises(ValueError, match="single value"):
    metrics.evaluate(identity, FactorImages((3, 1)), 0, settings)


def test_each_metric_draws_its_own_points_reproducibly(dataset):
  scores = {
      "mig": metrics.compute_mig(identity, dataset, 1, num_train=500),
      "dci": metrics.compute_dci(identity, dataset, 1, num_train=300, num_test=100),
      "sap": metrics.compute_sap(identity, dataset, 1, num_train=500, num_test=200,
                                 continuous_factors=True),
      "modularity": metrics.compute_modularity_explicitness(
          identity, dataset, 1, num_train=500, num_test=200),
  }
  assert scores["mig"]["mig"] > 0.95
  assert scores["dci"]["dci/disentanglement"] > 0.95
  assert scores["sap"]["sap"] > 0.95
  assert scores["modularity"]["modularity"] > 0.95
  assert metrics.compute_mig(identity, dataset, 1, num_train=500) == scores["mig"]
  assert metrics.compute_mig(identity, dataset, 2, num_train=500) != scores["mig"]
