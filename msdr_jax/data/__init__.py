"""Ground-truth data sets, by name and source (`config.data`).

  name               procedural  tfds  file
  dsprites               x         x    x (DeepMind's npz)
  dsprites_textured      x
  shapes3d               x         x    x (DeepMind's 3dshapes.h5)
  smallnorb                        x
  celeb_a                          x
  mpi3d                                 x (toy / realistic / real npz)
  cars3d                                x (the directory of .mat files)

`procedural` renders images on the fly inside the jitted step (no data to
download); `tfds` reads a prepared TFDS `data_dir`; `file` reads the official
file at `config.data.path`. Loaded data sets live in device memory
(`placement="device"`) or host memory (`"host"`), see `arrays`.
"""

from __future__ import annotations

from typing import Callable

from msdr_jax.data import arrays
from msdr_jax.data import dsprites
from msdr_jax.data import files
from msdr_jax.data import shapes3d
from msdr_jax.data import textured_dsprites
from msdr_jax.data import tfds_data
from msdr_jax.data.arrays import DataError
from msdr_jax.data.ground_truth import GroundTruthData

__all__ = ["DATASETS", "DataError", "GroundTruthData", "PLACEMENTS", "SOURCES",
           "get_dataset", "sources_of"]

SOURCES = ("procedural", "tfds", "file")
PLACEMENTS = arrays.PLACEMENTS

# name -> source -> builder(data_config).
_BUILDERS: dict[str, dict[str, Callable[..., GroundTruthData]]] = {
    "dsprites": {
        "procedural": lambda c: dsprites.DSprites(),
        "tfds": lambda c: tfds_data.load("dsprites", c.data_dir, c.placement),
        "file": lambda c: files.load_dsprites(c.path, c.placement),
    },
    "dsprites_textured": {
        "procedural": lambda c: textured_dsprites.TexturedDSprites(),
    },
    "shapes3d": {
        "procedural": lambda c: shapes3d.Shapes3D(),
        "tfds": lambda c: tfds_data.load("shapes3d", c.data_dir, c.placement),
        "file": lambda c: files.load_shapes3d(c.path, c.placement),
    },
    "smallnorb": {"tfds": lambda c: tfds_data.load("smallnorb", c.data_dir, c.placement)},
    "celeb_a": {"tfds": lambda c: tfds_data.load("celeb_a", c.data_dir, c.placement)},
    "mpi3d": {"file": lambda c: files.load_mpi3d(c.path, c.placement)},
    "cars3d": {"file": lambda c: files.load_cars3d(c.path, c.placement)},
}

DATASETS = tuple(_BUILDERS)


def sources_of(name: str) -> tuple[str, ...]:
  """The sources data set `name` can come from."""
  return tuple(_BUILDERS[name])


def get_dataset(data_config) -> GroundTruthData:
  """Builds the data set `data_config.name` from `data_config.source`.

  Raises DataError when the data are not where the config says, or not
  what the data set expects.
  """
  return _BUILDERS[data_config.name][data_config.source](data_config)
