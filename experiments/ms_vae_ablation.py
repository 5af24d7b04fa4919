r"""How fast MS-VAE starts to use w: the ablation behind its defaults.

Trains MS-VAE variants on one frozen stage one with the library's own
stage-two train step (`steps.make_train_step`, dSprites rendered
on the device, the quick preset's batch 64 and learning rate 5e-4) and
scores each every `--eval_every` steps on the same 1,000 images:

  kl_w        KL(q(w | x, c) ‖ p(w)) per image, in nats: how much w carries;
  mse_ratio   stage one's squared error per image / the multi-stage one's,
              both from z = stage one's encoder mean (the identical MIG);
  fidelity    conditioning fidelity R^2 of samples (w ~ p(w)), averaged over
              the latents of z that carry >= 0.5 nats, as in the studies.

Variants (`--variants`, comma-separated):

  vector        w a vector of 10 latents at the bottleneck, constant KL weight
                (MS-VAE before this ablation);
  vector_warmup the same with the KL weight's warm-up;
  map           w a 16x16 map of local latents, constant KL weight;
  map_warmup    the map with the warm-up (the default).

  python -m experiments.ms_vae_ablation \
      --checkpoint=path/to/disentangling-vae/betaB_dsprites --steps=600
"""

from __future__ import annotations

import time
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import dsprites as dsprites_config
from msdr_jax import checkpoints
from msdr_jax import data
from msdr_jax import multi_stage
from msdr_jax import parallel
from msdr_jax import pytorch_import
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps as steps_lib
from msdr_jax.metrics import fidelity as fidelity_lib

VARIANTS = {
    "vector": {"latent_resolution": 0, "latent_channels": 10, "kl_warmup_steps": 0},
    "vector_warmup": {"latent_resolution": 0, "latent_channels": 10},
    "map": {"kl_warmup_steps": 0},
    "map_warmup": {},
}
INFORMATIVE_NATS = 0.5
NUM_EVAL_IMAGES = 1_000


def variant_config(checkpoint: str, variant: str, preset: str) -> ml_collections.ConfigDict:
  """`configs/dsprites.py` with MS-VAE's `variant` on the stage one at `checkpoint`."""
  config = dsprites_config.get_config(f"preset={preset}")
  if pytorch_import.is_pytorch_checkpoint(checkpoint):
    config.stage1.model.architecture = pytorch_import.ARCHITECTURE
  config.stage1.checkpoint = checkpoint
  config.stage2.family = "vae"
  config.stage2.vae.update(VARIANTS[variant])
  return config


def make_scorer(model: multi_stage.MultiStageModel, images: jax.Array, rng: jax.Array):
  """score(params) -> (kl_w, stage-one MSE, multi-stage MSE, z, recovered z)."""

  @jax.jit
  def score(params, images):
    cond = multi_stage.condition(model.stage1, params["stage1"], images)
    mean, log_var = model.stage2.encoder.apply(
        {"params": params["stage2"]["encoder"]}, images, cond)
    kl_w = 0.5 * (mean**2 + jnp.exp(log_var) - log_var - 1)
    reconstructions = model.stage2.decode(params["stage2"], cond, mean)
    generated = model.stage2.decode(
        params["stage2"], cond, model.stage2.sample_latents(params["stage2"], cond, rng))
    per_image = lambda x: x.reshape(len(images), -1).sum(-1)
    recovered, _ = model.stage1.encode(params["stage1"], generated)
    return (per_image(kl_w).mean(), per_image((cond.image - images) ** 2).mean(),
            per_image((reconstructions - images) ** 2).mean(), cond.code, recovered)

  return lambda params: score(params, images)


def run_variant(checkpoint: str, variant: str, steps: int, eval_every: int,
                preset: str) -> list[dict]:
  """Rows {variant, step, kl_w, mse_stage1, mse, mse_ratio, fidelity, seconds}."""
  config = variant_config(checkpoint, variant, preset)
  dataset = data.get_dataset(config.data)
  shape = dataset.observation_shape
  stage_one = stage_one_lib.DisentanglingVAE.from_config(config.stage1, shape)
  stage1_params, _ = checkpoints.load_stage_one(config, stage_one)
  model = multi_stage.MultiStageModel.from_config(config, stage_one)
  init_rng, train_rng, eval_rng = steps_lib.rng_streams(config.seed, stage=2)
  mesh = parallel.data_mesh()
  state = parallel.replicate(
      steps_lib.create_train_state(
          model.init, steps_lib.make_optimizer(config.stage2.optimizer), init_rng,
          stage1_params), mesh)
  iteration = steps_lib.make_train_iteration(
      steps_lib.make_train_step(model.loss), config.batch_size, train_rng, mesh)
  frozen = parallel.replicate((stage1_params,), mesh)
  dataset = parallel.replicate(dataset, mesh)
  data_rng, sample_rng = jax.random.split(eval_rng)
  images, _ = dataset.sample(data_rng, NUM_EVAL_IMAGES)
  score = make_scorer(model, images, sample_rng)

  # Stage one's informative latents, as the studies choose them.
  mean, log_var = stage_one.encode(stage1_params, images)
  kl_per_latent = np.asarray(0.5 * (mean**2 + jnp.exp(log_var) - log_var - 1)).mean(0)
  informative = kl_per_latent >= INFORMATIVE_NATS

  rows, start = [], time.perf_counter()
  for step in range(1, steps + 1):
    state, _ = iteration(state, frozen, dataset)
    if step % eval_every == 0:
      params = {"stage1": stage1_params, "stage2": parallel.to_host(state.params)}
      kl_w, mse_stage1, mse, codes, recovered = map(np.asarray, score(params))
      fidelity = fidelity_lib.conditioning_fidelity(codes, recovered, informative)["r2"]
      rows.append({"variant": variant, "step": step, "kl_w": float(kl_w),
                   "mse_stage1": float(mse_stage1), "mse": float(mse),
                   "mse_ratio": float(mse_stage1 / mse), "fidelity": fidelity,
                   "seconds": time.perf_counter() - start})
      print(format_row(rows[-1]), flush=True)
  return rows


HEADER = ("| variant | step | KL of w (nats) | stage-one MSE | MS-VAE MSE | ratio "
          "| fidelity R² |\n|---|---:|---:|---:|---:|---:|---:|")


def format_row(row: dict) -> str:
  fidelity = "n/a" if row["fidelity"] is None else f"{row['fidelity']:.3f}"
  return (f"| {row['variant']} | {row['step']} | {row['kl_w']:.2f} | {row['mse_stage1']:.2f} "
          f"| {row['mse']:.2f} | {row['mse_ratio']:.2f}x | {fidelity} |")


def define_flags() -> None:
  flags.DEFINE_string("checkpoint", None, "A stage one: a PyTorch checkpoint "
                      "(pytorch_import) or a library run directory.", required=True)
  flags.DEFINE_list("variants", list(VARIANTS), f"Any of {list(VARIANTS)}.")
  flags.DEFINE_integer("steps", 600, "Stage-two steps per variant.")
  flags.DEFINE_integer("eval_every", 100, "Score every this many steps.")
  flags.DEFINE_string("preset", "quick", "The configs/dsprites.py preset.")
  flags.DEFINE_string("output", None, "Also write the table (Markdown) here.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = sorted(set(flags.FLAGS.variants) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f"Unknown --variants {unknown}; choose from {list(VARIANTS)}.")
  print(HEADER, flush=True)
  rows = []
  for variant in flags.FLAGS.variants:
    rows += run_variant(flags.FLAGS.checkpoint, variant, flags.FLAGS.steps,
                        flags.FLAGS.eval_every, flags.FLAGS.preset)
  if flags.FLAGS.output:
    with open(flags.FLAGS.output, "w") as f:
      f.write("\n".join([HEADER, *map(format_row, rows)]) + "\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
