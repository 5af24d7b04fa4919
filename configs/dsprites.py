r"""Multi-stage model on dSprites.

Stage one is a beta-TCVAE; stage two (MS-VAE by default) is then trained on
it, frozen. Run (the default preset is the paper-scale run):

  python -m msdr_jax.main --config=configs/dsprites.py
  python -m msdr_jax.main --config=configs/dsprites.py:preset=quick
  python -m msdr_jax.main --config=configs/dsprites.py:preset=quick \
      --config.stage1.objective.beta=4 --workdir=runs/beta4
  # Another stage-two family on a stage one trained earlier:
  python -m msdr_jax.main --config=configs/dsprites.py:preset=quick \
      --config.stage1.checkpoint=runs/beta4 --config.stage2.family=flow \
      --workdir=runs/beta4-flow
  # A pretrained PyTorch disentangler (Burgess et al. architecture) as stage one:
  python -m msdr_jax.main --config=configs/dsprites.py:preset=quick \
      --config.stage1.model.architecture=burgess \
      --config.stage1.checkpoint=path/to/btcvae_dsprites

Sources (`source=...`):
  procedural -- the default: the embedded pixel-exact renderer, no download.
  tfds       -- TFDS "dsprites" from a prepared data_dir:
                --config=configs/dsprites.py:source=tfds --config.data.data_dir=DIR
  file       -- DeepMind's dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz:
                --config=configs/dsprites.py:source=file --config.data.path=FILE

Presets (`preset=...`) and their time on a 2-core CPU (see the README):
  paper -- the default: disentanglement_lib defaults, 300k steps (about 8.5
           hours on a 2-core CPU; meant for a GPU/TPU).
  long  -- 25k steps, higher learning rate and beta, 45 minutes on CPU.
  quick -- 5k steps, higher learning rate and beta, ten minutes on CPU.
  tiny  -- a handful of steps and a small evaluation, for tests and smoke runs.
"""

import ml_collections

from msdr_jax import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The config for `arg`, e.g. 'preset=quick' or 'preset=quick,source=tfds'."""
  return base_config.get_config(arg, "dsprites", default_source="procedural")
