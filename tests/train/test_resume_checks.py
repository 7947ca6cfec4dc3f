"""Resume never builds on wrong settings or damaged state, and heals a run
directory to what an uninterrupted run leaves.

Tiny campaigns (synthetic data, cnn_scratch, 64 samples, adam): the program
is the one most engine tests compile, so it comes from the compile cache.
"""
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from optbench_jax import cli, data, models
from optbench_jax.train import checkpoint
from optbench_jax.train import run as run_lib
from tests.train.helpers import read_history, small_run_args, without_times


class Interrupt(Exception):
  pass


def _run_dir(root):
  return root / "image_classification" / "synthetic" / "cnn_scratch" / "adam"


def _run(root, *extra, epochs=2):
  return cli.main(small_run_args(root, optimizers="adam", epochs=epochs,
                                 max_samples=64, extra=list(extra)))


def _interrupted(root, monkeypatch, after_epoch, epochs=3):
  """Trains until ``after_epoch`` is written, then 'kills' the campaign."""
  real = run_lib.train_runs

  def interrupting(runs, splits, *, on_epoch=None, **kwargs):
    def hook(index, record):
      if record["epoch"] == after_epoch:
        raise Interrupt()
    return real(runs, splits, on_epoch=hook, **kwargs)

  monkeypatch.setattr(run_lib, "train_runs", interrupting)
  with pytest.raises(Interrupt):
    _run(root, epochs=epochs)
  monkeypatch.setattr(run_lib, "train_runs", real)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = tmp_path_factory.mktemp("reference")
  assert _run(root, epochs=3) == 0
  return without_times(read_history(_run_dir(root)))


@pytest.mark.parametrize("extra, expected", [
    (["--lr-overrides", "adam=0.01"], "learning rate 0.001 → 0.01"),
    (["--epochs", "4"], "--epochs 3 → 4"),
    (["--weight-decay", "0.1"], "--weight-decay 0.0 → 0.1"),
    (["--split-seed", "1"], "--split-seed 0 → 1"),
])
def test_resume_with_other_settings_is_refused_in_one_line(
    tmp_path, capsys, monkeypatch, extra, expected):
  _interrupted(tmp_path, monkeypatch, after_epoch=1)  # an unfinished run
  args = small_run_args(tmp_path, optimizers="adam", epochs=3,
                        max_samples=64, extra=["--resume", *extra])
  if "--epochs" in extra:  # the later flag wins in argparse
    args = [a for a in args if a != "3"]
    args.remove("--epochs")
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and expected in err and "--output-dir" in err, err


def test_finished_run_resumed_with_other_settings_is_refused(tmp_path,
                                                             capsys):
  assert _run(tmp_path) == 0
  assert _run(tmp_path, "--resume", "--lr-overrides", "adam=0.1") == 2
  assert "learning rate 0.001 → 0.1" in capsys.readouterr().err
  # Settings that do not change numbers may differ.
  assert _run(tmp_path, "--resume", "--eval-batch-size", "64",
              "--data-placement", "host") == 0


@pytest.mark.parametrize("damage", ["history", "metadata", "checkpoint"])
def test_damaged_files_are_retrained_never_built_upon(
    tmp_path, monkeypatch, reference, damage):
  _interrupted(tmp_path, monkeypatch, after_epoch=2)
  run = _run_dir(tmp_path)
  if damage == "history":
    (run / "history.json").write_text('[{"epoch": 1, "train')
  elif damage == "metadata":
    (run / "run_metadata.json").write_text("")
  else:  # every file of the latest checkpoint truncated
    latest = run / "checkpoints" / "epochs" / "2"
    for root, _, files in os.walk(latest):
      for name in files:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(max(0, os.path.getsize(f.name) // 3))
  assert _run(tmp_path, "--resume", epochs=3) == 0
  assert without_times(read_history(run)) == reference


def test_resume_heals_the_run_directory(tmp_path, monkeypatch, reference):
  _interrupted(tmp_path, monkeypatch, after_epoch=2)
  run = _run_dir(tmp_path)
  (run / ".tmp-abc123").write_text("partial")
  initial = run / "checkpoints" / "initial"
  shutil.rmtree(initial)
  assert _run(tmp_path, "--resume", epochs=3) == 0
  assert not list(run.glob(".tmp-*")) and initial.exists()
  assert without_times(read_history(run)) == reference
  # A finished run that lost its plots (killed before they were drawn) and
  # its initial parameters: they are recomputed from the seed.
  before = _initial_params(run)
  (run / "train_vs_val_loss.png").unlink()
  (run / ".tmp-def456").write_text("partial")
  shutil.rmtree(initial)
  assert _run(tmp_path, "--resume", epochs=3) == 0
  assert (run / "train_vs_val_loss.png").exists()
  assert not list(run.glob(".tmp-*"))
  after = _initial_params(run)
  assert jax.tree.all(jax.tree.map(np.array_equal, before, after))


def _initial_params(run):
  info = data.load("image_classification", "synthetic").info
  model = models.get("image_classification", "cnn_scratch").build(info)
  like = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jax.numpy.zeros((1, 28, 28, 1))))["params"]
  return checkpoint.restore_initial(str(run), like)


def test_result_files_honour_the_umask(tmp_path):
  previous = os.umask(0o022)
  try:
    assert _run(tmp_path) == 0
  finally:
    os.umask(previous)
  run = _run_dir(tmp_path)
  for path in (run / "history.json", run / "run_metadata.json",
               run / "train_vs_val_loss.png",
               run.parent / "summary.csv"):
    assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_sigterm_stops_like_ctrl_c_and_resume_finishes(tmp_path):
  args = small_run_args(tmp_path, optimizers="adam", epochs=30,
                        max_samples=64)
  process = subprocess.Popen([sys.executable, "-m", "optbench_jax", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  history = _run_dir(tmp_path) / "history.json"
  deadline = time.time() + 300
  while not history.exists() and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=300)
  assert process.returncode == 130, err[-2000:]
  assert err.strip().splitlines()[-1] == ("interrupted; continue with "
                                          "--resume")
  assert len(read_history(_run_dir(tmp_path))) < 30
  assert cli.main(args + ["--resume"]) == 0
  assert [h["epoch"] for h in read_history(_run_dir(tmp_path))] == list(
      range(1, 31))


def test_divergence_factor_marks_an_exploding_run(tmp_path):
  member = run_lib._Member(  # pylint: disable=protected-access
      rc=run_lib.RunConfig(task="image_classification", dataset="synthetic",
                           model="cnn_scratch", optimizer="adam",
                           learning_rate=1.0, divergence_factor=10.0),
      run_dir=str(tmp_path))
  member.history = [{"train_loss": 2.3}]
  diverged = run_lib._diverged  # pylint: disable=protected-access
  assert not diverged(member, True, 20.0, 22.9)
  assert diverged(member, True, 5.0, 44528.0)  # finite, but exploded
  member.rc = run_lib.RunConfig(**{**member.rc.__dict__,
                                   "divergence_factor": None})
  assert not diverged(member, True, 5.0, 44528.0)  # only NaN/inf by default
  assert diverged(member, True, float("nan"), None)


def test_an_interruption_waits_for_the_checkpoint_being_written():
  from optbench_jax.train import interrupts
  events = []
  with pytest.raises(KeyboardInterrupt):
    with interrupts.critical():
      interrupts.request_stop()     # the signal arrives mid-write
      events.append("write finished")
  assert events == ["write finished"]
  with pytest.raises(KeyboardInterrupt):
    interrupts.request_stop()       # outside a write: at once
  with interrupts.critical():       # nothing pending any more
    pass
