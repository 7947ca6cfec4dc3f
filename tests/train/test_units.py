"""Unit tests of the engine's pieces: convergence, splits, schedules."""
import math

import numpy as np
import pytest

from optbench_jax import data
from optbench_jax.analysis import seeds
from optbench_jax.train import outputs
from optbench_jax.engine import schedules


@pytest.mark.parametrize("losses, expected", [
    ([1.0, 0.5, 0.3, 0.299, 0.2995], 3),   # later gains < 1 %
    ([1.0, 0.5, 0.3, 0.2, 0.1], None),     # keeps improving: not converged
    ([1.0, 0.9, 1.2, 1.3, 0.95], 2),       # best at epoch 2, never beaten
    ([1.0, math.nan, 0.5], None),          # the last epoch still improved
    ([1.0, 0.5, 0.499], 2),                # confirmed by the last epoch
    ([0.5], None),                         # one evaluation confirms nothing
    ([math.nan, math.nan], None),
])
def test_convergence_epoch_rule(losses, expected):
  assert outputs.convergence_epoch(losses) == expected


def test_summary_row_tells_not_converged_from_converged():
  meta = {"primary_metric": "accuracy", "status": "completed"}
  history = [{"epoch": e, "val_loss": v, "accuracy": 0.5, "status": "ok",
              "train_time_s": 1.0} for e, v in enumerate((1.0, 0.5, 0.2), 1)]
  row = outputs.summarize(history, meta, True)
  assert row["converged"] is False and "convergence_epoch" not in row
  assert "time_to_convergence_s" not in row
  history[-1]["val_loss"] = 0.499
  row = outputs.summarize(history, meta, True)
  assert row["converged"] is True and row["convergence_epoch"] == 2
  assert row["time_to_convergence_s"] == 2.0


def test_prepare_split_is_fixed_by_seed_and_caps_training():
  raw = data.load("image_classification", "digits", None)
  a = data.prepare(raw, seed=3, max_samples=100)
  b = data.prepare(raw, seed=3, max_samples=100)
  c = data.prepare(raw, seed=4, max_samples=100)
  np.testing.assert_array_equal(a.val["label"], b.val["label"])
  np.testing.assert_array_equal(a.train["image"], b.train["image"])
  assert not np.array_equal(a.val["image"], c.val["image"])
  assert len(a.train["label"]) == 100
  assert len(a.val["label"]) == round(0.1 * len(raw.train["label"]))
  # The split seed alone fixes the split (not the run seeds).
  assert a.info == raw.info


def test_synthetic_dataset_is_deterministic_and_has_real_shapes():
  a = data.load("image_classification", "synthetic", None)
  b = data.load("image_classification", "synthetic", None)
  assert a.train["image"].shape[1:] == (28, 28, 1)
  np.testing.assert_array_equal(a.train["image"], b.train["image"])
  assert set(np.unique(a.train["label"])) == set(range(10))


def test_cosine_schedule_warms_up_and_decays_to_zero():
  shape = schedules.shape("cosine", total_steps=100, warmup_steps=10)
  assert float(shape(0)) == 0.0
  assert float(shape(10)) == pytest.approx(1.0)
  assert float(shape(100)) == pytest.approx(0.0, abs=1e-6)
  assert 0.0 < float(shape(55)) < 1.0
  constant = schedules.shape("none", total_steps=100)
  assert float(constant(0)) == float(constant(99)) == 1.0


def test_over_seeds_is_mean_std_and_t_half_width():
  """seeds.csv by hand: values 1, 2, 4 → mean 7/3, s = √(7/3), 95 %
  half-width t₀.₉₇₅,₂·s/√3 with t₀.₉₇₅,₂ = 4.302652729749464 (df = 2 has a
  closed form); a diverged run (no values) counts in n_diverged only."""
  rows = [{"task": "t", "dataset": "d", "model": "m", "primary_metric": "acc",
           "optimizer": "adam", "learning_rate": 1e-3, "status": "completed",
           "best_primary": v, "converged": c, "convergence_epoch": e}
          for v, c, e in ((1.0, True, 3), (2.0, False, None),
                          (4.0, True, 5))]
  rows.append({**rows[0], "status": "diverged", "best_primary": None,
               "converged": False, "convergence_epoch": None})
  (summary,) = seeds.over_seeds(rows)
  std = math.sqrt(7 / 3)
  assert summary["n_seeds"] == 4 and summary["n_diverged"] == 1
  # the convergence epoch is a mean over the 2 seeds that converged
  assert summary["n_converged"] == 2
  assert summary["convergence_epoch_mean"] == 4.0
  assert summary["best_primary_mean"] == pytest.approx(7 / 3, rel=1e-12)
  assert summary["best_primary_std"] == pytest.approx(std, rel=1e-12)
  assert summary["best_primary_ci95"] == pytest.approx(
      4.302652729749464 * std / math.sqrt(3), rel=1e-12)
  assert "best_val_loss_mean" not in summary
