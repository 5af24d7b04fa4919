"""The evaluation of stage one (any disentangler): scores and figures.

Scores: reconstruction (BCE, squared error, PSNR, SSIM), KL per latent, TC,
active latents, the disentanglement suite (`metrics.suite`: MIG, DCI, SAP,
modularity and explicitness, BetaVAE and FactorVAE scores) and the FID/KID of
its samples. Figures: `reconstructions` (rows of inputs alternating with
reconstructions) and `traversals` (one row per latent, swept over
[-range, range] around an image's code, labelled with its KL).
"""

from __future__ import annotations

import functools
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msdr_jax.metrics import reconstruction
from msdr_jax import losses
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import visualize
from msdr_jax.data import ground_truth
from msdr_jax.evaluators import common
from msdr_jax.metrics import suite
from msdr_jax.models import vae

# The scores the log line shows (all of them are in metrics.json).
_HEADLINE = ("mig", "dci/disentanglement", "sap", "modularity",
             "beta_vae/eval_accuracy", "factor_vae/eval_accuracy",
             "sample_quality/fid")


def _make_eval_batch(stage_one, tc_estimator: str, batch_size: int):
  """Jitted statistics of one freshly sampled batch."""
  @jax.jit
  def eval_batch(params, dataset, rng):
    data_rng, sample_rng = jax.random.split(rng)
    images, factors = dataset.sample(data_rng, batch_size)
    mean, log_var = stage_one.encode(params, images)
    latents = vae.sample_diagonal_gaussian(sample_rng, mean, log_var)
    logits = stage_one.decode(params, latents)
    recon = losses.decoder_mean(logits)
    terms = losses.decomposed_kl_terms(
        latents, mean, log_var, dataset.num_images, tc_estimator)
    per_image = lambda x: x.reshape(batch_size, -1).sum(-1)
    return {
        "images": images[:common.NUM_SHOWN],
        "reconstructions": recon[:common.NUM_SHOWN],
        "mean": mean,
        "factors": factors,
        "bce": losses.bernoulli_nll(logits, images),
        "mse": per_image((recon - images) ** 2),
        "psnr": reconstruction.psnr(images, recon),
        "ssim": reconstruction.ssim(images, recon),
        "kl_per_latent": losses.kl_to_standard_normal(mean, log_var),
        "tc": terms["tc"],
    }

  return eval_batch


# One program: run eagerly, each operation would compile on its own. Stage one
# is a frozen dataclass, hence a static (hashable) argument.
_traverse = jax.jit(stage_one_lib.traverse, static_argnums=0)


def evaluate(
    config: ml_collections.ConfigDict,
    dataset: ground_truth.GroundTruthData,
    stage_one: stage_one_lib.StageOne | stage_one_lib.DisentanglingVAE,
    params: Any,
    step: int,
) -> common.Evaluation:
  """Scores and figures of stage one's `params` at training `step`.

  Uses `config.eval`, the TC estimator of `config.stage1.objective` and the
  run's evaluation key (from `config.seed`, independent of training).
  """
  eval_config = config.eval
  rng = common.eval_rng(config.seed, stage=1)
  eval_batch = functools.partial(_make_eval_batch(
      stage_one, config.stage1.objective.tc_estimator, eval_config.batch_size),
      params, dataset)
  batches = common.run_batches(
      eval_batch, eval_config.num_points // eval_config.batch_size, rng)
  cat = lambda name: np.concatenate([b[name] for b in batches])
  means = cat("mean")
  common.check_finite_codes(
      means, "Stage one", step,
      "Start a new run with a lower --config.stage1.optimizer.learning_rate (a "
      "stage one given from Python: check its encoder).")
  kl_per_latent = cat("kl_per_latent").mean(0)
  mean_variance = means.var(0)
  active = mean_variance > eval_config.active_variance_threshold

  scores: dict[str, Any] = {
      "step": step,
      "num_points": int(eval_config.num_points),
      "reconstruction_bce": float(cat("bce").mean()),
      "reconstruction_mse": float(cat("mse").mean()),
      "reconstruction_psnr": float(cat("psnr").mean()),
      "reconstruction_ssim": float(cat("ssim").mean()),
      "kl": float(kl_per_latent.sum()),
      "kl_per_latent": kl_per_latent.tolist(),
      "tc": float(np.mean([b["tc"] for b in batches])),
      "tc_estimator": (
          f"{config.stage1.objective.tc_estimator}, batch {eval_config.batch_size}"),
      "active_latents": int(active.sum()),
      "latent_mean_variance": mean_variance.tolist(),
  }
  if dataset.num_factors:
    scores.update(suite.evaluate(
        lambda images: stage_one.encode(params, images)[0], dataset,
        jax.random.fold_in(rng, common.SUITE_STREAM), eval_config.disentanglement))
    scores["metric_factors"] = list(dataset.factor_names)
  else:
    logging.info("The data set has no labelled factors: no disentanglement metrics.")
  decode_prior_sample = lambda p, key, num: losses.decoder_mean(stage_one.decode(
      p, jax.random.normal(key, (num, stage_one.latent_dim))))
  scores.update(common.sample_quality(eval_config, dataset, rng, decode_prior_sample,
                                      params))

  first = batches[0]
  traversals = np.asarray(_traverse(
      stage_one, params, jnp.asarray(means[0]), common.traversal_values(eval_config)))
  labels = [f"z{j} KL {kl:.2f}{'' if on else ' (off)'}"
            for j, (kl, on) in enumerate(zip(kl_per_latent, active))]
  figures = {
      "reconstructions": visualize.reconstruction_grid(
          first["images"], first["reconstructions"]),
      "traversals": visualize.traversal_grid(traversals, labels),
  }
  logging.info(
      "Evaluation: BCE %.2f  MSE %.2f  PSNR %.2f  SSIM %.3f  KL %.2f  TC %.3f  "
      "active %d  %s",
      scores["reconstruction_bce"], scores["reconstruction_mse"],
      scores["reconstruction_psnr"], scores["reconstruction_ssim"],
      scores["kl"], scores["tc"], scores["active_latents"],
      "  ".join(f"{key} {scores[key]:.3f}" for key in _HEADLINE if key in scores),
  )
  return common.Evaluation(step, scores, figures, "stage1", active)
