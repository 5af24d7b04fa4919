"""Shape and purity tests of the stage-one models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msdr_jax.models import vae


@pytest.mark.parametrize("architecture", ["dlib_conv", "burgess"])
@pytest.mark.parametrize("channels", [1, 3])
def test_vae_shapes_and_pure_methods(architecture, channels):
  model = vae.VAE(architecture, latent_dim=7, image_shape=(64, 64, channels))
  images = jax.random.uniform(jax.random.PRNGKey(0), (5, 64, 64, channels))
  params = model.init(jax.random.PRNGKey(1), images, jax.random.PRNGKey(2))["params"]
  out = model.apply({"params": params}, images, jax.random.PRNGKey(3))
  assert out.mean.shape == out.log_var.shape == out.latents.shape == (5, 7)
  assert out.decoder_output.shape == (5, 64, 64, channels)
  mean, log_var = model.apply({"params": params}, images, method=vae.VAE.encode)
  np.testing.assert_array_equal(mean, out.mean)
  np.testing.assert_array_equal(log_var, out.log_var)
  decoded = model.apply({"params": params}, out.latents, method=vae.VAE.decode)
  np.testing.assert_allclose(decoded, out.decoder_output, rtol=1e-6, atol=1e-6)


def test_architecture_parameter_counts_match_the_published_networks():
  # disentanglement_lib conv_encoder + deconv_decoder for 64x64x1, K = 10.
  expected_dlib = (
      (4 * 4 * 1 * 32 + 32) + (4 * 4 * 32 * 32 + 32) + (2 * 2 * 32 * 64 + 64)
      + (2 * 2 * 64 * 64 + 64) + (1024 * 256 + 256) + (256 * 20 + 20)
      + (10 * 256 + 256) + (256 * 1024 + 1024) + (4 * 4 * 64 * 64 + 64)
      + (4 * 4 * 64 * 32 + 32) + (4 * 4 * 32 * 32 + 32) + (4 * 4 * 32 * 1 + 1))
  # Burgess et al.: 4 x conv 32k4, dense 512-256-256-20; mirror decoder.
  expected_burgess = (
      (4 * 4 * 1 * 32 + 32) + 3 * (4 * 4 * 32 * 32 + 32) + (512 * 256 + 256)
      + (256 * 256 + 256) + (256 * 20 + 20) + (10 * 256 + 256) + (256 * 256 + 256)
      + (256 * 512 + 512) + 3 * (4 * 4 * 32 * 32 + 32) + (4 * 4 * 32 * 1 + 1))
  for architecture, expected in (("dlib_conv", expected_dlib), ("burgess", expected_burgess)):
    model = vae.VAE(architecture, latent_dim=10, image_shape=(64, 64, 1))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 64, 64, 1)), jax.random.PRNGKey(1))
    count = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))
    assert count == expected, architecture


def test_reparameterised_sample_has_the_posterior_moments():
  mean = jnp.array([1.0, -2.0])
  log_var = jnp.log(jnp.array([0.25, 4.0]))
  samples = jax.vmap(lambda k: vae.sample_diagonal_gaussian(k, mean, log_var))(
      jax.random.split(jax.random.PRNGKey(0), 20_000))
  np.testing.assert_allclose(samples.mean(0), mean, atol=0.05)
  np.testing.assert_allclose(samples.var(0), jnp.exp(log_var), rtol=0.05)
