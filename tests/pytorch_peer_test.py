"""The PyTorch peer of `benchmarks/pytorch_peer.py` computes the library's loss.

`tests/data/pytorch/peer_worker_loss.npz` holds one batch through the peer's
decoder and beta-TCVAE loss, as `benchmarks/pytorch_worker.py loss_fixture`
wrote it with torch 2.13.0; its networks are the Burgess et al. architecture
that `pytorch_import_test` checks against the library's.
"""

import pathlib

import numpy as np
import pytest

from configs import dsprites
from msdr_jax import losses

FIXTURE = pathlib.Path(__file__).parent / "data" / "pytorch" / "peer_worker_loss.npz"


def test_peer_loss_is_the_librarys_beta_tcvae_with_mss():
  with np.load(FIXTURE) as arrays:
    peer = dict(arrays)
  objective = dsprites.get_config("preset=paper").stage1.objective
  assert objective.name == "beta_tcvae" and objective.tc_estimator == "mss"
  nhwc = lambda x: x.transpose(0, 2, 3, 1)
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
