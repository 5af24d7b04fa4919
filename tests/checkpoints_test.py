"""Checkpoints: resuming, refusing another model's, and older runs' compatibility."""

import asyncio
import json
import pathlib
import shutil
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import dsprites
from msdr_jax import checkpoints
from msdr_jax import data
from msdr_jax import multi_stage
from msdr_jax import parallel
from msdr_jax import run_directory
from msdr_jax import stage_one as stage_one_lib
from msdr_jax import steps
from msdr_jax import train
from msdr_jax import writers
from tests.data.old_run import make_fixture

OLD_RUN = pathlib.Path(__file__).resolve().parent / "data" / "old_run"
SHAPE = (64, 64, 1)


def _tiny_config(family="none"):
  config = dsprites.get_config("preset=tiny")
  config.stage2.family = family
  config.eval.num_points = 200
  return config


def _restore(directory: pathlib.Path) -> dict:
  return ocp.StandardCheckpointer().restore(directory / "default")


def _assert_same_trajectory(ours, theirs) -> None:
  """Same tree; values equal up to rounding of another XLA:CPU build.

  On the machine kind that made the fixture the values are bit-identical. On
  another CPU the last bits may differ, and a parameter whose gradient is
  within rounding of zero may take another Adam step; a changed batch, key or
  initialisation would move almost every parameter.
  """
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  differing = total = 0
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    differing += int(np.sum(~np.isclose(a, b, rtol=1e-5, atol=1e-6)))
    total += a.size
  assert differing <= total * 1e-3, f"{differing} of {total} values differ"


def test_an_older_stage_two_run_resumes_on_its_trajectory(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(OLD_RUN / "stage_two", workdir)
  shutil.rmtree(workdir / "checkpoints_stage2" / "6")  # Killed after step 3.
  config = _tiny_config("flow")
  config.stage2.flow.base = "gaussian"  # The flow of that version.
  stage1_params = jax.tree.map(np.asarray, make_fixture.given_params())
  # The older run directory is this config's, on this stage one.
  run_directory.check_workdir(config, str(workdir))
  run_directory.bind_workdir(config, str(workdir))

  model = multi_stage.MultiStageModel.from_config(config, make_fixture.given_stage_one())
  mesh = parallel.data_mesh()
  dataset = data.get_dataset(config.data)
  with writers.MetricWriter(str(workdir), enabled=False) as writer:
    state = train.train_stage(config, str(workdir), "stage2", model, dataset, writer,
                              mesh, frozen=(stage1_params,))
  assert int(state.step) == 6
  uninterrupted = _restore(OLD_RUN / "stage_two" / "checkpoints_stage2" / "6")
  _assert_same_trajectory(parallel.to_host(state.params), uninterrupted["params"])
  assert checkpoints.load_stage_two(config, str(workdir), model, stage1_params, 0)[1] == 6

  # Its new checkpoint records the stage one and the config: resuming it on
  # another stage one, or under another config (config.json gone), is refused.
  other_params = jax.tree.map(lambda x: x + 1e-3, stage1_params)
  digests = [stage_one_lib.params_digest(p)[:12] for p in (stage1_params, other_params)]
  another_stage_one = (rf"The stage two checkpoint 6 in .*checkpoints_stage2 was trained on "
                       rf"another stage one \(parameter digest {digests[0]} at step 0 there, "
                       rf"{digests[1]} at step 0 here\)\. Use another --workdir")
  with pytest.raises(run_directory.RunDirectoryError, match=another_stage_one):
    checkpoints.check_resumable(str(workdir), "stage2", 6,
                                checkpoints.run_record(config, other_params))
  with pytest.raises(run_directory.RunDirectoryError, match=another_stage_one):
    checkpoints.load_stage_two(config, str(workdir), model, other_params, 0)
  (workdir / "config.json").unlink()
  config.stage2.optimizer.learning_rate *= 2
  with pytest.raises(run_directory.RunDirectoryError,
                     match=r"checkpoint 6 in .* was trained with another config: "
                           r"stage2\.optimizer\.learning_rate is 0\.0001 there but 0\.0002 here "
                           r"\(1 key\(s\) differ\)"):
    with writers.MetricWriter(str(workdir), enabled=False) as writer:
      train.train_stage(config, str(workdir), "stage2", model, dataset, writer, mesh,
                        frozen=(stage1_params,))


def test_stage_one_checkpoints_keep_their_layout_and_trajectory(tmp_path):
  config = _tiny_config()
  dataset = data.get_dataset(config.data)
  stage_one = stage_one_lib.DisentanglingVAE.from_config(
      config.stage1, SHAPE, dataset.num_images)
  with writers.MetricWriter(str(tmp_path), enabled=False) as writer:
    train.train_stage(config, str(tmp_path), "stage1", stage_one, dataset, writer,
                      parallel.data_mesh())
  recorded = json.loads((OLD_RUN / "stage_one_run.json").read_text())
  for step in (3, 6):
    ours = make_fixture.leaf_summary(_restore(tmp_path / "checkpoints" / str(step)))
    theirs = recorded[str(step)]
    assert sorted(ours) == sorted(theirs)
    for path, leaf in ours.items():
      assert (leaf["shape"], leaf["dtype"]) == (theirs[path]["shape"], theirs[path]["dtype"])
      np.testing.assert_allclose(leaf["sum"], theirs[path]["sum"], rtol=1e-4, atol=1e-4,
                                 err_msg=f"step {step}, {path}")
  # The newest checkpoint damaged, and an empty step directory after it: both
  # set aside, and the run resumes from the one before them and ends where it did.
  uninterrupted = _restore(tmp_path / "checkpoints" / "6")["params"]
  damaged = max((p for p in (tmp_path / "checkpoints" / "6").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  damaged.write_bytes(damaged.read_bytes()[:damaged.stat().st_size // 3])
  (tmp_path / "checkpoints" / "5").mkdir()
  with writers.MetricWriter(str(tmp_path), enabled=False) as writer:
    state = train.train_stage(config, str(tmp_path), "stage1", stage_one, dataset, writer,
                              parallel.data_mesh())
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
      "3", "5.unreadable", "6", "6.unreadable"]
  jax.tree.map(np.testing.assert_array_equal, parallel.to_host(state.params), uninterrupted)
  # A later stage loads it, whatever devices wrote it.
  config.stage1.checkpoint = str(tmp_path)
  params, step = checkpoints.load_stage_one(config, stage_one)
  assert step == 6 and jax.tree.structure(params) == jax.tree.structure(
      jax.eval_shape(stage_one.init, jax.random.PRNGKey(0)))
  # Loading (read-only, as the evaluation does) skips a damaged checkpoint and
  # leaves it in place.
  (tmp_path / "checkpoints" / "6" / "_CHECKPOINT_METADATA").unlink()
  for file in (tmp_path / "checkpoints" / "6").rglob("*"):
    if file.is_file():
      file.write_bytes(b"")
  params, step = checkpoints.load_stage_one(config, stage_one)
  assert step == 3 and (tmp_path / "checkpoints" / "6").is_dir()
  # None readable: a one-line error naming the directory, nothing renamed, and
  # training does not silently start over.
  for file in (tmp_path / "checkpoints" / "3").rglob("*"):
    if file.is_file() and file.name != "_CHECKPOINT_METADATA":
      file.write_bytes(b"")
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  with pytest.raises(run_directory.RunDirectoryError,
                     match=r"No checkpoint in .*checkpoints can be read \(step 6"):
    checkpoints.load_stage_one(config, stage_one)
  config.stage1.checkpoint = ""
  with pytest.raises(run_directory.RunDirectoryError, match=r"Move the directory away"):
    with writers.MetricWriter(str(tmp_path), enabled=False) as writer:
      train.train_stage(config, str(tmp_path), "stage1", stage_one, dataset, writer,
                        parallel.data_mesh())
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_checkpoint_of_another_model_is_refused(tmp_path):
  config = _tiny_config()
  optimizer = steps.make_optimizer(config.stage1.optimizer)
  config.stage1.model.latent_dim = 4
  other = stage_one_lib.DisentanglingVAE.from_config(config.stage1, SHAPE)
  manager = ocp.CheckpointManager(tmp_path.absolute() / "checkpoints")
  manager.save(3, args=ocp.args.StandardSave(steps.create_train_state(
      other.init, optimizer, jax.random.PRNGKey(0))))
  manager.wait_until_finished()
  config.stage1.model.latent_dim = 10
  ours = stage_one_lib.DisentanglingVAE.from_config(config.stage1, SHAPE)
  state = steps.create_train_state(ours.init, optimizer, jax.random.PRNGKey(0))
  with pytest.raises(run_directory.RunDirectoryError,
                     match=r"Checkpoint 3 in .* does not match this config.s model "
                     r"\(params\['decoder'\]\['Dense_0'\]\['kernel'\] has shape \(4, 256\) "
                     r"there but \(10, 256\) here\)\. Use another --workdir\.$"):
    checkpoints.restore_or_create_state(manager, state, "stage1")
  manager.close()
  config.stage1.checkpoint = str(tmp_path)
  with pytest.raises(run_directory.RunDirectoryError,
                     match=r"\(step 3\) is not a model of this config \(architecture "
                     r"dlib_conv, latent_dim 10, images 64x64x1\): params\['decoder'\]"
                     r"\['Dense_0'\]\['kernel'\] has shape \(4, 256\) there but "
                     r"\(10, 256\) here\. Set --config"):
    checkpoints.load_stage_one(config, ours)


def test_missing_stage_one_checkpoint_is_named(tmp_path):
  config = _tiny_config()
  stage_one = stage_one_lib.DisentanglingVAE.from_config(config.stage1, SHAPE)
  config.stage1.checkpoint = str(tmp_path / "nowhere")
  with pytest.raises(run_directory.RunDirectoryError, match=r"nowhere does not exist\."):
    checkpoints.load_stage_one(config, stage_one)
  (tmp_path / "empty").mkdir()
  config.stage1.checkpoint = str(tmp_path / "empty")
  with pytest.raises(run_directory.RunDirectoryError, match=r"holds no stage-one checkpoint"):
    checkpoints.load_stage_one(config, stage_one)


def test_resuming_with_fewer_steps_than_trained_is_refused(tmp_path):
  config = _tiny_config()
  stage_one = stage_one_lib.DisentanglingVAE.from_config(config.stage1, SHAPE)
  state = steps.create_train_state(
      stage_one.init, steps.make_optimizer(config.stage1.optimizer), jax.random.PRNGKey(0))
  with ocp.CheckpointManager(tmp_path.absolute() / "checkpoints") as manager:
    manager.save(6, args=ocp.args.StandardSave(state.replace(step=6)))
  config.stage1.num_steps = 3
  with pytest.raises(run_directory.RunDirectoryError,
                     match=r"trained to step 6, beyond config.stage1.num_steps=3\. "
                     r"Use --config.stage1.num_steps=6"):
    train.train_and_evaluate(config, str(tmp_path))
  # Refused before anything is written: no results, no events file.
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


def test_reports_of_reads_finished_after_a_failed_restore_are_dropped(monkeypatch):
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  checkpoints._drop_closed_loop_reports()  # pylint: disable=protected-access
  checkpoints._drop_closed_loop_reports()  # Installed once.  pylint: disable=protected-access

  def unraisable(call):
    try:
      call()
    except Exception as e:  # pylint: disable=broad-except
      return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__,
                                   err_msg=None, object=None)

  loop = asyncio.new_event_loop()
  loop.close()
  # As TensorStore's thread reports a read completing after orbax's loop closed.
  sys.unraisablehook(unraisable(lambda: loop.call_soon_threadsafe(print)))
  assert not reported
  other = unraisable(lambda: 1 / 0)
  sys.unraisablehook(other)
  assert reported == [other]
