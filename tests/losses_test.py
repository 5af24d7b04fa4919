"""Known-answer tests of the likelihoods, KL terms and TC estimators."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from msdr_jax import losses


def test_bernoulli_nll_matches_definition():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 4, 1)).astype(np.float32)
  images = (rng.uniform(size=(3, 4, 4, 1)) > 0.5).astype(np.float32)
  p = 1 / (1 + np.exp(-logits))
  expected = -(images * np.log(p) + (1 - images) * np.log(1 - p)).reshape(3, -1).sum(-1)
  np.testing.assert_allclose(losses.bernoulli_nll(logits, images), expected, rtol=1e-5)


def test_gaussian_nll_matches_scipy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
  images = rng.uniform(size=(2, 3, 3, 3)).astype(np.float32)
  mean = 1 / (1 + np.exp(-logits))
  expected = -stats.norm.logpdf(images, mean, 0.3).reshape(2, -1).sum(-1)
  np.testing.assert_allclose(
      losses.gaussian_nll(logits, images, scale=0.3), expected, rtol=1e-5
  )


def test_kl_to_standard_normal_is_cross_entropy_minus_entropy():
  mean = np.array([0.0, 1.0, -2.0], np.float32)
  std = np.array([1.0, 0.5, 2.0], np.float32)
  # KL(q || p) = E_q[-log p] - H(q), with E_q[-log N(z|0,1)] in closed form.
  cross_entropy = 0.5 * np.log(2 * np.pi) + 0.5 * (mean**2 + std**2)
  expected = cross_entropy - stats.norm(mean, std).entropy()
  kl = losses.kl_to_standard_normal(mean, 2 * np.log(std))
  np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-7)
  assert float(kl[0]) == 0.0


def _posteriors(num, dim, seed):
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=(num, dim)).astype(np.float32)
  log_var = rng.normal(scale=0.3, size=(num, dim)).astype(np.float32) - 0.5
  return mean, log_var


def test_stratified_weights_are_on_the_diagonal_and_rows_sum_to_one():
  n, m = 50, 5
  w = np.exp(np.asarray(losses.stratified_log_weights(m, n)))
  np.testing.assert_allclose(np.diag(w), 1 / n, rtol=1e-6)
  for i in range(m):
    assert w[i, (i + 1) % m] == pytest.approx((n - m + 1) / (n * (m - 1)), rel=1e-6)
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
  # Not the column-0 layout of several public implementations.
  assert w[1, 0] == pytest.approx(1 / (m - 1), rel=1e-6)


@pytest.mark.parametrize("marginal", [False, True])
def test_mss_is_unbiased_over_all_minibatches_of_a_tiny_dataset(marginal):
  """Brute force: average the MSS estimate over every ordered minibatch.

  A tiny data set of N posteriors; for a fixed sample z taken from the
  posterior of data point `own`, enumerate all ordered minibatches of size M
  drawn without replacement that hold `own` at position i. The mean of the
  importance-weighted estimate of q(z) over them must equal the exact
  aggregate posterior q(z) = (1/N) sum_n q(z | x_n), for every position i.
  Putting the 1/N weight in column 0 instead of on the diagonal fails this.
  """
  n, m, dim = 5, 3, 2
  mean, log_var = _posteriors(n, dim, seed=2)
  z = np.array([0.3, -0.7], np.float32)
  log_q_each = np.asarray(losses.gaussian_log_density(z[None], mean, log_var))  # [N, D]
  if marginal:
    exact = np.exp(log_q_each[:, 0]).mean()
  else:
    exact = np.exp(log_q_each.sum(-1)).mean()
  own = 2
  for position in range(m):
    estimates = []
    for batch in itertools.permutations(range(n), m):
      if batch[position] != own:
        continue
      idx = np.array(batch)
      latents = np.tile(z, (m, 1))  # Only row `position` matters.
      pairs = losses.pairwise_log_density(latents, mean[idx], log_var[idx])
      log_qz, log_qz_marginals = losses.minibatch_stratified_sampling(pairs, n)
      value = log_qz_marginals[position, 0] if marginal else log_qz[position]
      estimates.append(float(np.exp(value)))
    assert np.mean(estimates) == pytest.approx(exact, rel=1e-5), position


def test_mws_matches_naive_loops():
  n_data, m, dim = 1000, 4, 3
  mean, log_var = _posteriors(m, dim, seed=3)
  latents = mean + np.exp(0.5 * log_var) * np.random.default_rng(4).normal(size=mean.shape)
  pairs = losses.pairwise_log_density(latents, mean, log_var)
  log_qz, log_qz_marginals = losses.minibatch_weighted_sampling(pairs, n_data)
  for i in range(m):
    dens = [stats.multivariate_normal.pdf(latents[i], mean[j], np.diag(np.exp(log_var[j])))
            for j in range(m)]
    assert float(log_qz[i]) == pytest.approx(np.log(np.sum(dens) / (n_data * m)), rel=1e-4)
    for d in range(dim):
      dens_d = [stats.norm.pdf(latents[i, d], mean[j, d], np.exp(0.5 * log_var[j, d]))
                for j in range(m)]
      assert float(log_qz_marginals[i, d]) == pytest.approx(
          np.log(np.sum(dens_d) / (n_data * m)), rel=1e-4)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_decomposition_sums_to_the_sampled_kl(estimator):
  mean, log_var = _posteriors(8, 4, seed=5)
  latents = mean + np.exp(0.5 * log_var) * np.random.default_rng(6).normal(size=mean.shape)
  terms = losses.decomposed_kl_terms(latents, mean, log_var, 100, estimator)
  log_q = losses.gaussian_log_density(latents, mean, log_var).sum(-1)
  log_p = stats.norm.logpdf(latents).sum(-1)
  total = terms["mi"] + terms["tc"] + terms["dim_kl"]
  assert float(total) == pytest.approx(float(np.mean(log_q - log_p)), rel=1e-4)
  assert float(terms["dim_kl"]) == pytest.approx(float(terms["dim_kl_per_latent"].sum()))


def test_tc_is_near_zero_for_independent_and_large_for_correlated_codes():
  n, m = 10_000, 512
  rng = np.random.default_rng(7)
  log_var = np.full((m, 2), np.log(0.01), np.float32)
  independent = rng.normal(size=(m, 2)).astype(np.float32)
  shared = rng.normal(size=(m, 1)).astype(np.float32)
  correlated = np.concatenate([shared, shared + 0.05 * rng.normal(size=(m, 1))], 1)
  tc = {}
  for name, mean in (("independent", independent), ("correlated", correlated)):
    latents = mean + 0.1 * rng.normal(size=mean.shape).astype(np.float32)
    tc[name] = float(losses.decomposed_kl_terms(latents, mean, log_var, n, "mss")["tc"])
  assert abs(tc["independent"]) < 0.3, tc
  assert tc["correlated"] > 1.0, tc


def test_beta_tcvae_with_beta_one_is_recon_plus_sampled_kl():
  mean, log_var = _posteriors(6, 3, seed=8)
  latents = mean + np.exp(0.5 * log_var) * np.random.default_rng(9).normal(size=mean.shape)
  recon = jnp.arange(6, dtype=jnp.float32)
  common = dict(dataset_size=50, tc_estimator="mss")
  one = losses.beta_tcvae_objective(recon, latents, mean, log_var,
                                    beta=1.0, alpha=1.0, gamma=1.0, **common)
  six = losses.beta_tcvae_objective(recon, latents, mean, log_var,
                                    beta=6.0, alpha=1.0, gamma=1.0, **common)
  t = one.terms
  assert float(one.loss) == pytest.approx(
      float(recon.mean() + t["mi"] + t["tc"] + t["dim_kl"]), rel=1e-5)
  assert float(six.loss - one.loss) == pytest.approx(5 * float(t["tc"]), rel=1e-4)
  vae = losses.beta_vae_objective(recon, latents, mean, log_var, beta=4.0, **common)
  assert float(vae.loss) == pytest.approx(
      float(recon.mean() + 4.0 * vae.terms["kl"]), rel=1e-5)
  for terms in (one.terms, vae.terms):
    assert {"recon", "kl", "mi", "tc", "dim_kl", "kl_per_latent",
            "dim_kl_per_latent"} <= set(terms)


def test_beta_vae_gradient_ignores_the_logged_decomposition():
  mean, log_var = _posteriors(6, 3, seed=10)
  eps = np.random.default_rng(11).normal(size=mean.shape).astype(np.float32)
  recon = jnp.arange(6, dtype=jnp.float32)

  def objective(mean, log_var):
    latents = mean + jnp.exp(0.5 * log_var) * eps
    return losses.beta_vae_objective(recon, latents, mean, log_var, beta=4.0,
                                     dataset_size=50, tc_estimator="mss").loss

  def reference(mean, log_var):
    return recon.mean() + 4.0 * losses.kl_to_standard_normal(mean, log_var).mean(0).sum()

  for got, want in zip(jax.grad(objective, (0, 1))(mean, log_var),
                       jax.grad(reference, (0, 1))(mean, log_var)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
