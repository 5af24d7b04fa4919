"""Config validation.

Every user mistake in a config is caught here, before JAX sees it, and
reported as a `ConfigError`: one line naming the key and the fix. The CLI
prints it without a traceback. (What ties a run directory to its config is
in `run_directory`.)
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterable

import ml_collections


class ConfigError(ValueError):
  """A config value is missing, of the wrong type or out of range."""


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config.{key} is missing; add it to the config file.")
    node = node[part]
  return node


def _check_choice(config, key: str, choices: Iterable[str]) -> None:
  value = _get(config, key)
  choices = sorted(choices)
  if value not in choices:
    raise ConfigError(
        f"config.{key}={value!r} is unknown; choose one of {choices} "
        f"(e.g. --config.{key}={choices[0]})."
    )


def _check_number(
    config,
    key: str,
    kind: type,
    condition: Callable[[float], bool],
    requirement: str,
) -> None:
  value = _get(config, key)
  valid_type = (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
  if kind is int:
    valid_type = valid_type and float(value).is_integer()
  if not valid_type:
    raise ConfigError(
        f"config.{key}={value!r} must be "
        f"{'an integer' if kind is int else 'a finite number'}."
    )
  if not condition(value):
    raise ConfigError(f"config.{key}={value!r} must be {requirement}.")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first invalid value of a stage-one config."""
  # Imported here: the registries import JAX, which this module avoids so that
  # configs can be checked cheaply.
  from msdr_jax import data  # pylint: disable=g-import-not-at-top
  from msdr_jax import families  # pylint: disable=g-import-not-at-top
  from msdr_jax import losses  # pylint: disable=g-import-not-at-top
  from msdr_jax import steps  # pylint: disable=g-import-not-at-top
  from msdr_jax.models import conditioning as conditioning_lib  # pylint: disable=g-import-not-at-top
  from msdr_jax.models import architectures  # pylint: disable=g-import-not-at-top

  positive = (lambda v: v > 0, "> 0")
  non_negative = (lambda v: v >= 0, ">= 0")
  at_least_one = (lambda v: v >= 1, ">= 1")

  name = _get(config, "name")
  if not isinstance(name, str) or not name or os.sep in name:
    raise ConfigError(
        f"config.name={name!r} must be a non-empty name without '{os.sep}'; it "
        "names the default work directory."
    )
  _check_number(config, "seed", int, lambda v: v >= 0, ">= 0")
  _check_choice(config, "compute_dtype", steps.COMPUTE_DTYPES)
  _validate_data(config, data)
  _check_choice(config, "stage1.model.architecture", architectures.ARCHITECTURES)
  _check_number(config, "stage1.model.latent_dim", int, *at_least_one)
  _check_choice(config, "stage1.model.likelihood", losses.LIKELIHOODS)
  _check_choice(config, "stage1.objective.name", losses.OBJECTIVES)
  for key in ("beta", "alpha", "gamma"):
    _check_number(config, f"stage1.objective.{key}", float, *non_negative)
  _check_choice(config, "stage1.objective.tc_estimator", losses.TC_ESTIMATORS)
  _validate_optimizer(config, "stage1", steps.OPTIMIZERS)
  _check_number(config, "stage1.num_steps", int, *at_least_one)
  checkpoint = _get(config, "stage1.checkpoint")
  if not isinstance(checkpoint, str):
    raise ConfigError(
        f"config.stage1.checkpoint={checkpoint!r} must be a path (or empty).")
  _validate_stage_two(
      config, families, steps.OPTIMIZERS, conditioning_lib.CONDITIONINGS)
  # The total-correlation estimators compare each sample with the others.
  _check_number(config, "batch_size", int, lambda v: v >= 2, ">= 2")
  for key in ("log_every_steps", "checkpoint_every_steps", "max_checkpoints_to_keep"):
    _check_number(config, key, int, *at_least_one)
  _check_number(config, "eval.batch_size", int, lambda v: v >= 2, ">= 2")
  _check_number(
      config,
      "eval.num_points",
      int,
      lambda v: v >= config.eval.batch_size and v % config.eval.batch_size == 0,
      f"a positive multiple of config.eval.batch_size={config.eval.batch_size}",
  )
  _check_number(config, "eval.traversal_steps", int, lambda v: v >= 2, ">= 2")
  _check_number(config, "eval.traversal_range", float, *positive)
  _check_number(config, "eval.active_variance_threshold", float, *non_negative)
  _validate_evaluation(config)


def _validate_evaluation(config) -> None:
  """The metric suite's and the sample-quality settings of `config.eval`."""
  from msdr_jax.metrics import feature_extractors  # pylint: disable=g-import-not-at-top
  from msdr_jax.metrics import dci  # pylint: disable=g-import-not-at-top
  from msdr_jax.metrics import suite  # pylint: disable=g-import-not-at-top

  names = _get(config, "eval.disentanglement.metrics")
  try:
    suite.parse_metrics(names if isinstance(names, str) else "")
  except ValueError as e:
    raise ConfigError(f"config.eval.disentanglement.metrics={names!r}: {e}") from e
  if not isinstance(names, str):
    raise ConfigError(
        f"config.eval.disentanglement.metrics={names!r} must be a comma-separated "
        f"string of {list(suite.METRICS)}.")
  at_least = lambda low: (lambda v: v >= low, f">= {low}")
  for key, low in (("num_train", 2), ("num_test", 2), ("histogram_bins", 2),
                   ("dci_boosting_stages", 1),
                   ("beta_vae.batch_size", 1), ("beta_vae.num_train", 2),
                   ("beta_vae.num_eval", 1), ("factor_vae.batch_size", 2),
                   ("factor_vae.num_train", 1), ("factor_vae.num_eval", 1),
                   ("factor_vae.num_variance_estimate", 2)):
    _check_number(config, f"eval.disentanglement.{key}", int, *at_least(low))
  _check_number(config, "eval.disentanglement.factor_vae.prune_threshold", float,
                lambda v: v >= 0, ">= 0")
  _check_choice(config, "eval.disentanglement.dci_learner", dci.LEARNERS)
  if not isinstance(_get(config, "eval.disentanglement.sap_continuous_factors"), bool):
    raise ConfigError(
        "config.eval.disentanglement.sap_continuous_factors must be True or False.")
  num_samples = _get(config, "eval.sample_quality.num_samples")
  _check_number(config, "eval.sample_quality.num_samples", int,
                lambda v: v == 0 or v >= 2, "0 (no FID/KID) or >= 2")
  if num_samples:
    _check_choice(config, "eval.sample_quality.feature_extractor",
                  feature_extractors.FEATURE_EXTRACTORS)
    _check_number(config, "eval.sample_quality.kid_subset_size", int, *at_least(2))
    _check_number(config, "eval.sample_quality.kid_num_subsets", int, *at_least(1))
    weights = _get(config, "eval.sample_quality.inception_weights")
    if config.eval.sample_quality.feature_extractor == "inception_v3" and not (
        isinstance(weights, str) and os.path.isfile(weights)):
      raise ConfigError(
          f"config.eval.sample_quality.inception_weights={weights!r} is not a file; "
          "the inception_v3 extractor needs a local .npz of pytorch-fid's weights "
          "(make it with experiments/convert_inception_weights.py on a connected "
          "machine), or use --config.eval.sample_quality.feature_extractor=random_conv.")


def _validate_optimizer(config, stage: str, optimizers) -> None:
  _check_choice(config, f"{stage}.optimizer.name", optimizers)
  # Adam moves every parameter by about the learning rate each step; beyond 1
  # the networks' weights (initialised well below 1) diverge at the first step.
  _check_number(config, f"{stage}.optimizer.learning_rate", float, lambda v: 0 < v <= 1,
                "in (0, 1]")
  for key in ("b1", "b2"):
    _check_number(
        config, f"{stage}.optimizer.{key}", float, lambda v: 0 <= v < 1, "in [0, 1)")
  _check_number(config, f"{stage}.optimizer.eps", float, lambda v: v > 0, "> 0")


def _validate_stage_two(config, families, optimizers, conditionings) -> None:
  at_least_one = (lambda v: v >= 1, ">= 1")
  _check_choice(config, "stage2.family", [*families.FAMILIES, families.NO_STAGE_TWO])
  family = config.stage2.family
  if family == families.NO_STAGE_TWO:
    return  # With config.stage1.checkpoint: evaluate that stage one only.
  conditioning = _get(config, "stage2.conditioning")
  if conditioning not in conditionings:
    raise ConfigError(
        f"config.stage2.conditioning={conditioning!r} is unknown; choose one of "
        f"{list(conditionings)}. Stage two must see z (through "
        "y = dec(z), z itself, or both): without a conditioning path it would "
        "model images while ignoring the disentangled factors."
    )
  _check_number(config, "stage2.num_steps", int, *at_least_one)
  _validate_optimizer(config, "stage2", optimizers)
  for key, check in families.FAMILIES[family].HYPERPARAMETERS.items():
    if check.kind is str:
      value = _get(config, f"stage2.{family}.{key}")
      if not (isinstance(value, str) and check.valid(value)):
        raise ConfigError(f"config.stage2.{family}.{key}={value!r} must be {check.requirement}.")
    else:
      _check_number(config, f"stage2.{family}.{key}", check.kind, check.valid,
                    check.requirement)
  error = families.FAMILIES[family].config_error(
      config.stage2, _get(config, "stage1.model.likelihood"))
  if error:
    raise ConfigError(error)


def _validate_data(config, data) -> None:
  _check_choice(config, "data.name", data.DATASETS)
  name, source = _get(config, "data.name"), _get(config, "data.source")
  if source not in data.sources_of(name):
    raise ConfigError(
        f"config.data.source={source!r} is not available for data set {name!r}; "
        f"choose one of {list(data.sources_of(name))}.")
  _check_choice(config, "data.placement", data.PLACEMENTS)
  for key in ("data_dir", "path"):
    if not isinstance(_get(config, f"data.{key}"), str):
      raise ConfigError(f"config.data.{key} must be a path (or empty).")
  if source == "file" and not _get(config, "data.path"):
    raise ConfigError(
        f"config.data.source='file' needs --config.data.path=<the {name} file or "
        "directory>.")
