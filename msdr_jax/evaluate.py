r"""Evaluates a trained run again: the metric suite, FID/KID and figures.

  python -m msdr_jax.evaluate --workdir=runs/dsprites-quick-1a2b3c4d
  python -m msdr_jax.evaluate --workdir=runs/x --metrics=mig,dci
  python -m msdr_jax.evaluate --workdir=runs/x \
      --feature_extractor=inception_v3 --inception_weights=pt_inception.npz

Reads the run's `config.json`, restores the latest stage-one checkpoint (the
run's own, or the one its `config.stage1.checkpoint` names) and, when the run
trained one, the latest stage-two checkpoint, then computes what the main
job's evaluation computes and rewrites `metrics.json` and the figures. The
checkpoints are opened read-only. Evaluation settings absent from an older
`config.json` take the defaults of `base_config.eval_config()`; the flags
override the recorded ones.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from etils import epath
import ml_collections

# JAX-free: a mistaken command line or run directory is reported before JAX
# and the library load (`evaluate_run` imports them).
from msdr_jax import configuration
from msdr_jax import run_directory

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory to evaluate.")
_METRICS = flags.DEFINE_string(
    "metrics", None,
    "Comma-separated disentanglement metrics (mig,dci,sap,modularity,beta_vae,"
    "factor_vae), or 'none'; default: the run's config.")
_FEATURE_EXTRACTOR = flags.DEFINE_string(
    "feature_extractor", None, "FID/KID features: random_conv or inception_v3.")
_INCEPTION_WEIGHTS = flags.DEFINE_string(
    "inception_weights", None, "Local .npz of pytorch-fid's Inception weights.")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", None, "Images for FID/KID (0 skips them).")
flags.mark_flags_as_required(["workdir"])


def evaluate_run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the latest checkpoints of the run in `workdir` under `config`."""
  # pylint: disable=g-import-not-at-top
  from msdr_jax import checkpoints
  from msdr_jax import evaluators
  from msdr_jax import families
  from msdr_jax import writers
  # pylint: enable=g-import-not-at-top
  run = checkpoints.load_run(workdir, config)
  has_stage_two = "stage2" in run.steps
  stage1_params = run.params["stage1"] if has_stage_two else run.params
  logging.info("Evaluating stage one (step %d) of %s.", run.steps["stage1"],
               config.stage1.checkpoint or workdir)
  with (run_directory.locked(workdir), run_directory.storage_errors_reported(workdir),
        writers.MetricWriter(workdir) as writer):
    evaluations = [evaluators.stage_one.evaluate(
        config, run.dataset, run.stage_one, stage1_params, run.steps["stage1"])]
    writers.write_evaluation(workdir, writer, evaluations[0])
    if has_stage_two:
      evaluations.append(evaluators.multi_stage.evaluate(
          config, run.dataset, run.model, run.params, run.steps["stage2"],
          evaluations[0].active, evaluations[0].scores.get("mig")))
      writers.write_evaluation(workdir, writer, evaluations[1])
    elif config.stage2.family != families.NO_STAGE_TWO:
      logging.warning("%s holds no stage-two checkpoint; evaluated stage one only.",
                      workdir)
    return writers.write_metrics(workdir, evaluations)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value
  try:
    config = run_directory.load_run_config(workdir)
    overrides = {
        "eval.disentanglement.metrics": _METRICS.value,
        "eval.sample_quality.feature_extractor": _FEATURE_EXTRACTOR.value,
        "eval.sample_quality.inception_weights": _INCEPTION_WEIGHTS.value,
        "eval.sample_quality.num_samples": _NUM_SAMPLES.value,
    }
    config.update_from_flattened_dict(
        {key: value for key, value in overrides.items() if value is not None})
    configuration.validate(config)  # Before JAX loads: a bad flag fails at once.
    # pylint: disable=g-import-not-at-top
    import jax
    from msdr_jax import writers
    # pylint: enable=g-import-not-at-top
    writers.filter_library_logs()
    logging.info("JAX devices: %s", jax.devices())
    evaluate_run(config, workdir)
  except (configuration.ConfigError, run_directory.RunDirectoryError, ValueError) as e:
    print(f"msdr_jax.evaluate: error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"msdr_jax.evaluate: metrics in {epath.Path(workdir) / 'metrics.json'}",
        flush=True)


if __name__ == "__main__":
  app.run(main)
