"""The PyTorch side of `benchmarks.pytorch_peer`: run with a Python that has torch.

A training iteration as disentangling-vae's own code makes it: the Burgess et
al. encoder and decoder (64x64x1, 10 latents), the beta-TCVAE loss with the
minibatch-stratified-sampling estimator (its weights placed as the library
places them), Adam; batches from memory. Reads "<steps>" lines on stdin and
answers each with the seconds per step of that many steps; "quit" ends it.
`pytorch_worker.py loss_fixture OUT.npz` instead writes one batch's loss
terms for `tests/pytorch_peer_test.py`. Written here from the published
architecture and loss so that the comparison needs no checkout of that
repository.
"""

import math
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

LATENTS = 10
HIDDEN = 32


class Encoder(nn.Module):

  def __init__(self):
    super().__init__()
    self.convs = nn.ModuleList(
        [nn.Conv2d(1 if i == 0 else HIDDEN, HIDDEN, 4, stride=2, padding=1) for i in range(4)])
    self.lin1, self.lin2 = nn.Linear(HIDDEN * 16, 256), nn.Linear(256, 256)
    self.out = nn.Linear(256, 2 * LATENTS)

  def forward(self, x):
    for conv in self.convs:
      x = F.relu(conv(x))
    x = F.relu(self.lin2(F.relu(self.lin1(x.flatten(1)))))
    mean, log_var = self.out(x).chunk(2, dim=-1)
    return mean, log_var


class Decoder(nn.Module):

  def __init__(self):
    super().__init__()
    self.lin1, self.lin2 = nn.Linear(LATENTS, 256), nn.Linear(256, 256)
    self.lin3 = nn.Linear(256, HIDDEN * 16)
    self.convs = nn.ModuleList(
        [nn.ConvTranspose2d(HIDDEN, 1 if i == 3 else HIDDEN, 4, stride=2, padding=1)
         for i in range(4)])

  def forward(self, z):
    x = F.relu(self.lin3(F.relu(self.lin2(F.relu(self.lin1(z))))))
    x = x.view(-1, HIDDEN, 4, 4)
    for i, conv in enumerate(self.convs):
      x = conv(x)
      if i < 3:
        x = F.relu(x)
    return x  # Logits.


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


def write_loss_fixture(path, batch_size=8, dataset_size=737_280):
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


def main():
  if sys.argv[1] == "loss_fixture":
    write_loss_fixture(sys.argv[2])
    return
  batch_size, dataset_size = int(sys.argv[1]), int(sys.argv[2])
  torch.manual_seed(0)
  encoder, decoder = Encoder(), Decoder()
  optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-4)
  # Batches from memory, as disentangling-vae's DataLoader gives them.
  images = (torch.rand(16 * batch_size, 1, 64, 64) > 0.9).float()

  def step(i):
    x = images[(i % 16) * batch_size:(i % 16 + 1) * batch_size]
    mean, log_var = encoder(x)
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    loss = btcvae_terms(x, decoder(z), mean, log_var, z, dataset_size)["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

  for i in range(3):  # Warm up.
    step(i)
  print("ready", flush=True)
  for line in sys.stdin:
    if line.strip() == "quit":
      break
    steps = int(line)
    start = time.perf_counter()
    for i in range(steps):
      step(i)
    print((time.perf_counter() - start) / steps, flush=True)


if __name__ == "__main__":
  main()
