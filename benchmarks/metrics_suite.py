r"""The metric suite of `msdr_jax.metrics` against a plain numpy/scikit-learn one.

Both implementations score the very same images: `suite.draw` draws every
factor array once, and each implementation renders, encodes and scores them
its own way (`benchmarks/reference_metrics.py` is disentanglement_lib's way:
Python loops over batches of 16, over BetaVAE points and FactorVAE votes, one
scikit-learn GradientBoostingClassifier per DCI factor). Prints the time of
each part, the speed-up and the largest difference in any score.

  python -m benchmarks.metrics_suite                  # study defaults: 10,000 points
  python -m benchmarks.metrics_suite --learners=gbt   # skip the sklearn-learner suite
  python -m benchmarks.metrics_suite --metrics=mig,dci,sap,modularity  # some metrics only
  python -m benchmarks.metrics_suite --workdir=runs/quick  # a trained stage one

The representation is, by default, ten image moments of the dSprites images
(centroid, mass, second and third central moments): a cheap, deterministic,
partly disentangled code, so that the timings measure the metrics, not an
encoder. `--workdir` scores a trained stage one's encoder mean instead.
"""

import os
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import reference_metrics
from configs import dsprites
from msdr_jax import base_config
from msdr_jax import checkpoints
from msdr_jax import data
from msdr_jax import stage_one as stage_one_lib
from msdr_jax.metrics import suite

_NUM_TRAIN = flags.DEFINE_integer("num_train", 10_000, "Points (and votes) to train on.")
_NUM_TEST = flags.DEFINE_integer("num_test", 5_000, "Points (and votes) to test on.")
_LEARNERS = flags.DEFINE_list(
    "learners", ["gbt", "sklearn"],
    "DCI learners of msdr_jax's suite to time: gbt (JAX) and/or sklearn.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Score this run's stage one instead.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the draws.")
_METRICS = flags.DEFINE_list(
    "metrics", list(base_config.METRICS), "Metrics to time, both implementations.")


def image_moments(images: jax.Array) -> jax.Array:
  """Ten moments of a grey image: mass, centroid, 2nd and 3rd central moments."""
  pixels = images[..., 0]
  grid = (jnp.arange(pixels.shape[1]) + 0.5) / pixels.shape[1]
  mass = pixels.sum((1, 2)) + 1e-6
  row = (pixels.sum(2) * grid).sum(1) / mass
  col = (pixels.sum(1) * grid).sum(1) / mass
  dy = grid[None, :, None] - row[:, None, None]
  dx = grid[None, None, :] - col[:, None, None]
  moment = lambda p, q: (pixels * dx**p * dy**q).sum((1, 2)) / mass
  return jnp.stack([
      jnp.sqrt(mass / pixels[0].size), col, row, moment(2, 0), moment(0, 2),
      moment(1, 1), moment(3, 0), moment(0, 3), moment(2, 1), moment(1, 2)], 1)


def _representation(config, dataset):
  if not _WORKDIR.value:
    return "image moments (10 latents)", image_moments
  config.stage1.checkpoint = _WORKDIR.value
  stage_one = stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, dataset.observation_shape)
  params, step = checkpoints.load_stage_one(config, stage_one)
  encode = lambda images: stage_one.encode(params, images)[0]
  return f"stage one of {_WORKDIR.value} (step {step})", encode


def _reference(draws, settings, images_fn, representation_fn, num_factors):
  names = suite.parse_metrics(settings.metrics)
  timings, results = {}, {}
  if draws.train_factors is not None:
    start = time.perf_counter()
    train_codes = reference_metrics.obtain_codes(
        images_fn, representation_fn, draws.train_factors)
    test_codes = reference_metrics.obtain_codes(images_fn, representation_fn, draws.test_factors)
    timings["encode"] = time.perf_counter() - start
    arrays = (train_codes, draws.train_factors, test_codes, draws.test_factors)
  scorers = {
      "mig": lambda: reference_metrics.mig(*arrays[:2]),
      "dci": lambda: reference_metrics.dci(*arrays),
      "sap": lambda: reference_metrics.sap(*arrays),
      "modularity": lambda: reference_metrics.modularity_explicitness(*arrays),
      "beta_vae": lambda: reference_metrics.beta_vae(
          images_fn, representation_fn, *draws.beta_vae_train, *draws.beta_vae_eval,
          seed=_SEED.value),
      "factor_vae": lambda: reference_metrics.factor_vae(
          images_fn, representation_fn, draws.factor_vae_variance, *draws.factor_vae_train,
          *draws.factor_vae_eval, num_factors=num_factors,
          prune_threshold=settings.factor_vae.prune_threshold),
  }
  for name in names:
    start = time.perf_counter()
    results.update(scorers[name]())
    timings[name] = time.perf_counter() - start
  return results, timings


def _ours(draws, settings, dataset, representation_fn):
  timings = {}
  results = suite.evaluate_draws(representation_fn, dataset, draws, settings,
                                 classifier_seed=_SEED.value, timings=timings)
  return results, timings


def main(argv):
  del argv
  config = dsprites.get_config("preset=paper")
  dataset = data.get_dataset(config.data)
  description, representation_fn = _representation(config, dataset)
  settings = base_config.metric_settings()
  metrics = suite.parse_metrics(_METRICS.value)
  if not metrics:
    raise app.UsageError("--metrics selects no metric; name at least one, e.g. "
                         "--metrics=mig,dci.")
  settings.metrics = ",".join(metrics)
  settings.num_train = _NUM_TRAIN.value
  settings.num_test = _NUM_TEST.value
  for name in ("beta_vae", "factor_vae"):
    settings[name].num_train = _NUM_TRAIN.value
    settings[name].num_eval = _NUM_TEST.value
  settings.factor_vae.num_variance_estimate = _NUM_TRAIN.value
  draws = suite.draw(dataset, _SEED.value, settings)

  print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__}, backend {jax.default_backend()}")
  print(f"representation: {description}; {_NUM_TRAIN.value} training and "
        f"{_NUM_TEST.value} test points / votes")
  jitted_images = jax.jit(dataset.images_from_factors)
  jitted_codes = jax.jit(representation_fn)
  images_fn = lambda factors: jitted_images(jnp.asarray(factors))
  reference_fn = lambda images: np.asarray(jitted_codes(images))
  runs = {"reference (numpy/scikit-learn)": _reference(
      draws, settings, images_fn, reference_fn, dataset.num_factors)}
  for learner in _LEARNERS.value:
    learner_settings = settings.copy_and_resolve_references()
    learner_settings.dci_learner = learner
    runs[f"msdr_jax, DCI learner {learner}"] = _ours(
        draws, learner_settings, dataset, representation_fn)

  reference_results, reference_times = runs["reference (numpy/scikit-learn)"]
  parts = list(reference_times)
  print("\nseconds (the reference's BetaVAE and FactorVAE include their encoding;"
        " msdr_jax encodes every image of the suite in 'encode')")
  print(f"{'':32s}" + "".join(f"{p:>11s}" for p in parts) + f"{'total':>9s}")
  for name, (_, times) in runs.items():
    print(f"{name:32s}" + "".join(f"{times.get(p, 0.0):11.1f}" for p in parts)
          + f"{sum(times.values()):9.1f}")
  reference_total = sum(reference_times.values())
  for name, (results, times) in runs.items():
    if name.startswith("reference"):
      continue
    differences = {k: abs(results[k] - reference_results[k]) for k in reference_results}
    worst = max(differences, key=differences.get)
    print(f"\n{name}: x{reference_total / sum(times.values()):.1f} faster than the "
          f"reference; largest score difference {differences[worst]:.4f} ({worst})")
  print("\nscores" + "".join(f"{name.split(',')[0][:12]:>14s}" for name in runs))
  for key in reference_results:
    print(f"  {key:28s}" + "".join(f"{r[key]:14.4f}" for r, _ in runs.values()))


if __name__ == "__main__":
  app.run(main)
