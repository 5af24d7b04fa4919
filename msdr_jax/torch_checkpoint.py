"""Reads PyTorch state dicts (`torch.save` files) into NumPy, without PyTorch.

  state_dict = torch_checkpoint.load_state_dict("model.pt")
  state_dict["encoder.conv1.weight"]  # np.ndarray [32, 1, 4, 4], float32

Both formats `torch.save` has written are read, detected from the file:

* the zip format (PyTorch >= 1.6): a zip archive holding `<name>/data.pkl`,
  whose persistent ids name the storages, each a raw file `<name>/data/<key>`;
* the legacy format: a sequence of pickles (a magic number, the protocol
  version, system information, the object, the list of storage keys), then
  each storage in that order as an int64 element count and its raw bytes.

Only a state dict is accepted: the unpickler resolves just the classes a
state dict is made of (ordered dicts, tensor and parameter rebuilders, typed
storages), so, like `torch.load(weights_only=True)`, reading a file never runs
code it carries. Anything else, or a corrupt or truncated file, raises
`CheckpointError` with one line naming the problem.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

# The first pickle of a legacy file, and its protocol version.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
# A zip archive's first bytes (a local file header).
_ZIP_MAGIC = b"PK\x03\x04"

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
  """A file that is not a readable PyTorch state dict."""


@dataclasses.dataclass
class _Storage:
  """A typed storage; `data` is filled once its bytes are read."""

  dtype: np.dtype
  numel: int
  data: np.ndarray | None = None


@dataclasses.dataclass
class _Tensor:
  """A strided view of a storage, materialised once the storage is read."""

  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]

  def to_numpy(self) -> np.ndarray:
    flat = self.storage.data
    needed = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) + 1
    if min(self.shape, default=1) > 0 and needed > flat.size:
      raise CheckpointError(
          f"a tensor of shape {self.shape} reads past the end of its storage "
          f"({flat.size} elements)")
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], self.shape, tuple(s * flat.itemsize for s in self.stride))
    return np.array(view)


def _rebuild_tensor(storage, offset, shape, stride, *unused_args):
  return _Tensor(storage, int(offset), tuple(shape), tuple(stride))


def _rebuild_parameter(data, *unused_args):
  return data


class _StateDictUnpickler(pickle.Unpickler):
  """Resolves only what a state dict is built from; storages come from `load`."""

  _ALLOWED = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  }

  def __init__(self, file: BinaryIO, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[module, name]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    raise CheckpointError(
        f"it pickles {module}.{name}, which is not part of a state dict; save "
        "model.state_dict() (torch.save(model.state_dict(), path)) instead")

  def persistent_load(self, pid: Any) -> _Storage:
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      raise CheckpointError(f"unknown persistent id {pid!r:.60}")
    return self._load_storage(*pid[1:])


def _legacy_load(file: BinaryIO) -> Any:
  """The object of a legacy-format file, its tensors as `_Tensor`s."""
  if pickle.load(file) != _LEGACY_MAGIC_NUMBER:
    raise CheckpointError("it is neither a zip archive nor a legacy torch.save file")
  if pickle.load(file) != _LEGACY_PROTOCOL_VERSION:
    raise CheckpointError("its legacy torch.save protocol version is not 1001")
  system_info = pickle.load(file)
  if not system_info.get("little_endian", True):
    raise CheckpointError("it was written on a big-endian machine")
  storages: dict[str, _Storage] = {}
  views: list[tuple[_Tensor, str, int]] = []

  def load_storage(dtype, key, unused_location, numel, view_metadata=None):
    storage = storages.setdefault(key, _Storage(np.dtype(dtype), int(numel)))
    if view_metadata is None:
      return storage
    # Pre-1.0 storage views: an offset into the root storage `key`.
    view_key, offset, size = view_metadata
    view = _Storage(storage.dtype, int(size))
    views.append((view, key, int(offset)))
    storages.setdefault(view_key, view)
    return view

  state = _StateDictUnpickler(file, load_storage).load()
  for key in pickle.load(file):
    storage = storages[key]
    (numel,) = struct.unpack("<q", _read_exactly(file, 8))
    storage.data = np.frombuffer(
        _read_exactly(file, numel * storage.dtype.itemsize), storage.dtype)
  for view, root_key, offset in views:
    view.data = storages[root_key].data[offset : offset + view.numel]
  return state


def _zip_load(archive: zipfile.ZipFile) -> Any:
  """The object of a zip-format file, its tensors as `_Tensor`s."""
  pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
  if len(pickles) != 1:
    raise CheckpointError("it is a zip archive without exactly one data.pkl")
  prefix = pickles[0][: -len("data.pkl")]
  byteorder = prefix + "byteorder"
  if byteorder in archive.namelist() and archive.read(byteorder) != b"little":
    raise CheckpointError("it was written on a big-endian machine")

  def load_storage(dtype, key, unused_location, numel):
    raw = archive.read(f"{prefix}data/{key}")
    dtype = np.dtype(dtype)
    if len(raw) < int(numel) * dtype.itemsize:
      raise CheckpointError(f"storage {key} is shorter than its {numel} elements")
    return _Storage(dtype, int(numel), np.frombuffer(raw, dtype, int(numel)))

  with archive.open(pickles[0]) as file:
    return _StateDictUnpickler(io.BytesIO(file.read()), load_storage).load()


def _read_exactly(file: BinaryIO, size: int) -> bytes:
  data = file.read(size)
  if len(data) != size:
    raise EOFError
  return data


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The state dict in the `torch.save` file `path`, as NumPy arrays.

  A dict holding the state dict under `state_dict` or `model_state_dict`
  (a common training-checkpoint layout) gives that state dict.

  Raises:
    CheckpointError: `path` is missing, corrupt, truncated, or holds anything
      but a state dict (one-line message naming the file).
  """
  try:
    with open(path, "rb") as file:
      if file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
        try:
          archive = zipfile.ZipFile(file)
        except zipfile.BadZipFile:
          raise CheckpointError(
              "it is a zip-format checkpoint that is truncated or damaged") from None
        with archive:
          state = _zip_load(archive)
      else:
        file.seek(0)
        state = _legacy_load(file)
    if isinstance(state, dict):
      for key in ("state_dict", "model_state_dict"):
        if isinstance(state.get(key), dict):
          state = state[key]
    if not isinstance(state, dict) or not all(
        isinstance(value, _Tensor) for value in state.values()):
      raise CheckpointError("it holds no state dict (a mapping of names to tensors)")
    return collections.OrderedDict(
        (str(name), tensor.to_numpy()) for name, tensor in state.items())
  except CheckpointError as e:
    raise CheckpointError(f"Cannot read PyTorch checkpoint {path}: {e}.") from None
  except FileNotFoundError:
    raise CheckpointError(f"PyTorch checkpoint {path} does not exist.") from None
  except (EOFError, struct.error):
    raise CheckpointError(
        f"Cannot read PyTorch checkpoint {path}: it is truncated.") from None
  except OSError as e:
    raise CheckpointError(
        f"Cannot read PyTorch checkpoint {path}: {e.strerror or e}.") from None
  except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError,
          TypeError, AttributeError, IndexError) as e:
    raise CheckpointError(
        f"Cannot read PyTorch checkpoint {path}: it is corrupt "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})."
    ) from None
