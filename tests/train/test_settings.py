"""Run settings: declared once, every one a flag, recorded, validated."""
import csv
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import cli, store
from optbench_jax.engine import optimizer as optimizer_lib
from optbench_jax.train import settings
from optbench_jax.train.plan import make_plan, stored_run
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
  assert cli.main(small_run_args(tmp_path, optimizers="adamw", epochs=3,
                                 max_samples=64,
                                 extra=["--eval-every", "2",
                                        "--eval-max-samples", "20",
                                        "--init", "flax"])) == 0
  run = tmp_path / "image_classification" / "synthetic" / "cnn_scratch"
  meta = json.loads((run / "adamw" / "run_metadata.json").read_text())
  for field in settings.fields(settings.RunConfig):
    assert field.name in meta, field.name
  assert (meta["eval_every"], meta["eval_max_samples"], meta["init"],
          meta["n_val"]) == (2, 20, "flax", 20)
  assert meta["scheduler"] == "cosine"  # the task's default, resolved
  assert meta["weight_decay"] == 1e-2   # the optimizer's default, resolved

  # --eval-every 2 over 3 epochs: epochs 2 and 3 (the last) are evaluated.
  history = read_history(run / "adamw")
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


def test_each_optimizer_decays_by_its_own_default_unless_one_is_given(
    tmp_path):
  campaign = dict(task="image_classification", dataset="synthetic",
                  model="cnn_scratch", optimizers="adam,adamw",
                  output_dir=str(tmp_path))
  plan = make_plan(settings.CampaignConfig(**campaign))
  assert plan.campaign.weight_decay is None  # each optimizer its own
  runs = {r.config.optimizer: r.config for r in plan.runs}
  assert {n: rc.weight_decay for n, rc in runs.items()} == {
      "adam": 0.0, "adamw": 1e-2}  # torch.optim.Adam's, torch.optim.AdamW's
  for given in (0.0, 0.1):
    plan = make_plan(settings.CampaignConfig(**campaign, weight_decay=given))
    assert [r.config.weight_decay for r in plan.runs] == [given, given]

  # The optimizers built from the resolved runs, one step from θ on the same
  # gradient: AdamW's is Adam's (same rule, same default learning rate η)
  # minus its decoupled decay ηλθ.
  params = {"w": jnp.full((3, 2), 2.0), "b": jnp.full(2, -1.0)}
  grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.full(2, 0.25)}

  def step(rc):
    tx = optimizer_lib.build(rc.optimizer, rc.learning_rate,
                             weight_decay=rc.weight_decay,
                             grad_clip=rc.grad_clip)
    return tx.update(grads, tx.init(params), params)[0]

  adam, adamw = step(runs["adam"]), step(runs["adamw"])
  eta = runs["adamw"].learning_rate
  assert eta == runs["adam"].learning_rate
  for name, theta in params.items():
    np.testing.assert_allclose(adamw[name] - adam[name], -eta * 1e-2 * theta,
                               rtol=1e-4)


def test_a_stored_run_is_rebuilt_with_its_own_settings(tmp_path):
  """``analyze`` rebuilds a run from its metadata without resolving it a
  second time: a run trained with clipping off (``--grad-clip 0``) on a task
  that clips by default stays unclipped, and a setting its metadata lacks
  (added since) takes its resolved default."""
  plan = make_plan(settings.CampaignConfig(
      task="sentiment_analysis", dataset="synthetic", model="lstm_sentiment",
      optimizers="adam", grad_clip=0.0, output_dir=str(tmp_path)))
  (spec,) = plan.runs
  assert spec.config.grad_clip is None   # off: the task's default is 1.0
  metadata = store.as_json(dataclasses.asdict(spec.config))
  assert stored_run(metadata, spec.run_dir).config == spec.config
  del metadata["weight_decay"]           # as if recorded before it existed
  assert stored_run(metadata, spec.run_dir).config.weight_decay == 0.0
