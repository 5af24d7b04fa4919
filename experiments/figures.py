"""The study's figures (matplotlib PNGs).

  reconstruction_vs_beta.png  -- per data set: reconstruction MSE against beta
                                 for stage one and each multi-stage model
                                 (mean over seeds, bars: their spread);
  disentanglement_vs_beta.png -- per data set: MIG and DCI disentanglement
                                 against beta (stage one's z, which every
                                 multi-stage model shares);
  <prefix>-reconstructions.png -- the same inputs reconstructed by stage one
                                 and by each multi-stage model;
  <prefix>-traversals.png     -- one image's active latents swept, by stage
                                 one and by each multi-stage model with the
                                 image's w held fixed;
  <prefix>-samples.png        -- samples of stage one and of each family from
                                 the same z.
"""

from __future__ import annotations

import json
import statistics
from typing import Mapping

from etils import epath
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")  # Files only; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from experiments import results  # pylint: disable=g-import-not-at-top
from msdr_jax import checkpoints as checkpoints_lib  # pylint: disable=g-import-not-at-top
from msdr_jax import data  # pylint: disable=g-import-not-at-top
from msdr_jax import families  # pylint: disable=g-import-not-at-top
from msdr_jax import losses  # pylint: disable=g-import-not-at-top
from msdr_jax import multi_stage  # pylint: disable=g-import-not-at-top
from msdr_jax import stage_one as stage_one_lib  # pylint: disable=g-import-not-at-top
from msdr_jax import visualize  # pylint: disable=g-import-not-at-top

_NUM_SHOWN = 8
_FIGURE_KEY = 2**21  # Images of the figures; any fixed key would do.
# One program (stage one is a frozen dataclass: a static argument).
_traverse_stage_one = jax.jit(stage_one_lib.traverse, static_argnums=0)


def _series(rows, data_name: str, model: str, key: str):
  """(betas, means, spreads) of `key` for one model, in beta order."""
  groups = results.aggregate(rows)
  betas, means, spreads = [], [], []
  for (data_of, beta, name), group in sorted(groups.items(), key=lambda item: item[0][1]):
    values = [row[key] for row in group if row[key] is not None]
    if data_of != data_name or name != model or not values:
      continue
    betas.append(beta)
    means.append(statistics.fmean(values))
    spreads.append(statistics.stdev(values) if len(values) > 1 else 0.0)
  return betas, means, spreads


def _models(rows) -> list[str]:
  return list(dict.fromkeys(row["model"] for row in rows))


def _data_names(rows) -> list[str]:
  return list(dict.fromkeys(row["data"] for row in rows))


def best_beta(rows, data_name: str) -> float:
  """The beta with the highest mean MIG on `data_name`."""
  betas, migs, _ = _series(rows, data_name, results.STAGE_ONE, "mig")
  return betas[int(np.argmax(migs))]


def plot_against_beta(rows, directory: epath.PathLike) -> list[epath.Path]:
  """Writes the two plots against beta; returns their paths."""
  directory = epath.Path(directory)
  data_names = _data_names(rows)
  paths = []
  for filename, panels in (
      ("reconstruction_vs_beta.png",
       [("reconstruction_mse", model, model) for model in _models(rows)]),
      ("disentanglement_vs_beta.png",
       [("mig", results.STAGE_ONE, "MIG"),
        ("dci_disentanglement", results.STAGE_ONE, "DCI disentanglement")]),
  ):
    fig, axes = plt.subplots(1, len(data_names), figsize=(5.5 * len(data_names), 4),
                             squeeze=False)
    for ax, data_name in zip(axes[0], data_names):
      for key, model, label in panels:
        betas, means, spreads = _series(rows, data_name, model, key)
        ax.errorbar(betas, means, yerr=spreads, marker="o", capsize=3, label=label)
      ax.set_title(data_name)
      ax.set_xlabel("beta-TCVAE beta")
      ax.set_xticks(sorted({row["beta"] for row in rows}))
      ax.grid(alpha=0.3)
      if filename.startswith("reconstruction"):
        ax.set_ylabel("squared error per image")
        ax.set_ylim(bottom=0)
      else:
        ax.set_ylabel("score (stage one's z)")
        ax.set_ylim(0, 1)
      ax.legend(fontsize="small")
    fig.tight_layout()
    path = directory / filename
    with path.open("wb") as f:
      fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def _save(fig, path: epath.Path) -> None:
  with path.open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)


def load_runs(configs: Mapping[str, ml_collections.ConfigDict], run_root: epath.PathLike):
  """A study's stage one and its trained families, as `model_figures` takes them.

  Returns:
    (stage one's config with its checkpoint set, data set, stage one, its
    parameters, {name: (MultiStageModel, params)} of every other key).
  """
  run_root = epath.Path(run_root)
  stage_one_config = configs[families.NO_STAGE_TWO].copy_and_resolve_references()
  if not stage_one_config.stage1.checkpoint:  # Stage one was trained in its run.
    stage_one_config.stage1.checkpoint = str(run_root / "stage1")
  dataset = data.get_dataset(stage_one_config.data)
  shape = dataset.observation_shape
  stage_one = stage_one_lib.DisentanglingVAE.from_config(stage_one_config.stage1, shape)
  stage1_params, stage1_step = checkpoints_lib.load_stage_one(stage_one_config, stage_one)
  models = {}
  for name, config in configs.items():
    if name == families.NO_STAGE_TWO:
      continue
    model = multi_stage.MultiStageModel.from_config(
        config, stage_one_lib.DisentanglingVAE.from_config(config.stage1, shape))
    loaded = checkpoints_lib.load_stage_two(config, str(run_root / name), model, stage1_params,
                                            stage1_step)
    if loaded is None:
      raise FileNotFoundError(f"{run_root / name} holds no stage-two checkpoint.")
    models[name] = model, {"stage1": stage1_params, "stage2": loaded[0]}
  return stage_one_config, dataset, stage_one, stage1_params, models


def model_figures(configs: Mapping[str, ml_collections.ConfigDict],
                  run_root: epath.PathLike, prefix: epath.PathLike) -> list[epath.Path]:
  """Reconstruction and traversal figures of one stage one and its families.

  Args:
    configs: run configs by family name, `families.NO_STAGE_TWO` (stage one)
      first, as the studies make them (`beta_sweep.study_config`,
      `pretrained_study.study_config`).
    run_root: the directory holding a run directory per key of `configs`
      (the stage-one one named `stage1`); stage one's parameters are those
      of its config's `stage1.checkpoint`, or of that run.
    prefix: the figures are `<prefix>-reconstructions.png` and
      `<prefix>-traversals.png`.

  Returns:
    The two paths.
  """
  run_root, prefix = epath.Path(run_root), epath.Path(prefix)
  stage_one_config, dataset, stage_one, stage1_params, models = load_runs(configs, run_root)
  images, _ = dataset.sample(jax.random.PRNGKey(_FIGURE_KEY), _NUM_SHOWN)
  # Each computation jitted: run eagerly, every operation would compile alone.
  code = jax.jit(stage_one.encode)(stage1_params, images)[0]
  decode = jax.jit(lambda codes: losses.decoder_mean(stage_one.decode(stage1_params, codes)))
  eval_config = stage_one_config.eval
  values = jnp.linspace(-eval_config.traversal_range, eval_config.traversal_range,
                        eval_config.traversal_steps)
  stage_one_metrics = json.loads((run_root / "stage1" / "metrics.json").read_text())
  active = np.flatnonzero(np.asarray(stage_one_metrics["latent_mean_variance"])
                          > eval_config.active_variance_threshold)
  if not len(active):
    active = np.arange(code.shape[-1])

  reconstructions = {"input": images, "stage one": decode(code)}
  traversals = {"stage one": _traverse_stage_one(stage_one, stage1_params, code[0],
                                                   values)[active]}
  for name, (model, params) in models.items():
    reconstructions[f"MS-{name.upper()}"] = jax.jit(model.reconstruct)(params, images)
    traversals[f"MS-{name.upper()} (w fixed)"] = jax.jit(model.traverse)(
        params, images[0], values)[active]

  paths = [epath.Path(f"{prefix}-reconstructions.png"),
           epath.Path(f"{prefix}-traversals.png")]
  fig, axes = plt.subplots(len(reconstructions), 1,
                           figsize=(_NUM_SHOWN * 0.9, 1.0 * len(reconstructions)))
  for ax, (label, batch) in zip(axes, reconstructions.items()):
    _show(ax, visualize.image_grid(np.asarray(batch), _NUM_SHOWN), label)
  fig.tight_layout()
  _save(fig, paths[0])

  num_columns = min(3, len(traversals))
  num_rows = -(-len(traversals) // num_columns)
  cell = 0.45  # Inches per image.
  fig, axes = plt.subplots(
      num_rows, num_columns, squeeze=False,
      figsize=(num_columns * (cell * len(values) + 0.6),
               num_rows * (cell * len(active) + 0.5) + 0.4))
  # The grid's rows: one latent each, `visualize`'s padding between them.
  row_pitch = images.shape[1] + 2
  row_centers = 2 + np.arange(len(active)) * row_pitch + images.shape[1] / 2
  for ax, (label, sweep) in zip(axes.flat, traversals.items()):
    sweep = np.asarray(sweep)
    _show(ax, visualize.image_grid(sweep.reshape(-1, *sweep.shape[2:]), sweep.shape[1]),
          label)
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks(row_centers, [f"z{j}" for j in active], fontsize="small")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
      spine.set_visible(False)
  for ax in axes.flat[len(traversals):]:
    ax.set_axis_off()
  fig.suptitle(f"each row: one latent swept over ±{eval_config.traversal_range:g}, "
               "the others at the image's code", fontsize="small")
  fig.tight_layout()
  _save(fig, paths[1])
  return paths


def samples_from_same_z(configs: Mapping[str, ml_collections.ConfigDict],
                        run_root: epath.PathLike, path: epath.PathLike,
                        num_samples: int = _NUM_SHOWN) -> epath.Path:
  """One row per model: stage one's dec(z), then each family's sample of (z, w).

  Every row decodes the same z ~ N(0, I) (column j: the same z_j); each
  family draws its own w ~ p(w). `configs` and `run_root` as `model_figures`.
  """
  _, _, stage_one, stage1_params, models = load_runs(configs, run_root)
  code_rng, latent_rng = jax.random.split(jax.random.PRNGKey(_FIGURE_KEY))
  codes = jax.random.normal(code_rng, (num_samples, stage_one.latent_dim))
  rows = {"stage one: dec(z)": jax.jit(
      lambda codes: losses.decoder_mean(stage_one.decode(stage1_params, codes)))(codes)}
  for name, (model, params) in models.items():
    sample = jax.jit(lambda params, codes, model=model: model.decode(
        params, codes, model.sample_latents(params, codes, latent_rng)))
    rows[f"MS-{name.upper()}: (z, w ~ p(w))"] = sample(params, codes)
  fig, axes = plt.subplots(len(rows), 1, figsize=(num_samples * 0.9, 1.0 * len(rows)))
  for ax, (label, batch) in zip(axes, rows.items()):
    _show(ax, visualize.image_grid(np.asarray(batch), num_samples), label)
  fig.tight_layout()
  path = epath.Path(path)
  _save(fig, path)
  return path


def _show(ax, grid: np.ndarray, title: str) -> None:
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
  ax.set_title(title, fontsize="small")
  ax.set_axis_off()


def plot_pretrained(rows, directory: epath.PathLike) -> list[epath.Path]:
  """The pretrained study's plots (`pretrained_study`); returns their paths.

  reconstruction_vs_mig.png -- the paper's figure: reconstruction MSE against
      MIG, each stage one and its multi-stage models at the same MIG (they
      share z), linked by a line per checkpoint;
  sample_fid.png            -- FID of samples per checkpoint and model;
  conditioning_fidelity.png -- fidelity R^2 on the informative latents.
  """
  directory = epath.Path(directory)
  checkpoints = list(dict.fromkeys(row["checkpoint"] for row in rows))
  models = _models(rows)
  colours = {model: f"C{i}" for i, model in enumerate(models)}
  paths = []

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name in checkpoints:
    group = [row for row in rows if row["checkpoint"] == name]
    finite = [row for row in group if np.isfinite(row["mse_ratio"])]
    mig = group[0]["mig"]
    ax.plot([mig] * len(finite), [row["reconstruction_mse"] for row in finite],
            color="0.7", zorder=1)
    ax.annotate(name, (mig, max(row["reconstruction_mse"] for row in finite)),
                textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    for row in finite:
      ax.scatter(mig, row["reconstruction_mse"], color=colours[row["model"]], zorder=2,
                 marker="s" if row["model"] == results.STAGE_ONE else "o")
  for model in models:
    ax.scatter([], [], color=colours[model], label=model,
               marker="s" if model == results.STAGE_ONE else "o")
  ax.set_yscale("log")
  ax.set_xlabel("MIG (stage one's z, shared by its multi-stage models)")
  ax.set_ylabel("reconstruction squared error per image")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize="small")
  fig.tight_layout()
  paths.append(directory / "reconstruction_vs_mig.png")
  _save(fig, paths[-1])

  for filename, key, label in (
      ("sample_fid.png", "fid", "FID of samples (lower is better)"),
      ("conditioning_fidelity.png", "fidelity_r2_informative",
       "conditioning fidelity R^2, latents with >= 0.5 nats")):
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
      values = [next((row[key] for row in rows if row["checkpoint"] == name
                      and row["model"] == model), None) for name in checkpoints]
      ax.bar(np.arange(len(checkpoints)) + i * width,
             [np.nan if v is None else v for v in values], width,
             color=colours[model], label=model)
    ax.set_xticks(np.arange(len(checkpoints)) + 0.4 - width / 2, checkpoints,
                  fontsize="small")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(directory / filename)
    _save(fig, paths[-1])
  return paths
