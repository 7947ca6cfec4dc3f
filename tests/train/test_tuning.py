"""Tuning (issue 24): trials planned from the search spaces, trained vmapped
with their traced hyperparameters, selected on validation and re-run on
fresh seeds; the budget curve."""
import csv
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optbench_jax import cli, store, transforms
from optbench_jax.analysis import budget
from optbench_jax.engine import optimizer as optimizer_lib
from optbench_jax.errors import OptBenchError
from optbench_jax.train import plan as plan_lib
from optbench_jax.train import tuning
from optbench_jax.train.settings import CampaignConfig
from tests.train.helpers import read_history, small_run_args

SYNTHETIC = dict(task="image_classification", dataset="synthetic",
                 model="cnn_scratch")


def _campaign(root):
  return root / "image_classification" / "synthetic" / "cnn_scratch"


# -- the plan ----------------------------------------------------------------
def test_random_trials_sample_the_space_and_trace_its_ranges(tmp_path):
  plan = plan_lib.make_plan(CampaignConfig(
      **SYNTHETIC, optimizers="adamw,sam", tune="random", trials=3,
      seeds=[0, 1], output_dir=str(tmp_path)))
  assert plan.runs == () and len(plan.trials) == 6
  adamw = plan.trials_of("adamw")
  space = transforms.get("adamw").search_space
  for k, spec in enumerate(adamw):
    rc = spec.config
    assert rc.trial == k and rc.seed == 100
    assert rc.traced_hyperparameters == ("b1", "weight_decay")
    assert space["learning_rate"].low <= rc.learning_rate <= space[
        "learning_rate"].high
    assert 1 - 0.5 <= rc.optimizer_hyperparameters["b1"] <= 1 - 0.02
    assert 5e-3 <= rc.weight_decay <= 1.0
    assert spec.run_dir == str(_campaign(tmp_path) / "trials" / "adamw" /
                               f"trial_{k:03d}")
  assert len({s.config.learning_rate for s in adamw}) == 3
  # SAM's rho is a choice: static (its trials train in one program per rho).
  sam = plan.trials_of("sam")[0].config
  assert sam.traced_hyperparameters == ()
  assert sam.optimizer_hyperparameters["rho"] in (0.01, 0.02, 0.05)
  reruns = plan.reruns(adamw[1].config)
  assert [r.config.seed for r in reruns] == [0, 1]
  assert all(r.config.trial is None for r in reruns)
  assert reruns[0].run_dir == str(_campaign(tmp_path) / "adamw" / "seed_0")
  assert reruns[0].config.optimizer_hyperparameters == (
      adamw[1].config.optimizer_hyperparameters)


def test_a_weight_decay_the_campaign_sets_is_not_searched(tmp_path):
  plan = plan_lib.make_plan(CampaignConfig(
      **SYNTHETIC, optimizers="adamw", tune="random", trials=3,
      weight_decay=0.0, output_dir=str(tmp_path)))
  for spec in plan.trials:
    assert spec.config.weight_decay == 0.0
    assert spec.config.traced_hyperparameters == ("b1",)
  assert len({s.config.optimizer_hyperparameters["b1"]
              for s in plan.trials}) == 3


def test_grid_trials_are_log_spaced_over_the_learning_rate_range():
  lrs = [p["learning_rate"] for p in tuning.points("adamw", "grid", 5, 0)]
  assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-2)
  assert np.allclose(np.diff(np.log10(lrs)), 0.5)
  assert all(set(p) == {"learning_rate"}
             for p in tuning.points("adamw", "grid", 5, 0))
  assert tuning.traced("adamw", "grid") == ()


@pytest.mark.parametrize("settings, message", [
    (dict(trials=4), "--trials needs --tune random or --tune grid"),
    (dict(tune="random"), "--tune random needs --trials N"),
    (dict(tune="grid", trials=3, lr_grid=[0.1, 0.2]),
     "--tune grid chooses the learning rates; omit --lr-grid"),
    (dict(tune="random", trials=3, seeds=[0, 100]),
     "--seeds contains --tune-seed 100"),
])
def test_tuning_refusals_are_one_line(settings, message, tmp_path):
  with pytest.raises(OptBenchError, match=message.replace("-", r"\-")) as e:
    plan_lib.make_plan(CampaignConfig(**SYNTHETIC, optimizers="adamw",
                                      output_dir=str(tmp_path), **settings))
  assert "\n" not in str(e.value)


# -- traced hyperparameters ----------------------------------------------------
TRACED = [name for name, spec in transforms.available().items()
          if tuning.traced(name, "random")]


def test_some_optimizers_have_traced_dimensions():
  assert {"adamw", "lamb", "nesterov"} <= set(TRACED)


@pytest.mark.parametrize("name", TRACED)
def test_traced_hyperparameters_update_as_the_static_ones(name):
  """The injected values (set per run in the state) give the updates the
  same optimizer built with those values as constants gives."""
  assert not transforms.get(name).needs
  point = tuning.points(name, "random", 1, seed=7)[0]
  lr = point.pop("learning_rate")
  decay = point.pop("weight_decay", None)
  keys = tuning.traced(name, "random")
  static = optimizer_lib.build(name, lr, weight_decay=decay,
                               hyperparameters=point)
  # Built with other values, then given the point's in the state.
  other = {k: v * 0.5 for k, v in point.items()}
  traced = optimizer_lib.build(
      name, lr, weight_decay=None if decay is None else decay * 0.5,
      hyperparameters=other, traced=keys)
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
            "b": jnp.linspace(0.5, 1.0, 4)}
  values = {k: decay if k == "weight_decay" else point[k] for k in keys}
  s_static = static.init(params)
  s_traced = optimizer_lib.set_hyperparameters(traced.init(params), values)
  p_static = p_traced = params
  update = jax.jit(lambda tx_state, p, g, tx=None: tx.update(g, tx_state, p),
                   static_argnames="tx")
  for step in range(3):
    grads = jax.tree.map(lambda x: jnp.cos(x * (step + 1)), p_static)
    u_static, s_static = update(s_static, p_static, grads, tx=static)
    grads = jax.tree.map(lambda x: jnp.cos(x * (step + 1)), p_traced)
    u_traced, s_traced = update(s_traced, p_traced, grads, tx=traced)
    p_static = optax.apply_updates(p_static, u_static)
    p_traced = optax.apply_updates(p_traced, u_traced)
  # float32: the hyperparameters are float32 values in the state and
  # weakly typed constants in the static build.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               p_traced, p_static)


def test_untraced_hyperparameter_refused_by_set_hyperparameters():
  tx = optimizer_lib.build("adamw", 1e-3, weight_decay=0.01,
                           traced=("weight_decay",))
  with pytest.raises(ValueError, match="not traced"):
    optimizer_lib.set_hyperparameters(tx.init({"w": jnp.ones(2)}),
                                      {"b1": 0.5})
  with pytest.raises(ValueError, match="need values"):
    optimizer_lib.build("adamw", 1e-3, traced=("weight_decay",))


# -- the campaign ----------------------------------------------------------------
def _tuned(root, *extra):
  return cli.main(small_run_args(
      root, optimizers="adamw", epochs=1, max_samples=64,
      extra=["--tune", "random", "--trials", "2", "--seeds", "0,1", *extra]))


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_tuned_campaign_trials_vmapped_equal_trials_alone_and_selection_is_rerun(
    tmp_path):
  assert _tuned(tmp_path / "together") == 0
  assert _tuned(tmp_path / "alone", "--runs-per-program", "1") == 0
  together, alone = _campaign(tmp_path / "together"), _campaign(
      tmp_path / "alone")
  for k in range(2):
    trial = f"trials/adamw/trial_{k:03d}"
    a, b = read_history(together / trial), read_history(alone / trial)
    meta = json.loads((together / trial / "run_metadata.json").read_text())
    assert meta["runs_in_program"] == 2 and meta["trial"] == k
    for x, y in zip(a, b):
      for key in ("train_loss", "val_loss", "accuracy"):
        # float32, vmapped convolutions sum in another order (as seeds).
        assert x[key] == pytest.approx(y[key], rel=1e-5), (k, key)
  # The trials differ: their hyperparameters reach the optimizer.
  losses = {read_history(together / f"trials/adamw/trial_{k:03d}")[-1][
      "train_loss"] for k in range(2)}
  assert len(losses) == 2

  tuning_rows = _rows(together / "tuning.csv")
  assert [r["trial"] for r in tuning_rows] == ["0", "1"]
  best = max(tuning_rows, key=lambda r: float(r["best_primary"]))
  assert [r["selected"] for r in tuning_rows].count("True") == 1
  assert best["selected"] == "True"
  selected = json.loads((together / f"trials/adamw/trial_{int(best['trial']):03d}"
                         / "run_metadata.json").read_text())
  for seed in (0, 1):
    meta = json.loads((together / "adamw" / f"seed_{seed}" /
                       "run_metadata.json").read_text())
    assert meta["seed"] == seed and meta["trial"] is None
    for key in ("learning_rate", "weight_decay", "optimizer_hyperparameters",
                "traced_hyperparameters"):
      assert meta[key] == selected[key], key
  summary = _rows(together / "summary.csv")
  assert [(r["optimizer"], r["seed"]) for r in summary] == [
      ("adamw", "0"), ("adamw", "1")]
  assert [int(r["trials"]) for r in _rows(together / "budget.csv")] == [1, 2]
  assert (together / "budget.png").stat().st_size > 0
  # report and analyze read the campaign's runs: the re-runs, not the trials.
  assert store.find_runs(str(together)) == [str(together / "adamw" / s)
                                            for s in ("seed_0", "seed_1")]

  # The report shows the re-runs and a tuning section.
  assert cli.main(["report", "--campaign-dir", str(tmp_path / "together")]) == 0
  report = (tmp_path / "together" / "report" / "report.md").read_text()
  assert "### Tuning" in report and "trial_000" not in report
  assert "cnn_scratch/budget.png)" in report
  assert "| adamw | 2 | 0 |" in report

  # Resumed: nothing is retrained, the files are the same.
  before = {p: p.read_bytes() for p in together.rglob("history.json")}
  assert _tuned(tmp_path / "together", "--resume") == 0
  assert {p: p.read_bytes() for p in together.rglob("history.json")} == before
  assert _rows(together / "tuning.csv") == tuning_rows


# -- the budget curve ----------------------------------------------------------
@pytest.mark.parametrize("higher", [True, False])
def test_expected_best_equals_the_mean_over_all_subsets(higher):
  values = [0.3, None, 0.9, 0.5, float("nan"), 0.5, 0.1]
  for k in range(1, len(values) + 1):
    bests = []
    for subset in itertools.combinations(values, k):
      finite = [v for v in subset if v is not None and math.isfinite(v)]
      if finite:
        bests.append(max(finite) if higher else min(finite))
    expected, p = budget.expected_best(values, k, higher)
    n_subsets = math.comb(len(values), k)
    assert p == pytest.approx(len(bests) / n_subsets)
    assert expected == pytest.approx(sum(bests) / len(bests))


def test_budget_by_hand():
  # Three trials 0.2, 0.6, 0.4 (higher is better): with two, the subsets
  # {0.2, 0.6}, {0.2, 0.4}, {0.6, 0.4} give 0.6, 0.4, 0.6: mean 1.6 / 3.
  rows = budget.budget_rows({"adam": [0.2, 0.6, 0.4]}, True, "accuracy")
  assert [(r["trials"], r["expected_best"]) for r in rows] == [
      (1, pytest.approx(0.4)), (2, pytest.approx(1.6 / 3)),
      (3, pytest.approx(0.6))]
  assert budget.expected_best([None, None], 1, True) == (None, 0.0)


def test_selection_skips_diverged_trials_and_breaks_ties_by_trial():
  rows = [{"status": "diverged", "best_primary": 0.99},
          {"status": "completed", "best_primary": 0.5},
          {"status": "completed", "best_primary": 0.5},
          {"status": "completed", "best_primary": None}]
  assert tuning.select(rows, higher_is_better=True) == 1
  assert tuning.select(rows[:1], higher_is_better=True) is None
  assert tuning.select([{"status": "completed", "best_primary": 2.0},
                        {"status": "completed", "best_primary": 1.0}],
                       higher_is_better=False) == 1
