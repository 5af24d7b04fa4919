"""Known-answer tests of MIG and its discrete information estimates."""

import numpy as np
import pytest

from msdr_jax import metrics


def test_discrete_entropy_and_mutual_info_hand_computed():
  # A uniform factor over 4 values has entropy log 4; a code that keeps only
  # its parity shares log 2 nats with it; a constant code shares nothing.
  factor = np.array([[0], [1], [2], [3]] * 5)
  codes = np.concatenate([factor % 2, np.zeros_like(factor), factor], axis=1)
  np.testing.assert_allclose(metrics.discrete_entropy(factor), [np.log(4)])
  np.testing.assert_allclose(
      metrics.discrete_mutual_info(codes, factor)[:, 0],
      [np.log(2), 0.0, np.log(4)], atol=1e-12)


def test_histogram_discretize_matches_disentanglement_lib_convention():
  values = np.array([[0.0], [0.49], [0.5], [1.0]])
  # Two equal-width bins over [0, 1]: the maximum belongs to the last bin.
  np.testing.assert_array_equal(metrics.histogram_discretize(values, 2)[:, 0], [1, 1, 2, 2])


def _factors(num, sizes, seed=0):
  rng = np.random.default_rng(seed)
  return np.stack([rng.integers(0, s, num) for s in sizes], axis=1)


def test_mig_is_one_for_the_factors_themselves():
  # With at most 20 values per factor every value gets its own bin, so each
  # factor is fully recovered by its latent and the second-best latent (an
  # independent factor) carries almost nothing.
  factors = _factors(10_000, (3, 6, 10, 16))
  result = metrics.mutual_information_gap(factors.astype(float), factors)
  assert result["mig"] > 0.99
  assert all(result[f"mig/{j}"] > 0.98 for j in range(4))


def test_mig_one_latent_per_factor_exactly():
  factor = np.repeat(np.arange(4), 25)[:, None]
  representation = np.concatenate([factor.astype(float), np.zeros_like(factor, float)], 1)
  assert metrics.mutual_information_gap(representation, factor)["mig"] == pytest.approx(1.0)


def test_mig_is_invariant_to_permutation_and_zero_for_duplicates():
  factors = _factors(5_000, (3, 6, 10))
  rng = np.random.default_rng(1)
  representation = factors + 0.1 * rng.normal(size=factors.shape)
  base = metrics.mutual_information_gap(representation, factors)["mig"]
  permuted = metrics.mutual_information_gap(representation[:, [2, 0, 1]], factors)["mig"]
  assert permuted == pytest.approx(base, abs=1e-12)
  # Two identical copies of the latent of factor 0: its gap vanishes.
  duplicated = np.concatenate([representation, representation[:, :1]], axis=1)
  result = metrics.mutual_information_gap(duplicated, factors)
  assert result["mig/0"] == pytest.approx(0.0, abs=1e-12)
  assert result["mig/1"] == pytest.approx(
      metrics.mutual_information_gap(representation, factors)["mig/1"])


def test_mig_is_low_for_noise_and_for_a_rotation():
  factors = _factors(10_000, (6, 10))
  rng = np.random.default_rng(2)
  noise = rng.normal(size=(10_000, 4))
  assert metrics.mutual_information_gap(noise, factors)["mig"] < 0.02
  angle = np.pi / 4
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  standardized = (factors - factors.mean(0)) / factors.std(0)
  rotated = standardized @ rotation.T
  assert metrics.mutual_information_gap(rotated, factors)["mig"] < 0.2


@pytest.mark.parametrize(
    "representation, factors, message",
    [
        (np.zeros((10, 1)), np.zeros((10, 1), int), "at least two latents"),
        (np.zeros((10, 2)), np.zeros((9, 1), int), "factor rows"),
        (np.full((10, 2), np.nan), np.arange(10)[:, None], "NaN"),
        (np.random.default_rng(0).normal(size=(10, 2)), np.zeros((10, 1), int),
         "single value"),
    ],
)
def test_mig_rejects_degenerate_input(representation, factors, message):
  with pytest.raises(ValueError, match=message):
    metrics.mutual_information_gap(representation, factors)
