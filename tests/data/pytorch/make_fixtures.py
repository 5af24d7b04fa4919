"""Makes the PyTorch fixtures of tests/pytorch_import_test.py (run once, with PyTorch).

  python -m venv /tmp/torch && /tmp/torch/bin/pip install torch==2.13.0 numpy
  /tmp/torch/bin/python tests/data/pytorch/make_fixtures.py \
      --pretrained=<folder of the disentangling-vae checkpoints>

Writes, next to this file:
* `burgess_c{1,3}.legacy.pt` and `burgess_c{1,3}.zip.pt`: one random-weight
  Burgess et al. model per channel count, its state dict saved in both
  `torch.save` formats (legacy: `_use_new_zipfile_serialization=False`);
* `burgess_c{1,3}_outputs.npz`: fixed inputs and what PyTorch computes from
  them: the encoder's 20 interleaved outputs, the decoder's pre-sigmoid
  logits (NCHW, as PyTorch has them);
* with --pretrained: `btcvae_celeba_outputs.npz`, the same for the
  pretrained CelebA beta-TCVAE; it and the dSprites beta-TCVAE are copied to
  `btcvae_celeba/` and `btcvae_dsprites/` (checkpoint, specs, training log,
  and the licence).

The network is written here from the architecture's description (Burgess et
al. 2018; the layer names of the public disentangling-vae checkpoints), so the
test compares the import with an independent implementation.
"""

import argparse
import os
import shutil

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
LATENT_DIM = 10


class Encoder(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.conv1 = nn.Conv2d(channels, 32, 4, stride=2, padding=1)
    self.conv2 = nn.Conv2d(32, 32, 4, stride=2, padding=1)
    self.conv3 = nn.Conv2d(32, 32, 4, stride=2, padding=1)
    self.conv_64 = nn.Conv2d(32, 32, 4, stride=2, padding=1)
    self.lin1 = nn.Linear(512, 256)
    self.lin2 = nn.Linear(256, 256)
    self.mu_logvar_gen = nn.Linear(256, 2 * LATENT_DIM)

  def forward(self, x):
    for conv in (self.conv1, self.conv2, self.conv3, self.conv_64):
      x = torch.relu(conv(x))
    x = x.reshape(x.shape[0], -1)  # NCHW order.
    x = torch.relu(self.lin2(torch.relu(self.lin1(x))))
    return self.mu_logvar_gen(x)  # [B, 20]: viewed [B, 10, 2] = (mean, log_var).


class Decoder(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.lin1 = nn.Linear(LATENT_DIM, 256)
    self.lin2 = nn.Linear(256, 256)
    self.lin3 = nn.Linear(256, 512)
    self.convT_64 = nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1)
    self.convT1 = nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1)
    self.convT2 = nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1)
    self.convT3 = nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1)

  def forward(self, z):
    x = torch.relu(self.lin3(torch.relu(self.lin2(torch.relu(self.lin1(z))))))
    x = x.reshape(z.shape[0], 32, 4, 4)
    for conv in (self.convT_64, self.convT1, self.convT2):
      x = torch.relu(conv(x))
    return self.convT3(x)  # Logits; the model's output is their sigmoid.


class Burgess(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.encoder = Encoder(channels)
    self.decoder = Decoder(channels)


def outputs(model, channels, seed):
  generator = torch.Generator().manual_seed(seed)
  images = torch.rand(4, channels, 64, 64, generator=generator)
  codes = torch.randn(4, LATENT_DIM, generator=generator)
  with torch.no_grad():
    return {
        "images": images.numpy(),  # NCHW in [0, 1].
        "encoder_outputs": model.encoder(images).numpy(),
        "codes": codes.numpy(),
        "logits": model.decoder(codes).numpy(),  # NCHW.
    }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--pretrained", default="")
  args = parser.parse_args()
  for channels in (1, 3):
    torch.manual_seed(channels)
    model = Burgess(channels)
    state = model.state_dict()
    torch.save(state, os.path.join(HERE, f"burgess_c{channels}.zip.pt"))
    torch.save(state, os.path.join(HERE, f"burgess_c{channels}.legacy.pt"),
               _use_new_zipfile_serialization=False)
    np.savez(os.path.join(HERE, f"burgess_c{channels}_outputs.npz"),
             **outputs(model, channels, seed=10 + channels))
  if args.pretrained:
    for folder in ("btcvae_celeba", "btcvae_dsprites"):
      target = os.path.join(HERE, folder)
      os.makedirs(target, exist_ok=True)
      for name in ("model.pt", "specs.json", "train_losses.log"):
        shutil.copyfile(os.path.join(args.pretrained, folder, name),
                        os.path.join(target, name))
      shutil.copyfile(os.path.join(args.pretrained, "LICENSE"),
                      os.path.join(target, "LICENSE"))
    source = os.path.join(args.pretrained, "btcvae_celeba")
    model = Burgess(3)
    model.load_state_dict(torch.load(os.path.join(source, "model.pt"), weights_only=True))
    np.savez(os.path.join(HERE, "btcvae_celeba_outputs.npz"), **outputs(model, 3, seed=20))


if __name__ == "__main__":
  main()
