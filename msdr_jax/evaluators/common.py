"""What both evaluators share: the result type, keys and sample quality."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msdr_jax.metrics import feature_extractors
from msdr_jax.metrics import sample_quality as sample_quality_lib
from msdr_jax import steps
from msdr_jax.data import ground_truth

NUM_SHOWN = 16  # Images per reconstruction figure.
# Streams folded into the evaluation key, independent of the batches' keys.
SUITE_STREAM, REAL_IMAGES_STREAM, SAMPLES_STREAM = 2**20, 2**20 + 1, 2**20 + 2


class NonFiniteCodesError(ValueError):
  """A model's codes are NaN or infinite: its training diverged."""


def check_finite_codes(means: np.ndarray, what: str, step: int, fix: str) -> None:
  """Raises NonFiniteCodesError, in one line, if any code in `means` [N, K] is not finite."""
  bad_points = int(np.sum(~np.all(np.isfinite(means), axis=1)))
  if bad_points:
    raise NonFiniteCodesError(
        f"{what}'s codes at step {step} are NaN or infinite for {bad_points} of "
        f"{len(means)} evaluation points: its parameters diverged. {fix}")


class Evaluation(NamedTuple):
  """One evaluation's results.

  Attributes:
    step: the training step of the evaluated parameters.
    scores: what goes into `metrics.json` (floats also into TensorBoard).
    figures: image grids by name, saved as `<name>.png`.
    tag: the TensorBoard prefix of the figures ("stage1", "stage2").
    active: [K] the latents whose mean varies more than
      `config.eval.active_variance_threshold`: stage one's active latents.
  """

  step: int
  scores: dict[str, Any]
  figures: dict[str, np.ndarray]
  tag: str
  active: np.ndarray


def eval_rng(seed: int, stage: int) -> jax.Array:
  """The evaluation key of `stage`, independent of the training streams."""
  return steps.rng_streams(seed, stage)[2]


def traversal_values(eval_config: ml_collections.ConfigDict) -> jax.Array:
  return jnp.linspace(-eval_config.traversal_range, eval_config.traversal_range,
                      eval_config.traversal_steps)


def sample_quality(
    eval_config: ml_collections.ConfigDict,
    dataset: ground_truth.GroundTruthData,
    rng: jax.Array,
    generate: Callable[[Any, jax.Array, int], jax.Array],
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
  extractor = feature_extractors.make_feature_extractor(
      config.feature_extractor, config.inception_weights or None)
  batch_size = min(eval_config.batch_size, config.num_samples)
  num_batches = -(-config.num_samples // batch_size)
  real_rng = jax.random.fold_in(rng, REAL_IMAGES_STREAM)
  sample_rng = jax.random.fold_in(rng, SAMPLES_STREAM)
  real_batch = jax.jit(lambda data, key: data.sample(key, batch_size)[0])
  generated_batch = jax.jit(lambda p, key: generate(p, key, batch_size))
  collect = lambda make, key: np.concatenate([
      np.asarray(make(jax.random.fold_in(key, i))) for i in range(num_batches)
  ])[: config.num_samples]
  scores = sample_quality_lib.sample_quality(
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


def run_batches(eval_batch: Callable[..., dict[str, Any]], num_batches: int,
                *rngs: jax.Array) -> list[dict[str, Any]]:
  """Host copies of `eval_batch(fold_in(rng, i) for each rng)`, i < num_batches."""
  return [jax.device_get(eval_batch(*[jax.random.fold_in(rng, i) for rng in rngs]))
          for i in range(num_batches)]
