"""The evaluation of the multi-stage model: scores and figures.

Scores (`multi_stage/...`): the combined model's reconstruction next to stage
one's on the same images, its MIG (stage one's: the code is stage one's
encoder mean, asserted), conditioning fidelity and the FID/KID of its samples
against stage one's real images; `stage2/...`: the family's loss terms.
Figures: `side_by_side` (input | stage-one | multi-stage reconstruction),
`traversals_multi_stage` (w held fixed) and `samples` (z ~ N(0, I): stage
one's y, then three draws of w each).
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
from msdr_jax import metrics
from msdr_jax import multi_stage
from msdr_jax import visualize
from msdr_jax.data import ground_truth
from msdr_jax.evaluators import common


def _make_eval_batch(model: multi_stage.MultiStageModel, batch_size: int):
  """Jitted multi-stage statistics of one freshly sampled batch."""

  @jax.jit
  def eval_batch(params, dataset, stage1_rng, rng):
    # The data of stage one's evaluation batch with the same key, so that
    # both evaluations score the very same images.
    data_rng, _ = jax.random.split(stage1_rng)
    loss_rng, latent_rng = jax.random.split(rng)
    images, _ = dataset.sample(data_rng, batch_size)
    stage1_codes, _ = model.stage1.encode(params["stage1"], images)
    codes, latents = model.encode(params, images)
    cond = multi_stage.condition(model.stage1, params["stage1"], images)
    reconstructions = model.stage2.decode(params["stage2"], cond, latents)
    _, family_metrics = model.loss_given_condition(
        params["stage2"], params["stage1"], cond, images, loss_rng)
    # Conditioning fidelity: generate from the same z with w ~ p(w) and ask
    # stage one which z it sees; stage one's own y is the reference.
    generated = model.stage2.decode(
        params["stage2"], cond,
        model.stage2.sample_latents(params["stage2"], cond, latent_rng))
    encode = lambda x: model.stage1.encode(params["stage1"], x)[0]
    per_image = lambda x: x.reshape(batch_size, -1).sum(-1)
    # The pixels that are not black: the object, on the dSprites data sets'
    # black background (where a texture is).
    foreground = (images > 0).astype(images.dtype)
    return {
        "images": images[:common.NUM_SHOWN],
        "stage1_reconstructions": cond.image[:common.NUM_SHOWN],
        "reconstructions": reconstructions[:common.NUM_SHOWN],
        "stage1_codes": stage1_codes,
        "codes": codes,
        "stage1_mse": per_image((cond.image - images) ** 2),
        "mse": per_image((reconstructions - images) ** 2),
        "stage1_foreground_mse": per_image(foreground * (cond.image - images) ** 2),
        "foreground_mse": per_image(foreground * (reconstructions - images) ** 2),
        "stage1_bce": reconstruction.bernoulli_cross_entropy(images, cond.image),
        "bce": reconstruction.bernoulli_cross_entropy(images, reconstructions),
        "stage1_psnr": reconstruction.psnr(images, cond.image),
        "psnr": reconstruction.psnr(images, reconstructions),
        "stage1_ssim": reconstruction.ssim(images, cond.image),
        "ssim": reconstruction.ssim(images, reconstructions),
        "family": family_metrics,
        "recovered_codes": encode(generated),
        "stage1_recovered_codes": encode(cond.image),
    }

  return eval_batch


def _side_by_side_grid(inputs, stage1, multi, num_columns: int = 8) -> np.ndarray:
  rows, labels = [], []
  for start in range(0, len(inputs), num_columns):
    for name, images in (("input", inputs), ("stage 1", stage1), ("multi", multi)):
      rows.append(images[start : start + num_columns])
      labels.append(name)
  grid = visualize.image_grid(np.concatenate(rows), num_columns)
  return visualize.label_rows(grid, labels, inputs.shape[1] + 2)


def _sample_grid(model, params, rng, num_columns: int) -> np.ndarray:
  """Rows: stage one's y of z ~ N(0, I), then three draws of w for each z."""
  @jax.jit  # One program: run eagerly, each operation would compile alone.
  def sample_rows(params, rng):
    code_rng, *latent_rngs = jax.random.split(rng, 4)
    codes = jax.random.normal(code_rng, (num_columns, model.stage1.latent_dim))
    rows = [multi_stage.condition_on_codes(model.stage1, params["stage1"], codes).image]
    for latent_rng in latent_rngs:
      latents = model.sample_latents(params, codes, latent_rng)
      rows.append(model.decode(params, codes, latents))
    return jnp.stack(rows)

  rows = np.asarray(sample_rows(params, rng))
  grid = visualize.image_grid(rows.reshape(-1, *rows.shape[2:]), num_columns)
  return visualize.label_rows(
      grid, ["stage 1", "w #1", "w #2", "w #3"], rows[0].shape[1] + 2)


def _rounded(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.3f}"


def evaluate(
    config: ml_collections.ConfigDict,
    dataset: ground_truth.GroundTruthData,
    model: multi_stage.MultiStageModel,
    params: Any,
    step: int,
    active: np.ndarray,
    stage1_mig: float | None,
) -> common.Evaluation:
  """Scores and figures of the combined model at stage two's training `step`.

  Args:
    config: the run's config (`eval`, `stage2.family`, `seed`).
    dataset: the ground-truth data set; the images scored are those of stage
      one's evaluation (same key).
    model: the multi-stage model `params` belong to.
    params: `{"stage1": ..., "stage2": ...}`.
    step: stage two's training step.
    active: stage one's active latents (`Evaluation.active`), those the
      conditioning fidelity averages over.
    stage1_mig: stage one's MIG, which is the combined model's (None without
      it).
  """
  eval_config = config.eval
  stage1_rng, rng = common.eval_rng(config.seed, 1), common.eval_rng(config.seed, 2)
  num_batches = eval_config.num_points // eval_config.batch_size
  batches = common.run_batches(
      functools.partial(_make_eval_batch(model, eval_config.batch_size), params, dataset),
      num_batches, stage1_rng, rng)
  cat = lambda name: np.concatenate([b[name] for b in batches])
  codes = cat("codes")
  # The combined model's representation *is* stage one's: z is computed by
  # the frozen encoder alone, so every disentanglement metric is unchanged.
  if not np.array_equal(codes, cat("stage1_codes")):
    raise AssertionError("The multi-stage code differs from stage one's encoder mean.")

  fidelity = metrics.conditioning_fidelity(codes, cat("recovered_codes"), active)
  stage1_fidelity = metrics.conditioning_fidelity(
      codes, cat("stage1_recovered_codes"), active)
  mse, stage1_mse = float(cat("mse").mean()), float(cat("stage1_mse").mean())
  scores = {
      "stage2_family": config.stage2.family,
      "stage2_step": step,
      "multi_stage/reconstruction_mse": mse,
      "multi_stage/stage1_reconstruction_mse": stage1_mse,
      # None when the reconstruction is exact (MS-Flow is a bijection).
      "multi_stage/mse_ratio": stage1_mse / mse if mse > 0 else None,
      **{f"multi_stage/{prefix}reconstruction_{name}": float(cat(prefix + name).mean())
         for prefix in ("", "stage1_") for name in ("bce", "psnr", "ssim", "foreground_mse")},
      "multi_stage/mig": stage1_mig,
      # None (null in the JSON), not NaN, when no latent is active.
      **{f"multi_stage/{name}_{key}": result[key]
         for name, result in (("conditioning_fidelity", fidelity),
                              ("stage1_fidelity", stage1_fidelity))
         for key in ("r2", "r2_variance_weighted", "r2_per_latent")},
      **{f"stage2/{name}": float(np.mean([b["family"][name] for b in batches]))
         for name in batches[0]["family"]},
  }
  # With stage one's key: the same real images as stage one's FID and KID.
  scores.update(common.sample_quality(
      eval_config, dataset, stage1_rng, model.sample, params, "multi_stage/sample_quality"))

  first = batches[0]
  traversals = np.asarray(jax.jit(model.traverse)(
      params, jnp.asarray(first["images"][0]), common.traversal_values(eval_config)))
  figures = {
      "side_by_side": _side_by_side_grid(
          first["images"], first["stage1_reconstructions"], first["reconstructions"]),
      "traversals_multi_stage": visualize.traversal_grid(
          traversals, [f"z{j}{'' if on else ' (off)'}" for j, on in enumerate(active)]),
      # Key `num_batches` is the first one the batches above did not use.
      "samples": _sample_grid(model, params, jax.random.fold_in(rng, num_batches),
                              eval_config.traversal_steps),
  }
  logging.info(
      "Multi-stage evaluation: MSE %.3f (stage one %.2f)  MIG %s  "
      "fidelity R2 %s, variance-weighted %s (stage one's own %s, %s) on %d "
      "active latents",
      mse, stage1_mse, _rounded(stage1_mig), _rounded(fidelity["r2"]),
      _rounded(fidelity["r2_variance_weighted"]), _rounded(stage1_fidelity["r2"]),
      _rounded(stage1_fidelity["r2_variance_weighted"]), int(active.sum()))
  if "multi_stage/sample_quality/fid" in scores:
    logging.info("Multi-stage samples: FID %.3f, KID %.4f (%s features)",
                 scores["multi_stage/sample_quality/fid"],
                 scores["multi_stage/sample_quality/kid"],
                 scores["multi_stage/sample_quality/feature_extractor"])
  return common.Evaluation(step, scores, figures, "stage2", active)
