"""Run settings: declared once, every one a flag, recorded, validated."""
import csv
import dataclasses
import json

import pytest

from optbench_jax import cli
from optbench_jax.train import settings
from tests.train.helpers import read_history, small_run_args


def test_every_setting_is_a_flag_and_every_run_setting_is_recorded(
    tmp_path, capsys):
  with pytest.raises(SystemExit):
    cli.main(["run", "--help"])
  help_text = capsys.readouterr().out
  for field in settings.fields(settings.CampaignConfig):
    flag = settings.flag_of(field)
    if flag is not None:
      assert flag in help_text, flag
  assert cli.main(small_run_args(tmp_path, optimizers="adam", epochs=3,
                                 max_samples=64,
                                 extra=["--eval-every", "2",
                                        "--eval-max-samples", "20",
                                        "--init", "flax"])) == 0
  run = tmp_path / "image_classification" / "synthetic" / "cnn_scratch"
  meta = json.loads((run / "adam" / "run_metadata.json").read_text())
  for field in settings.fields(settings.RunConfig):
    assert field.name in meta, field.name
  assert (meta["eval_every"], meta["eval_max_samples"], meta["init"],
          meta["n_val"]) == (2, 20, "flax", 20)
  assert meta["scheduler"] == "cosine"  # the task's default, resolved

  # --eval-every 2 over 3 epochs: epochs 2 and 3 (the last) are evaluated.
  history = read_history(run / "adam")
  assert [h["val_loss"] is not None for h in history] == [False, True, True]
  assert "accuracy" not in history[0] and "accuracy" in history[1]
  with open(run / "summary.csv") as f:
    row = next(csv.DictReader(f))
  assert float(row["best_val_loss"]) == min(h["val_loss"]
                                            for h in history[1:])
  # The rule runs over the evaluated epochs 2 and 3: converged at 2 (if
  # epoch 3 gained < 1 %) or not converged (the last epoch confirms nothing).
  assert (row["converged"], row["convergence_epoch"]) in (("True", "2"),
                                                          ("False", ""))


@pytest.mark.parametrize("extra, expected", [
    (["--eval-every", "0"], "--eval-every must be at least 1"),
    (["--eval-max-samples", "-3"], "--eval-max-samples must be at least 1"),
    (["--init", "xavier"], "unknown --init 'xavier'; valid: torch, flax"),
    (["--split-seed", "-1"], "--split-seed must be an integer in [0, "),
    (["--val-fraction", "1.5"], "--val-fraction must be in (0, 1)"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--seed", "-1"], "--seed must be an integer in [0, 4294967295]"),
    (["--seeds=-1,2"], "--seeds: -1 must be an integer in [0, 4294967295]"),
    (["--seeds", "-1,2"], "--seeds: -1 must be an integer in [0, 4294967295]"),
    (["--seed", "99999999999999999999"], "--seed must be an integer in"),
    (["--grad-clip", "-1"], "--grad-clip must be a finite number ≥ 0"),
    (["--label-smoothing", "2"], "--label-smoothing must be in [0, 1)"),
    (["--lr-policy", "fixed", "--lr", "0"], "--lr must be a positive finite"),
    (["--lr-policy", "fixed", "--lr", "nan"], "--lr must be a positive fin"),
    (["--lr-overrides", "adam=-1"], "--lr-overrides adam=-1.0: the learning"),
    (["--lr-grid", "0.1,inf"], "--lr-grid needs positive finite"),
    (["--warmup-steps", "-5"], "--warmup-steps must be a finite number ≥ 0"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number ≥ 0"),
    (["--max-samples", "0"], "--max-samples must be at least 1"),
    (["--output-dir="], "--output-dir must not be empty"),
    (["--divergence-factor", "0"], "--divergence-factor must be a positive"),
    (["--epochs", "abc"], "--epochs expects int (got 'abc')"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_setting_values_give_one_line_errors(tmp_path, capsys, extra,
                                                 expected):
  try:
    status = cli.main(small_run_args(tmp_path, optimizers="adam",
                                     extra=extra))
  except SystemExit as e:  # argparse's errors
    status = e.code
  assert status == 2
  err = capsys.readouterr().err.strip()
  assert expected in err and "\n" not in err, err
  assert not (tmp_path / "image_classification").exists()


def test_python_api_runs_are_checked_like_the_command_line():
  rc = settings.RunConfig(task="image_classification", dataset="synthetic",
                          model="cnn_scratch", optimizer="adam",
                          learning_rate=1e-3)
  settings.check(rc)
  with pytest.raises(settings.OptBenchError, match="--eval-every"):
    settings.check(dataclasses.replace(rc, eval_every=0))
  with pytest.raises(settings.OptBenchError, match="learning rate"):
    settings.check(dataclasses.replace(rc, learning_rate=-1.0))


def test_repeated_optimizers_and_unusable_output_dirs_are_refused(
    tmp_path, capsys):
  afile = tmp_path / "afile"
  afile.write_text("")
  for extra, expected in (
      (["--optimizers", "sgd,sgd"], "--optimizers repeats sgd"),
      (["--output-dir", str(afile)], "is an existing file"),
      (["--output-dir", str(afile / "below")], "which is a file"),
      (["--output-dir", "/proc/no/such"], "is not writable")):
    args = small_run_args(tmp_path / "out", optimizers="adam")
    args = args[:args.index("--optimizers")] + args[
        args.index("--optimizers") + 2:]
    if "--output-dir" in extra:
      args = args[:args.index("--output-dir")]
      args += ["--optimizers", "adam"]
    assert cli.main(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err, err
