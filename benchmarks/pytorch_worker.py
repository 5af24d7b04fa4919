"""The PyTorch side of `benchmarks.pytorch_peer`: run with a Python that has torch.

  pytorch_worker.py MODEL BATCH NUM_IMAGES

trains MODEL on batches of BATCH images from memory (as a PyTorch DataLoader
gives them) and answers each "<steps>" line on stdin with the seconds per
step of that many steps; "quit" ends it. MODEL is

* `stage1` -- as disentangling-vae's own code makes it: the Burgess et al.
  encoder and decoder (64x64x1, 10 latents, that code's layer names and its
  interleaved mean / log-variance outputs, so that `pytorch_import` reads
  them), the beta-TCVAE loss with the minibatch-stratified-sampling
  estimator over NUM_IMAGES images (its weights placed as the library places
  them), Adam;
* `ms_vae` -- the library's MS-VAE (`msdr_jax/families/ms_vae.py`, the
  defaults of `configs/dsprites.py`) on a frozen `stage1` VAE: stage one, in
  eval mode and without gradients, gives the code z (its posterior mean) and
  the logits of dec(z); the conditional encoder and the U-Net refiner of
  `msdr_jax/models/refiner.py` give w (16x16x1) and the corrected logits;
  the loss is the Bernoulli negative log-likelihood plus the KL of w under
  the library's geometric KL warm-up; Adam.

  pytorch_worker.py loss_fixture MODEL OUT.npz

instead writes one batch's loss terms (for `ms_vae` also the parameters that
made them) for `tests/pytorch_peer_test.py`. Written here from the published
architecture and loss and from the library's stage-two networks, so that the
comparison needs no checkout of another repository.
"""

import itertools
import math
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

LATENTS = 10
HIDDEN = 32
IMAGE_SIZE = 64

# MS-VAE as `msdr_jax.models.refiner` builds it for the paper preset
# (conditioning "image_and_code", `config.stage2.vae`).
UNET_FEATURES = (32, 32, 64, 64)  # 64x64 -> 32 -> 16 -> 8 -> 4.
UNET_DENSE = 256
FULL_RESOLUTION_FEATURES = 8
W_RESOLUTION = 16
W_CHANNELS = 1
KL_BETA = 1.0
KL_WARMUP_STEPS = 500
KL_WARMUP_START = 1e-4  # `ms_vae.KL_WARMUP_START`.
_BOTTLENECK = IMAGE_SIZE // 2**len(UNET_FEATURES)  # The U-Net's 4x4.

# Adam of `config.stage1.optimizer` and `config.stage2.optimizer` (paper preset).
ADAM = {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8}


def _conv_k4s2(in_channels, out_channels):
  """k4 s2 convolution; PyTorch's padding 1 is the library's 'SAME' here."""
  return nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1)


def _conv_transpose_k4s2(in_channels, out_channels):
  return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)


def _conv_k3(in_channels, out_channels):
  """Stride-1 3x3 convolution, 'SAME' padded."""
  return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class Encoder(nn.Module):
  """Burgess et al. q(z | x), disentangling-vae's layer names."""

  def __init__(self):
    super().__init__()
    self.conv1 = _conv_k4s2(1, HIDDEN)
    self.conv2 = _conv_k4s2(HIDDEN, HIDDEN)
    self.conv3 = _conv_k4s2(HIDDEN, HIDDEN)
    self.conv_64 = _conv_k4s2(HIDDEN, HIDDEN)
    self.lin1, self.lin2 = nn.Linear(HIDDEN * 16, 256), nn.Linear(256, 256)
    self.mu_logvar_gen = nn.Linear(256, 2 * LATENTS)

  def forward(self, x):
    for conv in (self.conv1, self.conv2, self.conv3, self.conv_64):
      x = F.relu(conv(x))
    x = F.relu(self.lin2(F.relu(self.lin1(x.flatten(1)))))
    # Interleaved [K, 2] outputs, as disentangling-vae reads them.
    mean, log_var = self.mu_logvar_gen(x).view(-1, LATENTS, 2).unbind(-1)
    return mean, log_var


class Decoder(nn.Module):
  """Burgess et al. p(x | z) logits, disentangling-vae's layer names."""

  def __init__(self):
    super().__init__()
    self.lin1, self.lin2 = nn.Linear(LATENTS, 256), nn.Linear(256, 256)
    self.lin3 = nn.Linear(256, HIDDEN * 16)
    self.convT_64 = _conv_transpose_k4s2(HIDDEN, HIDDEN)  # pylint: disable=invalid-name
    self.convT1 = _conv_transpose_k4s2(HIDDEN, HIDDEN)  # pylint: disable=invalid-name
    self.convT2 = _conv_transpose_k4s2(HIDDEN, HIDDEN)  # pylint: disable=invalid-name
    self.convT3 = _conv_transpose_k4s2(HIDDEN, 1)  # pylint: disable=invalid-name

  def forward(self, z):
    x = F.relu(self.lin3(F.relu(self.lin2(F.relu(self.lin1(z))))))
    x = x.view(-1, HIDDEN, 4, 4)
    for conv in (self.convT_64, self.convT1, self.convT2):
      x = F.relu(conv(x))
    return self.convT3(x)  # Logits.


def _w_depth():
  """Halvings from the image to w's resolution (`refiner.latent_map_depth`)."""
  return int(math.log2(IMAGE_SIZE // W_RESOLUTION))


class ConditionalEncoder(nn.Module):
  """q(w | x, c) of `refiner.ConditionalEncoder` with a w map.

  x stacked with stage one's image y, strided convolutions down to w's
  resolution, z added to every position through a linear layer, then two
  3x3 convolutions to w's mean and log-variance.
  """

  def __init__(self):
    super().__init__()
    features = UNET_FEATURES[:_w_depth()]
    self.down = nn.ModuleList(
        [_conv_k4s2(i, o) for i, o in zip((2, *features[:-1]), features)])
    self.code = nn.Linear(LATENTS, features[-1])
    self.hidden = _conv_k3(features[-1], features[-1])
    self.out = _conv_k3(features[-1], 2 * W_CHANNELS)

  def forward(self, images, codes, stage_one_images):
    h = torch.cat([images, stage_one_images], 1)
    for conv in self.down:
      h = F.relu(conv(h))
    h = h + self.code(codes)[:, :, None, None]
    mean, log_var = self.out(F.relu(self.hidden(h))).chunk(2, dim=1)
    return mean, log_var


class Refiner(nn.Module):
  """The U-Net of `refiner.Refiner`: (z, stage one's logits and image, w) -> logits.

  Down: stage one's image and logits through four strided convolutions
  (the skips). Bottleneck: z through two linear layers to a 4x4 map, stacked
  on the last skip. Up: transposed convolutions, each output stacked with
  the skip of its size and, at w's resolution, with w; a last one to the
  image's size; then the image and logits again, a 3x3 convolution, and a
  3x3 correction added to stage one's logits. The correction starts at zero,
  as the library's does.
  """

  def __init__(self):
    super().__init__()
    features = UNET_FEATURES
    self.down = nn.ModuleList(
        [_conv_k4s2(i, o) for i, o in zip((2, *features[:-1]), features)])
    self.code1 = nn.Linear(LATENTS, UNET_DENSE)
    self.code2 = nn.Linear(UNET_DENSE, _BOTTLENECK**2 * features[-1])
    self.up = nn.ModuleList()
    in_channels = 2 * features[-1]  # The last skip and z's map.
    for depth, out_channels in zip(range(len(features) - 1, 0, -1), features[-2::-1]):
      self.up.append(_conv_transpose_k4s2(in_channels, out_channels))
      skip_channels = features[depth - 1]
      joins_w = IMAGE_SIZE // 2**depth == W_RESOLUTION
      in_channels = out_channels + skip_channels + (W_CHANNELS if joins_w else 0)
    self.to_full_resolution = _conv_transpose_k4s2(in_channels, FULL_RESOLUTION_FEATURES)
    self.full_resolution = _conv_k3(FULL_RESOLUTION_FEATURES + 2, FULL_RESOLUTION_FEATURES)
    self.correction = _conv_k3(FULL_RESOLUTION_FEATURES, 1)
    nn.init.zeros_(self.correction.weight)
    nn.init.zeros_(self.correction.bias)

  def forward(self, codes, stage_one_logits, stage_one_images, latents):
    h = torch.cat([stage_one_images, stage_one_logits], 1)
    skips = []
    for conv in self.down:
      h = F.relu(conv(h))
      skips.append(h)
    code = F.relu(self.code2(F.relu(self.code1(codes))))
    h = torch.cat([h, code.view(-1, UNET_FEATURES[-1], _BOTTLENECK, _BOTTLENECK)], 1)
    for conv, skip in zip(self.up, skips[-2::-1]):
      joined = [F.relu(conv(h)), skip]
      if skip.shape[-1] == W_RESOLUTION:
        joined.append(latents)
      h = torch.cat(joined, 1)
    h = F.relu(self.to_full_resolution(h))
    h = torch.cat([h, stage_one_images, stage_one_logits], 1)
    return stage_one_logits + self.correction(F.relu(self.full_resolution(h)))


def log_density_gaussian(x, mean, log_var):
  return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def log_importance_weight_matrix(batch_size, dataset_size):
  """log W of minibatch stratified sampling, as `msdr_jax.losses.stratified_log_weights`.

  1/N on the diagonal, (N - M + 1) / (N (M - 1)) on (i, i + 1 mod M), 1 / (M - 1)
  elsewhere. disentangling-vae's code puts the first two in columns 0 and 1
  instead (the library's docstring says why that is wrong); the work is the same.
  """
  n, m = dataset_size, batch_size
  weights = torch.full((m, m), 1 / (m - 1))
  rows = torch.arange(m)
  weights[rows, (rows + 1) % m] = (n - m + 1) / (n * (m - 1))
  weights[rows, rows] = 1 / n
  return weights.log()


def btcvae_terms(x, logits, mean, log_var, z, dataset_size, beta=6.0):
  """The loss and its terms, named as `msdr_jax.losses.beta_tcvae_objective` names them."""
  batch_size = x.shape[0]
  recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / batch_size
  log_q_z_given_x = log_density_gaussian(z, mean, log_var).sum(1)
  log_p_z = log_density_gaussian(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
  matrix = log_density_gaussian(z.unsqueeze(1), mean.unsqueeze(0), log_var.unsqueeze(0))
  weights = log_importance_weight_matrix(batch_size, dataset_size)
  log_q_z = torch.logsumexp(weights + matrix.sum(2), dim=1)
  log_prod_q_z = torch.logsumexp(weights.unsqueeze(2) + matrix, dim=1).sum(1)
  mutual_information = (log_q_z_given_x - log_q_z).mean()
  total_correlation = (log_q_z - log_prod_q_z).mean()
  dimension_kl = (log_prod_q_z - log_p_z).mean()
  loss = recon + mutual_information + beta * total_correlation + dimension_kl
  return {"loss": loss, "recon": recon, "mi": mutual_information, "tc": total_correlation,
          "dim_kl": dimension_kl}


def kl_weight(step):
  """`ms_vae.kl_weight`: geometric warm-up from beta * 1e-4 to beta."""
  remaining = max(0.0, 1.0 - step / KL_WARMUP_STEPS) if KL_WARMUP_STEPS else 0.0
  return KL_BETA * KL_WARMUP_START ** remaining


def ms_vae_terms(x, logits, mean, log_var, weight):
  """The loss and the metrics of the same names of `ConditionalVAE.loss`."""
  recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
  kl = (0.5 * (mean ** 2 + torch.exp(log_var) - log_var - 1.0)).flatten(1).sum(1)
  loss = (recon + weight * kl).mean()
  return {"loss": loss, "recon": recon.mean(), "kl": kl.mean()}


def stage_one_conditioning(encoder, decoder, x):
  """(z, logits of dec(z), sigmoid of them): `multi_stage.condition`, no gradient."""
  with torch.no_grad():
    codes, _ = encoder(x)
    logits = decoder(codes)
  return codes, logits, torch.sigmoid(logits)


def stage_one_step(dataset_size):
  """One beta-TCVAE training step of a fresh Burgess VAE, as a function of the batch."""
  encoder, decoder = Encoder(), Decoder()
  optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], **ADAM)

  def step(x):
    mean, log_var = encoder(x)
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    loss = btcvae_terms(x, decoder(z), mean, log_var, z, dataset_size)["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

  return step


def ms_vae_step(dataset_size):
  """One MS-VAE training step on a frozen fresh Burgess VAE, as a function of the batch."""
  del dataset_size  # Only stage one's objective has it.
  stage_one = [Encoder().eval().requires_grad_(False), Decoder().eval().requires_grad_(False)]
  encoder, refiner = ConditionalEncoder(), Refiner()
  optimizer = torch.optim.Adam([*encoder.parameters(), *refiner.parameters()], **ADAM)
  steps = itertools.count()  # The training step, for the KL warm-up.

  def step(x):
    codes, logits, images = stage_one_conditioning(*stage_one, x)
    mean, log_var = encoder(x, codes, images)
    w = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    loss = ms_vae_terms(x, refiner(codes, logits, images, w), mean, log_var,
                        kl_weight(next(steps)))["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

  return step


STEPS = {"stage1": stage_one_step, "ms_vae": ms_vae_step}


def write_stage_one_fixture(path, batch_size=8, dataset_size=737_280):
  """One batch through the decoder and the loss, saved for `tests/pytorch_peer_test.py`.

  Inputs and outputs as PyTorch has them (NCHW), with the terms of the loss.
  The posteriors are drawn at random, spread out and correlated: a fresh
  encoder's are all near N(0, I), where the MI and TC terms vanish and a
  comparison of them could not fail.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  torch.manual_seed(1)
  decoder = Decoder()
  x = (torch.rand(batch_size, 1, 64, 64) > 0.9).float()
  with torch.no_grad():
    shared = torch.randn(batch_size, 1)
    mean = 1.5 * (shared + 0.2 * torch.randn(batch_size, LATENTS))
    log_var = torch.randn(batch_size, LATENTS) - 1.0
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    logits = decoder(z)
    terms = btcvae_terms(x, logits, mean, log_var, z, dataset_size)
  arrays = {"images": x, "mean": mean, "log_var": log_var, "z": z, "logits": logits, **terms}
  np.savez_compressed(path, dataset_size=dataset_size,
                      **{name: value.numpy() for name, value in arrays.items()})


def _signs_times_bound(modules):
  """Sets every parameter to +-(its largest initial magnitude), signs as drawn.

  Two values per tensor pack into a bit each, so the ~1.1 M parameters of
  both stages fit a small fixture, and every layer, the correction included
  (which starts at zero in training), changes the loss.
  """
  state = {}
  with torch.no_grad():
    for prefix, module in modules.items():
      for name, parameter in module.named_parameters():
        if not parameter.abs().max() > 0:  # The zero-initialised correction.
          parameter.uniform_(-0.1, 0.1)
        bound = parameter.abs().max()
        parameter.copy_(torch.where(parameter > 0, bound, -bound))
        state[f"{prefix}.{name}"] = parameter
  return state


def write_ms_vae_fixture(path, batch_size=8, step=250, logit_images=2):
  """One batch through both stages and the MS-VAE loss, with every parameter.

  Saved for `tests/pytorch_peer_test.py`, NCHW as PyTorch has them: the
  images, the reparameterisation noise of w, stage one's codes, w's
  posterior, the refiner's logits of the first `logit_images` images (pixel
  by pixel they show a wrong weight that the batch's sums would average
  away; all eight would not fit the fixture's size), the loss terms at
  training `step` (mid warm-up, so that the KL weight is the warm-up's and
  not beta), and each parameter as its sign bits
  (`np.packbits`, "bits.NAME"), magnitude ("bound.NAME") and shape
  ("shape.NAME"). The encoders' output layers are scaled up: stage one's so
  that its codes z spread as a trained encoder's do, w's so that its
  posterior is far from N(0, I), near which the KL is a difference of
  nearly equal float32 numbers that two libraries round differently.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  torch.manual_seed(2)
  encoder, decoder = Encoder(), Decoder()
  w_encoder, refiner = ConditionalEncoder(), Refiner()
  state = _signs_times_bound({"stage1.encoder": encoder, "stage1.decoder": decoder,
                              "stage2.encoder": w_encoder, "stage2.refiner": refiner})
  with torch.no_grad():
    encoder.mu_logvar_gen.weight.mul_(10.0)
    w_encoder.out.weight.mul_(4.0)
  x = (torch.rand(batch_size, 1, 64, 64) > 0.9).float()
  eps = torch.randn(batch_size, W_CHANNELS, W_RESOLUTION, W_RESOLUTION)
  with torch.no_grad():
    codes, logits, images = stage_one_conditioning(encoder, decoder, x)
    mean, log_var = w_encoder(x, codes, images)
    w = mean + torch.exp(0.5 * log_var) * eps
    weight = kl_weight(step)
    refined_logits = refiner(codes, logits, images, w)
    terms = ms_vae_terms(x, refined_logits, mean, log_var, weight)
  arrays = {"images": x, "eps": eps, "codes": codes, "w_mean": mean, "w_log_var": log_var,
            "logits": refined_logits[:logit_images], **terms}
  parameters = {}
  for name, value in state.items():
    value = value.detach().numpy()
    parameters[f"bits.{name}"] = np.packbits(value.ravel() > 0)
    parameters[f"bound.{name}"] = np.float32(np.abs(value).max())
    parameters[f"shape.{name}"] = np.array(value.shape)
  np.savez_compressed(path, step=step, kl_weight=np.float32(weight),
                      **{name: value.numpy() for name, value in arrays.items()}, **parameters)


FIXTURES = {"stage1": write_stage_one_fixture, "ms_vae": write_ms_vae_fixture}


def main():
  if sys.argv[1] == "loss_fixture":
    FIXTURES[sys.argv[2]](sys.argv[3])
    return
  model, batch_size, dataset_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  torch.manual_seed(0)
  step = STEPS[model](dataset_size)
  # Batches from memory, as disentangling-vae's DataLoader gives them.
  images = (torch.rand(16 * batch_size, 1, 64, 64) > 0.9).float()
  batches = [images[i * batch_size:(i + 1) * batch_size] for i in range(16)]

  for i in range(3):  # Warm up.
    step(batches[i])
  print("ready", flush=True)
  for line in sys.stdin:
    if line.strip() == "quit":
      break
    steps = int(line)
    start = time.perf_counter()
    for i in range(steps):
      step(batches[i % 16])
    print((time.perf_counter() - start) / steps, flush=True)


if __name__ == "__main__":
  main()
