"""Tests of the MS-Flow family and its conditional flow.

Fresh flows are the identity after the logit transform (zero-initialised
coupling outputs, identity actnorms), which would make most checks vacuous,
so every test that is about the learned layers perturbs *all* parameters
with numpy noise first. Random arrays come from numpy rather than
jax.random: compiling a threefry sampler per new shape costs ~1 s on CPU.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats


from msdr_jax import losses
from msdr_jax import steps
from msdr_jax.models import conditioning as conditioning_lib
from msdr_jax.families import ms_flow as flow
from msdr_jax.models import flow as flow_lib


def _cond(seed, batch, image_shape, code_dim=3):
  rs = np.random.RandomState(seed)
  logits = rs.randn(batch, *image_shape).astype(np.float32) * 2
  return conditioning_lib.Conditioning(
      code=jnp.asarray(rs.randn(batch, code_dim).astype(np.float32)),
      logits=jnp.asarray(logits),
      image=jnp.asarray(1 / (1 + np.exp(-logits))),
  )


def _images(seed, batch, image_shape, num_levels):
  rs = np.random.RandomState(seed)
  levels = rs.randint(0, num_levels, (batch, *image_shape)).astype(np.float32)
  return jnp.asarray(levels / np.float32(num_levels - 1))


def _perturb(params, seed, scale=0.1):
  """params + scale * N(0, 1) noise on every leaf, so no layer is trivial."""
  rs = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
      lambda p: jnp.asarray(np.asarray(p) + (scale * rs.randn(*p.shape)).astype(p.dtype)),
      params)


def _family(conditioning="image_and_code", image_shape=(4, 4, 1), num_levels=256,
            num_couplings=3, hidden_features=8, base="gaussian"):
  return flow.Flow(
      image_shape=image_shape, conditioning=conditioning, num_levels=num_levels,
      num_couplings=num_couplings, hidden_features=hidden_features,
      logit_alpha=0.05, sample_temperature=0.7, base=base)


def _setup(family, batch=2, seed=0, perturb=True):
  cond = _cond(seed, batch, family.image_shape)
  images = _images(seed + 1, batch, family.image_shape, family.num_levels)
  params = steps.jit_run_once(family.init)(jax.random.PRNGKey(seed), cond, images)
  if perturb:
    params = _perturb(params, seed + 2)
  return params, cond, images


def test_from_config_reads_the_flow_section():
  stage2 = ml_collections.ConfigDict(dict(
      conditioning="code",
      flow=dict(num_levels=2, num_couplings=5, hidden_features=16, logit_alpha=0.01,
                sample_temperature=0.8, base="stage_one")))
  family = flow.Flow.from_config(stage2, [64, 64, 1], "bernoulli")
  assert family == flow.Flow((64, 64, 1), "code", 2, 5, 16, 0.01, 0.8, "stage_one")
  assert flow.Flow.config_error(stage2, "bernoulli") is None
  assert "Use --config.stage2.flow.base=gaussian" in flow.Flow.config_error(stage2, "gaussian")
  stage2.flow.num_levels = 256
  assert "num_levels=2, now 256" in flow.Flow.config_error(stage2, "bernoulli")


def test_squeeze_and_channel_partitions_are_inverse_permutations():
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  squeezed = flow_lib.squeeze(x)
  assert squeezed.shape == (2, 2, 3, 12)
  # Channel (dy * 2 + dx) * C + c of cell (i, j) is pixel (2i + dy, 2j + dx, c).
  np.testing.assert_array_equal(squeezed[1, 1, 2, (1 * 2 + 0) * 3 + 2], x[1, 3, 4, 2])
  np.testing.assert_array_equal(flow_lib.unsqueeze(squeezed), x)
  for kind, swap in flow_lib._PARTITIONS:
    a, b = flow_lib.split_channels(squeezed, kind, swap)
    assert a.shape == b.shape == (2, 2, 3, 6)
    np.testing.assert_array_equal(flow_lib.merge_channels(a, b, kind, swap), squeezed)


@pytest.mark.parametrize("base", flow_lib.BASES)
def test_log_det_is_the_log_abs_determinant_of_the_jacobian(base):
  family = _family(num_levels=2, base=base)
  params, cond, _ = _setup(family)
  rs = np.random.RandomState(5)
  v = jnp.asarray(rs.uniform(0.02, 0.98, (2, *family.image_shape)), jnp.float32)
  _, log_det = jax.jit(family.forward)(params, cond, v)
  if base == "stage_one":
    _, first_layer_only = jax.jit(flow_lib.bernoulli_cdf_transform)(v, cond.logits)
  else:
    _, first_layer_only = jax.jit(flow_lib.logit_transform)(v, family.logit_alpha)
  # The couplings and actnorms contribute, or the test could not fail.
  assert np.all(np.abs(log_det - first_layer_only) > 0.5)

  def flat_forward(flat, cond_i):
    w, _ = family.forward(params, cond_i, flat.reshape(1, *family.image_shape))
    return w.reshape(-1)

  jacobian_of = jax.jit(jax.jacfwd(flat_forward))
  for i in range(2):
    cond_i = jax.tree_util.tree_map(lambda a: np.asarray(a)[i:i + 1], cond)
    jacobian = np.asarray(jacobian_of(np.asarray(v)[i].reshape(-1), cond_i))
    assert jacobian.shape == (16, 16)
    sign, expected = np.linalg.slogdet(jacobian)
    assert sign != 0
    np.testing.assert_allclose(log_det[i], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("conditioning", conditioning_lib.CONDITIONINGS)
def test_forward_and_inverse_are_inverses(conditioning):
  family = _family(conditioning, image_shape=(8, 8, 3))
  params, cond, _ = _setup(family, batch=3)
  rs = np.random.RandomState(7)
  v = jnp.asarray(rs.uniform(0.0, 1.0, (3, 8, 8, 3)), jnp.float32)
  w, _ = family.forward(params, cond, v)
  assert w.shape == (3, 4, 4, 12)
  np.testing.assert_allclose(family.inverse(params, cond, w), v, atol=1e-5)
  # The other way round from arbitrary latents: looser, because a latent can
  # map to v next to (or beyond) the ends of (0, 1), where float32 keeps only
  # ~4 digits of 1 - sigmoid(s) and the logit transform amplifies that.
  latents = jnp.asarray(rs.randn(3, 4, 4, 12), jnp.float32)
  back, _ = family.forward(params, cond, family.inverse(params, cond, latents))
  np.testing.assert_allclose(back, latents, atol=2e-3)


@pytest.mark.parametrize("num_levels, base", [(2, "gaussian"), (256, "gaussian"),
                                              (2, "stage_one")])
def test_decode_of_encode_reproduces_the_discrete_image(num_levels, base):
  family = _family(image_shape=(8, 8, 1), num_levels=num_levels, base=base)
  params, cond, images = _setup(family, batch=4)
  latents = family.encode(params, cond, images)
  assert latents.shape == (4, 4, 4, 4)
  np.testing.assert_array_equal(family.decode(params, cond, latents), images)
  # And the latents are not just the (perturbed-away) identity's.
  fresh = family.init(jax.random.PRNGKey(0), cond, images)
  assert not np.allclose(family.encode(fresh, cond, images), latents, atol=1e-2)


def test_bits_per_dim_of_the_identity_flow_match_a_hand_computation():
  # A fresh flow is the logit transform plus a squeeze, so
  # log p(v) = sum_i log N(s_i; 0, 1) + log(1 - 2a) - log p_i - log(1 - p_i).
  num_levels, alpha = 2, 0.05
  family = _family(image_shape=(8, 8, 1), num_levels=num_levels)
  params, cond, images = _setup(family, batch=3, perturb=False)
  rng = jax.random.PRNGKey(3)
  loss, metrics = family.loss(params, cond, images, rng)

  noise = np.asarray(jax.random.uniform(rng, images.shape, images.dtype), np.float64)
  v = (np.asarray(images, np.float64) * (num_levels - 1) + noise) / num_levels
  p = alpha + (1 - 2 * alpha) * v
  s = np.log(p / (1 - p))
  log_p = (stats.norm.logpdf(s) + np.log(1 - 2 * alpha) - np.log(p * (1 - p)))
  nll = -log_p.reshape(3, -1).sum(-1)
  dims = 64
  bits = (nll + dims * np.log(num_levels)) / (dims * np.log(2))
  np.testing.assert_allclose(loss, nll.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["nll"], nll.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["bits_per_dim"], bits.mean(), rtol=1e-5)


def test_a_fresh_flow_on_stage_ones_base_has_stage_ones_likelihood():
  # For every image and every dequantisation draw: bits/dim of the identity
  # flow == stage one's Bernoulli -log P(x | z) / (D log 2), like for like.
  family = _family(image_shape=(8, 8, 1), num_levels=2, base="stage_one")
  params, cond, images = _setup(family, batch=3, perturb=False)
  cond = cond._replace(logits=cond.logits * 8)  # Confident pixels, up to |logit| ~ 50.
  stage_one_bits = np.asarray(
      losses.bernoulli_nll(cond.logits, images)) / (64 * math.log(2))
  for seed in range(3):
    noise = jax.random.uniform(jax.random.PRNGKey(seed), images.shape)
    v = family.dequantize(images, noise)
    bits = (64 * math.log(2) - family.log_prob(params, cond, v)) / (64 * math.log(2))
    np.testing.assert_allclose(bits, stage_one_bits, rtol=1e-5)
  _, metrics = family.loss(params, cond, images, jax.random.PRNGKey(4))
  np.testing.assert_allclose(metrics["bits_per_dim"], stage_one_bits.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["stage1_bits_per_dim"], stage_one_bits.mean(), rtol=1e-5)


def test_stage_ones_cdf_transform_inverts_in_both_tails():
  rs = np.random.RandomState(8)
  logits = jnp.asarray(rs.choice([-60.0, -20.0, -1.0, 0.0, 2.0, 20.0, 60.0], (4, 64)),
                       jnp.float32)
  v = jnp.asarray(rs.uniform(0.0, 1.0, (4, 64)), jnp.float32)
  v = v.at[0, :4].set(jnp.asarray([0.0, 0.5, 0.25, 0.75]))  # Edges and centres.
  s, _ = flow_lib.bernoulli_cdf_transform(v, logits)
  assert np.all(np.isfinite(s))
  # Exactly standard normal under stage one: s's quantile is F(v).
  q = 1 / (1 + np.exp(np.asarray(logits, np.float64)))
  vv = np.asarray(v, np.float64)
  cdf = np.where(vv < 0.5, 2 * vv * q, q + (2 * vv - 1) * (1 - q))
  fine = (cdf > 1e-30) & (cdf < 1 - 1e-6)
  np.testing.assert_allclose(stats.norm.cdf(np.asarray(s, np.float64))[fine], cdf[fine],
                             rtol=1e-4, atol=1e-7)
  back = flow_lib.inverse_bernoulli_cdf_transform(s, logits)
  # Each bin's centre and interior come back to well within the bin.
  np.testing.assert_allclose(back, v, atol=2e-3)
  np.testing.assert_array_equal(back >= 0.5, v >= 0.5)


def test_density_integrates_to_the_base_mass_of_the_flows_range():
  """Integral of p(v | c) over (0, 1)^D == P_{w ~ N(0, I)}(f^-1(w) in (0, 1)^D).

  The logit transform maps (0, 1) onto |s| < logit(1 - alpha), so the
  density is sub-normalised; its mass is the base probability of the flow's
  range. For the identity flow that is (2 Phi(logit(1 - alpha)) - 1)^D; for a
  perturbed flow it is estimated by sampling w and running the inverse.
  D = 4 (a 2x2x1 image) keeps a product Gauss-Legendre rule cheap; the density
  is analytic on [0, 1]^4, so 24 nodes per axis are accurate far below the
  Monte Carlo error.
  """
  family = _family(image_shape=(2, 2, 1), num_couplings=2)
  fresh, cond, _ = _setup(family, batch=1, perturb=False)
  perturbed = _perturb(fresh, 4)
  nodes, weights = np.polynomial.legendre.leggauss(24)
  nodes, weights = (nodes + 1) / 2, weights / 2  # On [0, 1].
  grid = np.stack(np.meshgrid(*[nodes] * 4, indexing="ij"), -1).reshape(-1, 2, 2, 1)
  grid = jnp.asarray(grid, jnp.float32)
  grid_weights = np.einsum("i,j,k,l->ijkl", *[weights] * 4).reshape(-1)

  def integrate(params):
    density = np.asarray(jnp.exp(log_prob(params, batch_cond, grid)), np.float64)
    return float(density @ grid_weights)

  batch_cond = jax.tree_util.tree_map(
      lambda a: jnp.broadcast_to(a, (grid.shape[0], *a.shape[1:])), cond)
  log_prob = jax.jit(family.log_prob)

  bound = math.log((1 - 0.05) / 0.05)
  identity_mass = (2 * stats.norm.cdf(bound) - 1) ** 4
  np.testing.assert_allclose(integrate(fresh), identity_mass, rtol=1e-4)

  integral = integrate(perturbed)
  latents = jnp.asarray(np.random.RandomState(6).randn(grid.shape[0], 1, 1, 4), jnp.float32)
  v = jax.jit(family.inverse)(perturbed, batch_cond, latents)
  mass = float(jnp.mean(jnp.all((v > 0) & (v < 1), axis=(1, 2, 3))))
  # The perturbation moves the mass measurably away from the identity's.
  assert abs(mass - identity_mass) > 0.02
  # Monte Carlo standard error < 1e-3 at 330k samples.
  np.testing.assert_allclose(integral, mass, atol=3e-3)


@pytest.mark.parametrize("conditioning", conditioning_lib.CONDITIONINGS)
def test_forward_depends_on_exactly_the_chosen_conditioning(conditioning):
  family = _family(conditioning, image_shape=(8, 8, 1))
  params, cond, images = _setup(family)
  v = family.dequantize(images, 0.5)
  w, log_det = family.forward(params, cond, v)
  other = _cond(11, 2, family.image_shape)
  new_code = cond._replace(code=other.code)
  new_image = cond._replace(image=other.image, logits=other.logits)
  for changed, used in ((new_code, conditioning_lib.uses_code(conditioning)),
                        (new_image, conditioning_lib.uses_image(conditioning))):
    w2, log_det2 = family.forward(params, changed, v)
    if used:
      assert np.abs(w2 - w).max() > 1e-2
      assert np.abs(log_det2 - log_det).min() > 1e-3
    else:
      np.testing.assert_array_equal(w2, w)


def test_full_size_shapes_loss_and_gradients():
  family = flow.Flow((64, 64, 1), "image_and_code", num_levels=2, num_couplings=8,
                     hidden_features=32, logit_alpha=0.05, sample_temperature=0.5)
  cond = _cond(0, 2, family.image_shape, code_dim=10)
  images = _images(1, 2, family.image_shape, 2)
  params = family.init(jax.random.PRNGKey(0), cond, images)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(family.loss, has_aux=True))(
      params, cond, images, jax.random.PRNGKey(1))
  assert set(metrics) >= {"loss", "nll", "bits_per_dim"}
  assert np.isfinite(loss) and all(np.isfinite(m) for m in metrics.values())
  # The identity flow on binary data: ~1.4 bits/dim, and at most 1 + the logit
  # transform's mismatch; it must be a sane positive figure.
  assert 0.5 < metrics["bits_per_dim"] < 3
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  # At zero-initialised outputs the gradient reaches the output layers.
  assert np.abs(grads["couplings_0"]["net"]["conv_out"]["kernel"]).max() > 0

  latents = family.encode(params, cond, images)
  assert latents.shape == (2, 32, 32, 4)
  decoded = family.decode(params, cond, latents)
  assert decoded.shape == (2, 64, 64, 1)
  np.testing.assert_array_equal(decoded, images)
  samples = family.sample_latents(params, cond, jax.random.PRNGKey(2))
  assert samples.shape == (2, 32, 32, 4)
  assert 0.3 < float(jnp.std(samples)) < 0.7  # sample_temperature = 0.5.
  sampled_images = family.decode(params, cond, samples)
  assert set(np.unique(sampled_images)) <= {0.0, 1.0}
