"""Evaluators: what a run measures, returned as an `Evaluation`; nothing is written here.

  stage1 = evaluators.stage_one.evaluate(config, dataset, stage_one, params, step)
  multi = evaluators.multi_stage.evaluate(
      config, dataset, model, params, step, stage1.active, stage1.scores.get("mig"))

`writers.write_evaluation` puts an evaluation's figures and scalars into the
run directory and TensorBoard, and the program writes `metrics.json` once,
from every evaluation's scores (`train.train_and_evaluate`,
`msdr_jax.evaluate`).
"""

from msdr_jax.evaluators import multi_stage
from msdr_jax.evaluators import stage_one
from msdr_jax.evaluators.common import Evaluation
from msdr_jax.evaluators.common import NonFiniteCodesError
