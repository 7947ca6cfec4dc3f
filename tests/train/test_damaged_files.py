"""Damaged result files (issue 25): ``run --resume`` heals each one to what
an uninterrupted run leaves, ``analyze`` and ``report`` name it on one line.

A campaign is trained once per module and copied for each test: synthetic
image classification, cnn_scratch, adam, seeds 0 to 2 in programs of one
run (the program most engine tests compile). Its task's evaluation is made
to return samples, as generation tasks do (``samples/epoch_NNN.json``,
``samples/test.json``): its summed loss and confusion matrix, a function of
the epoch's parameters and the fixed evaluation subset, compared exactly.
The slow test does the same with a real generation task (machine
translation's copy task, lstm_seq2seq, greedy decoding). A test damages
several runs of its copy and heals them with one ``--resume``.
"""
import csv
import filecmp
import json
import os
import shutil

import jax
import numpy as np
import pytest

from optbench_jax import cli, data, models, store
from optbench_jax.tasks.image_classification import ImageClassification
from optbench_jax.train import checkpoint
from tests.train.helpers import read_history, without_times

IMAGES = ("image_classification", "synthetic", "cnn_scratch")
TEXT = ("machine_translation", "synthetic", "lstm_seq2seq")
COMMON = ["--optimizers", "adam", "--epochs", "2", "--batch-size", "32",
          "--max-samples", "64", "--quiet"]
SEEDS = ["--seeds", "0,1,2", "--runs-per-program", "1"]
IMAGE_ARGS = ["run", "--task", IMAGES[0], "--dataset", IMAGES[1], "--model",
              IMAGES[2], *COMMON, *SEEDS]
TEXT_ARGS = ["run", "--task", TEXT[0], "--dataset", TEXT[1], "--model",
             TEXT[2], *COMMON, *SEEDS, "--eval-max-samples", "16",
             "--beam-size", "1"]


@pytest.fixture(scope="module", autouse=True)
def image_samples():
  """Image classification's evaluation returns samples (module docstring)."""
  finalize = ImageClassification.finalize

  def with_samples(self, stats, info):
    return {**finalize(self, stats, info), "samples": [
        {"loss_sum": float(stats["loss_sum"]),
         "confusion": np.asarray(stats["confusion"]).tolist()}]}

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(ImageClassification, "finalize", with_samples)
    yield


def _train(root, args):
  assert cli.main([*args, "--output-dir", str(root)]) == 0
  return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  return _train(tmp_path_factory.mktemp("images"), IMAGE_ARGS)


def _copy(reference, tmp_path):
  out = tmp_path / "out"
  shutil.copytree(reference, out)
  return out


def _image_run(root, seed=0):
  return root.joinpath(*IMAGES, "adam", f"seed_{seed}")


def _text_run(root, seed):
  return root.joinpath(*TEXT, "adam", f"seed_{seed}")


def _truncate(path, share=3):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // share)


def _damage_checkpoint(directory, how):
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
  if how == "truncated":      # every file cut to a third
    for path in files:
      _truncate(path)
  else:                       # the largest array file lost
    os.unlink(max(files, key=os.path.getsize))


def _unfinished(run):
  """As a kill after the last epoch, before the final metadata, leaves it."""
  meta = json.loads((run / store.METADATA).read_text())
  (run / store.METADATA).write_text(json.dumps({**meta, "status": "running"}))


def _leftovers(root):
  return [os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs
          if f.startswith(store.TMP_PREFIX)]


def _initial_params(run):
  info = data.load(*IMAGES[:2]).info
  model = models.get(IMAGES[0], IMAGES[2]).build(info)
  like = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jax.numpy.zeros((1, *info.input_shape))))["params"]
  return checkpoint.restore_initial(str(run), like)


def _one_line_error(capsys):
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  return lines[0]


# -- run_metadata.json ---------------------------------------------------------
def test_metadata_of_the_wrong_json_type_is_trained_again_and_leaves_no_tmp(
    images, tmp_path):
  root = _copy(images, tmp_path)
  run = _image_run(root)
  (run / store.METADATA).write_text("[]")
  assert cli.main([*IMAGE_ARGS, "--output-dir", str(root), "--resume"]) == 0
  assert without_times(read_history(run)) == without_times(
      read_history(_image_run(images)))
  assert json.loads((run / store.METADATA).read_text())["status"] == (
      "completed")
  assert not _leftovers(root)


# -- checkpoints/initial -------------------------------------------------------
def test_a_damaged_initial_checkpoint_is_written_again_on_resume(images,
                                                                 tmp_path):
  """Seed 0: finished, every file truncated; seed 1: unfinished (resumed
  from its last epoch), an array file lost."""
  root = _copy(images, tmp_path)
  for seed, how in ((0, "truncated"), (1, "missing")):
    _damage_checkpoint(_image_run(root, seed) / store.CHECKPOINTS /
                       store.INITIAL, how)
    assert not checkpoint.initial_intact(str(_image_run(root, seed)))
  _unfinished(_image_run(root, 1))
  assert cli.main([*IMAGE_ARGS, "--output-dir", str(root), "--resume"]) == 0
  for seed in (0, 1):
    run, reference = _image_run(root, seed), _image_run(images, seed)
    assert jax.tree.all(jax.tree.map(np.array_equal, _initial_params(run),
                                     _initial_params(reference)))
    assert without_times(read_history(run)) == without_times(
        read_history(reference))


def test_a_finished_runs_damaged_epoch_checkpoint_is_trained_again(images,
                                                                  tmp_path):
  """Seed 0: its last epoch's checkpoint truncated (trained again from
  epoch 1); seed 1: an array of epoch 1's lost (trained again from the
  start). Both end as the uninterrupted runs: every kept checkpoint
  readable, the same history and samples (a function of each epoch's
  parameters); seed 2, intact, is not touched."""
  root = _copy(images, tmp_path)
  epochs = lambda seed: (_image_run(root, seed) / store.CHECKPOINTS /
                         store.EPOCH_CHECKPOINTS)
  _damage_checkpoint(epochs(0) / "2", "truncated")
  _damage_checkpoint(epochs(1) / "1", "missing")
  untouched = _image_run(root, 2) / store.METADATA
  before = untouched.read_bytes()
  assert cli.main([*IMAGE_ARGS, "--output-dir", str(root), "--resume"]) == 0
  for seed in (0, 1):
    run, reference = _image_run(root, seed), _image_run(images, seed)
    kept = checkpoint.Checkpoints(str(run))
    try:
      assert kept.epochs() == [1, 2] and not kept.damaged_epochs(), seed
    finally:
      kept.close()
    assert without_times(read_history(run)) == without_times(
        read_history(reference))
    _same_samples(run, reference)
  assert untouched.read_bytes() == before
  assert not _leftovers(root)


@pytest.mark.parametrize("which", ["initial", "epoch"])
def test_analyze_names_a_damaged_checkpoint_in_one_line(images, tmp_path,
                                                        capsys, which):
  root = _copy(images, tmp_path)
  run = _image_run(root)
  damaged = (run / store.CHECKPOINTS / store.INITIAL if which == "initial"
             else run / store.CHECKPOINTS / store.EPOCH_CHECKPOINTS / "2")
  _damage_checkpoint(damaged, "missing")
  capsys.readouterr()
  assert cli.main(["analyze", "--run-dir", str(run), "--what", "landscape1d",
                   "--points-1d", "3", "--samples", "16"]) == 2
  line = _one_line_error(capsys)
  assert str(damaged) in line, line
  if which == "initial":
    assert "run --resume" in line, line


# -- samples -------------------------------------------------------------------
def _same_samples(run, reference):
  names = sorted(os.listdir(reference / store.SAMPLES))
  assert names == ["epoch_001.json", "epoch_002.json", "test.json"]
  assert sorted(os.listdir(run / store.SAMPLES)) == names
  for name in names:
    assert json.loads((run / store.SAMPLES / name).read_text()) == json.loads(
        (reference / store.SAMPLES / name).read_text()), name


def _damage_samples(runs):
  """Seed 0, finished: epoch 1's and the test split's samples damaged
  (their checkpoints kept). Seed 1, finished: epoch 2's, its checkpoint
  gone. Seed 2, unfinished: epoch 2's."""
  _truncate(runs[0] / store.SAMPLES / "epoch_001.json")
  (runs[0] / store.SAMPLES / "test.json").write_text("")
  (runs[0] / store.SAMPLES / ".tmp-killed").write_text("[")
  for run in runs[1:]:
    _truncate(run / store.SAMPLES / "epoch_002.json")
  shutil.rmtree(runs[1] / store.CHECKPOINTS / store.EPOCH_CHECKPOINTS / "2")
  _unfinished(runs[2])


def _healed(runs, references):
  """Every sample file and history as the uninterrupted runs'; seed 0 was
  evaluated again, not trained (its history and metadata untouched); the
  others trained again from epoch 1, whose checkpoint they kept."""
  for seed, (run, reference) in enumerate(zip(runs, references)):
    names = sorted(os.listdir(reference / store.SAMPLES))
    assert names == ["epoch_001.json", "epoch_002.json", "test.json"]
    assert sorted(os.listdir(run / store.SAMPLES)) == names
    for name in names:
      assert json.loads((run / store.SAMPLES / name).read_text()) == (
          json.loads((reference / store.SAMPLES / name).read_text())), (
              seed, name)
    assert without_times(read_history(run)) == without_times(
        read_history(reference))
    assert os.path.isdir(run / store.CHECKPOINTS / store.EPOCH_CHECKPOINTS /
                         "2")
  for name in (store.HISTORY, store.METADATA):
    assert filecmp.cmp(runs[0] / name, references[0] / name,
                       shallow=False), name


def test_damaged_samples_are_healed_to_the_uninterrupted_ones(images,
                                                             tmp_path):
  root = _copy(images, tmp_path)
  runs = [_image_run(root, seed) for seed in range(3)]
  _damage_samples(runs)
  assert cli.main([*IMAGE_ARGS, "--output-dir", str(root), "--resume"]) == 0
  _healed(runs, [_image_run(images, seed) for seed in range(3)])
  assert not _leftovers(root)


@pytest.mark.slow
def test_damaged_decoded_samples_are_healed_to_the_uninterrupted_ones(
    tmp_path):
  text = _train(tmp_path / "reference", TEXT_ARGS)
  root = _copy(text, tmp_path)
  runs = [_text_run(root, seed) for seed in range(3)]
  _damage_samples(runs)
  assert cli.main([*TEXT_ARGS, "--output-dir", str(root), "--resume"]) == 0
  _healed(runs, [_text_run(text, seed) for seed in range(3)])
  assert not _leftovers(root)


# -- history.json in the report ------------------------------------------------
def test_report_names_a_run_whose_history_alone_is_damaged(images, tmp_path,
                                                           capsys):
  root = _copy(images, tmp_path)
  _truncate(_image_run(root, seed=1) / store.HISTORY)
  assert cli.main(["report", "--campaign-dir", str(root)]) == 0
  capsys.readouterr()
  out = root / "report"
  report = (out / "report.md").read_text()
  line, = [l for l in report.splitlines() if "history damaged" in l]
  assert "| adam | 1 |" in line and "history.json" in line, line
  assert "? | ?" not in report
  # Its numbers are in no table or statistic.
  with open(out / "tables" / "runs.csv") as f:
    runs = list(csv.DictReader(f))
  assert [r["seed"] for r in runs] == ["0", "2"]
  with open(out / "tables" / os.path.join(*IMAGES) / "summary.csv") as f:
    summary, = list(csv.DictReader(f))
  assert summary["n_completed"] == "2"
