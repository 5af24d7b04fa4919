"""Evaluation of stage one and of the multi-stage model: metrics and figures.

Writes into the work directory:
  reconstructions.png -- rows of inputs alternating with stage-one
                         reconstructions.
  traversals.png      -- one row per latent: the latent swept over
                         [-range, range] with the others at an image's code.
  metrics.json        -- reconstruction (BCE, squared error, PSNR, SSIM), KL,
                         TC, active latents, the disentanglement suite
                         (`metrics.suite`: MIG, DCI, SAP, modularity and
                         explicitness, BetaVAE and FactorVAE scores) and the
                         samples' FID/KID; with a stage two, also the
                         `multi_stage/...` keys.
With a stage two:
  side_by_side.png          -- input | stage-one | multi-stage reconstruction.
  traversals_multi_stage.png -- the combined model's traversals, w held fixed.
  samples.png               -- z ~ N(0, I): stage one's y, then the combined
                               model with three draws of w each.
"""

from __future__ import annotations

import functools
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msdr_jax import image_metrics
from msdr_jax import losses
from msdr_jax import metrics
from msdr_jax import multi_stage
from msdr_jax import run_directory
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import visualize
from msdr_jax import writers
from msdr_jax.data import ground_truth
from msdr_jax.metrics import suite
from msdr_jax.models import vae

_NUM_SHOWN = 16
# Streams folded into the evaluation key, independent of the batches' keys.
_SUITE_STREAM, _REAL_IMAGES_STREAM, _SAMPLES_STREAM = 2**20, 2**20 + 1, 2**20 + 2


def _make_eval_batch(stage_one: stage_one_lib.StageOne, tc_estimator: str,
                     batch_size: int):
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
        "images": images[:_NUM_SHOWN],
        "reconstructions": recon[:_NUM_SHOWN],
        "mean": mean,
        "factors": factors,
        "bce": losses.bernoulli_nll(logits, images),
        "mse": per_image((recon - images) ** 2),
        "psnr": image_metrics.psnr(images, recon),
        "ssim": image_metrics.ssim(images, recon),
        "kl_per_latent": losses.kl_to_standard_normal(mean, log_var),
        "tc": terms["tc"],
    }

  return eval_batch


# One program: run eagerly, each operation would compile on its own. Stage one
# is a frozen dataclass of functions, hence a static (hashable) argument.
@functools.partial(jax.jit, static_argnums=0)
def traversals(
    stage_one: stage_one_lib.StageOne, params, code: jax.Array, values: jax.Array
) -> jax.Array:
  """Decodes `code` with latent j set to each of `values`, for every j.

  Returns [K, len(values), H, W, C] mean images.
  """
  num_latents = code.shape[-1]
  codes = jnp.tile(code, (num_latents, len(values), 1))
  rows = jnp.arange(num_latents)
  codes = codes.at[rows, :, rows].set(values[None, :])
  logits = stage_one.decode(params, codes.reshape(-1, num_latents))
  return losses.decoder_mean(logits).reshape(num_latents, len(values), *logits.shape[1:])


def evaluate_stage_one(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: ground_truth.GroundTruthData,
    params: Any,
    step: int,
    rng: jax.Array,
    writer: writers.MetricWriter,
    stage_one: stage_one_lib.StageOne | stage_one_lib.DisentanglingVAE,
) -> dict[str, Any]:
  """Computes the stage-one metrics and figures; returns the metrics dict.

  Args:
    config: the run's config (`stage1` and `eval` are used).
    workdir: where the figures and `metrics.json` go.
    dataset: the ground-truth data set to draw evaluation batches from.
    params: stage-one parameters.
    step: training step of `params`, recorded with the results.
    rng: evaluation key, independent of the training stream.
    writer: TensorBoard writer.
    stage_one: the stage one `params` belong to.
  """
  eval_config = config.eval
  eval_batch = _make_eval_batch(
      stage_one, config.stage1.objective.tc_estimator, eval_config.batch_size)
  num_batches = eval_config.num_points // eval_config.batch_size
  batches = [
      jax.device_get(eval_batch(params, dataset, jax.random.fold_in(rng, i)))
      for i in range(num_batches)
  ]
  cat = lambda name: np.concatenate([b[name] for b in batches])
  means = cat("mean")
  kl_per_latent = cat("kl_per_latent").mean(0)
  mean_variance = means.var(0)
  active = mean_variance > eval_config.active_variance_threshold

  results: dict[str, Any] = {
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
          f"{config.stage1.objective.tc_estimator}, batch {eval_config.batch_size}"
      ),
      "active_latents": int(active.sum()),
      "latent_mean_variance": mean_variance.tolist(),
  }
  encode_mean = lambda images: stage_one.encode(params, images)[0]
  if dataset.num_factors:
    results.update(suite.evaluate(
        encode_mean, dataset, jax.random.fold_in(rng, _SUITE_STREAM),
        eval_config.disentanglement))
    results["metric_factors"] = list(dataset.factor_names)
  else:
    logging.info("The data set has no labelled factors: no disentanglement metrics.")
  decode_prior_sample = lambda p, key, num: losses.decoder_mean(stage_one.decode(
      p, jax.random.normal(key, (num, stage_one.latent_dim))))
  results.update(sample_quality(eval_config, dataset, rng, decode_prior_sample, params))

  workdir_path = epath.Path(workdir)
  first = batches[0]
  recon_grid = visualize.reconstruction_grid(first["images"], first["reconstructions"])
  values = jnp.linspace(
      -eval_config.traversal_range, eval_config.traversal_range,
      eval_config.traversal_steps,
  )
  decoded = np.asarray(traversals(stage_one, params, jnp.asarray(means[0]), values))
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
  run_directory.write_json(workdir_path / run_directory.METRICS_FILENAME, results)
  logging.info(
      "Evaluation: BCE %.2f  MSE %.2f  PSNR %.2f  SSIM %.3f  KL %.2f  TC %.3f  "
      "active %d  %s",
      results["reconstruction_bce"], results["reconstruction_mse"],
      results["reconstruction_psnr"], results["reconstruction_ssim"],
      results["kl"], results["tc"], results["active_latents"],
      "  ".join(f"{key} {results[key]:.3f}" for key in _HEADLINE if key in results),
  )
  return results


# The scores the log line shows (all of them are in metrics.json).
_HEADLINE = ("mig", "dci/disentanglement", "sap", "modularity",
             "beta_vae/eval_accuracy", "factor_vae/eval_accuracy",
             "sample_quality/fid")


def sample_quality(
    eval_config: ml_collections.ConfigDict,
    dataset: ground_truth.GroundTruthData,
    rng: jax.Array,
    generate,
    params: Any,
    prefix: str = "sample_quality",
) -> dict[str, Any]:
  """FID and KID of `generate(params, key, num) -> images` against the data set.

  `params` is an argument of the jitted generator (not a closed-over
  constant), so the parameters are not baked into the compiled program.

  The real images depend on `rng` only, so every model evaluated with the
  same key is compared with the same real images. Empty when
  `eval_config.sample_quality.num_samples` is 0.
  """
  config = eval_config.sample_quality
  if not config.num_samples:
    return {}
  extractor = image_metrics.make_feature_extractor(
      config.feature_extractor, config.inception_weights or None)
  batch_size = min(eval_config.batch_size, config.num_samples)
  num_batches = -(-config.num_samples // batch_size)
  real_rng = jax.random.fold_in(rng, _REAL_IMAGES_STREAM)
  sample_rng = jax.random.fold_in(rng, _SAMPLES_STREAM)
  real_batch = jax.jit(lambda data, key: data.sample(key, batch_size)[0])
  generated_batch = jax.jit(lambda p, key: generate(p, key, batch_size))
  collect = lambda make, key: np.concatenate([
      np.asarray(make(jax.random.fold_in(key, i))) for i in range(num_batches)
  ])[: config.num_samples]
  scores = image_metrics.sample_quality(
      collect(lambda key: real_batch(dataset, key), real_rng),
      collect(lambda key: generated_batch(params, key), sample_rng), extractor,
      batch_size=min(256, config.num_samples),
      kid_num_subsets=config.kid_num_subsets,
      kid_subset_size=min(config.kid_subset_size, config.num_samples))
  return {
      **{f"{prefix}/{name}": value for name, value in scores.items()},
      f"{prefix}/feature_extractor": config.feature_extractor,
      f"{prefix}/num_samples": int(config.num_samples),
  }


def _make_multi_stage_eval_batch(model: multi_stage.MultiStageModel, batch_size):
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
    _, family_metrics = model.stage2.loss(params["stage2"], cond, images, loss_rng)
    # Conditioning fidelity: generate from the same z with w ~ p(w) and ask
    # stage one which z it sees; stage one's own y is the reference.
    generated = model.stage2.decode(
        params["stage2"], cond,
        model.stage2.sample_latents(params["stage2"], cond, latent_rng))
    encode = lambda x: model.stage1.encode(params["stage1"], x)[0]
    per_image = lambda x: x.reshape(batch_size, -1).sum(-1)
    return {
        "images": images[:_NUM_SHOWN],
        "stage1_reconstructions": cond.image[:_NUM_SHOWN],
        "reconstructions": reconstructions[:_NUM_SHOWN],
        "stage1_codes": stage1_codes,
        "codes": codes,
        "stage1_mse": per_image((cond.image - images) ** 2),
        "mse": per_image((reconstructions - images) ** 2),
        "stage1_bce": image_metrics.bernoulli_cross_entropy(images, cond.image),
        "bce": image_metrics.bernoulli_cross_entropy(images, reconstructions),
        "stage1_psnr": image_metrics.psnr(images, cond.image),
        "psnr": image_metrics.psnr(images, reconstructions),
        "stage1_ssim": image_metrics.ssim(images, cond.image),
        "ssim": image_metrics.ssim(images, reconstructions),
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


def evaluate_multi_stage(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: ground_truth.GroundTruthData,
    model: multi_stage.MultiStageModel,
    params: Any,
    step: int,
    stage1_rng: jax.Array,
    rng: jax.Array,
    writer: writers.MetricWriter,
    stage1_results: dict[str, Any],
) -> dict[str, Any]:
  """Adds the multi-stage metrics and figures to `stage1_results`.

  Args:
    config: the run's config.
    workdir: where the figures and `metrics.json` go.
    dataset: the ground-truth data set to draw evaluation batches from.
    model: the multi-stage model `params` belong to.
    params: `{"stage1": ..., "stage2": ...}`.
    step: stage two's training step.
    stage1_rng: the key `evaluate_stage_one` was given: the images scored
      are the same.
    rng: stage two's evaluation key, independent of the training streams.
    writer: TensorBoard writer.
    stage1_results: what `evaluate_stage_one` returned.

  Returns:
    All metrics, also written to `workdir/metrics.json`.
  """
  eval_config = config.eval
  eval_batch = _make_multi_stage_eval_batch(model, eval_config.batch_size)
  num_batches = eval_config.num_points // eval_config.batch_size
  batches = [
      jax.device_get(eval_batch(
          params, dataset, jax.random.fold_in(stage1_rng, i), jax.random.fold_in(rng, i)))
      for i in range(num_batches)
  ]
  cat = lambda name: np.concatenate([b[name] for b in batches])
  codes, stage1_codes = cat("codes"), cat("stage1_codes")
  # The combined model's representation *is* stage one's: z is computed by
  # the frozen encoder alone, so every disentanglement metric is unchanged.
  if not np.array_equal(codes, stage1_codes):
    raise AssertionError("The multi-stage code differs from stage one's encoder mean.")

  active = np.asarray(stage1_results["latent_mean_variance"]) > (
      eval_config.active_variance_threshold)
  fidelity = metrics.conditioning_fidelity(codes, cat("recovered_codes"), active)
  stage1_fidelity = metrics.conditioning_fidelity(
      codes, cat("stage1_recovered_codes"), active)
  mse, stage1_mse = float(cat("mse").mean()), float(cat("stage1_mse").mean())
  reconstruction = {
      f"multi_stage/{prefix}reconstruction_{name}": float(cat(prefix + name).mean())
      for prefix in ("", "stage1_") for name in ("bce", "psnr", "ssim")}
  family_metrics = {
      name: float(np.mean([b["family"][name] for b in batches]))
      for name in batches[0]["family"]
  }
  results = dict(stage1_results)
  results.update({
      "stage2_family": config.stage2.family,
      "stage2_step": step,
      "multi_stage/reconstruction_mse": mse,
      "multi_stage/stage1_reconstruction_mse": stage1_mse,
      # None when the reconstruction is exact (MS-Flow is a bijection).
      "multi_stage/mse_ratio": stage1_mse / mse if mse > 0 else None,
      **reconstruction,
      # The combined model's code is stage one's encoder mean (asserted above),
      # so every disentanglement score is stage one's.
      "multi_stage/mig": stage1_results.get("mig"),
      # None (null in the JSON), not NaN, when no latent is active.
      "multi_stage/conditioning_fidelity_r2": fidelity["r2"],
      "multi_stage/conditioning_fidelity_r2_variance_weighted": (
          fidelity["r2_variance_weighted"]),
      "multi_stage/conditioning_fidelity_r2_per_latent": fidelity["r2_per_latent"],
      "multi_stage/stage1_fidelity_r2": stage1_fidelity["r2"],
      "multi_stage/stage1_fidelity_r2_variance_weighted": (
          stage1_fidelity["r2_variance_weighted"]),
      "multi_stage/stage1_fidelity_r2_per_latent": stage1_fidelity["r2_per_latent"],
      **{f"stage2/{name}": value for name, value in family_metrics.items()},
  })
  # With stage one's key: the same real images as stage one's FID and KID.
  results.update(sample_quality(
      eval_config, dataset, stage1_rng,
      model.sample, params, "multi_stage/sample_quality"))

  workdir_path = epath.Path(workdir)
  first = batches[0]
  side_by_side = _side_by_side_grid(
      first["images"], first["stage1_reconstructions"], first["reconstructions"])
  values = jnp.linspace(
      -eval_config.traversal_range, eval_config.traversal_range,
      eval_config.traversal_steps,
  )
  decoded = np.asarray(jax.jit(model.traverse)(params, jnp.asarray(first["images"][0]), values))
  labels = [f"z{j}{'' if on else ' (off)'}" for j, on in enumerate(active)]
  traversal_grid = visualize.traversal_grid(decoded, labels)
  # Key `num_batches` is the first one the batches above did not use.
  sample_grid = _sample_grid(
      model, params, jax.random.fold_in(rng, num_batches), eval_config.traversal_steps)
  for name, grid in (("side_by_side", side_by_side),
                     ("traversals_multi_stage", traversal_grid),
                     ("samples", sample_grid)):
    visualize.save_png(workdir_path / f"{name}.png", grid)
    writer.write_image(step, f"stage2/{name}", grid)
  writer.write_scalars(step, {
      f"eval/{k}": v for k, v in results.items()
      if isinstance(v, float) and k.startswith(("multi_stage/", "stage2/"))
  })
  run_directory.write_json(workdir_path / run_directory.METRICS_FILENAME, results)
  logging.info(
      "Multi-stage evaluation: MSE %.3f (stage one %.2f)  MIG %s  "
      "fidelity R2 %s, variance-weighted %s (stage one's own %s, %s) on %d "
      "active latents",
      mse, stage1_mse, _rounded(results["multi_stage/mig"]), _rounded(fidelity["r2"]),
      _rounded(fidelity["r2_variance_weighted"]), _rounded(stage1_fidelity["r2"]),
      _rounded(stage1_fidelity["r2_variance_weighted"]), int(active.sum()),
  )
  if "multi_stage/sample_quality/fid" in results:
    logging.info("Multi-stage samples: FID %.3f, KID %.4f (stage one's: FID %.3f, "
                 "KID %.4f; %s features)",
                 results["multi_stage/sample_quality/fid"],
                 results["multi_stage/sample_quality/kid"],
                 results["sample_quality/fid"], results["sample_quality/kid"],
                 results["sample_quality/feature_extractor"])
  return results


def _rounded(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.3f}"


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
