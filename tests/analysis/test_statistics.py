"""Statistics across seeds and configurations on hand-computed cases.

Every expected number below is worked out by hand in the comments. The df = 2
Student-t distribution has closed forms: F(t) = 1/2 + t / (2 √(t² + 2)) and
the quantile t_p = (2p − 1) / √(2p(1 − p)), so t_{0.975, 2} =
0.95 / √0.04875 = 4.30265272974946 (the often-quoted 4.302652729911275 is
1.6e-10 too large; the t-interval tests agree with the closed form to 1e-12).
Measured: the package's intervals, p-values and profiles equal these hand
values to within 1e-15 … 1e-12 (rounding only).
"""
import math

import numpy as np
import pytest
from scipy import stats

from optbench_jax.analysis import statistics
from optbench_jax.errors import OptBenchError



def t_quantile_df2(p):
  """The df = 2 Student-t quantile in closed form."""
  return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


T_975_DF2 = t_quantile_df2(0.975)


def test_t_interval_of_three_values_matches_the_formula_by_hand():
  # mean 7/3; deviations -4/3, -1/3, 5/3: s² = (16 + 1 + 25) / 9 / 2 = 7/3.
  ci = statistics.mean_ci([1.0, 2.0, 4.0])
  half = T_975_DF2 * math.sqrt(7 / 3) / math.sqrt(3)   # 3.794580...
  assert ci.n == 3 and ci.method == "t"
  assert ci.mean == pytest.approx(7 / 3, abs=1e-15)
  assert ci.std == pytest.approx(math.sqrt(7 / 3), abs=1e-15)
  assert ci.low == pytest.approx(7 / 3 - half, abs=1e-12)
  assert ci.high == pytest.approx(7 / 3 + half, abs=1e-12)
  assert ci.half_width == pytest.approx(half, abs=1e-12)
  # A 90 % interval is narrower: t_{0.95, 2} = 0.9 / √0.095 = 2.91998558.
  assert statistics.mean_ci([1.0, 2.0, 4.0], confidence=0.9).half_width == (
      pytest.approx(t_quantile_df2(0.95) * math.sqrt(7 / 9), abs=1e-12))


def test_one_value_has_no_interval_and_is_not_an_error():
  for method in statistics.CI_METHODS:
    ci = statistics.mean_ci([0.7], method=method)
    assert (ci.mean, ci.n) == (0.7, 1)
    assert ci.std is None and ci.low is None and ci.high is None
    assert ci.half_width is None


def test_bootstrap_interval_contains_the_mean_and_is_reproducible():
  values = [0.81, 0.84, 0.79, 0.88, 0.83]
  a = statistics.mean_ci(values, method="bootstrap", seed=3)
  b = statistics.mean_ci(values, method="bootstrap", seed=3)
  c = statistics.mean_ci(values, method="bootstrap", seed=4)
  assert (a.low, a.high) == (b.low, b.high)
  assert (a.low, a.high) != (c.low, c.high)
  assert min(values) <= a.low < a.mean < a.high <= max(values)
  # Two values {0, 1}: a resample's mean is 0, 1/2 or 1 with probability
  # 1/4, 1/2, 1/4, so the 2.5 % and 97.5 % percentiles are 0 and 1.
  two = statistics.mean_ci([0.0, 1.0], method="bootstrap", seed=0)
  assert (two.low, two.high) == (0.0, 1.0)
  # No spread: the interval is the point.
  same = statistics.mean_ci([2.0, 2.0, 2.0], method="bootstrap")
  assert (same.low, same.high) == (2.0, 2.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "normal"}, "unknown confidence-interval method"),
    ({"confidence": 1.0}, "confidence must be in"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
  with pytest.raises(OptBenchError, match=message):
    statistics.mean_ci([1.0, 2.0], **kwargs)


def test_non_finite_or_missing_values_are_refused():
  with pytest.raises(OptBenchError, match="finite"):
    statistics.mean_ci([1.0, float("nan")])
  with pytest.raises(OptBenchError, match="no values"):
    statistics.mean_ci([])


def test_paired_t_test_by_hand():
  # d = a − b = (0.3, 0.3, 0.15): mean 0.25, s_d² = (0.05² + 0.05² + 0.1²)/2
  # = 0.0075, s_d/√3 = 0.05, t = 5; two-sided p = 1 − 5/√27 (df = 2).
  a = {0: 0.8, 1: 0.9, 2: 0.85}
  b = {0: 0.5, 1: 0.6, 2: 0.7}
  (result,) = statistics.pairwise_tests({"a": a, "b": b},
                                        higher_is_better=True)
  assert (result.a, result.b, result.test) == ("a", "b", "paired t")
  assert (result.n_a, result.n_b) == (3, 3)
  assert result.difference == pytest.approx(0.25, abs=1e-12)
  assert result.p == pytest.approx(1 - 5 / math.sqrt(27), abs=1e-12)
  # (0.8 − 0.5 etc. are not exact in binary: differences of 1e-16.)
  assert result.low == pytest.approx(0.25 - T_975_DF2 * 0.05, abs=1e-12)
  assert result.high == pytest.approx(0.25 + T_975_DF2 * 0.05, abs=1e-12)
  assert result.p_holm == result.p and result.favoured == "a"
  # p = 0.038 < 0.05 = 1 − confidence: a significant winner; at a 99 %
  # confidence (α = 0.01) no winner, though the mean still favours a.
  assert result.winner == "a" and result.alpha == pytest.approx(0.05)
  (strict,) = statistics.pairwise_tests({"a": a, "b": b},
                                        higher_is_better=True,
                                        confidence=0.99)
  assert strict.favoured == "a" and strict.winner is None
  # Lower is better (a loss): the same difference favours b.
  (lower,) = statistics.pairwise_tests({"a": a, "b": b},
                                       higher_is_better=False)
  assert lower.favoured == "b" and lower.winner == "b"


def test_welch_t_test_by_hand_when_unpaired():
  # a = (1, 2, 3), b = (2, 4, 6): means 2, 4, variances 1, 4;
  # se = √(1/3 + 4/3) = √(5/3), t = −2/se;
  # df = (5/3)² / ((1/3)²/2 + (4/3)²/2) = 50/17.
  a, b = {0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.0, 2: 6.0}
  se, df = math.sqrt(5 / 3), 50 / 17
  disjoint = {s + 10: v for s, v in b.items()}
  for values, paired in (({"a": a, "b": b}, False),        # by request
                         ({"a": a, "b": disjoint}, True)):  # no common seed
    (result,) = statistics.pairwise_tests(
        values, higher_is_better=True, paired_by_seed=paired)
    assert result.test == "Welch t"
    assert result.difference == pytest.approx(-2.0, abs=1e-12)
    assert result.p == pytest.approx(2 * stats.t.sf(2 / se, df), abs=1e-12)
    half = stats.t.ppf(0.975, df) * se
    assert result.low == pytest.approx(-2 - half, abs=1e-10)
    assert result.high == pytest.approx(-2 + half, abs=1e-10)
    # p = 0.22: b has the better mean, but is no winner.
    assert result.favoured == "b" and result.winner is None


def test_holm_adjustment_by_hand():
  # Sorted 0.01, 0.03, 0.04 (m = 3): 3·0.01 = 0.03, 2·0.03 = 0.06,
  # max(0.06, 1·0.04) = 0.06; undefined stays undefined.
  assert statistics.holm([0.01, 0.04, 0.03, None]) == pytest.approx(
      [0.03, 0.06, 0.06, None], abs=1e-15)
  assert statistics.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_pairwise_tests_over_three_optimizers_are_holm_adjusted_together():
  values = {"a": {0: 0.8, 1: 0.9, 2: 0.85}, "b": {0: 0.5, 1: 0.6, 2: 0.7},
            "c": {0: 0.1}}
  results = statistics.pairwise_tests(values, higher_is_better=True)
  assert [(r.a, r.b) for r in results] == [("a", "b"), ("a", "c"),
                                           ("b", "c")]
  # One value of c: no test, no interval; the family has one p-value.
  assert [r.p is None for r in results] == [False, True, True]
  assert results[0].p_holm == results[0].p
  assert results[1].difference == pytest.approx(0.85 - 0.1)


def test_average_ranks_with_ties_and_failures():
  table = {"acc": {"a": 0.9, "b": 0.9, "c": 0.8, "d": None},
           "ppl": {"a": 10.0, "b": 20.0, "c": 5.0, "d": float("nan")}}
  ranking = statistics.average_ranks(
      table, higher_is_better={"acc": True, "ppl": False})
  # acc: a, b tie for 1–2 → 1.5 each; c 3; d failed → 4.
  # ppl (lower is better): c 1, a 2, b 3, d 4.
  assert ranking.per_configuration == {
      "acc": {"a": 1.5, "b": 1.5, "c": 3.0, "d": 4.0},
      "ppl": {"a": 2.0, "b": 3.0, "c": 1.0, "d": 4.0}}
  rows = {r["optimizer"]: r for r in ranking.rows}
  assert rows["a"]["average_rank"] == 1.75
  assert rows["c"]["average_rank"] == 2.0
  assert rows["b"]["average_rank"] == 2.25
  assert rows["d"]["average_rank"] == 4.0
  assert [r["optimizer"] for r in ranking.rows] == ["a", "c", "b", "d"]
  assert {o: r["wins"] for o, r in rows.items()} == {"a": 1, "b": 1, "c": 1,
                                                    "d": 0}
  assert all(r["configurations"] == 2 for r in ranking.rows)


def test_several_failures_share_the_worst_ranks():
  # a 1; b, c missing and d diverged share ranks 2, 3, 4 → 3 each.
  ranking = statistics.average_ranks({"x": {"a": 1.0, "d": None},
                                      "y": {"b": 2.0, "c": 1.0}},
                                     higher_is_better=True)
  assert ranking.per_configuration["x"] == {"a": 1.0, "d": 3.0, "b": 3.0,
                                            "c": 3.0}
  assert ranking.per_configuration["y"] == {"a": 3.5, "d": 3.5, "b": 1.0,
                                            "c": 2.0}


def test_performance_profile_of_three_problems_and_two_solvers_by_hand():
  costs = {"p1": {"A": 10.0, "B": 20.0},     # r_A = 1,   r_B = 2
           "p2": {"A": 30.0, "B": 15.0},     # r_A = 2,   r_B = 1
           "p3": {"A": 5.0, "B": None}}      # r_A = 1,   r_B = ∞ (failed)
  profile = statistics.performance_profile(
      costs, [1.0, 1.5, 2.0, 100.0, math.inf])
  assert profile.ratios == {"p1": {"A": 1.0, "B": 2.0},
                            "p2": {"A": 2.0, "B": 1.0},
                            "p3": {"A": 1.0, "B": math.inf}}
  # ρ(∞) is the fraction solved: a failure never counts.
  np.testing.assert_allclose(profile.rho["A"], [2 / 3, 2 / 3, 1, 1, 1],
                             rtol=0, atol=1e-15)
  np.testing.assert_allclose(profile.rho["B"], [1 / 3, 1 / 3, 2 / 3, 2 / 3,
                                                2 / 3], rtol=0, atol=1e-15)
  # Default τ grid: from 1 past the largest finite ratio (2).
  default = statistics.performance_profile(costs)
  assert default.taus[0] == 1.0 and default.taus[-1] >= 2.0
  assert default.rho["A"][-1] == 1.0 and default.rho["B"][-1] == 2 / 3


def test_a_problem_nobody_solves_counts_against_everyone():
  costs = {"p1": {"A": 1.0, "B": 3.0}, "p2": {"A": None, "B": math.inf},
           "p3": {"A": 2.0}}                 # B absent: failed
  profile = statistics.performance_profile(costs, [1.0, 3.0])
  np.testing.assert_allclose(profile.rho["A"], [2 / 3, 2 / 3])
  np.testing.assert_allclose(profile.rho["B"], [0.0, 1 / 3])


def test_fraction_solved_by_hand():
  costs = {"p1": {"A": 10.0, "B": 20.0}, "p2": {"A": 30.0, "B": 15.0},
           "p3": {"A": 5.0, "B": None}}
  curves = statistics.fraction_solved(costs, [0, 5, 10, 20, 30, math.inf])
  np.testing.assert_allclose(curves["A"], [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
  np.testing.assert_allclose(curves["B"], [0, 0, 0, 2 / 3, 2 / 3, 2 / 3])


HISTORY = [
    {"epoch": 1, "accuracy": 0.5, "perplexity": 80.0, "train_time_s": 1.0,
     "status": "ok"},
    {"epoch": 2, "train_time_s": 2.0, "status": "ok"},   # not evaluated
    {"epoch": 3, "accuracy": 0.8, "perplexity": 30.0, "train_time_s": 3.0,
     "status": "ok"},
    {"epoch": 4, "accuracy": 0.9, "perplexity": 20.0, "train_time_s": 4.0,
     "status": "ok"},
]


def test_time_to_target_on_a_history_by_hand():
  # 0.75 first reached at epoch 3, after 1 + 2 + 3 = 6 s of training.
  assert statistics.time_to_target(
      HISTORY, 0.75, metric="accuracy", higher_is_better=True) == (
          statistics.Reached(epoch=3, time_s=6.0))
  # Lower is better: perplexity ≤ 25 first at epoch 4 (10 s).
  assert statistics.time_to_target(
      HISTORY, 25.0, metric="perplexity", higher_is_better=False) == (
          statistics.Reached(epoch=4, time_s=10.0))
  assert statistics.time_to_target(
      HISTORY, 0.95, metric="accuracy", higher_is_better=True) is None
  # A divergence before the target ends the search.
  diverged = HISTORY[:2] + [{"epoch": 3, "accuracy": None, "train_time_s": 3.0,
                             "status": "diverged"}]
  assert statistics.time_to_target(
      diverged, 0.75, metric="accuracy", higher_is_better=True) is None


def test_time_to_target_reads_the_cumulative_counts():
  counted = [dict(h, steps=10 * h["epoch"], grad_evals=20 * h["epoch"],
                  hvps=h["epoch"]) for h in HISTORY]
  assert statistics.time_to_target(
      counted, 0.75, metric="accuracy", higher_is_better=True) == (
          statistics.Reached(epoch=3, time_s=6.0, steps=30, evaluations=63))
  # A history written before the counts were recorded has none.
  assert statistics.time_to_target(
      HISTORY, 0.75, metric="accuracy", higher_is_better=True).evaluations is None


def test_target_value_is_a_fraction_of_the_best():
  assert statistics.target_value(0.8, 0.95, True) == pytest.approx(0.76)
  assert statistics.target_value(20.0, 0.8, False) == pytest.approx(25.0)
  with pytest.raises(OptBenchError, match="target fraction"):
    statistics.target_value(0.8, 1.5, True)


def test_differences_equal_up_to_rounding_have_no_test():
  # 20 − 15.03 and 21.98 − 17.01 are both 4.97 up to 1e-15: no variance.
  (result,) = statistics.pairwise_tests(
      {"a": {0: 20.0, 2: 21.98}, "b": {0: 15.03, 2: 17.01}},
      higher_is_better=False)
  assert result.p is None and result.low is None and result.p_holm is None
  assert result.difference == pytest.approx(4.97) and result.favoured == "b"
  assert result.winner is None   # no test, no winner
