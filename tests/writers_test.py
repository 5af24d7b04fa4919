"""Known-answer tests of the logging helpers."""

import numpy as np
import pytest

from msdr_jax import writers


def test_scalar_summary_averages_the_window_and_expands_vectors():
  window = [(1, {"loss": np.float32(1.0), "kl_per_latent": np.array([0.0, 2.0])}),
            (2, {"loss": np.float32(3.0), "kl_per_latent": np.array([1.0, 4.0])})]
  assert writers.scalar_summary(window) == pytest.approx(
      {"loss": 2.0, "kl_per_latent/0": 0.5, "kl_per_latent/1": 3.0})


def test_progress_reports_terms_rate_and_eta(monkeypatch):
  clock = iter([100.0, 110.0])
  monkeypatch.setattr(writers.time, "perf_counter", lambda: next(clock))
  progress = writers.Progress(num_steps=1000, start_step=0, batch_size=64)
  line = progress.report(100, {"tc": 0.5, "loss": 2.0, "kl_per_latent/0": 9.0})
  assert line == ("step  100/1000 | loss 2.000 tc 0.500 | 10.00 steps/s (640 img/s) "
                  "| ETA 1m30s")
