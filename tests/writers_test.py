"""Known-answer tests of the logging helpers."""

import logging

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


def test_progress_estimates_early_and_refreshes_a_live_line(monkeypatch, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  now = {"t": 0.0}
  monkeypatch.setattr(writers.time, "perf_counter", lambda: now["t"])
  shown = []
  progress = writers.Progress(num_steps=10_000, start_step=0, batch_size=64,
                              name="Stage one", live=shown.append)
  now["t"] = 30.0
  progress.tick(1)  # The compiling step: timing starts after it.
  for step in range(2, 102):  # 20 steps/s from then on.
    now["t"] = 30.0 + (step - 1) * 0.05
    progress.tick(step)
  # 5 s of timed steps: no estimate yet.
  assert not [r for r in caplog.records if "to go" in r.getMessage()]
  for step in range(102, 302):
    now["t"] = 30.0 + (step - 1) * 0.05
    progress.tick(step)
  estimates = [r.getMessage() for r in caplog.records if "to go" in r.getMessage()]
  assert estimates == ["Stage one: 20.00 steps/s over its first 200 timed steps; about "
                       "8m10s to go (9799 steps)."]
  # The live line: every 2 s of the 15 s of timed steps.
  assert len(shown) == 7
  assert shown[0] == "Stage one step 41/10000 | 20.00 steps/s | ETA 8m18s"
  assert shown[-1] == "Stage one step 281/10000 | 20.00 steps/s | ETA 8m06s"
  progress.report(301, {"loss": 2.5})
  assert shown[-1] == ""  # Cleared for the log line.
  now["t"] += 2.0
  progress.tick(302)
  assert "| loss 2.500 |" in shown[-1]
