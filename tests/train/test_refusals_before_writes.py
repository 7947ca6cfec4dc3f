"""Refusals of a campaign come before any file changes (issues 22 and 25).

The plan is compared with the results on disk for the whole campaign
before anything is loaded, trained or written (``plan.check_store``): each
test compares every byte of the output directory before and after the
refused command.
"""
import os

from optbench_jax import cli, store
from tests.train.helpers import small_run_args


def _snapshot(root):
  """``{relative path: bytes}`` of every file under ``root``."""
  files = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, root)] = f.read()
  return files


def _refused(capsys, args, *words):
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err, err
  for word in words:
    assert word in err, err
  return err


def test_a_second_campaign_into_the_same_directory_is_refused(tmp_path,
                                                              capsys):
  args = small_run_args(tmp_path, optimizers="adam", epochs=1, max_samples=64)
  assert cli.main(args) == 0
  before = _snapshot(tmp_path)
  _refused(capsys, args, "already holds 1 run", "--resume", "--output-dir",
           "--overwrite")
  assert _snapshot(tmp_path) == before
  # --overwrite trains it again, from the start, to the same numbers.
  assert cli.main(args + ["--overwrite"]) == 0
  history = os.path.join("image_classification", "synthetic", "cnn_scratch",
                         "adam", store.HISTORY)
  after = _snapshot(tmp_path)
  strip = lambda text: [line for line in text.decode().splitlines()
                        if "time_s" not in line]
  assert strip(after[history]) == strip(before[history])
  _refused(capsys, args + ["--overwrite", "--resume"], "give one of them")


def test_resume_with_a_changed_setting_refuses_before_training_anything(
    tmp_path, capsys):
  """``--optimizers sgd,adam --resume --epochs 3`` on a finished 2-epoch
  campaign of adam: sgd (new) is not trained first and no campaign file is
  rewritten; the refusal names adam's changed setting."""
  assert cli.main(small_run_args(tmp_path, optimizers="adam", epochs=2,
                                 max_samples=64)) == 0
  before = _snapshot(tmp_path)
  args = small_run_args(tmp_path, optimizers="sgd,adam", epochs=3,
                        max_samples=64, extra=["--resume"])
  _refused(capsys, args, "--epochs 2 → 3", "adam")
  assert _snapshot(tmp_path) == before


def test_resume_with_another_vocabulary_cap_keeps_the_vocabulary(tmp_path,
                                                                  capsys):
  base = ["run", "--task", "sentiment_analysis", "--dataset", "synthetic",
          "--model", "lstm_sentiment", "--optimizers", "adam", "--epochs",
          "1", "--batch-size", "32", "--max-samples", "64", "--quiet",
          "--output-dir", str(tmp_path)]
  assert cli.main(base) == 0
  before = _snapshot(tmp_path)
  assert any(p.endswith(store.VOCABULARY) for p in before)
  _refused(capsys, base + ["--resume", "--vocab-size", "50"],
           "--vocab-size", "--resume")
  assert _snapshot(tmp_path) == before
