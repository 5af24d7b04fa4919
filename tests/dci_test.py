"""DCI and its tree learner: equivalence with scikit-learn, known answers."""

import numpy as np
import pytest
from sklearn import ensemble

from msdr_jax.metrics import dci
from msdr_jax.metrics import gbt


def _problem(num_classes, num_points=600, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, num_points)
  inputs = np.concatenate(
      [labels[:, None] + 0.8 * rng.normal(size=(num_points, 1)),
       rng.normal(size=(num_points, 3))], axis=1).astype(np.float32)
  return inputs, labels


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_gradient_boosting_matches_scikit_learn(num_classes):
  inputs, labels = _problem(num_classes)
  test_inputs, test_labels = _problem(num_classes, seed=1)
  reference = ensemble.GradientBoostingClassifier(random_state=0).fit(inputs, labels)
  # scikit-learn breaks exact ties between splits (e.g. two features that
  # isolate the same sample) by its random feature order, so it disagrees
  # with itself across seeds; that disagreement is the yardstick.
  reseeded = ensemble.GradientBoostingClassifier(random_state=1).fit(inputs, labels)
  ours = gbt.fit(inputs, labels)
  np.testing.assert_allclose(
      ours.feature_importances, reference.feature_importances_, atol=0.01)
  assert ours.feature_importances.sum() == pytest.approx(1.0)
  for x, y in ((inputs, labels), (test_inputs, test_labels)):
    predicted = gbt.predict(ours, x)
    self_agreement = np.mean(reseeded.predict(x) == reference.predict(x))
    assert np.mean(predicted == reference.predict(x)) >= self_agreement - 0.01
    assert np.mean(predicted == y) == pytest.approx(reference.score(x, y), abs=0.015)


def test_gradient_boosting_first_stage_is_scikit_learns_tree():
  # Depth 2 keeps every node large: no exact ties (see above) to break.
  inputs, labels = _problem(3, num_points=300)
  reference = ensemble.GradientBoostingClassifier(
      n_estimators=1, max_depth=2, random_state=0)
  reference.fit(inputs, labels)
  ours = gbt.fit(inputs, labels, num_stages=1, max_depth=2)
  for k in range(3):
    tree = reference.estimators_[0, k].tree_
    # The root split: same feature and threshold.
    assert ours.features[0, k, 0] == tree.feature[0]
    assert ours.thresholds[0, k, 0] == pytest.approx(tree.threshold[0], abs=1e-5)
    # Leaf values (shrunk by the learning rate 0.1), in left-to-right order.
    leaves = tree.value[tree.children_left == -1, 0, 0]
    ours_leaves = np.asarray(ours.leaf_values[0, k]) / 0.1
    np.testing.assert_allclose(
        np.sort(ours_leaves[np.abs(ours_leaves) > 0]),
        np.sort(leaves[np.abs(leaves) > 0]), rtol=1e-4)
  np.testing.assert_allclose(
      ours.feature_importances, reference.feature_importances_, atol=1e-5)


def test_near_equal_values_are_compared_within_each_node_as_in_scikit_learn():
  # Feature 0 takes values 0.8e-7 apart, so that no two neighbours along the
  # whole feature differ by more than scikit-learn's 1e-7; within each half
  # of the samples (split off by feature 1 at the root) they are 1.6e-7
  # apart, so there the left child can split on feature 0, as in
  # scikit-learn, which compares neighbours within a node.
  rng = np.random.default_rng(0)
  half = 200
  step = np.arange(half) * 1.6e-7
  inputs = np.stack([np.concatenate([step, step + 0.8e-7]),
                     np.repeat([-1.0, 1.0], half)], axis=1).astype(np.float32)
  labels = np.concatenate([np.arange(half) >= 150, rng.uniform(size=half) < 0.9]).astype(int)
  reference = ensemble.GradientBoostingClassifier(
      n_estimators=1, max_depth=2, random_state=0).fit(inputs, labels)
  tree = reference.estimators_[0, 0].tree_
  ours = gbt.fit(inputs, labels, num_stages=1, max_depth=2)
  left = tree.children_left[0]
  assert ours.features[0, 0, 0] == tree.feature[0] == 1
  assert ours.features[0, 0, 1] == tree.feature[left] == 0
  assert ours.thresholds[0, 0, 1] == pytest.approx(tree.threshold[left], rel=1e-6)
  np.testing.assert_allclose(
      ours.feature_importances, reference.feature_importances_, atol=1e-5)


def test_fitting_classifiers_together_changes_none_of_them():
  # A single feature: no ties between features, so the tie-breaking draws
  # (which differ per classifier) play no part.
  inputs, labels = _problem(3, num_points=400)
  inputs = inputs[:, :1]
  rng = np.random.default_rng(1)
  columns = np.stack([labels, (inputs[:, 0] > 1).astype(int), rng.integers(0, 4, 400)], 1)
  together = gbt.fit_each(inputs, columns, num_stages=5)
  for j, trees in enumerate(together):
    alone = gbt.fit(inputs, columns[:, j], num_stages=5)
    np.testing.assert_array_equal(trees.features, alone.features)
    np.testing.assert_array_equal(trees.thresholds, alone.thresholds)
    np.testing.assert_allclose(trees.leaf_values, alone.leaf_values, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        trees.feature_importances, alone.feature_importances, atol=1e-6)
  predicted = gbt.predict_each(together, inputs)
  for j, trees in enumerate(together):
    np.testing.assert_array_equal(predicted[:, j], gbt.predict(trees, inputs))


@pytest.mark.parametrize("length", [1, 15, 16, 17, 1000])
def test_blockwise_prefix_sum_is_a_cumulative_sum(length):
  values = np.random.default_rng(length).normal(size=(2, 3, length)).astype(np.float32)
  np.testing.assert_allclose(
      gbt._prefix_sum(values),  # pylint: disable=protected-access
      np.cumsum(values.astype(np.float64), axis=-1), rtol=1e-5, atol=1e-5)


def test_gradient_boosting_keeps_unseen_and_non_contiguous_labels():
  inputs, labels = _problem(3)
  ours = gbt.fit(inputs, labels * 10 + 7)
  assert set(np.unique(gbt.predict(ours, inputs))) <= {7, 17, 27}


def test_gradient_boosting_needs_two_classes():
  with pytest.raises(ValueError, match="at least two classes"):
    gbt.fit(np.zeros((10, 2)), np.ones(10))
  with pytest.raises(ValueError, match="at least two classes"):
    gbt.fit_each(np.zeros((10, 2)), np.stack([np.arange(10) % 2, np.ones(10)], 1))


def test_disentanglement_and_completeness_hand_computed():
  # One latent per factor: perfectly disentangled and complete.
  assert dci.dci_from_importance(np.eye(3)) == pytest.approx(
      {"dci/disentanglement": 1.0, "dci/completeness": 1.0})
  # Every latent equally important for every factor: neither.
  uniform = dci.dci_from_importance(np.ones((4, 2)))
  assert uniform["dci/disentanglement"] == pytest.approx(0.0, abs=1e-9)
  assert uniform["dci/completeness"] == pytest.approx(0.0, abs=1e-9)
  # Two latents share factor 0 (each fully exclusive): disentangled, but
  # factor 0's importance is split in two (completeness 1 - H_3([.5,.5,0]))
  # and weighted 2/3.
  split = dci.dci_from_importance(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
  assert split["dci/disentanglement"] == pytest.approx(1.0, abs=1e-9)
  expected = (2 / 4) * (1 - np.log(2) / np.log(3)) + (2 / 4) * 1.0
  assert split["dci/completeness"] == pytest.approx(expected, abs=1e-9)


def _factors(num, sizes, seed):
  rng = np.random.default_rng(seed)
  return np.stack([rng.integers(0, s, num) for s in sizes], axis=1)


@pytest.fixture(scope="module")
def factor_sets():
  sizes = (3, 4, 5)
  return _factors(800, sizes, 0), _factors(400, sizes, 1)


def test_dci_of_the_factors_is_one_and_of_noise_is_low(factor_sets):
  train, test = factor_sets
  perfect = dci.dci_scores(train.astype(float), train, test.astype(float), test)
  assert perfect["dci/disentanglement"] > 0.99
  assert perfect["dci/completeness"] > 0.99
  assert perfect["dci/informativeness_test"] == 1.0
  rng = np.random.default_rng(2)
  noise = dci.dci_scores(rng.normal(size=train.shape), train,
                         rng.normal(size=test.shape), test)
  assert noise["dci/disentanglement"] < 0.2
  assert noise["dci/informativeness_test"] < 0.45  # Chance is 1/3 .. 1/5.


def test_dci_rotation_lowers_disentanglement_and_permutation_changes_nothing(factor_sets):
  train, test = factor_sets
  rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
  rotated = dci.dci_scores(train @ rotation, train, test @ rotation, test)
  assert rotated["dci/disentanglement"] < 0.6
  permuted = dci.dci_scores(train[:, [2, 0, 1]].astype(float), train,
                            test[:, [2, 0, 1]].astype(float), test)
  base = dci.dci_scores(train.astype(float), train, test.astype(float), test)
  for key, value in base.items():
    assert permuted[key] == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("boosting_stages", [100, 3])
def test_dci_scikit_learn_learner_agrees(factor_sets, boosting_stages):
  train, test = factor_sets
  rng = np.random.default_rng(4)
  codes = train + 0.7 * rng.normal(size=train.shape)
  test_codes = test + 0.7 * rng.normal(size=test.shape)
  ours = dci.dci_scores(codes, train, test_codes, test, "gbt", boosting_stages)
  reference = dci.dci_scores(codes, train, test_codes, test, "sklearn", boosting_stages)
  for key, value in reference.items():
    assert ours[key] == pytest.approx(value, abs=0.01), key
  if boosting_stages == 100:  # Unseeded, scikit-learn's ties would differ between fits.
    assert dci.dci_scores(codes, train, test_codes, test, "sklearn") == reference
  if boosting_stages < 100:  # The stages are the ones asked for, not the default's.
    default = dci.dci_scores(codes, train, test_codes, test, "sklearn")
    assert default["dci/informativeness_train"] > reference["dci/informativeness_train"]


def test_dci_degenerate_inputs_fail_clearly(factor_sets):
  train, test = factor_sets
  codes = train.astype(float)
  with pytest.raises(ValueError, match="single value"):
    constant = train.copy()
    constant[:, 1] = 2
    dci.dci_scores(codes, constant, codes, constant)
  with pytest.raises(ValueError, match="NaN"):
    nan = codes.copy()
    nan[5, 0] = np.nan
    dci.dci_scores(nan, train, test.astype(float), test)
  with pytest.raises(ValueError, match="Unknown DCI learner"):
    dci.dci_scores(codes, train, test.astype(float), test, learner="xgboost")
  with pytest.raises(ValueError, match="at least 2 points"):
    dci.dci_scores(codes[:1], train[:1], codes[:1], train[:1])


def test_a_duplicated_latent_shares_the_importance_as_in_scikit_learn(factor_sets):
  # A copy (here scaled) of a latent ties with it at every node; both
  # learners break such ties at random, so the pair shares the importance
  # instead of the first copy taking it all.
  train, test = factor_sets
  rng = np.random.default_rng(5)
  codes = train + 0.5 * rng.normal(size=train.shape)
  test_codes = test + 0.5 * rng.normal(size=test.shape)
  codes = np.concatenate([codes, 2 * codes[:, :1]], axis=1)
  test_codes = np.concatenate([test_codes, 2 * test_codes[:, :1]], axis=1)
  importance = gbt.fit(codes, train[:, 0]).feature_importances
  assert 0.25 < importance[0] / (importance[0] + importance[3]) < 0.75
  ours = dci.dci_scores(codes, train, test_codes, test)
  reference = dci.dci_scores(codes, train, test_codes, test, learner="sklearn")
  assert ours["dci/completeness"] == pytest.approx(reference["dci/completeness"], abs=0.03)


def test_gradient_boosting_keeps_stepping_when_probabilities_saturate():
  # One sample of class 2: after a few stages its probability rounds to 1
  # in float32. scikit-learn (float64) still takes Newton steps for it, and
  # so must we (1 - p is computed directly, not as 1 minus a rounded 1).
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(200, 2)).astype(np.float32)
  labels = (inputs[:, 0] > 0).astype(int)
  lonely = np.argmax(inputs[:, 1])
  labels[lonely] = 2
  reference = ensemble.GradientBoostingClassifier(random_state=0).fit(inputs, labels)
  ours = gbt.fit(inputs, labels)
  np.testing.assert_array_equal(gbt.predict(ours, inputs), reference.predict(inputs))

  def margin(num_stages):
    raw = np.asarray(gbt._raw_predictions(  # pylint: disable=protected-access
        ours.initial_raw, ours.features[:num_stages], ours.thresholds[:num_stages],
        ours.leaf_values[:num_stages], inputs[lonely:lonely + 1]))[0]
    return raw[2] - max(raw[0], raw[1])

  staged = list(reference.staged_decision_function(inputs[lonely:lonely + 1]))
  for num_stages in (25, 50, 100):  # p rounds to 1 in float32 from ~17 on.
    expected = staged[num_stages - 1][0]
    assert margin(num_stages) == pytest.approx(expected[2] - max(expected[:2]), rel=1e-4)
