"""Every optimizer through the training engine (no per-optimizer branches).

The default suite runs, through the CLI, one optimizer per hook of the
host's loop and one two-pass method: SVRG (``epoch_start``'s full
gradient), Lookahead (``prepare_for_eval``; schedule_free_adamw, the other
user of that hook, runs in the ``slow`` tests) and SAM (``grad_fn``), and
checks the evaluations the histories count. Each kind of extra (grad_fn,
kfac_stats, hvp_fn + key, value + value_fn) trains one epoch of the
compiled program in ``tests/train/test_cost.py``. The ``slow`` tests run
one optimizer per kind of extra through the CLI, also vmapped, and every
registered one, as ``--optimizers all`` does.
"""
import csv

import pytest

from optbench_jax import cli, transforms
from tests.train.helpers import read_history, small_run_args

ONE_PER_EXTRA = ["sam", "svrg", "kfac", "adahessian", "lbfgs", "lookahead"]
THROUGH_THE_HOST = ["sam", "svrg", "lookahead"]
STEPS = 3  # 96 examples in batches of 32
# Per epoch: the engine's gradient each step, SAM's second one, SVRG's
# snapshot gradient each step and its full-gradient pass (3 batches).
GRAD_EVALS = {"sam": 2 * STEPS, "svrg": 2 * STEPS + 3, "lookahead": STEPS}


def _run(tmp_path, optimizers, extra=()):
  args = small_run_args(tmp_path, optimizers=",".join(optimizers), epochs=2,
                        batch_size=32, max_samples=96, extra=extra)
  assert cli.main(args) == 0
  campaign = tmp_path / "image_classification" / "synthetic" / "cnn_scratch"
  with open(campaign / "summary.csv") as f:
    rows = {r["optimizer"]: r for r in csv.DictReader(f)}
  assert list(rows) == list(optimizers)
  return campaign, rows


def test_the_hosts_hooks_train_and_count_their_evaluations(tmp_path):
  campaign, rows = _run(tmp_path, THROUGH_THE_HOST)
  assert (campaign / "accuracy_vs_cost.png").stat().st_size > 0
  for name in THROUGH_THE_HOST:
    assert rows[name]["status"] == "completed", name
    history = read_history(campaign / name)
    assert history[-1]["train_loss"] < history[0]["train_loss"], name
    # Cumulative counts, epoch by epoch.
    assert [h["steps"] for h in history] == [STEPS, 2 * STEPS]
    assert [h["examples_seen"] for h in history] == [96, 192]
    assert [h["grad_evals"] for h in history] == [GRAD_EVALS[name],
                                                  2 * GRAD_EVALS[name]], name
    assert [h["hvps"] + h["forward_passes"] for h in history] == [0, 0]
    assert history[1]["cumulative_train_time_s"] == pytest.approx(
        history[0]["train_time_s"] + history[1]["train_time_s"])


@pytest.mark.slow
def test_each_kind_of_extra_trains_through_the_engine(tmp_path):
  campaign, rows = _run(tmp_path, ONE_PER_EXTRA)
  for name in ONE_PER_EXTRA:
    assert rows[name]["status"] == "completed", name
    history = read_history(campaign / name)
    assert history[-1]["train_loss"] < history[0]["train_loss"], name


@pytest.mark.slow
def test_all_optimizers_run_through_the_engine(tmp_path):
  names = list(transforms.available())
  _, rows = _run(tmp_path, names)
  # Every optimizer completes its two epochs (none diverges) at its
  # registry default learning rate.
  failed = {n: r["status"] for n, r in rows.items()
            if r["status"] != "completed"}
  assert not failed, failed


@pytest.mark.slow
def test_each_kind_of_extra_trains_with_runs_vmapped(tmp_path):
  """Two seeds per optimizer in one program: the extras, the epoch_start
  hook (SVRG), periodic ``lax.cond`` (KFAC, Shampoo, Sophia, AdaHessian)
  and batched decompositions all work under the engine's vmap."""
  names = ONE_PER_EXTRA + ["shampoo", "sophia"]
  campaign, _ = _run(tmp_path, names, extra=["--seeds", "0,1"])
  with open(campaign / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * len(names)
  for row in rows:
    assert row["status"] == "completed", row["optimizer"]
    assert row["runs_in_program"] == "2"
