"""The PyTorch peer of `benchmarks/pytorch_peer.py` computes the library's losses.

Fixtures written by `benchmarks/pytorch_worker.py loss_fixture MODEL OUT.npz`
with torch 2.13.0:

* `tests/data/pytorch/peer_worker_loss.npz` (`stage1`) holds one batch through
  the peer's decoder and beta-TCVAE loss; its networks are the Burgess et al.
  architecture that `pytorch_import_test` checks against the library's.
* `tests/data/pytorch/peer_worker_ms_vae_loss.npz` (`ms_vae`) holds one batch
  through the peer's whole MS-VAE (frozen stage one, w encoder, refiner) and
  its loss, with every parameter of both stages: the library's model, given
  the same weights (stage one's through `pytorch_import.burgess_params`),
  is compared with it network by network and in its loss.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dsprites
from msdr_jax import losses
from msdr_jax import multi_stage
from msdr_jax import pytorch_import
from msdr_jax import stage_one as stage_one_lib

FIXTURES = pathlib.Path(__file__).parent / "data" / "pytorch"
FIXTURE = FIXTURES / "peer_worker_loss.npz"
MS_VAE_FIXTURE = FIXTURES / "peer_worker_ms_vae_loss.npz"


def nhwc(x):
  return x.transpose(0, 2, 3, 1)


def test_peer_loss_is_the_librarys_beta_tcvae_with_mss():
  with np.load(FIXTURE) as arrays:
    peer = dict(arrays)
  objective = dsprites.get_config("preset=paper").stage1.objective
  assert objective.name == "beta_tcvae" and objective.tc_estimator == "mss"
  loss, terms = losses.objective_from_config(objective, int(peer["dataset_size"]))(
      losses.bernoulli_nll(nhwc(peer["logits"]), nhwc(peer["images"])),
      peer["z"], peer["mean"], peer["log_var"])
  # Float32 sums of 4,096 pixels (recon) and of log-densities near 10 (the
  # rest), in another order.
  assert float(loss) == pytest.approx(float(peer["loss"]), rel=1e-6)
  assert float(terms["recon"]) == pytest.approx(float(peer["recon"]), rel=1e-6)
  for name in ("mi", "tc", "dim_kl"):
    assert float(terms[name]) == pytest.approx(float(peer[name]), abs=1e-4), name
  # Correlated posteriors: every term is far from zero, so each comparison
  # could fail.
  assert min(abs(float(peer[name])) for name in ("mi", "tc", "dim_kl")) > 1.0


# The peer's MS-VAE layers -> (network, layer) of the library's parameters and
# how the weight maps: "conv" [out, in, kh, kw] -> [kh, kw, in, out];
# "conv_transpose" [in, out, kh, kw] -> [kh, kw, in, out], flipped in both
# spatial axes (PyTorch's is the gradient of a convolution, flax's a
# convolution of the dilated input); "dense" [out, in] -> [in, out].
_MS_VAE_LAYERS = {
    "encoder.down.0": ("encoder", "Stride2Conv_0", "conv"),
    "encoder.down.1": ("encoder", "Stride2Conv_1", "conv"),
    "encoder.code": ("encoder", "Dense_0", "dense"),
    "encoder.hidden": ("encoder", "Conv_0", "conv"),
    "encoder.out": ("encoder", "Conv_1", "conv"),
    **{f"refiner.down.{i}": ("decoder", f"Stride2Conv_{i}", "conv") for i in range(4)},
    "refiner.code1": ("decoder", "Dense_0", "dense"),
    "refiner.code2": ("decoder", "Dense_1", "dense"),
    **{f"refiner.up.{i}": ("decoder", f"Stride2ConvTranspose_{i}", "conv_transpose")
       for i in range(3)},
    "refiner.to_full_resolution": ("decoder", "Stride2ConvTranspose_3", "conv_transpose"),
    "refiner.full_resolution": ("decoder", "Conv_0", "conv"),
    "refiner.correction": ("decoder", "Conv_1", "conv"),
}


def _peer_parameters(arrays, prefix):
  """{name: PyTorch-layout float32 array} of the parameters under `prefix.`.

  The fixture holds each as sign bits and one magnitude.
  """
  parameters = {}
  for key in arrays:
    if key.startswith(f"shape.{prefix}."):
      name = key[len("shape."):]
      shape = tuple(arrays[key])
      signs = np.unpackbits(arrays[f"bits.{name}"], count=int(np.prod(shape))).astype(bool)
      bound = arrays[f"bound.{name}"]
      parameters[name[len(prefix) + 1:]] = np.where(signs, bound, -bound).reshape(shape)
  return parameters


def _library_ms_vae_params(peer_parameters):
  """The library's MS-VAE parameter tree computing the peer's networks."""
  bottleneck_channels = peer_parameters["refiner.down.3.weight"].shape[0]
  bottleneck_grid = (round(
      (peer_parameters["refiner.code2.weight"].shape[0] / bottleneck_channels) ** 0.5),) * 2
  params = {"encoder": {}, "decoder": {}}
  for torch_layer, (network, layer, kind) in _MS_VAE_LAYERS.items():
    weight = peer_parameters.pop(f"{torch_layer}.weight")
    bias = peer_parameters.pop(f"{torch_layer}.bias")
    kernel = pytorch_import.flax_kernel(weight, kind)
    if torch_layer == "refiner.code2":
      # z's bottleneck map: PyTorch views the features as [C, H, W], the
      # library reshapes them as [H, W, C].
      order = pytorch_import.nchw_to_nhwc_index(bottleneck_grid, bottleneck_channels)
      kernel, bias = kernel[:, order], bias[order]
    params[network][layer] = {"kernel": jnp.asarray(kernel.copy()), "bias": jnp.asarray(bias)}
  assert not peer_parameters, f"peer parameters left unmapped: {sorted(peer_parameters)}"
  return params


def _ms_vae_loss(model, stage1_params, stage2_params, images, step, noise):
  """`model.loss` with w's reparameterisation noise set to `noise`."""
  draws = []

  def fixed_normal(rng, shape, dtype=jnp.float32):
    del rng
    draws.append(tuple(shape))
    return jnp.asarray(noise, dtype)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(jax.random, "normal", fixed_normal)
    loss, metrics = model.loss(stage2_params, stage1_params, images,
                               jax.random.PRNGKey(0), step)
  assert draws == [noise.shape]  # The one draw: w's noise.
  return float(loss), {name: float(value) for name, value in metrics.items()}


def test_peer_ms_vae_is_the_librarys_ms_vae():
  with np.load(MS_VAE_FIXTURE) as arrays:
    peer = dict(arrays)
  config = dsprites.get_config("preset=paper")
  config.stage1.model.architecture = "burgess"
  assert config.stage2.family == "vae"
  images = jnp.asarray(nhwc(peer["images"]))
  stage_one = stage_one_lib.DisentanglingVAE.from_config(config.stage1, images.shape[1:])
  model = multi_stage.MultiStageModel.from_config(config, stage_one)
  stage1_params = pytorch_import.burgess_params(
      _peer_parameters(peer, "stage1"), images.shape[1:], config.stage1.model.latent_dim)
  template = jax.eval_shape(model.init, jax.random.PRNGKey(0), stage1_params)
  stage2_params = _library_ms_vae_params(_peer_parameters(peer, "stage2"))
  # The peer has the library's layers, and their shapes: the same networks.
  assert (jax.tree.map(lambda leaf: leaf.shape, stage2_params)
          == jax.tree.map(lambda leaf: leaf.shape, template))

  # Network by network, on the fixture's noise: stage one's conditioning, w's
  # posterior, the refiner's logits (of the images the fixture has them for;
  # pixel by pixel, one wrong weight shows where the batch's sums below
  # would average it away).
  cond = multi_stage.condition(stage_one, stage1_params, images)
  np.testing.assert_allclose(cond.code, peer["codes"], rtol=1e-5, atol=1e-5)
  mean, log_var = model.stage2.encoder.apply({"params": stage2_params["encoder"]}, images, cond)
  np.testing.assert_allclose(mean, nhwc(peer["w_mean"]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(log_var, nhwc(peer["w_log_var"]), rtol=1e-5, atol=1e-5)
  noise = nhwc(peer["eps"])
  logits, _ = model.stage2.refiner.apply(
      {"params": stage2_params["decoder"]}, cond, mean + jnp.exp(0.5 * log_var) * noise)
  peer_logits = nhwc(peer["logits"])
  np.testing.assert_allclose(logits[:len(peer_logits)], peer_logits, rtol=1e-5, atol=1e-5)

  # The library's loss, its own sampler drawing the fixture's noise, at the
  # fixture's step of the KL warm-up.
  loss, metrics = _ms_vae_loss(model, stage1_params, stage2_params, images,
                               jnp.asarray(peer["step"]), noise)
  # Float32 sums of 4,096 pixels (recon) and 256 latents (kl) per image, in
  # another order, after ~15 layers.
  assert metrics["kl_weight"] == pytest.approx(float(peer["kl_weight"]), rel=1e-6)
  assert loss == pytest.approx(float(peer["loss"]), rel=1e-5)
  assert metrics["recon"] == pytest.approx(float(peer["recon"]), rel=1e-5)
  assert metrics["kl"] == pytest.approx(float(peer["kl"]), rel=1e-5)

  # Both terms depend on stage two: the refiner's correction moves the
  # reconstruction term by far more than the tolerance (at zero the refiner
  # would give stage one's logits), and the KL is far from zero.
  zero_correction = jax.tree.map(jnp.zeros_like, stage2_params["decoder"]["Conv_1"])
  without_correction = {**stage2_params,
                        "decoder": {**stage2_params["decoder"], "Conv_1": zero_correction}}
  _, stage_one_metrics = _ms_vae_loss(model, stage1_params, without_correction, images,
                                      jnp.asarray(peer["step"]), noise)
  assert abs(stage_one_metrics["recon"] / metrics["recon"] - 1) > 1e-2
  assert metrics["kl"] > 10.0
