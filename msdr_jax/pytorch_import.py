"""Imports PyTorch disentanglers of the Burgess et al. (2018) architecture.

  stage_one, params = pytorch_import.load_stage_one("btcvae_dsprites/")
  mean, log_var = stage_one.encode(params, images)   # images [B, 64, 64, C]

or from the command line, as the stage one a stage two is trained on:

  python -m msdr_jax.main --config=configs/dsprites.py:preset=pretrained \
      --config.stage1.checkpoint=btcvae_dsprites/model.pt

A checkpoint is a `torch.save`d state dict (either file format, read without
PyTorch by `torch_checkpoint`) with the parameter names of the public
disentangling-vae code base: `encoder.{conv1,conv2,conv3,conv_64,lin1,lin2,
mu_logvar_gen}` and `decoder.{lin1,lin2,lin3,convT_64,convT1,convT2,convT3}`,
ReLU between layers, a sigmoid on the output (so its pre-sigmoid values are
Bernoulli logits). `burgess_params` turns it into parameters of this
library's `burgess` VAE computing the same function:

* convolution weights [out, in, kh, kw] -> flax kernels [kh, kw, in, out];
* transposed convolutions: PyTorch's [in, out, kh, kw] is the true transpose
  (gradient) of a convolution, flax's `ConvTranspose` (transpose_kernel=False)
  is a convolution of the dilated input, so the kernel is also flipped in
  both spatial axes; PyTorch's padding 1 at kernel 4, stride 2 is 'SAME';
* linear weights [out, in] -> dense kernels [in, out];
* PyTorch flattens the 32 x 4 x 4 feature map in NCHW order, the library in
  NHWC: the rows of `encoder.lin1` and the columns of `decoder.lin3` are
  permuted accordingly;
* `mu_logvar_gen`'s 2K outputs are interleaved (viewed as [K, 2]: mean,
  log-variance), the library's are [means, log-variances].

The image shape and latent size are read off the weights; a checkpoint that
does not fit the configured model is refused with both shapes named.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msdr_jax import stage_one as stage_one_lib
from msdr_jax import torch_checkpoint
from msdr_jax.models import architectures
from msdr_jax.models import vae

ARCHITECTURE = "burgess"
# The file a checkpoint directory holds (disentangling-vae's layout).
CHECKPOINT_FILENAME = "model.pt"

_ENCODER_CONVS = ("conv1", "conv2", "conv3", "conv_64")
_DECODER_CONVS = ("convT_64", "convT1", "convT2", "convT3")
_FEATURE_CHANNELS = architectures.ARCHITECTURES[ARCHITECTURE].decoder_channels


class IncompatibleCheckpointError(ValueError):
  """A checkpoint that does not fit the model it is imported into."""


def checkpoint_file(path: str | os.PathLike) -> str:
  """The `torch.save` file of `path`: the file itself, or `<dir>/model.pt`."""
  path = os.fspath(path)
  return os.path.join(path, CHECKPOINT_FILENAME) if os.path.isdir(path) else path


def is_pytorch_checkpoint(path: str | os.PathLike) -> bool:
  """Whether `path` is a file, or a directory holding `model.pt`.

  Anything else (a run directory, an orbax checkpoint directory) is the
  library's own stage one.
  """
  return os.path.isfile(checkpoint_file(path))


def _layer_map() -> dict[str, tuple[str, str, str]]:
  """PyTorch layer name -> (flax module, flax layer, kind), in network order."""
  mapping = {}
  for i, name in enumerate(_ENCODER_CONVS):
    mapping[f"encoder.{name}"] = ("encoder", f"Stride2Conv_{i}", "conv")
  for i, name in enumerate(("lin1", "lin2", "mu_logvar_gen")):
    mapping[f"encoder.{name}"] = ("encoder", f"Dense_{i}", "dense")
  for i, name in enumerate(("lin1", "lin2", "lin3")):
    mapping[f"decoder.{name}"] = ("decoder", f"Dense_{i}", "dense")
  for i, name in enumerate(_DECODER_CONVS):
    mapping[f"decoder.{name}"] = ("decoder", f"Stride2ConvTranspose_{i}", "conv_transpose")
  return mapping


def _torch_shape(flax_shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  """The PyTorch weight shape of a flax kernel shape."""
  if kind == "conv":  # [kh, kw, in, out] <- [out, in, kh, kw]
    return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
  if kind == "conv_transpose":  # [kh, kw, in, out] <- [in, out, kh, kw]
    return (flax_shape[2], flax_shape[3], flax_shape[0], flax_shape[1])
  return (flax_shape[1], flax_shape[0])  # [in, out] <- [out, in]


def nchw_to_nhwc_index(grid: tuple[int, int], channels: int) -> np.ndarray:
  """i-th NHWC-flattened feature's position in the NCHW flattening."""
  return np.arange(channels * grid[0] * grid[1]).reshape(
      channels, *grid).transpose(1, 2, 0).reshape(-1)


def flax_kernel(weight: np.ndarray, kind: str) -> np.ndarray:
  """A PyTorch layer's weight as the kernel of the flax layer computing the same.

  kind: "conv" (Conv2d [out, in, kh, kw] -> [kh, kw, in, out]),
  "conv_transpose" (ConvTranspose2d [in, out, kh, kw] -> [kh, kw, in, out],
  flipped in space: flax's `transpose_kernel=False` correlates where PyTorch
  convolves), "dense" (Linear [out, in] -> [in, out]).
  """
  if kind == "conv":
    return weight.transpose(2, 3, 1, 0)
  if kind == "conv_transpose":
    return weight.transpose(2, 3, 0, 1)[::-1, ::-1]
  if kind == "dense":
    return weight.T
  raise ValueError(f"Unknown layer kind {kind!r}; choose conv, conv_transpose or dense.")


def infer_shapes(state_dict: dict[str, np.ndarray]) -> tuple[tuple[int, int, int], int]:
  """(image_shape, latent_dim) of a Burgess state dict, read off its weights."""
  missing = [name for name in ("encoder.conv1.weight", "encoder.lin1.weight",
                               "decoder.lin1.weight") if name not in state_dict]
  if missing:
    raise IncompatibleCheckpointError(
        f"it is not a Burgess et al. model: it has no {missing[0]} (found "
        f"{', '.join(list(state_dict)[:4])}, ...)")
  channels = state_dict["encoder.conv1.weight"].shape[1]
  latent_dim = state_dict["decoder.lin1.weight"].shape[1]
  cells = state_dict["encoder.lin1.weight"].shape[1] // _FEATURE_CHANNELS
  side = int(round(np.sqrt(cells))) * 2 ** sum(
      f"encoder.{name}.weight" in state_dict for name in _ENCODER_CONVS)
  return (side, side, channels), latent_dim


def burgess_params(
    state_dict: dict[str, np.ndarray],
    image_shape: tuple[int, int, int],
    latent_dim: int,
) -> dict[str, Any]:
  """Parameters of the library's `burgess` VAE computing the state dict's function.

  Raises:
    IncompatibleCheckpointError: a layer is missing or has another shape than the model of
      `image_shape` and `latent_dim` needs (both shapes named).
  """
  model = vae.VAE(ARCHITECTURE, latent_dim, tuple(image_shape))
  template = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)),
                         jax.random.PRNGKey(0)))["params"]
  grid = (image_shape[0] // 16, image_shape[1] // 16)
  described = (f"images {'x'.join(map(str, image_shape))}, latent_dim {latent_dim}")
  params: dict[str, Any] = {"encoder": {}, "decoder": {}}
  for torch_layer, (module, layer, kind) in _layer_map().items():
    expected = template[module][layer]
    arrays = {}
    for part, flax_part in (("weight", "kernel"), ("bias", "bias")):
      name = f"{torch_layer}.{part}"
      want = expected[flax_part].shape
      want = _torch_shape(want, kind) if part == "weight" else want
      if name not in state_dict:
        raise IncompatibleCheckpointError(
            f"it has no {name} (shape {want} for {described}); is it a Burgess et "
            "al. model of 64x64 images?")
      if state_dict[name].shape != want:
        raise IncompatibleCheckpointError(
            f"{name} has shape {state_dict[name].shape} in the checkpoint but "
            f"{want} in the configured model ({described})")
      arrays[part] = np.asarray(state_dict[name], np.float32)
    weight, bias = arrays["weight"], arrays["bias"]
    kernel = flax_kernel(weight, kind)
    if torch_layer == "encoder.lin1":
      kernel = kernel[nchw_to_nhwc_index(grid, _FEATURE_CHANNELS)]
    elif torch_layer == "encoder.mu_logvar_gen":
      # Interleaved [K, 2] outputs -> [means, log-variances].
      order = np.concatenate([np.arange(0, 2 * latent_dim, 2),
                              np.arange(1, 2 * latent_dim, 2)])
      kernel, bias = kernel[:, order], bias[order]
    elif torch_layer == "decoder.lin3":
      order = nchw_to_nhwc_index(grid, _FEATURE_CHANNELS)
      kernel, bias = kernel[:, order], bias[order]
    params[module][layer] = {"kernel": np.ascontiguousarray(kernel),
                             "bias": np.ascontiguousarray(bias)}
  unused = sorted(set(state_dict) - {
      f"{layer}.{part}" for layer in _layer_map() for part in ("weight", "bias")})
  if unused:
    raise IncompatibleCheckpointError(
        f"it has parameters the Burgess architecture does not ({', '.join(unused[:3])})")
  return jax.tree_util.tree_map(jnp.asarray, params)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The state dict of a checkpoint file or directory (`torch_checkpoint`)."""
  return torch_checkpoint.load_state_dict(checkpoint_file(path))


def read_specs(path: str | os.PathLike) -> dict[str, Any]:
  """The `specs.json` beside a checkpoint (its training settings), or {}."""
  specs = os.path.join(os.path.dirname(checkpoint_file(path)), "specs.json")
  try:
    with open(specs) as file:
      return json.load(file)
  except (OSError, ValueError):
    return {}


def load_stage_one(
    path: str | os.PathLike, likelihood: str | None = None
) -> tuple[stage_one_lib.DisentanglingVAE, dict[str, Any]]:
  """(stage one, params) of a Burgess checkpoint, shapes read off its weights.

  The likelihood is `specs.json`'s `rec_dist` when the file is there,
  else Bernoulli (the architecture's sigmoid output), unless given.

  Raises:
    torch_checkpoint.CheckpointError: the file is missing or unreadable.
    IncompatibleCheckpointError: it is not a Burgess model of 64x64 images.
  """
  state_dict = read_state_dict(path)
  try:
    image_shape, latent_dim = infer_shapes(state_dict)
    params = burgess_params(state_dict, image_shape, latent_dim)
  except IncompatibleCheckpointError as e:
    raise IncompatibleCheckpointError(f"Cannot import {checkpoint_file(path)}: {e}.") from None
  likelihood = likelihood or read_specs(path).get("rec_dist", "bernoulli")
  network = vae.VAE(ARCHITECTURE, latent_dim, image_shape)
  return stage_one_lib.DisentanglingVAE(network, likelihood), params


def load_params(
    path: str | os.PathLike,
    model_config: ml_collections.ConfigDict,
    image_shape: tuple[int, int, int],
) -> dict[str, Any]:
  """Parameters of `config.stage1.model` for the images of `image_shape`.

  Raises:
    torch_checkpoint.CheckpointError: the file is missing or unreadable.
    IncompatibleCheckpointError: the configured model is not `burgess`, or a weight's shape
      does not fit it (both shapes named), in one line with the fix.
  """
  fix = ("Set --config.stage1.model.architecture=burgess, "
         "--config.stage1.model.latent_dim and the data set to those the "
         "checkpoint was trained with.")
  if model_config.architecture != ARCHITECTURE:
    raise IncompatibleCheckpointError(
        f"PyTorch checkpoint {checkpoint_file(path)} imports into the "
        f"{ARCHITECTURE} architecture, but the config's is "
        f"{model_config.architecture!r}. {fix}")
  state_dict = read_state_dict(path)
  try:
    return burgess_params(state_dict, tuple(image_shape), model_config.latent_dim)
  except IncompatibleCheckpointError as e:
    raise IncompatibleCheckpointError(f"Cannot import {checkpoint_file(path)}: {e}. {fix}") from None
