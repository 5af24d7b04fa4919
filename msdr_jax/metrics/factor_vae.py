"""The FactorVAE score (Kim & Mnih 2018), disentanglement_lib's version.

1. Global scale: the variance (ddof 1) of every latent over
   `num_variance_estimate` random images; latents whose standard deviation
   is below `prune_threshold` (0.05) are dropped as inactive.
2. One vote: pick a factor k uniformly, draw `batch_size` images that share
   factor k's value (all other factors random), divide each active latent's
   variance over that batch by its global variance, and vote for the pair
   (k, latent with the smallest ratio).
3. A majority-vote classifier maps each latent to the factor that voted for
   it most often; the score is the fraction of votes it gets right, on the
   training votes and on fresh evaluation votes.

Study defaults: batch 64, 10,000 training votes, 5,000 evaluation votes,
10,000 images for the global variances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from msdr_jax.metrics import data


def draw_votes(
    dataset, rng: jax.Array, num_votes: int, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
  """Factors of the batches of `num_votes` votes.

  Returns ([num_votes, batch_size, F] factors, equal within a batch in the
  label's factor; [num_votes] labels, the fixed factor).
  """
  num_factors = dataset.num_factors
  index_rng, factor_rng = jax.random.split(rng)
  labels = jax.random.randint(index_rng, (num_votes,), 0, num_factors)
  factors = dataset.sample_factors(factor_rng, num_votes * batch_size).reshape(
      num_votes, batch_size, num_factors)
  keep = jax.nn.one_hot(labels, num_factors, dtype=jnp.bool_)[:, None, :]
  return np.asarray(jnp.where(keep, factors[:, :1, :], factors)), np.asarray(labels)


def sample_local_variances(
    representation_fn: data.RepresentationFn, dataset, rng: jax.Array,
    num_votes: int, batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
  """([num_votes, K] per-batch code variances, [num_votes] fixed factors)."""
  if batch_size < 2:
    raise ValueError(f"FactorVAE score needs batch_size >= 2, got {batch_size}.")
  factors, labels = draw_votes(dataset, rng, num_votes, batch_size)
  codes = data.encode_factors(representation_fn, dataset, factors, data.nuisance_key(rng))
  return np.var(codes, axis=1, ddof=1), labels


def factor_vae_score(
    global_variances: np.ndarray,
    train_variances: np.ndarray,
    train_labels: np.ndarray,
    eval_variances: np.ndarray,
    eval_labels: np.ndarray,
    num_factors: int,
    prune_threshold: float = 0.05,
) -> dict[str, float]:
  """The score from global and per-vote variances; see the module docstring.

  Returns {"factor_vae/train_accuracy", "factor_vae/eval_accuracy",
  "factor_vae/num_active_latents"}. Without an active latent both
  accuracies are 0, as in disentanglement_lib.
  """
  global_variances = np.asarray(global_variances, np.float64)
  for name, values in (("global", global_variances), ("training", train_variances),
                       ("evaluation", eval_variances)):
    if not np.all(np.isfinite(values)):
      raise ValueError(
          f"FactorVAE score got NaN or infinite {name} variances; the "
          "representation function must return finite values.")
  # A latent of zero variance is inactive even at threshold 0 (0/0 otherwise).
  active = (global_variances > 0) & (np.sqrt(global_variances) >= prune_threshold)
  if not active.any():
    return {"factor_vae/train_accuracy": 0.0, "factor_vae/eval_accuracy": 0.0,
            "factor_vae/num_active_latents": 0.0}
  train_votes = _votes(global_variances, active, train_variances, train_labels, num_factors)
  eval_votes = _votes(global_variances, active, eval_variances, eval_labels, num_factors)
  majority = np.argmax(train_votes, axis=0)  # The classifier: latent -> factor.
  latents = np.arange(train_votes.shape[1])
  return {
      "factor_vae/train_accuracy": float(
          train_votes[majority, latents].sum() / train_votes.sum()),
      "factor_vae/eval_accuracy": float(
          eval_votes[majority, latents].sum() / eval_votes.sum()),
      # disentanglement_lib reports len(active) here, i.e. all latents; this
      # is the number of latents that pass the pruning.
      "factor_vae/num_active_latents": float(active.sum()),
  }


def _votes(global_variances, active, local_variances, labels, num_factors):
  """[F, active K] counts of (fixed factor, latent of least relative variance)."""
  ratios = np.asarray(local_variances)[:, active] / global_variances[active]
  chosen = np.argmin(ratios, axis=1)
  votes = np.zeros((num_factors, int(active.sum())), np.int64)
  np.add.at(votes, (np.asarray(labels), chosen), 1)
  return votes


def compute_factor_vae(
    representation_fn: data.RepresentationFn,
    dataset,
    seed: int | jax.Array,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    num_variance_estimate: int = 10_000,
    prune_threshold: float = 0.05,
) -> dict[str, float]:
  """FactorVAE score of `representation_fn` on `dataset`."""
  data.check_dataset(dataset, "FactorVAE score")
  if num_variance_estimate < 2:
    raise ValueError(
        f"FactorVAE score needs num_variance_estimate >= 2, got {num_variance_estimate}.")
  variance_rng, train_rng, eval_rng = jax.random.split(data.as_key(seed), 3)
  codes, _ = data.sample_codes(
      representation_fn, dataset, variance_rng, num_variance_estimate)
  data.check_codes_and_factors(codes, np.zeros((len(codes), 1), np.int64),
                               "FactorVAE score")
  train = sample_local_variances(representation_fn, dataset, train_rng, num_train, batch_size)
  evaluation = sample_local_variances(
      representation_fn, dataset, eval_rng, num_eval, batch_size)
  return factor_vae_score(
      np.var(codes, axis=0, ddof=1), *train, *evaluation,
      num_factors=dataset.num_factors, prune_threshold=prune_threshold)
