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


def test_conditioning_fidelity_known_answers():
  # Latent 0 (variance 4) comes back exactly: R^2 = 1. Latent 1 (variance 1)
  # comes back as its mean: R^2 = 0. Latent 2 is inactive and comes back
  # negated (R^2 = -3), which the averages must ignore.
  rng = np.random.default_rng(0)
  codes = rng.normal(size=(1000, 3)) * np.array([2.0, 1.0, 1.0])
  codes -= codes.mean(0)
  codes /= codes.std(0) / np.array([2.0, 1.0, 1.0])
  recovered = np.stack([codes[:, 0], np.zeros(1000), -codes[:, 2]], axis=1)
  result = metrics.conditioning_fidelity(codes, recovered, np.array([True, True, False]))
  np.testing.assert_allclose(result["r2_per_latent"], [1.0, 0.0, -3.0], atol=1e-12)
  np.testing.assert_allclose(result["r2"], 0.5)
  # Variance weighted: 1 - (0 + 1) / (4 + 1).
  np.testing.assert_allclose(result["r2_variance_weighted"], 0.8)


def test_conditioning_fidelity_without_active_latents_or_with_bad_shapes():
  codes = np.random.default_rng(0).normal(size=(10, 2))
  result = metrics.conditioning_fidelity(codes, codes, np.array([False, False]))
  assert result["r2"] is None and result["r2_variance_weighted"] is None
  with pytest.raises(ValueError, match=r"must be \[N, K\], \[N, K\] and \[K\]"):
    metrics.conditioning_fidelity(codes, codes[:, :1], np.array([True, True]))

