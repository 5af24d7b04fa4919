r"""Writes pytorch-fid's FID Inception weights as the .npz that msdr_jax reads.

`feature_extractors.make_feature_extractor("inception_v3", weights_path)` needs
pytorch-fid's `pt_inception-2015-12-05` weights (the port of the TensorFlow
FID network) and cannot download them. Run this once on a machine with
internet access and torch, then copy the .npz to where the metrics run:

  pip install torch
  python -m experiments.convert_inception_weights --output=pt_inception.npz

or from a .pth downloaded by hand (`FID_WEIGHTS_URL` below):

  python -m experiments.convert_inception_weights \
      --pth=pt_inception-2015-12-05-6726825d.pth --output=pt_inception.npz

The .npz holds every state_dict entry under its PyTorch name as a numpy
array in PyTorch's layout (convolution weights OIHW); msdr_jax checks the
names and shapes and transposes the convolutions when it loads them.

With `--verify` (needs `pip install pytorch-fid torchvision` and msdr_jax
with its dependencies) the script also runs pytorch-fid's InceptionV3 and
msdr_jax's Flax port with the converted weights on the same random images,
prints the largest feature difference and fails if it exceeds 1e-4 of the
largest feature.

torch is imported inside the functions that need it: msdr_jax does not
depend on it and its tests never run this script.
"""

from __future__ import annotations

import pathlib

from absl import app
from absl import flags
from absl import logging
import numpy as np

# pytorch-fid's release of the converted TensorFlow weights; the 8 hex digits
# are the start of the file's SHA-256, which torch.hub checks.
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth")

_OUTPUT = flags.DEFINE_string("output", None, "Path of the .npz to write.")
_PTH = flags.DEFINE_string(
    "pth", None, "A local copy of the weights .pth; downloaded when unset.")
_VERIFY = flags.DEFINE_bool(
    "verify", False, "Compare features with pytorch-fid's network.")

# Largest allowed |pytorch-fid - msdr_jax| feature difference, relative to the
# largest feature: float32 convolutions summed in another order differ by
# about 1e-6 of it.
_VERIFY_TOLERANCE = 1e-4


def load_state_dict(pth: str | None) -> dict[str, np.ndarray]:
  """pytorch-fid's state_dict as numpy arrays, from `pth` or downloaded."""
  import torch  # pylint: disable=g-import-not-at-top

  if pth is None:
    state_dict = torch.hub.load_state_dict_from_url(
        FID_WEIGHTS_URL, map_location="cpu", progress=True, check_hash=True)
  else:
    state_dict = torch.load(pth, map_location="cpu", weights_only=True)
  return {name: tensor.detach().cpu().numpy() for name, tensor in state_dict.items()}


def verify(state_dict: dict[str, np.ndarray], weights_path: str) -> None:
  """Raises if msdr_jax's features differ from pytorch-fid's with these weights."""
  import torch  # pylint: disable=g-import-not-at-top
  from pytorch_fid import inception as pytorch_fid_inception  # pylint: disable=g-import-not-at-top

  from msdr_jax.metrics import feature_extractors  # pylint: disable=g-import-not-at-top

  # pytorch-fid builds its network and loads the weights from its URL; hand
  # it the converted ones instead, so that the file itself is what is checked.
  torch_state_dict = {name: torch.from_numpy(np.asarray(value))
                      for name, value in state_dict.items()}
  pytorch_fid_inception.load_state_dict_from_url = (
      lambda *args, **kwargs: torch_state_dict)
  reference = pytorch_fid_inception.InceptionV3([3]).eval()

  images = np.random.default_rng(0).uniform(size=(4, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2))[0]
  expected = expected[:, :, 0, 0].double().numpy()
  extractor = feature_extractors.make_feature_extractor("inception_v3", weights_path)
  actual = np.asarray(extractor(images), np.float64)
  difference = float(np.max(np.abs(actual - expected)))
  scale = float(np.max(np.abs(expected)))
  logging.info("Largest feature %.4g, largest difference %.3g.", scale, difference)
  if difference > _VERIFY_TOLERANCE * scale:
    raise RuntimeError(
        f"msdr_jax's Inception features differ from pytorch-fid's by {difference:.3g} "
        f"(largest feature {scale:.3g}).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  state_dict = load_state_dict(_PTH.value)
  output = pathlib.Path(_OUTPUT.value)
  output.parent.mkdir(parents=True, exist_ok=True)
  with output.open("wb") as file:
    np.savez(file, **state_dict)
  logging.info("Wrote %d tensors to %s.", len(state_dict), output)
  if _VERIFY.value:
    verify(state_dict, str(output))


if __name__ == "__main__":
  flags.mark_flag_as_required("output")
  app.run(main)
