"""Known-answer tests of the reconstruction and sample-quality metrics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg
from scipy import ndimage

from msdr_jax.metrics import feature_extractors
from msdr_jax.metrics import reconstruction
from msdr_jax.metrics import sample_quality
from msdr_jax.models import inception

# ----------------------------------------------------------------------------
# BCE, squared error, PSNR.

# Two 2x2 grey images; the second reconstruction is certain and wrong at one
# pixel (probability 0 where the image is 1).
_IMAGES = np.array([[[1.0, 0.0], [0.5, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])[..., None]
_PROBABILITIES = np.array([[[0.9, 0.2], [0.5, 1.0]], [[0.0, 1.0], [0.0, 0.5]]])[..., None]


def test_bernoulli_cross_entropy_hand_computed():
  eps = 1e-7
  expected = [
      # -log .9 - log .8 - (.5 log .5 + .5 log .5) - log(1 - eps)
      -math.log(0.9) - math.log(0.8) - math.log(0.5) - math.log(1 - eps),
      # p = 0 at a target 1 is clipped to eps; p = 1 at a target 1 to 1 - eps.
      -math.log(eps) - math.log(1 - eps) - math.log(1 - eps) - math.log(0.5),
  ]
  np.testing.assert_allclose(
      reconstruction.bernoulli_cross_entropy(_IMAGES, _PROBABILITIES), expected,
      rtol=1e-5)


def test_squared_error_hand_computed():
  expected = [0.1 ** 2 + 0.2 ** 2 + 0.0 + 0.0, 1.0 + 0.0 + 0.0 + 0.25]
  np.testing.assert_allclose(
      reconstruction.squared_error(_IMAGES, _PROBABILITIES), expected, rtol=1e-6)


def test_psnr_of_known_mse():
  images = np.random.default_rng(0).uniform(0.2, 0.8, (3, 4, 5, 2))
  # Every pixel off by 0.1: MSE 0.01, PSNR 10 log10(1 / 0.01) = 20 dB.
  np.testing.assert_allclose(reconstruction.psnr(images, images + 0.1), [20.0] * 3,
                             rtol=1e-5)
  # Range 2, every pixel off by 0.2: 10 log10(4 / 0.04) = 20 dB as well.
  np.testing.assert_allclose(
      reconstruction.psnr(2 * images, 2 * images + 0.2, data_range=2.0), [20.0] * 3,
      rtol=1e-5)


def test_psnr_of_an_exact_reconstruction_is_the_documented_cap():
  images = np.random.default_rng(0).uniform(size=(2, 4, 4, 1))
  reconstructions = images.copy()
  reconstructions[1] += 0.1
  values = np.asarray(reconstruction.psnr(images, reconstructions))
  np.testing.assert_allclose(values, [100.0, 20.0], rtol=1e-5)
  assert np.isfinite(values.mean())


# ----------------------------------------------------------------------------
# SSIM.


def _reference_ssim(x, y, data_range=1.0):
  """Wang et al. in float64 with scipy's Gaussian filter, per image."""
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

  def local_mean(image):
    # truncate=3.5 gives radius int(3.5 * 1.5 + 0.5) = 5: the 11x11 window
    # (scikit-image's gaussian_weights=True); the crop keeps the windows that
    # lie inside the image, where the boundary mode does not matter.
    return ndimage.gaussian_filter(image, sigma=1.5, truncate=3.5)[5:-5, 5:-5]

  values = []
  for image_x, image_y in zip(x, y):
    per_channel = []
    for c in range(x.shape[-1]):
      a, b = image_x[..., c].astype(np.float64), image_y[..., c].astype(np.float64)
      mu_a, mu_b = local_mean(a), local_mean(b)
      var_a = local_mean(a * a) - mu_a ** 2
      var_b = local_mean(b * b) - mu_b ** 2
      cov = local_mean(a * b) - mu_a * mu_b
      ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                  / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
      per_channel.append(ssim_map.mean())
    values.append(np.mean(per_channel))
  return np.array(values)


def _noisy_pair(shape, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=shape)
  y = np.clip(x + 0.2 * rng.normal(size=shape), 0, 1)
  return x.astype(np.float32), y.astype(np.float32)


def test_ssim_of_identical_images_is_one():
  x, _ = _noisy_pair((2, 16, 20, 3))
  np.testing.assert_allclose(reconstruction.ssim(x, x), [1.0, 1.0], atol=1e-6)


def test_ssim_of_constant_images_is_the_luminance_term():
  m1, m2 = 0.3, 0.7
  x = np.full((1, 16, 16, 1), m1, np.float32)
  y = np.full((1, 16, 16, 1), m2, np.float32)
  c1 = 0.01 ** 2
  # Zero variances and covariance: contrast-structure is C2 / C2 = 1.
  expected = (2 * m1 * m2 + c1) / (m1 ** 2 + m2 ** 2 + c1)
  np.testing.assert_allclose(reconstruction.ssim(x, y), [expected], rtol=1e-6)


def test_ssim_matches_scipy_reference():
  x, y = _noisy_pair((3, 32, 32, 2))
  np.testing.assert_allclose(reconstruction.ssim(x, y), _reference_ssim(x, y), atol=1e-5)
  # A larger range with the matching data_range: the same image pair.
  np.testing.assert_allclose(
      reconstruction.ssim(255 * x, 255 * y, data_range=255.0),
      _reference_ssim(x, y), atol=1e-5)


def test_ssim_is_symmetric():
  x, y = _noisy_pair((2, 24, 24, 1), seed=1)
  np.testing.assert_allclose(reconstruction.ssim(x, y), reconstruction.ssim(y, x),
                             atol=1e-7)


@pytest.mark.parametrize("shape", [(1, 10, 32, 1), (1, 32, 10, 3), (32, 32, 1)])
def test_ssim_rejects_images_smaller_than_the_window(shape):
  x = np.zeros(shape, np.float32)
  with pytest.raises(ValueError, match="SSIM needs"):
    reconstruction.ssim(x, x)


def test_reconstruction_metrics_combines_the_per_image_metrics():
  x, y = _noisy_pair((2, 12, 12, 1), seed=2)
  result = reconstruction.reconstruction_metrics(x, y)
  assert set(result) == {"bce", "mse", "psnr", "ssim"}
  assert all(isinstance(value, float) for value in result.values())
  assert result["mse"] == pytest.approx(float(np.sum((x - y) ** 2) / 2), rel=1e-5)
  assert result["ssim"] == pytest.approx(float(_reference_ssim(x, y).mean()), abs=1e-5)


# ----------------------------------------------------------------------------
# FID.


def _fid_with_sqrtm(a, b):
  """pytorch-fid's formula: scipy.linalg.sqrtm of S_a S_b, real part."""
  mean_difference = a.mean(0) - b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  sqrt = linalg.sqrtm(cov_a @ cov_b).real
  return mean_difference @ mean_difference + np.trace(cov_a + cov_b - 2 * sqrt)


def test_fid_of_identical_sets_is_zero():
  a = np.random.default_rng(0).normal(size=(300, 16)) * np.arange(1, 17)
  scale = np.trace(np.cov(a, rowvar=False))
  assert abs(sample_quality.frechet_distance(a, a)) < 1e-9 * scale


def test_fid_exact_with_constructed_sample_statistics():
  # Rows +-c e_i have mean 0 and sample covariance 2 c^2 / (4 - 1) I = I for
  # c^2 = 3/2, so mu + z L^T has sample mean mu and covariance L L^T exactly.
  # Non-commuting 2x2 covariances: Tr (S_a S_b)^{1/2} = sqrt(t + 2 sqrt(d))
  # with t = Tr(S_a S_b) and d = det(S_a S_b) (the eigenvalues of S_a S_b are
  # l1, l2 with l1 + l2 = t, l1 l2 = d).
  c = math.sqrt(1.5)
  z = np.array([[c, 0.0], [-c, 0.0], [0.0, c], [0.0, -c]])
  l_a, l_b = np.array([[2.0, 0.0], [0.5, 1.0]]), np.array([[0.3, -1.2], [0.8, 0.4]])
  mu_a, mu_b = np.array([1.0, -2.0]), np.array([0.5, 0.5])
  cov_a, cov_b = l_a @ l_a.T, l_b @ l_b.T
  t = np.trace(cov_a @ cov_b)
  d = np.linalg.det(cov_a) * np.linalg.det(cov_b)
  expected = (np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
              - 2 * math.sqrt(t + 2 * math.sqrt(d)))
  fid = sample_quality.frechet_distance(mu_a + z @ l_a.T, mu_b + z @ l_b.T)
  assert fid == pytest.approx(expected, rel=1e-12)


def test_fid_of_diagonal_gaussians_matches_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 0.0, 1.0])
  var1, var2 = np.array([1.0, 4.0, 0.25, 1.0]), np.array([2.0, 1.0, 0.25, 9.0])
  n = 200_000
  a = mu1 + np.sqrt(var1) * rng.normal(size=(n, 4))
  b = mu2 + np.sqrt(var2) * rng.normal(size=(n, 4))
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
  # Sampling error of the mean and covariance terms: O(1/sqrt(n)) relative,
  # -0.2% to -0.6% over seeds 0-4.
  assert sample_quality.frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_fid_matches_the_sqrtm_formula_on_random_features():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
  b = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) + 0.3
  assert sample_quality.frechet_distance(a, b) == pytest.approx(
      _fid_with_sqrtm(a, b), rel=1e-9)


def test_fid_with_singular_covariances():
  # Fewer samples than dimensions: both covariances have rank 9 of 40.
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(10, 40)), rng.normal(size=(10, 40)) + 0.1
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  # Tr (S_a S_b)^{1/2} from the eigenvalues of S_b^{1/2} S_a S_b^{1/2}.
  eigenvalues, vectors = np.linalg.eigh(cov_b)
  sqrt_b = (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T
  trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(sqrt_b @ cov_a @ sqrt_b), 0, None)).sum()
  expected = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a) + np.trace(cov_b)
              - 2 * trace_sqrt)
  assert sample_quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
  assert abs(sample_quality.frechet_distance(a, a)) < 1e-12 * np.trace(cov_a)


@pytest.mark.parametrize("metric", [
    sample_quality.frechet_distance, sample_quality.kernel_inception_distance])
def test_distances_reject_bad_feature_sets(metric):
  a = np.zeros((5, 3))
  with pytest.raises(ValueError, match="at least 2"):
    metric(a[:1], a)
  with pytest.raises(ValueError, match="at least 2"):
    metric(a, a[:1])
  with pytest.raises(ValueError, match="dimensions differ"):
    metric(a, np.zeros((5, 4)))
  with pytest.raises(ValueError, match="NaN"):
    metric(a, np.full((5, 3), np.nan))


# ----------------------------------------------------------------------------
# KID.


def _brute_force_mmd2(x, y):
  m, d = x.shape
  k = lambda u, v: (np.dot(u, v) / d + 1.0) ** 3
  within = sum(k(x[i], x[j]) + k(y[i], y[j])
               for i in range(m) for j in range(m) if i != j)
  between = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  return within / (m * (m - 1)) - 2 * between / m ** 2


def test_unbiased_mmd2_matches_double_loop():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
  expected = _brute_force_mmd2(x, y)
  assert sample_quality.unbiased_mmd2(x, y) == pytest.approx(expected, rel=1e-12)
  # The subset size is capped at 6, so every subset is a permutation of the
  # sets and the MMD^2 does not change.
  kid, kid_std = sample_quality.kernel_inception_distance(
      x, y, num_subsets=3, subset_size=1000)
  assert kid == pytest.approx(expected, rel=1e-12)
  assert kid_std == pytest.approx(0.0, abs=1e-12)


def test_kid_near_zero_for_one_distribution_and_positive_for_a_shift():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
  same, same_std = sample_quality.kernel_inception_distance(
      a, b, num_subsets=20, subset_size=200)
  shifted, _ = sample_quality.kernel_inception_distance(
      a, b + 0.5, num_subsets=20, subset_size=200)
  # Equal distributions: the mean is within one draw's spread of 0 (about
  # 0.006 +- 0.011 here); the shift is about 1.0, ninety times that spread.
  assert abs(same) < same_std
  assert shifted > 50 * same_std


# ----------------------------------------------------------------------------
# Feature extractors.


def test_random_conv_is_deterministic_for_grey_and_rgb():
  rng = np.random.default_rng(0)
  grey = rng.uniform(size=(3, 16, 16, 1)).astype(np.float32)
  first = np.asarray(feature_extractors.make_feature_extractor("random_conv")(grey))
  second = np.asarray(feature_extractors.make_feature_extractor()(grey))
  assert first.shape == (3, 960)
  np.testing.assert_array_equal(first, second)
  rgb = np.repeat(grey, 3, axis=-1)
  np.testing.assert_allclose(feature_extractors.make_feature_extractor()(rgb), first,
                             rtol=1e-6)
  colour = rng.uniform(size=(2, 20, 12, 3)).astype(np.float32)
  assert feature_extractors.make_feature_extractor()(colour).shape == (2, 960)


def test_random_conv_weights_are_pinned():
  # Values of the first run of this extractor; a change here would make new
  # FID/KID numbers incomparable with those already reported.
  ramp = np.linspace(0, 1, 2 * 16 * 16, dtype=np.float32).reshape(2, 16, 16, 1)
  features = np.asarray(feature_extractors.make_feature_extractor()(ramp))
  np.testing.assert_allclose(
      features[:, [0, 100, 500, 959]],
      [[3.4803236e-04, 6.3296765e-02, 2.9567605e-01, 4.7778517e-02],
       [6.4234763e-01, 5.4657793e-01, 4.4859910e-01, 3.0627406e-01]],
      rtol=1e-4, atol=1e-6)


def test_extract_features_pads_the_last_batch():
  images = np.random.default_rng(0).uniform(size=(5, 16, 16, 1))
  extractor = feature_extractors.make_feature_extractor()
  features = feature_extractors.extract_features(images, extractor, batch_size=2)
  assert features.dtype == np.float64 and features.shape == (5, 960)
  # Convolutions over a batch of 2 or of 5 sum in different orders.
  np.testing.assert_allclose(features, extractor(images.astype(np.float32)),
                             rtol=1e-5, atol=1e-6)


def test_sample_quality_on_random_conv_features():
  rng = np.random.default_rng(0)
  real = rng.uniform(size=(40, 16, 16, 1))
  extractor = feature_extractors.make_feature_extractor()
  kwargs = dict(batch_size=16, kid_num_subsets=5, kid_subset_size=20)
  same = sample_quality.sample_quality(real, real, extractor, **kwargs)
  assert set(same) == {"fid", "kid", "kid_std"}
  assert abs(same["fid"]) < 1e-6
  darker = sample_quality.sample_quality(real, 0.5 * real, extractor, **kwargs)
  assert darker["fid"] > 1e-3 and darker["kid"] > 0


def test_unknown_extractor_and_misplaced_weights_are_rejected():
  with pytest.raises(ValueError, match="inception_v3, random_conv"):
    feature_extractors.make_feature_extractor("vgg16")
  with pytest.raises(ValueError, match="no weights_path"):
    feature_extractors.make_feature_extractor("random_conv", "weights.npz")


# ----------------------------------------------------------------------------
# Inception-v3.


def test_inception_state_dict_has_pytorch_fid_names_and_sizes():
  shapes = inception.state_dict_shapes()
  # 94 BasicConv2d layers, each a conv weight and four batch-norm tensors.
  assert len(shapes) == 94 * 5
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
  assert shapes["Mixed_7c.branch3x3dbl_1.bn.running_var"] == (448,)
  conv_weights = sum(math.prod(s) for n, s in shapes.items() if n.endswith("conv.weight"))
  channels = sum(s[0] for n, s in shapes.items() if n.endswith("bn.weight"))
  # torchvision's inception_v3 has 27,161,264 parameters; without AuxLogits
  # (3,326,696) and fc (2,049,000) that leaves conv weights + 2 per channel
  # (bn weight, bias). Keras' InceptionV3(include_top=False), whose batch
  # norms have no scale but a moving mean and variance, has 21,802,784:
  # conv weights + 3 per channel.
  assert conv_weights + 2 * channels == 27_161_264 - 3_326_696 - 2_049_000
  assert conv_weights + 3 * channels == 21_802_784


def _random_inception_state_dict(seed=0):
  """He-scaled random weights with unit batch norms, by PyTorch name."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = math.prod(leaf.shape[:-1])
      return rng.normal(0, math.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0, 0.1, leaf.shape).astype(np.float32)

  shapes = jax.eval_shape(inception.FIDInceptionV3().init, jax.random.key(0),
                          jnp.zeros((1, 75, 75, 3)))
  return inception.state_dict_from_variables(
      jax.tree_util.tree_map_with_path(fill, shapes))


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
  state_dict = _random_inception_state_dict()
  path = tmp_path_factory.mktemp("inception") / "weights.npz"
  # pytorch-fid's state_dict also has the classifier and the batch-norm
  # counters, which the loader ignores.
  np.savez(path, **state_dict, **{"fc.weight": np.zeros((1008, 2048), np.float32),
                                  "Conv2d_1a_3x3.bn.num_batches_tracked": np.int64(0)})
  return path, state_dict


# Features of pytorch-fid 0.3.0's InceptionV3([3]) (torch 2.14, torchvision
# 0.29, CPU) with the weights of `_random_inception_state_dict(seed=0)` on
# `_GREY_IMAGES` repeated to RGB: columns 0, 1, 300, 1000, 1500, 2047, then
# the sum and the sum of squares of all 2048.
_PYTORCH_FID_FEATURES = np.array([
    [2.8811073, 0.21383534, 2.8822784, 1.4283395, 9.633007, 0.0],
    [1.9010346, 0.197704, 2.8716686, 0.90044826, 8.364522, 0.01631382]])
_PYTORCH_FID_SUMS = np.array([3730.3879351015, 3161.2475671127])
_PYTORCH_FID_SQUARED_SUMS = np.array([20102.9561699394, 14498.8336235427])


def _grey_test_images():
  y, x = np.mgrid[0:28, 0:28] / 27
  images = np.stack([0.5 + 0.5 * np.sin(6 * x) * y, (x - y) ** 2])
  return images.astype(np.float32)[..., None]


def test_inception_features_match_pytorch_fid(inception_weights):
  path, _ = inception_weights
  extractor = feature_extractors.make_feature_extractor("inception_v3", str(path))
  images = _grey_test_images()
  features = np.asarray(extractor(images), np.float64)
  assert features.shape == (2, 2048) and np.all(np.isfinite(features))
  # Features reach 19; float32 convolutions in another order differ by ~1e-5.
  np.testing.assert_allclose(features[:, [0, 1, 300, 1000, 1500, 2047]],
                             _PYTORCH_FID_FEATURES, atol=1e-4)
  np.testing.assert_allclose(features.sum(1), _PYTORCH_FID_SUMS, rtol=1e-6)
  np.testing.assert_allclose((features ** 2).sum(1), _PYTORCH_FID_SQUARED_SUMS,
                             rtol=1e-6)
  # The network sees a grey image as its RGB copy.
  np.testing.assert_allclose(extractor(np.repeat(images, 3, -1)), features,
                             rtol=1e-5, atol=1e-5)


def test_inception_variables_round_trip():
  state_dict = _random_inception_state_dict(seed=1)
  variables = inception.variables_from_state_dict(state_dict)
  again = inception.state_dict_from_variables(variables)
  assert again.keys() == state_dict.keys()
  for name, value in state_dict.items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_inception_weights_errors(inception_weights, tmp_path):
  path, state_dict = inception_weights
  with pytest.raises(ValueError, match="convert_inception_weights"):
    feature_extractors.make_feature_extractor("inception_v3")
  with pytest.raises(ValueError, match="does not exist.*convert_inception_weights"):
    feature_extractors.make_feature_extractor("inception_v3", str(tmp_path / "none.npz"))
  not_npz = tmp_path / "weights.pth"
  not_npz.write_bytes(b"\x80\x02not a zip")
  with pytest.raises(ValueError, match="not a readable .npz"):
    feature_extractors.make_feature_extractor("inception_v3", str(not_npz))

  missing = dict(state_dict)
  del missing["Mixed_6b.branch7x7_2.conv.weight"]
  np.savez(tmp_path / "missing.npz", **missing)
  with pytest.raises(ValueError,
                     match=r"missing: Mixed_6b\.branch7x7_2\.conv\.weight\..*convert"):
    feature_extractors.make_feature_extractor("inception_v3", str(tmp_path / "missing.npz"))

  misshaped = dict(state_dict)
  # An HWIO kernel saved without the conversion to PyTorch's OIHW.
  misshaped["Conv2d_1a_3x3.conv.weight"] = np.zeros((3, 3, 3, 32), np.float32)
  np.savez(tmp_path / "misshaped.npz", **misshaped)
  with pytest.raises(ValueError, match=r"Conv2d_1a_3x3\.conv\.weight has shape"):
    feature_extractors.make_feature_extractor("inception_v3", str(tmp_path / "misshaped.npz"))


def _torch_bilinear_resize(image, out_h, out_w):
  """PyTorch's upsample_bilinear2d, align_corners=False, one [H, W] map.

  Output pixel i reads input position max((i + 1/2) in/out - 1/2, 0) and
  interpolates its two neighbours (the upper one clamped to the image).
  PyTorch computes the positions in float32, so does this reference: in
  float64 they differ by up to 3e-5 at 401 -> 299.
  """
  def source(out_size, in_size):
    scale = np.float32(in_size / out_size)
    position = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5))
    position = np.maximum(position - np.float32(0.5), np.float32(0.0))
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, (position - lower).astype(np.float64)

  h0, h1, wh = source(out_h, image.shape[0])
  w0, w1, ww = source(out_w, image.shape[1])
  rows = image[h0] * (1 - wh)[:, None] + image[h1] * wh[:, None]
  return rows[:, w0] * (1 - ww) + rows[:, w1] * ww


@pytest.mark.parametrize("height,width", [(7, 5), (28, 28), (401, 9)])
def test_inception_preprocess_matches_pytorch_fid(height, width):
  image = np.random.default_rng(0).uniform(size=(height, width)).astype(np.float32)
  prepared = np.asarray(inception.preprocess(image[None, :, :, None]))
  assert prepared.shape == (1, 299, 299, 3)
  expected = 2 * _torch_bilinear_resize(image.astype(np.float64), 299, 299) - 1
  for c in range(3):
    np.testing.assert_allclose(prepared[0, :, :, c], expected, atol=2e-6)


def test_inception_pools_treat_padding_like_tensorflow():
  x = jnp.full((1, 5, 5, 1), -2.0)
  # count_include_pad=False: a constant stays constant at the borders.
  np.testing.assert_allclose(inception._average_pool_excluding_padding(x), x)
  # The max pool pads with -inf, not 0.
  np.testing.assert_allclose(inception._max_pool_same(x), x)
