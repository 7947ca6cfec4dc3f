"""End to end through the CLI on synthetic data."""
import csv
import json
import subprocess
import sys

import pytest

from optbench_jax import cli
from tests.train.helpers import read_history, small_run_args


# ResNet-18 is ~100x the compute of cnn_scratch: fewer, smaller batches, one
# optimizer, half its widths and 64 test images (the campaign logic is the
# same for both models).
@pytest.mark.parametrize("model, batch_size, max_samples, optimizers, extra", [
    ("cnn_scratch", 32, 128, ("sgd_momentum", "adam"), ()),
    ("resnet18", 16, 32, ("sgd_momentum",),
     ("--width", "0.5", "--test-max-samples", "64"))])
def test_campaign_writes_results_and_learns(
    tmp_path, capsys, model, batch_size, max_samples, optimizers, extra):
  assert cli.main(small_run_args(tmp_path, model=model, batch_size=batch_size,
                                 max_samples=max_samples,
                                 optimizers=",".join(optimizers),
                                 extra=extra)) == 0
  printed = capsys.readouterr().out.splitlines()
  campaign = tmp_path / "image_classification" / "synthetic" / model
  for name in ("summary.csv", "epochs.csv", "accuracy_all_optimizers.png",
               "val_loss_all_optimizers.png"):
    assert (campaign / name).stat().st_size > 0, name
  with open(campaign / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["optimizer"] for r in rows] == list(optimizers)
  header = next(line for line in printed if line.startswith("run "))
  assert "best val accuracy" in header and "test accuracy" in header
  with open(campaign / "epochs.csv") as f:
    assert len(list(csv.DictReader(f))) == 2 * len(optimizers)  # 2 epochs
  for optimizer in optimizers:
    run = campaign / optimizer
    for name in ("run_metadata.json", "history.json",
                 "accuracy_and_val_loss.png", "train_vs_val_loss.png"):
      assert (run / name).stat().st_size > 0, (optimizer, name)
    history = read_history(run)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"], optimizer
    meta = json.loads((run / "run_metadata.json").read_text())
    assert meta["status"] == "completed"
    assert meta["learning_rate"] == {"sgd_momentum": 0.01, "adam": 1e-3}[
        optimizer]
    for key in ("versions", "device", "seed", "git_commit", "compile_time_s",
                "scheduler", "batch_size", "optimizer_defaults"):
      assert key in meta, key
    # The printed summary shows the test accuracy beside the validation
    # one (the synthetic dataset has a test split).
    (line,) = [line for line in printed if line.startswith(optimizer + " ")]
    assert f"{meta['test_metrics']['accuracy']:.4f}" in line.split()
    for key in ("train_loss", "val_loss", "accuracy", "f1_macro",
                "precision_macro", "recall_macro", "train_time_s",
                "eval_time_s", "learning_rate", "status"):
      assert key in history[0], key


def _run_module(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", "optbench_jax", *args],
                        capture_output=True, text=True, timeout=300, cwd=cwd)


BAD_INPUT = [
    (["--task", "image_clasification", "--dataset", "synthetic", "--model",
      "cnn_scratch"], "unknown task 'image_clasification'. Did you mean"),
    (["--task", "image_classification", "--dataset", "imagenet", "--model",
      "cnn_scratch"], "unknown dataset 'imagenet' for task"),
    (["--task", "image_classification", "--dataset", "synthetic", "--model",
      "vgg"], "unknown model 'vgg' for task 'image_classification'"),
    (["--task", "image_classification", "--dataset", "synthetic", "--model",
      "cnn_scratch", "--optimizers", "adam,nope"], "unknown optimizer 'nope'"),
    (["--task", "image_classification", "--dataset", "synthetic", "--model",
      "cnn_scratch", "--optimizers", "adam", "--lr-overrides", "sgd=0.1"],
     "--lr-overrides names 'sgd'"),
    (["--task", "image_classification", "--dataset", "synthetic", "--model",
      "cnn_scratch", "--scheduler", "step"], "unknown --scheduler 'step'"),
]


def test_bad_input_exits_2_with_one_line_and_no_traceback():
  """The whole exit path, in a process of its own (``python -m``)."""
  args, expected = BAD_INPUT[0]
  result = _run_module("run", *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, expected", BAD_INPUT)
def test_bad_input_gives_one_line_error(capsys, args, expected):
  assert cli.main(["run", *args]) == 2
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1, captured.err
  assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


def test_list_prints_tasks_models_and_optimizers():
  result = _run_module("list")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "image_classification" in out and "mnist_5k" in out
  assert "cnn_scratch" in out and "resnet18" in out
  assert "sgd_momentum" in out and "adaptive" in out and "0.001" in out


def test_diverging_run_is_recorded_and_campaign_goes_on(tmp_path):
  args = small_run_args(tmp_path, optimizers="sgd,adam", epochs=3,
                        extra=["--lr-overrides", "sgd=1e9"])
  assert cli.main(args) == 0
  campaign = tmp_path / "image_classification" / "synthetic" / "cnn_scratch"
  with open(campaign / "summary.csv") as f:
    rows = {r["optimizer"]: r for r in csv.DictReader(f)}
  assert rows["sgd"]["status"] == "diverged"
  assert rows["adam"]["status"] == "completed"
  history = read_history(campaign / "sgd")
  assert history[-1]["status"] == "diverged" and len(history) < 3
  assert len(read_history(campaign / "adam")) == 3


def test_importing_the_engine_touches_no_jax_backend():
  # --distributed must call jax.distributed.initialize before any backend
  # exists, so importing the CLI and the engine may not create one.
  code = ("import optbench_jax.cli, optbench_jax.train\n"
          "import jax._src.xla_bridge as xb\n"
          "assert not xb._backends, list(xb._backends)\n")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
