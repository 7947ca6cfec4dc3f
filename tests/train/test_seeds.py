"""A run's numbers depend on its own settings only, never on its neighbours.

The train/validation split comes from ``--split-seed`` (default 0), not from
the run seeds, and each run's keys come from its own seed, so a run trained
together with others (``--seeds``, ``--lr-grid``) equals the same run trained
alone, and a campaign extended by more seeds later keeps its earlier runs.
"""
import json

from optbench_jax import cli
from tests.train.helpers import read_history, small_run_args

COMPARED = ("train_loss", "val_loss", "accuracy", "grad_norm",
            "learning_rate")


def _campaign(root):
  return root / "image_classification" / "synthetic" / "cnn_scratch"


def _max_relative_difference(a, b):
  assert [h["epoch"] for h in a] == [h["epoch"] for h in b]
  return max(abs(x[k] - y[k]) / max(abs(y[k]), 1e-12)
             for x, y in zip(a, b) for k in COMPARED)


def _run(root, *extra, max_samples=64):
  assert cli.main(small_run_args(root, optimizers="adam",
                                 max_samples=max_samples,
                                 extra=list(extra))) == 0


def test_seed_trained_beside_another_equals_it_alone(tmp_path):
  # The example: before --split-seed, seed 1 of --seeds 0,1 trained
  # on seed 0's split (train loss 25 % apart from --seed 1 after 2 epochs).
  _run(tmp_path / "together", "--seeds", "0,1", max_samples=256)
  _run(tmp_path / "alone", "--seed", "1", max_samples=256)
  together = read_history(_campaign(tmp_path / "together") / "adam" /
                          "seed_1")
  alone = read_history(_campaign(tmp_path / "alone") / "adam")
  # Measured 1.8e-7 (float32: the vmapped convolutions sum in another order).
  assert _max_relative_difference(together, alone) < 1e-5
  meta = json.loads((_campaign(tmp_path / "together") / "adam" / "seed_1" /
                     "run_metadata.json").read_text())
  assert meta["split_seed"] == 0 and meta["seed"] == 1


def test_lr_grid_runs_equal_runs_alone_and_more_seeds_keep_earlier_ones(
    tmp_path):
  grid = ["--lr-grid", "0.001,0.003", "--runs-per-program", "2"]
  _run(tmp_path / "grid", "--seeds", "0,1", *grid)
  adam = _campaign(tmp_path / "grid") / "adam"
  before = {(lr, s): (adam / f"lr_{lr}" / f"seed_{s}" / "history.json")
            .read_text() for lr in ("0.001", "0.003") for s in (0, 1)}
  _run(tmp_path / "alone", "--seed", "1", "--lr-policy", "fixed", "--lr",
       "0.003")
  alone = read_history(_campaign(tmp_path / "alone") / "adam")
  # Measured 1.6e-7.
  assert _max_relative_difference(
      read_history(adam / "lr_0.003" / "seed_1"), alone) < 1e-5

  # Extend the campaign by seed 2: the four finished runs are not retrained.
  _run(tmp_path / "grid", "--seeds", "0,1,2", *grid, "--resume")
  after = {key: (adam / f"lr_{key[0]}" / f"seed_{key[1]}" / "history.json")
           .read_text() for key in before}
  assert after == before
  _run(tmp_path / "alone2", "--seed", "2", "--lr-policy", "fixed", "--lr",
       "0.001")
  assert _max_relative_difference(
      read_history(adam / "lr_0.001" / "seed_2"),
      read_history(_campaign(tmp_path / "alone2") / "adam")) < 1e-5


def test_split_seed_changes_the_split_and_is_recorded(tmp_path):
  _run(tmp_path / "a", "--split-seed", "3")
  meta = json.loads((_campaign(tmp_path / "a") / "adam" /
                     "run_metadata.json").read_text())
  assert meta["split_seed"] == 3
  _run(tmp_path / "b")
  assert (read_history(_campaign(tmp_path / "a") / "adam")[0]["val_loss"]
          != read_history(_campaign(tmp_path / "b") / "adam")[0]["val_loss"])
