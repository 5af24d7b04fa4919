"""Likelihoods, KL terms, total-correlation estimators and stage-one objectives.

All functions are pure and batched. Per-example quantities are summed over
pixels / latent dimensions and averaged over the batch, so numbers are
comparable with the per-image figures of the literature.

Notation: a minibatch of M images x_m with Gaussian posteriors
q(z|x_m) = N(mu_m, diag sigma_m^2) and one sample z_i ~ q(z|x_i) per image;
N is the size of the data set the minibatch is drawn from.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------
# Likelihoods: -log p(x | decoder_output), summed over pixels, one per image.


def decoder_mean(logits: jax.Array) -> jax.Array:
  """Mean image of either likelihood: both parameterise it as sigmoid(logits)."""
  return jax.nn.sigmoid(logits)


def bernoulli_nll(logits: jax.Array, images: jax.Array) -> jax.Array:
  """-log Bernoulli(x | sigmoid(logits)); x may be any value in [0, 1]."""
  per_pixel = optax.sigmoid_binary_cross_entropy(logits, images)
  return per_pixel.reshape(per_pixel.shape[0], -1).sum(-1)


def gaussian_nll(
    logits: jax.Array, images: jax.Array, scale: float = 1.0
) -> jax.Array:
  """-log N(x | sigmoid(logits), scale^2 I), constants included.

  With scale 1 the data term is half of disentanglement_lib's `l2` loss
  sum (x - sigmoid(logits))^2, so a given beta weighs the KL twice as much.
  """
  mean = decoder_mean(logits)
  per_pixel = 0.5 * ((images - mean) / scale) ** 2 + math.log(scale) + 0.5 * _LOG_2PI
  return per_pixel.reshape(per_pixel.shape[0], -1).sum(-1)


LIKELIHOODS: dict[str, Callable[..., jax.Array]] = {
    "bernoulli": bernoulli_nll,
    "gaussian": gaussian_nll,
}


# ----------------------------------------------------------------------------
# Gaussian densities and KL.


def gaussian_log_density(
    samples: jax.Array, mean: jax.Array, log_var: jax.Array
) -> jax.Array:
  """Element-wise log N(samples | mean, exp(log_var))."""
  inv_var = jnp.exp(-log_var)
  return -0.5 * (_LOG_2PI + log_var + (samples - mean) ** 2 * inv_var)


def kl_to_standard_normal(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """Per-dimension KL(N(mean, exp(log_var)) || N(0, 1)), shape of `mean`."""
  return 0.5 * (mean**2 + jnp.exp(log_var) - log_var - 1.0)


# ----------------------------------------------------------------------------
# Aggregate-posterior estimators.
#
# Both return log q(z_i) and log q(z_ij) (per dimension j) for every sample of
# the batch, from the matrix of pairwise log-densities
#   log q(z_ij | x_m)  with shape [M (sample i), M (posterior m), K].


def pairwise_log_density(
    latents: jax.Array, mean: jax.Array, log_var: jax.Array
) -> jax.Array:
  """log q(z_ij | x_m) for all i, m, j: shape [M, M, K]."""
  return gaussian_log_density(
      latents[:, None, :], mean[None, :, :], log_var[None, :, :]
  )


def minibatch_weighted_sampling(
    log_qz_pairs: jax.Array, dataset_size: int
) -> tuple[jax.Array, jax.Array]:
  """MWS (Chen et al. 2018, eq. S6).

    log q(z_i)  ~= logsumexp_m sum_j log q(z_ij | x_m) - log(N M)
    log q(z_ij) ~= logsumexp_m log q(z_ij | x_m)       - log(N M)

  Returns (log q(z_i) [M], log q(z_ij) [M, K]).
  """
  batch_size = log_qz_pairs.shape[0]
  log_norm = math.log(dataset_size * batch_size)
  log_qz = jax.nn.logsumexp(log_qz_pairs.sum(-1), axis=1) - log_norm
  log_qz_marginals = jax.nn.logsumexp(log_qz_pairs, axis=1) - log_norm
  return log_qz, log_qz_marginals


def stratified_log_weights(batch_size: int, dataset_size: int) -> jax.Array:
  """log W of minibatch stratified sampling, [M, M], every row sums to one.

  Row i weighs the posteriors of the batch when estimating q(z_i), z_i being
  drawn from the i-th image's own posterior:
    * its own posterior (the diagonal) gets 1/N,
    * one stratified neighbour, (i + 1) mod M, gets (N - M + 1) / (N (M - 1)),
    * every other posterior gets 1 / (M - 1).
  Public code often puts the 1/N weights in column 0 instead of on the
  diagonal, which gives the wrong weight to every sample but the first.
  """
  m, n = batch_size, dataset_size
  if m < 2:
    raise ValueError(f"MSS needs a batch of at least 2, got {m}.")
  if n < m:
    raise ValueError(f"MSS needs dataset_size >= batch size, got {n} < {m}.")
  own = jnp.eye(m, dtype=bool)
  neighbour = jnp.roll(own, 1, axis=1)  # (i, i+1 mod M)
  weights = jnp.where(
      own, 1.0 / n, jnp.where(neighbour, (n - m + 1) / (n * (m - 1)), 1.0 / (m - 1))
  )
  return jnp.log(weights)


def minibatch_stratified_sampling(
    log_qz_pairs: jax.Array, dataset_size: int
) -> tuple[jax.Array, jax.Array]:
  """MSS (Chen et al. 2018, eq. S9): log q(z_i) ~= logsumexp_m [log W_im + log q(z_i|x_m)].

  Same per dimension for log q(z_ij). Returns (log q(z_i) [M], log q(z_ij) [M, K]).
  """
  log_w = stratified_log_weights(log_qz_pairs.shape[0], dataset_size)
  log_qz = jax.nn.logsumexp(log_w + log_qz_pairs.sum(-1), axis=1)
  log_qz_marginals = jax.nn.logsumexp(log_w[:, :, None] + log_qz_pairs, axis=1)
  return log_qz, log_qz_marginals


TC_ESTIMATORS = {
    "mws": minibatch_weighted_sampling,
    "mss": minibatch_stratified_sampling,
}


# ----------------------------------------------------------------------------
# Stage-one objectives. Each maps (images, VAEOutput-like fields) to the scalar
# loss and a dict of its terms, all per example and averaged over the batch.


class ObjectiveTerms(NamedTuple):
  loss: jax.Array
  terms: dict[str, jax.Array]


def decomposed_kl_terms(
    latents: jax.Array,
    mean: jax.Array,
    log_var: jax.Array,
    dataset_size: int,
    estimator: str,
) -> dict[str, jax.Array]:
  """Batch means of the ELBO KL decomposition of Chen et al. (2018).

    E KL(q(z|x) || p(z)) = MI + TC + dimension-wise KL, with
    MI       = E[log q(z|x) - log q(z)]
    TC       = E[log q(z) - sum_j log q(z_j)]
    dim_kl   = E[sum_j log q(z_j) - log p(z)]
  `dim_kl_per_latent` keeps the dimension-wise KL of each latent j.
  """
  log_qz_pairs = pairwise_log_density(latents, mean, log_var)
  log_qz, log_qz_marginals = TC_ESTIMATORS[estimator](log_qz_pairs, dataset_size)
  log_qz_given_x = gaussian_log_density(latents, mean, log_var).sum(-1)
  log_pz_per_latent = gaussian_log_density(
      latents, jnp.zeros_like(latents), jnp.zeros_like(latents)
  )
  dim_kl_per_latent = (log_qz_marginals - log_pz_per_latent).mean(0)
  return {
      "mi": (log_qz_given_x - log_qz).mean(),
      "tc": (log_qz - log_qz_marginals.sum(-1)).mean(),
      "dim_kl": dim_kl_per_latent.sum(),
      "dim_kl_per_latent": dim_kl_per_latent,
  }


def beta_vae_objective(
    recon_nll: jax.Array,
    latents: jax.Array,
    mean: jax.Array,
    log_var: jax.Array,
    *,
    beta: float,
    dataset_size: int,
    tc_estimator: str,
) -> ObjectiveTerms:
  """beta-VAE (Higgins et al. 2017): recon + beta * KL(q(z|x) || N(0, I)).

  The MI / TC / dim-KL decomposition is computed for logging only.
  """
  kl_per_latent = kl_to_standard_normal(mean, log_var).mean(0)
  kl = kl_per_latent.sum()
  recon = recon_nll.mean()
  terms = decomposed_kl_terms(
      jax.lax.stop_gradient(latents),
      jax.lax.stop_gradient(mean),
      jax.lax.stop_gradient(log_var),
      dataset_size,
      tc_estimator,
  )
  terms.update(recon=recon, kl=kl, kl_per_latent=kl_per_latent)
  return ObjectiveTerms(recon + beta * kl, terms)


def beta_tcvae_objective(
    recon_nll: jax.Array,
    latents: jax.Array,
    mean: jax.Array,
    log_var: jax.Array,
    *,
    beta: float,
    alpha: float,
    gamma: float,
    dataset_size: int,
    tc_estimator: str,
) -> ObjectiveTerms:
  """beta-TCVAE (Chen et al. 2018): recon + alpha MI + beta TC + gamma dim-KL.

  With alpha = gamma = 1 this is recon + KL + (beta - 1) TC, the stochastic
  estimate of the KL being MI + TC + dim-KL from the chosen estimator.
  """
  recon = recon_nll.mean()
  terms = decomposed_kl_terms(latents, mean, log_var, dataset_size, tc_estimator)
  kl_per_latent = kl_to_standard_normal(mean, log_var).mean(0)
  loss = recon + alpha * terms["mi"] + beta * terms["tc"] + gamma * terms["dim_kl"]
  terms.update(recon=recon, kl=kl_per_latent.sum(), kl_per_latent=kl_per_latent)
  return ObjectiveTerms(loss, terms)


OBJECTIVES = {
    "beta_vae": beta_vae_objective,
    "beta_tcvae": beta_tcvae_objective,
}

def objective_from_config(
    objective_config, dataset_size: int
) -> Callable[..., ObjectiveTerms]:
  """Binds an objective's hyperparameters: f(recon_nll, latents, mean, log_var).

  The hyperparameters are the objective's keyword-only arguments, read from
  `config.stage1.objective` under the same names.
  """
  objective = OBJECTIVES[objective_config.name]
  kwargs = {
      name: objective_config[name]
      for name, parameter in inspect.signature(objective).parameters.items()
      if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "dataset_size"
  }
  return functools.partial(objective, dataset_size=dataset_size, **kwargs)
