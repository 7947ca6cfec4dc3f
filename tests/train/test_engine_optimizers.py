"""Every optimizer through the training engine (no per-optimizer branches).

The default suite runs one optimizer per kind of extra the engine supplies
(grad_fn, full_grad via epoch_start, kfac_stats, hvp_fn + key, value +
value_fn, prepare_for_eval: lookahead; schedule_free_adamw, the other user of
that hook, runs in the ``slow`` tests); the ``slow`` test runs every
registered one, as ``--optimizers all`` does.
"""
import csv

import pytest

from optbench_jax import cli, transforms
from tests.train.helpers import read_history, small_run_args

ONE_PER_EXTRA = ["sam", "svrg", "kfac", "adahessian", "lbfgs", "lookahead"]


def _run(tmp_path, optimizers, extra=()):
  args = small_run_args(tmp_path, optimizers=",".join(optimizers), epochs=2,
                        batch_size=32, max_samples=96, extra=extra)
  assert cli.main(args) == 0
  campaign = tmp_path / "image_classification" / "synthetic" / "cnn_scratch"
  with open(campaign / "summary.csv") as f:
    rows = {r["optimizer"]: r for r in csv.DictReader(f)}
  assert list(rows) == list(optimizers)
  return campaign, rows


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
