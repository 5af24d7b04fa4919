"""Evaluation of a trained stage one: statistics, MIG and figures.

Writes into the work directory:
  reconstructions.png -- rows of inputs alternating with reconstructions.
  traversals.png      -- one row per latent: the latent swept over
                         [-range, range] with the others at an image's code.
  metrics.json        -- reconstruction error, KL, TC, active latents, MIG.
"""

from __future__ import annotations

import json
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msdr_jax import losses
from msdr_jax import metrics
from msdr_jax import visualize
from msdr_jax import writers
from msdr_jax.data import ground_truth
from msdr_jax.models import vae

_NUM_SHOWN = 16


def _make_eval_batch(model, dataset, stage_config, batch_size: int):
  """Jitted statistics of one freshly sampled batch."""
  @jax.jit
  def eval_batch(params, rng):
    data_rng, sample_rng = jax.random.split(rng)
    images, factors = dataset.sample(data_rng, batch_size)
    out = model.apply({"params": params}, images, sample_rng)
    recon = losses.decoder_mean(out.decoder_output)
    terms = losses.decomposed_kl_terms(
        out.latents, out.mean, out.log_var, dataset.num_images,
        stage_config.objective.tc_estimator,
    )
    per_image = lambda x: x.reshape(batch_size, -1).sum(-1)
    return {
        "images": images[:_NUM_SHOWN],
        "reconstructions": recon[:_NUM_SHOWN],
        "mean": out.mean,
        "factors": factors,
        "bce": losses.bernoulli_nll(out.decoder_output, images),
        "mse": per_image((recon - images) ** 2),
        "kl_per_latent": losses.kl_to_standard_normal(out.mean, out.log_var),
        "tc": terms["tc"],
    }

  return eval_batch


def traversals(model, params, code: jax.Array, values: jax.Array) -> jax.Array:
  """Decodes `code` with latent j set to each of `values`, for every j.

  Returns [K, len(values), H, W, C] mean images.
  """
  num_latents = code.shape[-1]
  codes = jnp.tile(code, (num_latents, len(values), 1))
  rows = jnp.arange(num_latents)
  codes = codes.at[rows, :, rows].set(values[None, :])
  logits = model.apply(
      {"params": params}, codes.reshape(-1, num_latents), method=vae.VAE.decode
  )
  return losses.decoder_mean(logits).reshape(num_latents, len(values), *logits.shape[1:])


def write_json(path: epath.Path, payload: dict[str, Any]) -> None:
  """Atomic write: a crash never leaves a half-written metrics file."""
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
  tmp.replace(path)


def evaluate_stage_one(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: ground_truth.GroundTruthData,
    params: Any,
    step: int,
    rng: jax.Array,
    writer: writers.MetricWriter,
) -> dict[str, Any]:
  """Computes the stage-one metrics and figures; returns the metrics dict.

  Args:
    config: the run's config (`stage1` and `eval` are used).
    workdir: where the figures and `metrics.json` go.
    dataset: the ground-truth data set to draw evaluation batches from.
    params: stage-one VAE parameters.
    step: training step of `params`, recorded with the results.
    rng: evaluation key, independent of the training stream.
    writer: TensorBoard writer.
  """
  eval_config = config.eval
  model = vae.model_from_config(config.stage1.model, dataset.observation_shape)
  eval_batch = _make_eval_batch(model, dataset, config.stage1, eval_config.batch_size)
  num_batches = eval_config.num_points // eval_config.batch_size
  batches = [
      jax.device_get(eval_batch(params, jax.random.fold_in(rng, i)))
      for i in range(num_batches)
  ]
  cat = lambda name: np.concatenate([b[name] for b in batches])
  means, factors = cat("mean"), cat("factors")
  kl_per_latent = cat("kl_per_latent").mean(0)
  mean_variance = means.var(0)
  active = mean_variance > eval_config.active_variance_threshold

  results: dict[str, Any] = {
      "step": step,
      "num_points": int(eval_config.num_points),
      "reconstruction_bce": float(cat("bce").mean()),
      "reconstruction_mse": float(cat("mse").mean()),
      "kl": float(kl_per_latent.sum()),
      "kl_per_latent": kl_per_latent.tolist(),
      "tc": float(np.mean([b["tc"] for b in batches])),
      "tc_estimator": (
          f"{config.stage1.objective.tc_estimator}, batch {eval_config.batch_size}"
      ),
      "active_latents": int(active.sum()),
      "latent_mean_variance": mean_variance.tolist(),
  }
  results.update(metrics.mutual_information_gap(means, factors, eval_config.mig_bins))
  results["mig_factors"] = list(dataset.factor_names)

  workdir_path = epath.Path(workdir)
  first = batches[0]
  recon_grid = visualize.reconstruction_grid(first["images"], first["reconstructions"])
  values = jnp.linspace(
      -eval_config.traversal_range, eval_config.traversal_range,
      eval_config.traversal_steps,
  )
  decoded = np.asarray(traversals(model, params, jnp.asarray(means[0]), values))
  labels = [
      f"z{j} KL {kl:.2f}{'' if on else ' (off)'}"
      for j, (kl, on) in enumerate(zip(kl_per_latent, active))
  ]
  traversal_grid = visualize.traversal_grid(decoded, labels)
  visualize.save_png(workdir_path / "reconstructions.png", recon_grid)
  visualize.save_png(workdir_path / "traversals.png", traversal_grid)
  writer.write_image(results["step"], "stage1/reconstructions", recon_grid)
  writer.write_image(results["step"], "stage1/traversals", traversal_grid)
  writer.write_scalars(results["step"], {
      f"eval/{k}": v for k, v in results.items() if isinstance(v, float)
  })
  write_json(workdir_path / "metrics.json", results)
  logging.info(
      "Evaluation: BCE %.2f  MSE %.2f  KL %.2f  TC %.3f  active %d  MIG %.3f",
      results["reconstruction_bce"], results["reconstruction_mse"],
      results["kl"], results["tc"], results["active_latents"], results["mig"],
  )
  return results
