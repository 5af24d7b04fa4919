"""Drawing representations of ground-truth samples, and checking metric inputs.

A *representation function* maps a batch of images [B, H, W, C] to codes
[B, K]; for a VAE it is the encoder mean. It must be a JAX function: the
samplers below render the images and encode them inside one jitted call, so a
metric never moves images through the host.
"""

from __future__ import annotations

import functools
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from msdr_jax.data import ground_truth

RepresentationFn = Callable[[jax.Array], jax.Array]

# Images rendered and encoded per jitted call when sampling codes.
DEFAULT_IMAGES_PER_CALL = 256


def as_key(seed: int | jax.Array) -> jax.Array:
  """A PRNG key from an integer seed, or the key itself."""
  if isinstance(seed, (int, np.integer)):
    return jax.random.key(int(seed))
  return seed


def int_seed(seed: int | jax.Array) -> int:
  """An integer for scikit-learn's `random_state` from either kind of seed."""
  if isinstance(seed, (int, np.integer)):
    return int(seed)
  # A stream of its own: the key itself also seeds the metrics' draws.
  return int(jax.random.randint(jax.random.fold_in(seed, 2**31 - 1), (), 0, 2**31 - 1))


def check_codes_and_factors(
    codes: np.ndarray, factors: np.ndarray, metric: str, min_points: int = 2
) -> tuple[np.ndarray, np.ndarray]:
  """Validates [N, K] codes and [N, F] integer factors; returns numpy copies.

  Raises ValueError for wrong shapes, too few points, non-finite codes or
  non-integer factors, naming the metric and the problem.
  """
  codes, factors = np.asarray(codes), np.asarray(factors)
  if codes.ndim != 2 or factors.ndim != 2:
    raise ValueError(
        f"{metric} needs [N, K] codes and [N, F] factors, got shapes "
        f"{codes.shape} and {factors.shape}.")
  if codes.shape[0] != factors.shape[0]:
    raise ValueError(
        f"{metric} got {codes.shape[0]} codes but {factors.shape[0]} factor rows.")
  if codes.shape[0] < min_points:
    raise ValueError(
        f"{metric} needs at least {min_points} points, got {codes.shape[0]}.")
  if codes.shape[1] < 1 or factors.shape[1] < 1:
    raise ValueError(f"{metric} needs at least one latent and one factor.")
  if not np.all(np.isfinite(codes)):
    bad = np.flatnonzero(~np.all(np.isfinite(codes), axis=0)).tolist()
    raise ValueError(
        f"{metric} got NaN or infinite codes (latent(s) {bad}); the "
        "representation function must return finite values.")
  if not np.issubdtype(factors.dtype, np.integer):
    if not np.array_equal(factors, np.round(factors)):
      raise ValueError(f"{metric} needs integer factor indices, got {factors.dtype}.")
    factors = factors.astype(np.int64)
  return codes.astype(np.float64), factors


def check_factors_vary(factors: np.ndarray, metric: str) -> None:
  """Raises ValueError naming every factor that takes a single value."""
  constant = [j for j in range(factors.shape[1]) if np.unique(factors[:, j]).size < 2]
  if constant:
    raise ValueError(
        f"{metric} is undefined for a factor with a single value (factor(s) "
        f"{constant}); drop them, or draw more points.")


def check_dataset(dataset: ground_truth.GroundTruthData, metric: str) -> None:
  """A metric needs labelled factors that each take two or more values."""
  if not dataset.num_factors:
    raise ValueError(
        f"{metric} needs labelled factors, and {type(dataset).__name__} has none "
        "(only reconstruction and sample quality apply to it).")
  single = [name for name, size in zip(dataset.factor_names, dataset.factor_sizes)
            if size < 2]
  if single:
    raise ValueError(
        f"{metric} is undefined for a factor with a single value ({single}).")


def nuisance_key(rng: int | jax.Array) -> jax.Array:
  """The key that draws the nuisance values of a metric's images."""
  return jax.random.fold_in(as_key(rng), ground_truth.NUISANCE_STREAM)


def encode_factors(
    representation_fn: RepresentationFn,
    dataset: ground_truth.GroundTruthData,
    factors: np.ndarray | jax.Array,
    rng: jax.Array | None = None,
    images_per_call: int = DEFAULT_IMAGES_PER_CALL,
) -> np.ndarray:
  """Codes of the images of `factors` [..., F]; returns [..., K] float64.

  Images are a deterministic function of their state (factors plus nuisance
  values), and codes of their image, so each distinct state is rendered and
  encoded once. This matters: the BetaVAE and FactorVAE scores draw about 2.9
  million images from dSprites' grid of 737,280, of which only ~725,000
  differ. `rng` draws the nuisance values of data sets that have them (as in
  disentanglement_lib, one independent draw per image); it is required there
  and unused elsewhere.

  Rendering and encoding run on the device, `images_per_call` per jitted
  call (the last call is padded, so there is one compilation).
  """
  factors = np.asarray(factors)
  flat = factors.reshape(-1, factors.shape[-1])
  states = np.asarray(dataset.complete_factors(flat, rng))
  index = np.asarray(dataset.state_to_index(states))
  unique_index, inverse = np.unique(index, return_inverse=True)
  unique = np.asarray(dataset.index_to_state(unique_index))
  if len(unique) > 10 * images_per_call:  # Worth a line in a long evaluation.
    logging.info("Metrics: encoding %d distinct images (of %d drawn).",
                 len(unique), len(index))
  batch = max(1, min(images_per_call, len(unique)))
  encode = _batch_encoder(representation_fn, batch)
  codes = []
  for start in range(0, len(unique), batch):
    chunk = unique[start : start + batch]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
    codes.append(np.asarray(encode(dataset, padded))[: len(chunk)])
  codes = np.concatenate(codes).astype(np.float64)[inverse.reshape(-1)]
  return codes.reshape(*factors.shape[:-1], codes.shape[-1])


def encode_all(
    representation_fn: RepresentationFn,
    dataset: ground_truth.GroundTruthData,
    factor_arrays: list[np.ndarray],
    rng: jax.Array | None = None,
    images_per_call: int = DEFAULT_IMAGES_PER_CALL,
) -> list[np.ndarray]:
  """`encode_factors` of several arrays, encoding their union's images once."""
  flats = [np.asarray(f).reshape(-1, np.shape(f)[-1]) for f in factor_arrays]
  codes = encode_factors(
      representation_fn, dataset, np.concatenate(flats), rng, images_per_call)
  splits = np.cumsum([len(f) for f in flats])[:-1]
  return [c.reshape(*np.shape(f)[:-1], c.shape[-1])
          for c, f in zip(np.split(codes, splits), factor_arrays)]


# One compilation per (function, batch) within an evaluation; a small cache,
# as each entry holds on to the function (and its parameters). The data set is
# an argument, not a closure: its arrays must not become program constants.
@functools.lru_cache(maxsize=2)
def _batch_encoder(representation_fn, batch_size):
  @jax.jit
  def encode(dataset, states):
    images = dataset.images_from_state(states)
    codes = representation_fn(images)
    if codes.ndim != 2 or codes.shape[0] != batch_size:
      raise ValueError(
          f"The representation function must map [B, H, W, C] images to [B, K] "
          f"codes; it returned shape {codes.shape} for {images.shape}.")
    return codes.astype(jnp.float32)
  return encode


def sample_codes(
    representation_fn: RepresentationFn,
    dataset: ground_truth.GroundTruthData,
    rng: jax.Array,
    num_points: int,
    images_per_call: int = DEFAULT_IMAGES_PER_CALL,
) -> tuple[np.ndarray, np.ndarray]:
  """Codes and factors of `num_points` images drawn uniformly from the grid.

  disentanglement_lib's `generate_batch_factor_code`: factors uniform over
  the grid, images rendered from them, codes from the representation.
  Returns ([num_points, K] float64 codes, [num_points, F] int factors).
  """
  if num_points < 1:
    raise ValueError(f"num_points must be >= 1, got {num_points}.")
  factors = np.asarray(dataset.sample_factors(rng, num_points))
  codes = encode_factors(
      representation_fn, dataset, factors, nuisance_key(rng), images_per_call)
  return codes, factors


def sample_train_test(
    representation_fn: RepresentationFn,
    dataset: ground_truth.GroundTruthData,
    seed: int | jax.Array,
    num_train: int,
    num_test: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(train codes, train factors, test codes, test factors), independent draws."""
  train_rng, test_rng = jax.random.split(as_key(seed))
  return (*sample_codes(representation_fn, dataset, train_rng, num_train),
          *sample_codes(representation_fn, dataset, test_rng, num_test))
