"""The frozen-stage-one interface, the four families and the combined model."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dsprites
from msdr_jax import configuration
from msdr_jax import data
from msdr_jax import losses
from msdr_jax import multi_stage
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps

from msdr_jax.families import ms_gan
from msdr_jax.families import ms_gmm
from msdr_jax.models import conditioning as conditioning_lib

FAMILIES = ("vae", "flow", "gan", "gmm")
SHAPE = (64, 64, 1)


def _config(family="vae", conditioning="image_and_code"):
  config = dsprites.get_config("preset=tiny")
  config.stage2.family = family
  config.stage2.conditioning = conditioning
  config.stage2.optimizer.learning_rate = 1e-3
  return config


# Every test's stage one is the tiny preset's.
STAGE_ONE = stage_one_lib.DisentanglingVAE.from_config(_config().stage1, SHAPE)


@functools.cache  # Built once per seed.
def _stage_one(seed=0):
  return steps.jit_run_once(STAGE_ONE.init)(jax.random.PRNGKey(seed))


def _model(config):
  return multi_stage.MultiStageModel.from_config(config, STAGE_ONE)


def _create_stage_two_state(config, stage1):
  return steps.create_train_state(
      _model(config).init, steps.make_optimizer(config.stage2.optimizer),
      jax.random.PRNGKey(2), stage1)


@functools.cache  # Built once per family, on `_stage_one()`.
def _stage_two_state(family):
  return _create_stage_two_state(_config(family), _stage_one())


@functools.cache
def _images(num=4, seed=1):
  images, _ = data.get_dataset(_config().data).sample(jax.random.PRNGKey(seed), num)
  return images


def _perturbed(params, seed, scale=0.05):
  """Moves every parameter off its initial value (zero-initialised layers too).

  Drawn with NumPy: JAX would compile a random-number program for every
  parameter shape, most of this file's time.
  """
  rs = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
      lambda p: jnp.asarray((np.asarray(p) + scale * rs.randn(*p.shape)).astype(p.dtype)),
      params)


def _condition(model, stage1, images):
  """c = (z, dec(z)) as one program: run eagerly, every layer compiles alone."""
  return jax.jit(functools.partial(multi_stage.condition, model.stage1))(stage1, images)


@pytest.mark.parametrize("family", FAMILIES)
def test_stage_one_gets_no_gradient_and_stays_bit_identical(family):
  config = _config(family)
  stage1 = _stage_one()
  stage1_copy = jax.tree_util.tree_map(np.array, stage1)
  state = _stage_two_state(config.stage2.family)
  model = _model(config)
  images = _images()

  if family == "vae":  # `multi_stage.condition` stops the gradient for every family.
    stage1_grads = jax.jit(jax.grad(lambda p1: model.loss(
        state.params, p1, images, jax.random.PRNGKey(3))[0]))(stage1)
    assert all(not np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(stage1_grads))

  step = jax.jit(steps.make_train_step(_model(config).loss))
  before = jax.tree_util.tree_map(np.array, state.params)
  for i in range(3):
    state, metrics = step(state, stage1, images, jax.random.PRNGKey(i))
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  jax.tree_util.tree_map(np.testing.assert_array_equal, stage1, stage1_copy)
  changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b),
                                   before, jax.tree_util.tree_map(np.array, state.params))
  assert any(jax.tree_util.tree_leaves(changed))


def test_another_stage_one_changes_the_conditioning_without_recompiling():
  config = _config("vae")
  first, second = _stage_one(0), _stage_one(1)
  state = _stage_two_state(config.stage2.family)
  step = jax.jit(steps.make_train_step(_model(config).loss))
  images, rng = _images(), jax.random.PRNGKey(3)
  _, with_first = step(state, first, images, rng)
  _, with_second = step(state, second, images, rng)
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert float(with_first["recon"]) != float(with_second["recon"])
  model = _model(config)
  condition = jax.jit(functools.partial(multi_stage.condition, model.stage1))
  cond_first, cond_second = condition(first, images), condition(second, images)
  assert not np.allclose(cond_first.image, cond_second.image)


@pytest.mark.parametrize("family", FAMILIES)
def test_combined_model_shapes(family):
  config = _config(family)
  stage1 = _stage_one()
  state = _stage_two_state(config.stage2.family)
  params = {"stage1": stage1, "stage2": state.params}
  model = _model(config)
  images = _images(3)
  # Shapes by abstract evaluation (nothing compiles); the values of these
  # functions are tested below and in the evaluation's tests.
  codes, latents = jax.eval_shape(model.encode, params, images)
  assert codes.shape == (3, 10) and latents.shape[0] == 3
  assert jax.eval_shape(model.reconstruct, params, images).shape == images.shape
  grid = jax.eval_shape(model.traverse, params, images[0], jnp.linspace(-2.0, 2.0, 4))
  assert grid.shape == (10, 4, *SHAPE)
  samples = jax.jit(model.sample, static_argnums=2)(params, jax.random.PRNGKey(0), 5)
  assert samples.shape == (5, *SHAPE)
  assert 0.0 <= float(samples.min()) and float(samples.max()) <= 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_code_is_stage_one_mean_and_batches_are_independent(family):
  config = _config(family)
  stage1 = _stage_one()
  state = _stage_two_state(config.stage2.family)
  params = {"stage1": stage1, "stage2": _perturbed(state.params, 4)}
  model = _model(config)
  images = _images(4)
  codes, _ = jax.jit(model.encode)(params, images)
  mean, _ = jax.jit(STAGE_ONE.encode)(stage1, images)
  np.testing.assert_array_equal(codes, mean)
  reconstruct = jax.jit(model.reconstruct)
  together = reconstruct(params, images)
  alone = jnp.concatenate([reconstruct(params, images[i:i + 1]) for i in range(4)])
  np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_untrained_refiner_reproduces_stage_one(family):
  # The correction starts at zero: stage two can only add to stage one.
  config = _config(family)
  stage1 = _stage_one()
  state = _stage_two_state(config.stage2.family)
  params = {"stage1": stage1, "stage2": state.params}
  model = _model(config)
  images = _images()
  cond = _condition(model, stage1, images)
  latents = jax.jit(model.sample_latents)(params, cond.code, jax.random.PRNGKey(5))
  np.testing.assert_allclose(jax.jit(model.decode)(params, cond.code, latents), cond.image,
                             atol=1e-6)


def test_traverse_varies_one_code_and_holds_w():
  config = _config("vae")
  stage1 = _stage_one()
  state = _stage_two_state(config.stage2.family)
  params = {"stage1": stage1, "stage2": _perturbed(state.params, 4)}
  model = _model(config)
  image = _images(1)[0]
  values = jnp.array([-1.5, 0.5])
  grid = jax.jit(model.traverse)(params, image, values)
  code, latent = jax.jit(model.encode)(params, image[None])
  decode = jax.jit(model.decode)
  for j in (0, 7):
    for v, value in enumerate(values):
      expected = decode(params, code.at[0, j].set(value), latent)[0]
      np.testing.assert_allclose(grid[j, v], expected, atol=1e-5)


def test_gan_players_follow_their_own_objectives():
  # One scalar loss, but each player's gradient is its own objective's: the
  # adversarial weight moves the generator only, the R1 penalty the
  # discriminator only.
  stage1 = _stage_one()
  images, rng = _images(), jax.random.PRNGKey(7)
  grads = {}
  for adversarial_weight, r1_weight in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)):
    config = _config("gan")
    config.stage2.gan.adversarial_weight = adversarial_weight
    config.stage2.gan.r1_weight = r1_weight
    model = _model(config)
    params = _perturbed(_create_stage_two_state(config, stage1).params, 4)
    grads[adversarial_weight, r1_weight] = jax.jit(
        jax.grad(lambda p: model.loss(p, stage1, images, rng)[0]))(params)
  for changed, moved in (((1.0, 0.0), "generator"), ((0.0, 1.0), "discriminator")):
    for player in ("generator", "discriminator", "encoder"):
      same = jax.tree_util.tree_map(lambda a, b: np.array_equal(a, b),
                                    grads[0.0, 0.0][player], grads[changed][player])
      assert all(jax.tree_util.tree_leaves(same)) == (player != moved), (changed, player)


def test_gan_losses_are_hinge_and_non_saturating():
  logits = jnp.asarray([-2.0, -0.5, 0.0, 0.5, 2.0])
  d_real, d_fake, g = ms_gan.ADVERSARIAL_LOSSES["hinge"]
  np.testing.assert_allclose(d_real(logits), [3.0, 1.5, 1.0, 0.5, 0.0])
  np.testing.assert_allclose(d_fake(logits), [0.0, 0.5, 1.0, 1.5, 3.0])
  np.testing.assert_allclose(g(logits), -logits)
  d_real, d_fake, g = ms_gan.ADVERSARIAL_LOSSES["non_saturating"]
  np.testing.assert_allclose(d_real(logits), -np.log(1 / (1 + np.exp(-logits))), rtol=1e-6)
  np.testing.assert_allclose(d_fake(logits), -np.log(1 - 1 / (1 + np.exp(-logits))),
                             rtol=1e-6)
  np.testing.assert_allclose(g(logits), d_real(logits))


def test_gan_with_prior_fakes_judges_samples_of_prior_codes_on_the_image_alone():
  config = _config("gan")
  config.stage2.gan.fake_codes = "prior"
  stage1 = _stage_one()
  model = _model(config)
  params = _perturbed(_create_stage_two_state(config, stage1).params, 4)
  assert "Dense_0" not in params["discriminator"]  # It sees no code.
  images, rng = _images(), jax.random.PRNGKey(3)
  loss, metrics = jax.jit(model.loss)(params, stage1, images, rng)
  # By hand: codes z ~ N(0, I) from the first half of the key, stage one's
  # conditioning of them, and the family's loss with the second half; with
  # the batch's own codes for contrast. One program: run eagerly, each
  # operation would compile on its own.
  @jax.jit
  def by_hand(params, stage1, images, rng):
    code_rng, family_rng = jax.random.split(rng)
    codes = jax.random.normal(code_rng, (len(images), STAGE_ONE.latent_dim))
    cond = multi_stage.condition(STAGE_ONE, stage1, images)
    prior_cond = multi_stage.condition_on_codes(STAGE_ONE, stage1, codes)
    return (model.stage2.loss(params, cond, images, family_rng, prior_cond=prior_cond),
            model.stage2.loss(params, cond, images, family_rng)[1])

  (expected, expected_metrics), with_batch_codes = by_hand(params, stage1, images, rng)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["generator_adversarial"]),
                             float(expected_metrics["generator_adversarial"]), rtol=1e-5)
  assert not np.isclose(float(with_batch_codes["generator_adversarial"]),
                        float(expected_metrics["generator_adversarial"]), rtol=1e-3)


def test_gan_r1_penalty_is_the_squared_input_gradient_of_the_critic():
  config = _config("gan")
  config.stage2.gan.r1_weight = 2.0
  stage1 = _stage_one()
  model = _model(config)
  params = _perturbed(_create_stage_two_state(config, stage1).params, 4)
  images = _images()
  cond = _condition(model, stage1, images)
  _, metrics = jax.jit(model.stage2.loss)(params, cond, images, jax.random.PRNGKey(3))
  # Each image's critic on its own, differentiated with respect to that image.
  critic = lambda x, c: model.stage2.discriminator.apply(
      {"params": params["discriminator"]}, x[None], jax.tree.map(lambda a: a[None], c)).sum()
  gradients = jax.jit(jax.vmap(jax.grad(critic)))(images, cond)
  squared_norms = np.sum(np.asarray(gradients) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(float(metrics["r1"]), np.mean(squared_norms), rtol=1e-5)


def test_discriminator_learning_rate_scales_its_adam_updates_only():
  config = _config("gan")
  config.stage2.gan.discriminator_learning_rate = 4.0
  stage1 = _stage_one()
  model = _model(config)
  params = _create_stage_two_state(config, stage1).params
  grads = jax.tree.map(lambda p: np.full(p.shape, 0.3, p.dtype), params)
  scaled = steps.make_optimizer(config.stage2.optimizer, model.stage2.update_scales)
  plain = steps.make_optimizer(config.stage2.optimizer)
  first_update = lambda optimizer: jax.jit(
      lambda p: optimizer.update(grads, optimizer.init(p), p)[0])(params)
  ours, theirs = first_update(scaled), first_update(plain)
  for key in ("generator", "encoder"):
    jax.tree.map(np.testing.assert_array_equal, ours[key], theirs[key])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, 4.0 * np.asarray(b), rtol=1e-6),
               ours["discriminator"], theirs["discriminator"])


def test_gmm_likelihood_matches_a_direct_mixture_density():
  config = _config("gmm")
  config.stage2.gmm.num_components = 3
  config.stage2.gmm.assignment = "posterior"  # Maximum likelihood: loss = NLL.
  stage1 = _stage_one()
  model = _model(config)
  params = _perturbed(
      _create_stage_two_state(config, stage1).params, 4)
  images = _images(2)
  cond = _condition(model, stage1, images)
  loss, _ = jax.jit(model.stage2.loss)(params, cond, images, None)
  logits, log_weights, scales = jax.jit(model.stage2.mixture.apply)({"params": params}, cond)
  means = np.asarray(jax.nn.sigmoid(logits), np.float64)
  x = np.asarray(images, np.float64)
  nll = []
  for b in range(2):
    log_terms = [
        float(log_weights[b, k])
        + np.sum(-0.5 * ((x[b] - means[b, k]) / float(scales[k])) ** 2
                 - np.log(float(scales[k])) - 0.5 * np.log(2 * np.pi))
        for k in range(3)
    ]
    nll.append(-np.logaddexp.reduce(log_terms))
  np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-5)
  # Trained with balanced assignments, the loss is EM's with them; the
  # likelihood (metrics["nll"]) stays the exact one.
  balanced_family = dataclasses.replace(model.stage2, assignment="balanced")
  log_joint = jax.jit(model.stage2.log_joint)(params, cond, images)
  shared = jax.jit(ms_gmm.balanced_assignments)(log_joint)
  balanced, metrics = jax.jit(balanced_family.loss)(params, cond, images, None)
  np.testing.assert_allclose(float(balanced), -np.mean(np.sum(shared * log_joint, -1)),
                             rtol=1e-5)
  np.testing.assert_allclose(float(metrics["nll"]), np.mean(nll), rtol=1e-5)
  chosen = jax.jit(model.stage2.encode)(params, cond, images)
  np.testing.assert_array_equal(chosen.sum(-1), 1.0)
  k = int(np.argmax(chosen[0]))
  np.testing.assert_allclose(jax.jit(model.stage2.decode)(params, cond, chosen)[0], means[0, k],
                             atol=1e-6)


def test_balanced_assignments_share_the_batch_evenly_and_follow_preferences():
  # Every image prefers component 0 by far: shared out evenly all the same.
  one_sided = jnp.asarray([[0.0, -500.0, -900.0]] * 6)
  shared = np.asarray(ms_gmm.balanced_assignments(one_sided))
  np.testing.assert_allclose(shared.sum(1), 1.0, atol=1e-5)
  np.testing.assert_allclose(shared.sum(0), 2.0, atol=1e-4)
  # Preferences that already balance are followed: image i to component i % 3.
  rs = np.random.RandomState(0)
  preferred = np.full((6, 3), -300.0) + rs.randn(6, 3)
  preferred[np.arange(6), np.arange(6) % 3] = 0.0
  shared = np.asarray(ms_gmm.balanced_assignments(jnp.asarray(preferred)))
  np.testing.assert_array_equal(shared.argmax(1), np.arange(6) % 3)
  assert shared.max(1).min() > 0.99


def test_vae_loss_is_the_negative_elbo():
  config = _config("vae")
  stage1 = _stage_one()
  model = _model(config)
  family = model.stage2
  params = _perturbed(
      _create_stage_two_state(config, stage1).params, 4)
  images, rng = _images(), jax.random.PRNGKey(9)
  cond = _condition(model, stage1, images)
  family_loss = jax.jit(family.loss)
  loss, metrics = family_loss(params, cond, images, rng)

  @jax.jit
  def by_hand():
    mean, log_var = family.encoder.apply({"params": params["encoder"]}, images, cond)
    latents = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape)
    logits, _ = family.refiner.apply({"params": params["decoder"]}, cond, latents)
    kl = 0.5 * jnp.sum(mean**2 + jnp.exp(log_var) - log_var - 1, (1, 2, 3))
    return mean.shape, losses.bernoulli_nll(logits, images), kl

  latent_shape, expected_recon, expected_kl = by_hand()
  assert latent_shape == (len(images), 16, 16, 1)  # The default map of local latents.
  expected_recon, expected_kl = np.asarray(expected_recon), np.asarray(expected_kl)
  np.testing.assert_allclose(float(metrics["recon"]), expected_recon.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(loss), np.mean(expected_recon + expected_kl), rtol=1e-5)
  # The KL weight's warm-up: 1e-4 at step 0, 1e-2 half-way, 1 from its end on.
  warmup = config.stage2.vae.kl_warmup_steps
  for step, weight in ((0, 1e-4), (warmup // 2, 1e-2), (warmup, 1.0), (10 * warmup, 1.0)):
    loss, metrics = family_loss(params, cond, images, rng, np.int32(step))
    np.testing.assert_allclose(float(metrics["kl_weight"]), weight, rtol=1e-5)
    np.testing.assert_allclose(
        float(loss), np.mean(expected_recon + weight * expected_kl), rtol=1e-5)


@pytest.mark.parametrize("conditioning", ["image", "code"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_conditioning_keeps_a_path_from_z(family, conditioning):
  config = _config(family, conditioning)
  # Perturbed, so that stage one's output moves visibly with z: MS-Flow's
  # output is discrete, and an initialised stage one hardly depends on z.
  stage1 = _perturbed(_stage_one(), 3, scale=0.2)
  model = _model(config)
  params = _perturbed(
      _create_stage_two_state(config, stage1).params, 4,
      scale=0.2)
  images = _images(2)
  full = {"stage1": stage1, "stage2": params}
  codes, latents = jax.jit(model.encode)(full, images)
  decode = jax.jit(model.decode)
  moved = decode(full, codes + 3.0, latents)
  assert not np.allclose(decode(full, codes, latents), moved, atol=1e-4)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("stage2.conditioning", "none", "without a conditioning path it would model"),
        ("stage2.family", "diffusion", "config.stage2.family='diffusion' is unknown"),
        ("stage2.vae.beta", -1.0, "config.stage2.vae.beta=-1.0 must be >= 0"),
        ("stage2.vae.latent_resolution", 12,
         r"latent_resolution=12 must be 0 \(a vector\) or one of the U-Net's resolutions "
         r"\[4, 8, 16, 32\]"),
        ("stage2.gmm.num_components", 0, "must be >= 1"),
        ("stage2.gmm.assignment", "hard", r"must be one of \['balanced', 'posterior'\]"),
        ("stage2.flow.base", "uniform", r"must be one of \['stage_one', 'gaussian'\]"),
        ("stage2.num_steps", 0, "config.stage2.num_steps=0 must be >= 1"),
    ],
)
def test_bad_stage_two_configs_are_rejected(key, value, message):
  config = _config(key.split(".")[1] if key.count(".") == 2 else "vae")
  section, name = key.rsplit(".", 1)
  node = config
  for part in section.split("."):
    node = node[part]
  node[name] = value
  with pytest.raises(configuration.ConfigError, match=message):
    configuration.validate(config)


def test_conditionings_are_the_documented_ones():
  assert conditioning_lib.CONDITIONINGS == ("image_and_code", "image", "code")
