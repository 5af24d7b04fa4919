"""Gradient-boosted trees in JAX: scikit-learn's `GradientBoostingClassifier()`.

DCI (Eastwood & Williams 2018) as computed by disentanglement_lib fits one
`sklearn.ensemble.GradientBoostingClassifier()` with its defaults per factor
and reads the importance matrix off `feature_importances_`. On 10,000 points
that is minutes per data set: a 40-class factor grows 4,000 trees one by one.
This module is the same learner, re-expressed so that all trees of a boosting
stage grow at once, level by level, inside one jitted `lax.scan`:

* loss: multinomial deviance for three or more classes (one regression tree
  per class and stage, fitted to y_k - p_k), binomial deviance for two
  classes (one tree per stage, fitted to y - p); the initial raw prediction
  is the log of the class priors;
* trees: depth 3, least-squares splits searched exhaustively over every
  threshold between consecutive distinct values of a feature (values closer
  than 1e-7 count as equal, as in scikit-learn), at least one sample per
  leaf, no split of a node whose residuals are all equal;
* leaves: one Newton step, sum(residual) / sum(p (1 - p)), times (K - 1) / K
  for K >= 3 classes, shrunk by the learning rate 0.1; 100 stages;
* importances: the squared-error decrease of every split, summed over all
  trees and normalised to sum to one (`feature_importances_`).

Exact ties: scikit-learn visits the features of a node in a random order and
keeps the first best split, so among features whose best splits tie exactly
(a duplicated latent, or an increasing function of another, ties at every
node) it picks one at random. Here every stage draws a random order of the
features per tree from `seed`, with the same effect: a duplicated latent
gets about half of the importance in both. Among tied positions both take
the lowest (so a decreasing copy of a latent, whose tied split lies at
another position, is not randomised). Arithmetic is float32, where scikit-learn
uses float64 for the split statistics; `tests/dci_test.py` compares both
learners on the same data.

How a level is grown without sorting: each (tree, feature) keeps the sample
order sorted by (node, feature value). A prefix sum along it gives, at every
position, the residual sum of the samples of the same node up to that value,
i.e. every candidate left child at once. After the split a stable partition
(a prefix count and one scatter) restores the (node, value) order for the
children, so the whole stage costs O(trees x features x samples x depth).

Its length: the fit, the level-wise growth of the trees and the prediction
share one tree layout (node numbering, the (node, value) sample orders); apart,
each would have to restate it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# scikit-learn's `FEATURE_THRESHOLD`: feature values closer than this are one value.
_FEATURE_THRESHOLD = 1e-7
# scikit-learn's `EPSILON` (float64 machine epsilon): a node whose impurity
# is at most this is a leaf.
_IMPURITY_EPSILON = float(np.finfo(np.float64).eps)


class BoostedTrees(NamedTuple):
  """A fitted ensemble; T trees per stage (T = 1 for two classes)."""

  classes: np.ndarray  # [K] the sorted labels seen in training.
  initial_raw: jax.Array  # [T] raw prediction before the first stage.
  features: jax.Array  # [stages, T, 2**depth - 1] split feature per node.
  thresholds: jax.Array  # [stages, T, 2**depth - 1] go right iff x > it.
  leaf_values: jax.Array  # [stages, T, 2**depth] shrunk Newton steps.
  feature_importances: np.ndarray  # [F], sums to one (or all zero).


def fit(
    inputs: np.ndarray,
    labels: np.ndarray,
    num_stages: int = 100,
    learning_rate: float = 0.1,
    max_depth: int = 3,
    seed: int = 0,
) -> BoostedTrees:
  """Fits the classifier to `inputs` [N, F] and integer `labels` [N].

  `seed` draws the feature order that breaks exact ties (see above).
  """
  inputs = np.asarray(inputs, np.float32)
  classes, encoded = np.unique(np.asarray(labels), return_inverse=True)
  if inputs.ndim != 2 or encoded.shape != (inputs.shape[0],):
    raise ValueError(
        f"Gradient boosting needs inputs [N, F] and labels [N], got {inputs.shape} "
        f"and {np.shape(labels)}.")
  if len(classes) < 2:
    raise ValueError(
        f"Gradient boosting needs at least two classes; every label is {classes[0]}.")
  # Each feature is sorted once, here; the trees only ever partition this
  # order stably. (The order among equal values is irrelevant: a split never
  # falls between them.)
  order = np.argsort(inputs, axis=0, kind="stable").T.astype(np.int32)
  initial_raw, features, thresholds, leaf_values, importances = _fit(
      jnp.asarray(inputs), jnp.asarray(encoded, jnp.int32), jnp.asarray(order),
      jax.random.key(seed), num_classes=len(classes), num_stages=num_stages,
      learning_rate=learning_rate, max_depth=max_depth)
  importances = np.asarray(importances, np.float64)
  total = importances.sum()
  return BoostedTrees(
      classes=classes,
      initial_raw=initial_raw,
      features=features,
      thresholds=thresholds,
      leaf_values=leaf_values,
      feature_importances=importances / total if total > 0 else importances,
  )


def predict(trees: BoostedTrees, inputs: np.ndarray) -> np.ndarray:
  """The most probable class of each row of `inputs` [N, F]."""
  raw = _raw_predictions(
      trees.initial_raw, trees.features, trees.thresholds, trees.leaf_values,
      jnp.asarray(inputs, jnp.float32))
  if raw.shape[-1] == 1:  # Binomial: class 1 iff p > 1/2, as scikit-learn.
    index = (raw[:, 0] > 0).astype(jnp.int32)
  else:
    index = jnp.argmax(raw, axis=-1)
  return trees.classes[np.asarray(index)]


@functools.partial(jax.jit, static_argnames=("num_classes", "num_stages", "max_depth"))
def _fit(inputs, labels, order, key, *, num_classes, num_stages, learning_rate, max_depth):
  num_samples, num_features = inputs.shape
  num_trees = 1 if num_classes == 2 else num_classes
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  prior = jnp.clip(one_hot.mean(0), np.finfo(np.float64).eps, 1.0)
  if num_classes == 2:
    initial_raw = jnp.log(prior[1:] / prior[0])
    targets = one_hot[:, 1:]  # [N, 1]
    newton_scale = 1.0
  else:
    initial_raw = jnp.log(prior) - jnp.log(prior).mean()
    targets = one_hot
    newton_scale = (num_classes - 1) / num_classes
  inputs_t = inputs.T  # [F, N]
  # Per (tree, feature): samples sorted by (node, value); all in node 0 first.
  initial_order = jnp.broadcast_to(order, (num_trees, num_features, num_samples))

  def stage(raw, index):
    probs, complements = _probabilities(raw)
    # y - p, written so that a probability that rounds to 1 in float32 still
    # leaves its (tiny) residual and hessian: 1 - p is computed directly.
    residuals = jnp.where(targets > 0, complements, -probs).T  # [T, N]
    hessians = (probs * complements).T
    # Random feature priorities per tree (uniform draws: no sort needed).
    priority = jax.random.uniform(
        jax.random.fold_in(key, index), (num_trees, num_features))
    tree, leaf_of_sample, gain = _grow_trees(
        inputs_t, residuals, initial_order, priority, max_depth)
    leaf_values = _newton_leaf_values(
        residuals, hessians, leaf_of_sample, 2**max_depth, newton_scale)
    leaf_values = learning_rate * leaf_values
    raw = raw + jnp.take_along_axis(leaf_values, leaf_of_sample, axis=1).T
    return raw, (tree, leaf_values, gain)

  raw = jnp.broadcast_to(initial_raw, (num_samples, num_trees))
  _, ((features, thresholds), leaf_values, gains) = jax.lax.scan(
      stage, raw, jnp.arange(num_stages))
  return initial_raw, features, thresholds, leaf_values, gains.sum(0)


def _probabilities(raw):
  """(p, 1 - p) of every class [N, T], with 1 - p accurate near p = 1.

  Two classes: one raw score, p = sigmoid(raw), 1 - p = sigmoid(-raw). More:
  a softmax, where 1 - p of the most probable class is the sum of the
  others' probabilities (1 - p itself would round to 0 in float32).
  """
  if raw.shape[-1] == 1:
    return jax.nn.sigmoid(raw), jax.nn.sigmoid(-raw)
  probs = jax.nn.softmax(raw, axis=-1)
  is_max = jax.nn.one_hot(jnp.argmax(raw, axis=-1), raw.shape[-1], dtype=jnp.bool_)
  others_of_max = jnp.sum(jnp.where(is_max, 0.0, probs), axis=-1, keepdims=True)
  return probs, jnp.where(is_max, others_of_max, 1.0 - probs)


def _grow_trees(inputs_t, residuals, initial_order, priority, max_depth):
  """Grows T depth-`max_depth` least-squares regression trees at once.

  Args:
    inputs_t: [F, N] features.
    residuals: [T, N] regression targets, one row per tree.
    initial_order: [T, F, N] each feature's argsort, per tree.
    priority: [T, F] the rank of each feature among exact ties, per tree.
    max_depth: depth of the trees.

  Returns:
    ((features, thresholds) of the 2**depth - 1 nodes in level order, each
    [T, nodes]), the leaf of every sample [T, N], and the summed
    squared-error decrease of the splits per feature [F].
  """
  num_trees, num_samples = residuals.shape
  num_features = inputs_t.shape[0]
  positions = jnp.arange(num_samples)
  order = initial_order
  feature_offsets = (jnp.arange(num_features) * num_samples)[None, :, None]
  node_of_sample = jnp.zeros((num_trees, num_samples), jnp.int32)
  features_per_level, thresholds_per_level = [], []
  gain_per_feature = jnp.zeros((num_features,), jnp.float32)
  for depth in range(max_depth):
    num_nodes = 2**depth
    node_stats = lambda values, reduce=jnp.sum, fill=0.0: _per_node(
        values, node_of_sample, num_nodes, reduce, fill)
    counts = node_stats(jnp.ones_like(residuals))
    sums = node_stats(residuals)
    # scikit-learn makes a node a leaf when its impurity (the variance of
    # its residuals, float64) is <= machine epsilon, e.g. once every
    # probability in it is nearly 0 or 1. Two-pass variance, so that float32
    # reproduces that test; a node of equal residuals is a leaf regardless.
    node_mean = sums / jnp.maximum(counts, 1.0)
    deviation = residuals - jnp.take_along_axis(node_mean, node_of_sample, axis=1)
    variance = node_stats(deviation**2) / jnp.maximum(counts, 1.0)
    spread = (node_stats(residuals, jnp.max, -jnp.inf)
              - node_stats(residuals, jnp.min, jnp.inf))
    splittable = (spread > 0) & (variance > _IMPURITY_EPSILON)
    starts = jnp.cumsum(counts, axis=1) - counts  # First position of each node.
    prior_sums = jnp.cumsum(sums, axis=1) - sums  # Residuals of earlier nodes.

    # Everything below is laid out [T, F, N] along the (node, value) order.
    sorted_residuals = jnp.take_along_axis(residuals[:, None, :], order, axis=2)
    sorted_values = jnp.take(  # inputs_t[f, order[t, f, n]], without a broadcast.
        inputs_t.reshape(-1), order + feature_offsets, mode="clip")
    sorted_nodes = jnp.take_along_axis(node_of_sample, order[:, 0, :], axis=1)
    take_node = lambda stat: jnp.take_along_axis(stat, sorted_nodes, axis=1)[:, None, :]
    # Left child = the node's samples up to and including this position.
    left_sum = jnp.cumsum(sorted_residuals, axis=2) - take_node(prior_sums)
    left_count = (positions - take_node(starts) + 1).astype(jnp.float32)
    node_count, node_sum = take_node(counts), take_node(sums)
    right_sum, right_count = node_sum - left_sum, node_count - left_count
    next_values = jnp.concatenate(
        [sorted_values[..., 1:], jnp.full_like(sorted_values[..., :1], jnp.inf)], -1)
    next_nodes = jnp.concatenate(
        [sorted_nodes[:, 1:], jnp.full_like(sorted_nodes[:, :1], -1)], -1)
    valid = ((next_nodes == sorted_nodes)[:, None, :]
             & (next_values > sorted_values + _FEATURE_THRESHOLD)
             & take_node(splittable))
    # Squared-error decrease: sum_l^2/n_l + sum_r^2/n_r - sum^2/n, written
    # without the cancellation of that form.
    safe_right = jnp.maximum(right_count, 1.0)
    gain = (right_count * left_sum - left_count * right_sum) ** 2 / (
        left_count * safe_right * node_count)
    gain = jnp.where(valid, gain, -1.0)

    # Best split per node: the best gain over features and positions; the
    # lowest position reaching it; among the features reaching it there,
    # the one of highest priority (exact ties between features).
    best_gain_at = jnp.max(gain, axis=1)  # [T, N]
    best_gain = _per_node(best_gain_at, sorted_nodes, num_nodes, jnp.max, -jnp.inf)
    is_best = best_gain_at == jnp.take_along_axis(best_gain, sorted_nodes, axis=1)
    best_position = _per_node(
        jnp.where(is_best, positions, num_samples), sorted_nodes, num_nodes, jnp.min,
        num_samples)
    splits = best_gain >= 0
    best_position = jnp.minimum(best_position, num_samples - 1)
    gain_there = jnp.take_along_axis(gain, best_position[:, None, :], axis=2)  # [T, F, S]
    feature = jnp.argmax(jnp.where(
        gain_there == best_gain[:, None, :], priority[:, :, None], -1.0), axis=1)
    pick = lambda values: jnp.take_along_axis(  # values[t, feature, position]
        jnp.take_along_axis(values, feature[:, :, None], axis=1),  # [T, S, N]
        best_position[:, :, None], axis=2)[:, :, 0]
    low = pick(sorted_values)
    high = pick(next_values)
    threshold = low / 2 + high / 2  # scikit-learn's midpoint, safe from overflow.
    threshold = jnp.where(threshold == high, low, threshold)
    # A node that does not split sends every sample left: the leaf below it
    # then holds exactly the node's samples.
    feature = jnp.where(splits, feature, 0)
    threshold = jnp.where(splits, threshold, jnp.inf)
    gain_per_feature += jax.ops.segment_sum(
        jnp.where(splits, best_gain, 0.0).reshape(-1), feature.reshape(-1), num_features)
    features_per_level.append(feature)
    thresholds_per_level.append(threshold)

    sample_feature = jnp.take_along_axis(feature, node_of_sample, axis=1)
    sample_value = jnp.take_along_axis(inputs_t, sample_feature, axis=0)
    goes_right = sample_value > jnp.take_along_axis(threshold, node_of_sample, axis=1)
    if depth + 1 < max_depth:
      left_counts = node_stats((~goes_right).astype(jnp.float32)).astype(jnp.int32)
      order = _stable_partition(order, goes_right, sorted_nodes,
                                starts.astype(jnp.int32), left_counts)
    node_of_sample = 2 * node_of_sample + goes_right.astype(jnp.int32)
  tree = (jnp.concatenate(features_per_level, axis=1),
          jnp.concatenate(thresholds_per_level, axis=1))
  return tree, node_of_sample, gain_per_feature


def _per_node(values, nodes, num_nodes, reduce, fill):
  """`reduce` of `values` [T, N] over the samples of each node: [T, num_nodes].

  A dense masked reduction: with at most 2**depth nodes it is several times
  faster on XLA:CPU than a segment reduction, which lowers to a scatter.
  """
  mask = nodes[:, None, :] == jnp.arange(num_nodes)[None, :, None]
  return reduce(jnp.where(mask, values[:, None, :], fill), axis=-1)


def _stable_partition(order, goes_right, sorted_nodes, starts, left_counts):
  """Reorders each node's segment: left child's samples, then right child's.

  Within each child the value order is kept, so the result is again sorted
  by (node, value) for the next level's nodes 2s and 2s + 1.

  Args:
    order: [T, F, N] samples sorted by (node, value) per tree and feature.
    goes_right: [T, N] the split decision of every sample.
    sorted_nodes: [T, N] the node at each position (the same for every
      feature, since nodes are contiguous segments of equal size).
    starts: [T, S] the first position of each node.
    left_counts: [T, S] how many samples of each node go left.
  """
  num_features, num_samples = order.shape[1:]
  sorted_right = jnp.take_along_axis(goes_right[:, None, :], order, axis=2)
  # Counts are summed in float32 (exact below 2^24), which XLA:CPU scans
  # faster than int32.
  left = (~sorted_right).astype(jnp.float32)
  lefts_before = (jnp.cumsum(left, axis=2) - left).astype(jnp.int32)
  lefts_in_earlier_nodes = jnp.cumsum(left_counts, axis=1) - left_counts
  at_node = lambda stat: jnp.take_along_axis(stat, sorted_nodes, axis=1)[:, None, :]
  rank_left = lefts_before - at_node(lefts_in_earlier_nodes)
  offset_in_node = jnp.arange(num_samples) - at_node(starts)
  new_position = at_node(starts) + jnp.where(
      sorted_right, at_node(left_counts) + offset_in_node - rank_left, rank_left)
  # One flat scatter: XLA:CPU runs it ~2x faster than a three-index one.
  row_offsets = (jnp.arange(order.shape[0] * num_features) * num_samples).reshape(
      order.shape[0], num_features, 1)
  return jnp.zeros(order.size, order.dtype).at[
      (new_position + row_offsets).reshape(-1)
  ].set(order.reshape(-1), unique_indices=True, mode="promise_in_bounds").reshape(
      order.shape)


def _newton_leaf_values(residuals, hessians, leaf_of_sample, num_leaves, scale):
  """One Newton step per leaf: scale * sum(residual) / sum(hessian).

  scikit-learn sets a leaf to zero when its hessian sum is (nearly) zero,
  i.e. when every probability in it is exactly 0 or 1.
  """
  leaf_sum = lambda values: _per_node(values, leaf_of_sample, num_leaves, jnp.sum, 0.0)
  numerator, denominator = leaf_sum(residuals), leaf_sum(hessians)
  tiny = denominator < np.finfo(np.float32).tiny
  return jnp.where(tiny, 0.0, scale * numerator / jnp.where(tiny, 1.0, denominator))


@jax.jit
def _raw_predictions(initial_raw, features, thresholds, leaf_values, inputs):
  """Sum over stages of every tree's leaf value for each row, [N, T]."""
  max_depth = int(np.log2(leaf_values.shape[-1]))

  def stage_values(stage_features, stage_thresholds, stage_leaves):
    node = jnp.zeros((stage_features.shape[0], inputs.shape[0]), jnp.int32)
    for depth in range(max_depth):
      heap_index = 2**depth - 1 + node  # Level order: level d starts at 2^d - 1.
      feature = jnp.take_along_axis(stage_features, heap_index, axis=1)
      threshold = jnp.take_along_axis(stage_thresholds, heap_index, axis=1)
      value = inputs[jnp.arange(inputs.shape[0])[None, :], feature]  # [T, N]
      node = 2 * node + (value > threshold).astype(jnp.int32)
    return jnp.take_along_axis(stage_leaves, node, axis=1)  # [T, N]

  def accumulate(raw, stage):
    return raw + stage_values(*stage), None

  raw = jnp.zeros((leaf_values.shape[1], inputs.shape[0]), jnp.float32)
  raw, _ = jax.lax.scan(accumulate, raw, (features, thresholds, leaf_values))
  return raw.T + initial_raw
