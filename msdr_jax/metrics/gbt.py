"""Gradient-boosted trees in JAX: scikit-learn's `GradientBoostingClassifier()`.

DCI (Eastwood & Williams 2018) as computed by disentanglement_lib fits one
`sklearn.ensemble.GradientBoostingClassifier()` with its defaults per factor
and reads the importance matrix off `feature_importances_`. On 10,000 points
that is minutes per data set: a 40-class factor grows 4,000 trees one by one.
This module is the same learner, re-expressed so that the trees of every
factor's classifier (`fit_each`) grow in one compiled program, level by level,
one tree at a time within each boosting stage of a `lax.scan`:

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

How a level is grown without sorting or partitioning: each feature is sorted
once, before boosting, and every tree of every stage searches its splits
along that one order. For a node, a prefix sum along it of the residuals of
the node's samples (zero elsewhere), and one of their count, give at each of
the node's samples the candidate split just after it. A right child's prefix
sums are its parent's minus its sibling's, so a level of 2^d nodes takes
2^(d-1) prefix sums of each kind: O(trees x features x samples x 2^depth)
per stage, in dense arithmetic that XLA vectorises (the sorting and
partitioning of samples per node would not be). A split just after a sample
is allowed if the node's next value is larger by more than 1e-7, i.e. if
the node's count does not grow up to the last position within 1e-7 of the
sample's value (found once, in float64 as scikit-learn compares).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# scikit-learn's `FEATURE_THRESHOLD`: feature values closer than this are one value.
_FEATURE_THRESHOLD = 1e-7
# scikit-learn's `EPSILON` (float64 machine epsilon): a node whose impurity
# is at most this is a leaf.
_IMPURITY_EPSILON = float(np.finfo(np.float64).eps)
# Prefix sums are taken in blocks of this many values (see `_prefix_sum`).
_PREFIX_BLOCK = 16


class BoostedTrees(NamedTuple):
  """A fitted ensemble; T trees per stage (T = 1 for two classes)."""

  classes: np.ndarray  # [K] the sorted labels seen in training.
  initial_raw: np.ndarray  # [T] raw prediction before the first stage.
  features: np.ndarray  # [stages, T, 2**depth - 1] split feature per node.
  thresholds: np.ndarray  # [stages, T, 2**depth - 1] go right iff x > it.
  leaf_values: np.ndarray  # [stages, T, 2**depth] shrunk Newton steps.
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
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"Gradient boosting needs labels [N], got {labels.shape}.")
  return fit_each(inputs, labels[:, None], num_stages, learning_rate, max_depth, seed)[0]


def fit_each(
    inputs: np.ndarray,
    labels: np.ndarray,
    num_stages: int = 100,
    learning_rate: float = 0.1,
    max_depth: int = 3,
    seed: int = 0,
) -> list[BoostedTrees]:
  """Fits one classifier per column of integer `labels` [N, P] to `inputs` [N, F].

  The classifiers are independent: column j's is the one `fit` returns for
  it (with the same `seed`, only j = 0 draws the same tie-breaking order).
  Fitting them together grows all their trees in one compiled program,
  compiled once per shape of the problem, instead of once per classifier.
  """
  inputs = np.asarray(inputs, np.float32)
  labels = np.asarray(labels)
  if inputs.ndim != 2 or labels.ndim != 2 or labels.shape[0] != inputs.shape[0]:
    raise ValueError(
        f"Gradient boosting needs inputs [N, F] and labels [N, P], got {inputs.shape} "
        f"and {labels.shape}.")
  if not inputs.shape[0] or not labels.shape[1]:
    raise ValueError(f"Gradient boosting needs at least one point and one label column, "
                     f"got inputs {inputs.shape} and labels {labels.shape}.")
  classes, encoded = zip(*(np.unique(column, return_inverse=True) for column in labels.T))
  for column, column_classes in enumerate(classes):
    if len(column_classes) < 2:
      raise ValueError(
          f"Gradient boosting needs at least two classes; every label of column {column} "
          f"is {column_classes[0]} (drop constant factors first).")
  initial_raw, features, thresholds, leaf_values, gains = jax.device_get(_fit(
      jnp.asarray(inputs.T), *map(jnp.asarray, _sorted_features(inputs)),
      jnp.asarray(np.stack(encoded, axis=1), jnp.int32), jax.random.key(seed),
      num_classes=tuple(len(c) for c in classes), num_stages=num_stages,
      learning_rate=learning_rate, max_depth=max_depth))
  ensembles = []
  for column_classes, trees in zip(classes, _tree_spans([len(c) for c in classes])):
    importances = gains[trees].sum(axis=0, dtype=np.float64)
    total = importances.sum()
    ensembles.append(BoostedTrees(
        classes=column_classes,
        initial_raw=initial_raw[trees],
        features=features[:, trees],
        thresholds=thresholds[:, trees],
        leaf_values=leaf_values[:, trees],
        feature_importances=importances / total if total > 0 else importances,
    ))
  return ensembles


def predict(trees: BoostedTrees, inputs: np.ndarray) -> np.ndarray:
  """The most probable class of each row of `inputs` [N, F]."""
  return predict_each([trees], inputs)[:, 0]


def predict_each(ensembles: Sequence[BoostedTrees], inputs: np.ndarray) -> np.ndarray:
  """[N, P]: column j holds `predict(ensembles[j], inputs)`, in one program."""
  if not ensembles:
    raise ValueError("predict_each needs at least one fitted ensemble.")
  if len({trees.leaf_values.shape[::2] for trees in ensembles}) != 1:
    raise ValueError("predict_each needs ensembles fitted with the same num_stages and "
                     "max_depth.")
  raw = np.asarray(_raw_predictions(
      np.concatenate([trees.initial_raw for trees in ensembles]),
      *(np.concatenate([getattr(trees, field) for trees in ensembles], axis=1)
        for field in ("features", "thresholds", "leaf_values")),
      jnp.asarray(inputs, jnp.float32)))
  columns = []
  for trees, span in zip(ensembles, _tree_spans([len(t.classes) for t in ensembles])):
    scores = raw[:, span]
    if scores.shape[-1] == 1:  # Binomial: class 1 iff p > 1/2, as scikit-learn.
      index = (scores[:, 0] > 0).astype(np.int32)
    else:
      index = np.argmax(scores, axis=-1)
    columns.append(trees.classes[index])
  return np.stack(columns, axis=1)


def _tree_spans(num_classes: Sequence[int]) -> list[slice]:
  """Each classifier's trees along the concatenated tree axis."""
  sizes = [1 if k == 2 else k for k in num_classes]
  starts = np.cumsum([0] + sizes[:-1])
  return [slice(int(start), int(start + size)) for start, size in zip(starts, sizes)]


def _sorted_features(inputs: np.ndarray):
  """(sorted values, order, last position within the threshold), [F, N] each.

  Per feature: its values in ascending order, the samples in that order, and
  at each position the last one whose value is at most `_FEATURE_THRESHOLD`
  above this one's (in float64, as scikit-learn adds its float64 threshold
  to float32 values).
  """
  order = np.argsort(inputs, axis=0, kind="stable").T.astype(np.int32)
  sorted_values = np.take_along_axis(inputs.T, order, axis=1)
  last_within = np.stack([
      np.searchsorted(values, values.astype(np.float64) + _FEATURE_THRESHOLD, side="right") - 1
      for values in sorted_values.astype(np.float64)]).astype(np.int32)
  return sorted_values, order, last_within


def _loss_of(labels, num_classes):
  """(initial raw [T], targets [N, T], Newton leaf scale) of one classifier."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  prior = jnp.clip(one_hot.mean(0), np.finfo(np.float64).eps, 1.0)
  if num_classes == 2:
    return jnp.log(prior[1:] / prior[0]), one_hot[:, 1:], 1.0
  return jnp.log(prior) - jnp.log(prior).mean(), one_hot, (num_classes - 1) / num_classes


@functools.partial(jax.jit, static_argnames=("num_classes", "num_stages", "max_depth"))
def _fit(inputs_t, sorted_values, order, last_within, labels, key, *, num_classes, num_stages,
         learning_rate, max_depth):
  num_features, num_samples = inputs_t.shape
  spans = _tree_spans(num_classes)
  losses = [_loss_of(labels[:, j], k) for j, k in enumerate(num_classes)]
  initial_raw = jnp.concatenate([initial for initial, _, _ in losses])
  targets = jnp.concatenate([target for _, target, _ in losses], axis=1)  # [N, T]
  newton_scale = jnp.concatenate([
      jnp.full((span.stop - span.start, 1), scale) for span, (_, _, scale) in zip(spans, losses)])
  classifier_keys = [jax.random.fold_in(key, j) for j in range(len(num_classes))]

  def stage(raw, index):
    probs, complements = map(
        functools.partial(jnp.concatenate, axis=1),
        zip(*(_probabilities(raw[:, span]) for span in spans)))
    # y - p, written so that a probability that rounds to 1 in float32 still
    # leaves its (tiny) residual and hessian: 1 - p is computed directly.
    residuals = jnp.where(targets > 0, complements, -probs).T  # [T, N]
    hessians = (probs * complements).T
    # Random feature priorities per tree (uniform draws: no sort needed).
    priority = jnp.concatenate([
        jax.random.uniform(jax.random.fold_in(classifier_key, index),
                           (span.stop - span.start, num_features))
        for classifier_key, span in zip(classifier_keys, spans)])
    tree, leaf_of_sample, gain, leaf_sums = _grow_trees(
        inputs_t, sorted_values, order, last_within, residuals, hessians, priority, max_depth)
    leaf_values = learning_rate * _newton_leaf_values(*leaf_sums, newton_scale)
    raw = raw + jnp.take_along_axis(leaf_values, leaf_of_sample, axis=1).T
    return raw, (tree, leaf_values, gain)

  raw = jnp.broadcast_to(initial_raw, (num_samples, len(initial_raw)))
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


def _grow_trees(inputs_t, sorted_values, order, last_within, residuals, hessians, priority,
                max_depth):
  """Grows T depth-`max_depth` least-squares regression trees.

  Args:
    inputs_t: [F, N] features.
    sorted_values: [F, N] each feature's values in ascending order.
    order: [F, N] the samples in that order.
    last_within: [F, N] the last position within `_FEATURE_THRESHOLD` of
      each position's value.
    residuals: [T, N] regression targets, one row per tree.
    hessians: [T, N] the loss's second derivatives, summed per leaf.
    priority: [T, F] the rank of each feature among exact ties, per tree.
    max_depth: depth of the trees.

  Returns:
    ((features, thresholds) of the 2**depth - 1 nodes in level order, each
    [T, nodes]), the leaf of every sample [T, N], the squared-error
    decrease of the splits per tree and feature [T, F], and the sums of the
    residuals and of the hessians per leaf, [T, 2**depth] each.
  """
  grow = functools.partial(
      _grow_tree, inputs_t, sorted_values, order, last_within, max_depth=max_depth)
  # One tree at a time, not vmapped: a tree's [F, N] arrays stay in the
  # cache, where those of all trees at once would not.
  return jax.lax.map(lambda tree_inputs: grow(*tree_inputs), (residuals, hessians, priority))


def _grow_tree(inputs_t, sorted_values, order, last_within, residuals, hessians, priority,
               max_depth):
  """`_grow_trees` for one tree: residuals and hessians [N], priority [F]."""
  num_features, num_samples = order.shape
  sorted_residuals = residuals[order]  # [F, N]
  sorted_nodes = jnp.zeros_like(order)
  node_of_sample = jnp.zeros((num_samples,), jnp.int32)
  # Per node of the level: (residual sum, count) of its samples up to each
  # position of each feature's order, and whether the sample there is one
  # of them, [F, N] each.
  prefixes = [(_prefix_sum(sorted_residuals),
               jnp.broadcast_to(jnp.arange(1, num_samples + 1, dtype=jnp.float32),
                                order.shape),
               jnp.ones(order.shape, bool))]
  features_per_level, thresholds_per_level = [], []
  gain_per_feature = jnp.zeros((num_features,), jnp.float32)
  for depth in range(max_depth):
    num_nodes = 2**depth
    if depth > 0:
      sorted_nodes = node_of_sample[order]
      prefixes = _children_prefixes(prefixes, sorted_nodes, sorted_residuals)
    counts, sums, splittable = _node_statistics(residuals, node_of_sample, num_nodes)
    next_is_apart = _next_is_apart(prefixes, sorted_nodes, last_within)
    gain, feature, rank = map(jnp.stack, zip(*(
        _best_split(*prefix, sums[node], counts[node], splittable[node], next_is_apart,
                    priority)
        for node, prefix in enumerate(prefixes))))
    threshold = _thresholds(sorted_values, sorted_nodes, prefixes, feature, rank)
    # A node that does not split sends every sample left: the leaf below it
    # then holds exactly the node's samples.
    splits = gain >= 0
    feature = jnp.where(splits, feature, 0)
    threshold = jnp.where(splits, threshold, jnp.inf)
    gain_per_feature += jax.ops.segment_sum(
        jnp.where(splits, gain, 0.0), feature, num_features)
    features_per_level.append(feature)
    thresholds_per_level.append(threshold)
    sample_value = inputs_t[feature[node_of_sample], jnp.arange(num_samples)]
    goes_right = sample_value > threshold[node_of_sample]
    node_of_sample = 2 * node_of_sample + goes_right.astype(jnp.int32)
  tree = (jnp.concatenate(features_per_level), jnp.concatenate(thresholds_per_level))
  leaf_sums = [_per_node(values, node_of_sample, 2**max_depth, jnp.sum, 0.0)
               for values in (residuals, hessians)]
  return tree, node_of_sample, gain_per_feature, leaf_sums


def _children_prefixes(prefixes, sorted_nodes, sorted_residuals):
  """The next level's prefix sums: node 2p's summed, node 2p + 1's as p's minus 2p's."""
  children = []
  for parent, (parent_sum, parent_count, _) in enumerate(prefixes):
    in_left = sorted_nodes == 2 * parent
    left_sum = _prefix_sum(jnp.where(in_left, sorted_residuals, 0.0))
    left_count = _prefix_sum(in_left.astype(jnp.float32))
    children += [(left_sum, left_count, in_left),
                 (parent_sum - left_sum, parent_count - left_count,
                  sorted_nodes == 2 * parent + 1)]
  return children


def _next_is_apart(prefixes, sorted_nodes, last_within):
  """Whether each position's node has no further sample within the threshold, [F, N].

  That is, whether the count of the node's samples stays the same from the
  position up to `last_within`: scikit-learn's test that the node's next
  value is more than `_FEATURE_THRESHOLD` larger. One gather per level from
  the stacked counts of all its nodes: per node, fused into the split
  search, it would keep XLA from vectorising that.
  """
  num_features, num_samples = last_within.shape
  if len(prefixes) == 1:  # The root holds every sample.
    return last_within == jnp.arange(num_samples)
  counts = jnp.stack([count for _, count, _ in prefixes])  # [nodes, F, N]
  count_here = jnp.take_along_axis(counts, sorted_nodes[None], axis=0)[0]
  flat_index = (sorted_nodes * num_features
                + jnp.arange(num_features)[:, None]) * num_samples + last_within
  return counts.reshape(-1)[flat_index] == count_here


def _node_statistics(residuals, node_of_sample, num_nodes):
  """Sample count, residual sum and whether each node may split, [num_nodes] each.

  scikit-learn makes a node a leaf when its impurity (the variance of its
  residuals, float64) is <= machine epsilon, e.g. once every probability in
  it is nearly 0 or 1. Two-pass variance, so that float32 reproduces that
  test; a node of equal residuals is a leaf regardless.
  """
  node_stats = lambda values, reduce=jnp.sum, fill=0.0: _per_node(
      values, node_of_sample, num_nodes, reduce, fill)
  counts = node_stats(jnp.ones_like(residuals))
  sums = node_stats(residuals)
  node_mean = sums / jnp.maximum(counts, 1.0)
  variance = node_stats((residuals - node_mean[node_of_sample])**2) / jnp.maximum(counts, 1.0)
  spread = node_stats(residuals, jnp.max, -jnp.inf) - node_stats(residuals, jnp.min, jnp.inf)
  return counts, sums, (spread > 0) & (variance > _IMPURITY_EPSILON)


def _best_split(left_sum, left_count, in_node, node_sum, node_count, splittable, next_is_apart,
                priority):
  """A node's best split from its prefix sums [F, N]: (gain, feature, rank).

  A split may follow any of the node's samples where `next_is_apart` and
  some of them remain on the right. The gain is the largest squared-error
  decrease (-1 if there is no split); `rank` the number of the node's
  samples that go left. Among splits of equal gain the one sending the
  fewest samples left wins (the lowest threshold), and among features tied
  there the one of highest priority.
  """
  right_count = node_count - left_count
  right_sum = node_sum - left_sum
  valid = in_node & next_is_apart & (right_count >= 1) & splittable
  # sum_l^2/n_l + sum_r^2/n_r - sum^2/n, written without the cancellation of
  # that form.
  gain = (right_count * left_sum - left_count * right_sum) ** 2 / (
      jnp.maximum(left_count, 1.0) * jnp.maximum(right_count, 1.0) * node_count)
  gain = jnp.where(valid, gain, -1.0)
  best_gain = jnp.max(gain)
  rank_per_feature = jnp.min(jnp.where(gain == best_gain, left_count, jnp.inf), axis=1)
  rank = jnp.min(rank_per_feature)
  feature = jnp.argmax(jnp.where(rank_per_feature == rank, priority, -1.0))
  return best_gain, feature, rank


def _thresholds(sorted_values, sorted_nodes, prefixes, feature, rank):
  """scikit-learn's threshold of each node's split, [num_nodes].

  The midpoint of the node's rank-th and (rank + 1)-th smallest value of
  its split feature (safe from overflow); the lower one where the midpoint
  rounds up to the higher.
  """
  num_nodes = len(prefixes)
  values = sorted_values[feature]  # [nodes, N]
  in_node = sorted_nodes[feature] == jnp.arange(num_nodes)[:, None]
  samples_so_far = jnp.stack([count[f] for (_, count, _), f in zip(prefixes, feature)])
  goes_left = samples_so_far <= rank[:, None]
  low = jnp.max(jnp.where(in_node & goes_left, values, -jnp.inf), axis=1)
  high = jnp.min(jnp.where(in_node & ~goes_left, values, jnp.inf), axis=1)
  threshold = low / 2 + high / 2
  return jnp.where(threshold == high, low, threshold)


def _prefix_sum(values):
  """Cumulative sum along the last axis, per block of `_PREFIX_BLOCK` values.

  XLA:CPU lowers `jnp.cumsum` to a reduce-window several times slower than
  this: each block times a triangular matrix of ones, plus the cumulative
  sum of the (few) block totals.
  """
  *batch, length = values.shape
  num_blocks = -(-length // _PREFIX_BLOCK)
  padded = jnp.pad(
      values, [(0, 0)] * len(batch) + [(0, num_blocks * _PREFIX_BLOCK - length)])
  within = jnp.matmul(
      padded.reshape(*batch, num_blocks, _PREFIX_BLOCK),
      jnp.triu(jnp.ones((_PREFIX_BLOCK, _PREFIX_BLOCK), values.dtype)),
      precision=jax.lax.Precision.HIGHEST)
  totals_so_far = jnp.cumsum(within[..., -1], axis=-1)
  before = jnp.pad(totals_so_far[..., :-1], [(0, 0)] * len(batch) + [(1, 0)])
  return (within + before[..., None]).reshape(*batch, -1)[..., :length]


def _per_node(values, nodes, num_nodes, reduce, fill):
  """`reduce` of `values` [..., N] over the samples of each node: [..., num_nodes].

  A dense masked reduction: with at most 2**depth nodes it is several times
  faster on XLA:CPU than a segment reduction, which lowers to a scatter.
  """
  mask = nodes[..., None, :] == jnp.arange(num_nodes)[:, None]
  return reduce(jnp.where(mask, values[..., None, :], fill), axis=-1)


def _newton_leaf_values(residual_sums, hessian_sums, scale):
  """One Newton step per leaf: scale * sum(residual) / sum(hessian).

  scikit-learn sets a leaf to zero when its hessian sum is (nearly) zero,
  i.e. when every probability in it is exactly 0 or 1.
  """
  tiny = hessian_sums < np.finfo(np.float32).tiny
  return jnp.where(tiny, 0.0, scale * residual_sums / jnp.where(tiny, 1.0, hessian_sums))


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
