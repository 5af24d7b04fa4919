r"""Multi-stage model on MPI3D (toy, realistic or real) from its official .npz.

  python -m msdr_jax.main --config=configs/mpi3d.py:preset=quick \
      --config.data.path=mpi3d_toy.npz

Factors: object colour (6), shape (6), size (2), camera height (3),
background colour (3), horizontal (40) and vertical (40) arm position;
1,036,800 images of 64x64x3 (12.7 GB: on an accelerator with less memory add
--config.data.placement=host). Files: github.com/rr-learning/disentanglement_dataset.

Presets as in configs/dsprites.py.
"""

import ml_collections

from msdr_jax import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The config for `arg`, e.g. 'preset=quick'; see the module docstring."""
  config = base_config.get_config(arg, "mpi3d", default_source="file")
  config.stage2.flow.num_levels = 256  # 8-bit colour.
  config.stage2.flow.base = "gaussian"  # Stage one is no distribution on 256 levels.
  return config
