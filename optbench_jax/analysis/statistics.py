"""Statistics across seeds and configurations.

Confidence interval of a mean over seeds (:func:`mean_ci`):

* ``method="t"``: Student-t, ``x̄ ± t_{(1+c)/2, n−1} · s / √n`` with ``s``
  the sample standard deviation (``n − 1`` in the denominator);
* ``method="bootstrap"``: percentile bootstrap (Efron & Tibshirani 1993,
  ch. 13): the ``(1−c)/2`` and ``(1+c)/2`` quantiles of the means of
  ``resamples`` resamples drawn with replacement by
  ``numpy.random.default_rng(seed)`` (``scipy.stats.bootstrap``,
  ``method="percentile"``); the same seed gives the same interval.

One value has no interval (``None``), which is not an error.

Pairwise comparisons (:func:`pairwise_tests`): runs of different optimizers
with the same seed share the initialisation, the data order and the split,
so they are compared *paired by seed*: a paired t-test on the per-seed
differences ``d_i = a_i − b_i`` (``scipy.stats.ttest_rel``), the mean
difference with its Student-t interval; without pairing (or when the two
optimizers share fewer than two seeds), Welch's t-test
(``scipy.stats.ttest_ind(equal_var=False)``) with the Welch–Satterthwaite
interval of ``ā − b̄``. The p-values of all pairs of one configuration are
adjusted by Holm's step-down method (Holm 1979): with the ``m`` defined
p-values sorted, ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))``. A pair
has a ``winner`` only when its adjusted p-value is below ``alpha``
(``1 − confidence`` by default); ``favoured`` merely names the side the mean
difference points to, significant or not. A
Wilcoxon signed-rank test is not used: with 3 seeds its smallest two-sided
p-value is 0.25.

Average ranks (:func:`average_ranks`, Demšar 2006): per configuration the
optimizers are ranked by their value (1 = best; ties share the average of
their ranks); an optimizer without a value (diverged, missing) shares the
worst ranks with the others without one; ranks are averaged over the
configurations.

Performance profiles (:func:`performance_profile`, Dolan & Moré 2002,
"Benchmarking optimization software with performance profiles", Math.
Programming 91): for problem ``p`` and solver ``s`` with cost ``t_{p,s}``,
``r_{p,s} = t_{p,s} / min_s t_{p,s}`` (``∞`` for a failure) and
``ρ_s(τ) = |{p : r_{p,s} ≤ τ}| / |P|``. The cost used here is the time (or
the number of epochs) a run needs to reach a target (:func:`time_to_target`)
set at a fraction ``f`` of the best result of its configuration
(:func:`target_value`): ``≥ f · best`` if higher is better, ``≤ best / f``
if lower is better (e.g. perplexity). A run that never reaches it failed.
Time-to-target curves (:func:`fraction_solved`, the data profiles of Moré &
Wild 2009) give the fraction of problems whose target is reached within a
budget ``b``: ``|{p : t_{p,s} ≤ b}| / |P|``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
from scipy import stats

from optbench_jax.errors import OptBenchError

CI_METHODS = ("t", "bootstrap")


@dataclasses.dataclass(frozen=True)
class Interval:
  """The mean of ``n`` values, their sample standard deviation and the
  confidence interval ``[low, high]`` of the mean (``None`` for ``n = 1``)."""
  mean: float
  std: Optional[float]
  n: int
  low: Optional[float]
  high: Optional[float]
  method: str
  confidence: float

  @property
  def half_width(self) -> Optional[float]:
    """``(high − low) / 2``: the ``±`` of a t-interval."""
    if self.low is None:
      return None
    return (self.high - self.low) / 2


def _finite_values(values: Sequence[float], what: str) -> np.ndarray:
  x = np.asarray([float(v) for v in values], dtype=np.float64)
  if x.size == 0:
    raise OptBenchError(f"{what}: no values")
  if not np.all(np.isfinite(x)):
    raise OptBenchError(f"{what}: values must be finite, got {list(values)}")
  return x


def check_ci_options(confidence: float, method: str) -> None:
  """Refuses (one line) an unknown method or a confidence outside (0, 1)."""
  if method not in CI_METHODS:
    raise OptBenchError(f"unknown confidence-interval method {method!r}; "
                        f"choose one of {', '.join(CI_METHODS)}")
  if not 0 < confidence < 1:
    raise OptBenchError(f"confidence must be in (0, 1), got {confidence}")


def mean_ci(values: Sequence[float], *, confidence: float = 0.95,
            method: str = "t", seed: int = 0,
            resamples: int = 10000) -> Interval:
  """Mean and confidence interval of the mean (module docstring)."""
  check_ci_options(confidence, method)
  x = _finite_values(values, "mean_ci")
  n, mean = x.size, float(x.mean())
  if n == 1:
    return Interval(mean, None, 1, None, None, method, confidence)
  std = float(x.std(ddof=1))
  if method == "t":
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
  else:
    if resamples < 1:
      raise OptBenchError(f"resamples must be >= 1, got {resamples}")
    result = stats.bootstrap((x,), np.mean, n_resamples=resamples,
                             confidence_level=confidence, method="percentile",
                             rng=np.random.default_rng(seed))
    low, high = (float(result.confidence_interval.low),
                 float(result.confidence_interval.high))
    if std == 0.0:  # every resample has the same mean
      low = high = mean
  return Interval(mean, std, n, low, high, method, confidence)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Optimizer ``a`` against ``b``: ``difference = mean(a) − mean(b)`` (over
  the common seeds when paired), its interval, the test's p-value and the
  Holm-adjusted one (``None`` when the test is undefined: too few values,
  or no variance); ``favoured``: the side with the better mean (None for no
  difference); ``winner``: that side only when the Holm-adjusted p-value is
  below ``alpha``, else None."""
  a: str
  b: str
  test: str
  n_a: int
  n_b: int
  difference: float
  low: Optional[float]
  high: Optional[float]
  p: Optional[float]
  p_holm: Optional[float]
  favoured: Optional[str]
  winner: Optional[str]
  alpha: float


def holm(p_values: Sequence[Optional[float]]) -> list[Optional[float]]:
  """Holm's step-down adjustment; ``None`` entries stay ``None`` and do not
  count in the family size."""
  defined = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
  m = len(defined)
  adjusted: list[Optional[float]] = [None] * len(p_values)
  running = 0.0
  for j, (p, i) in enumerate(defined):
    running = max(running, min(1.0, (m - j) * p))
    adjusted[i] = running
  return adjusted


def _constant(x: np.ndarray) -> bool:
  """Equal up to rounding (relative spread ≤ 1e-12): no variance."""
  return bool(np.ptp(x) <= 1e-12 * np.max(np.abs(x)))


def _defined(p: float) -> Optional[float]:
  return float(p) if math.isfinite(p) else None


def _compare(a: str, b: str, va: Mapping, vb: Mapping, paired: bool,
             higher_is_better: bool, confidence: float) -> Comparison:
  common = sorted(set(va) & set(vb))
  if paired and len(common) >= 2:
    x = np.asarray([va[s] for s in common], dtype=np.float64)
    y = np.asarray([vb[s] for s in common], dtype=np.float64)
    test, n_a, n_b = "paired t", len(common), len(common)
    difference = float(np.mean(x - y))
    if _constant(x - y):  # no variance: t undefined
      p = low = high = None
    else:
      result = stats.ttest_rel(x, y)
      ci = result.confidence_interval(confidence)
      p, low, high = _defined(result.pvalue), float(ci.low), float(ci.high)
  else:
    x = np.asarray(list(va.values()), dtype=np.float64)
    y = np.asarray(list(vb.values()), dtype=np.float64)
    test, n_a, n_b = "Welch t", x.size, y.size
    difference = float(np.mean(x) - np.mean(y)) if x.size and y.size else (
        math.nan)
    if x.size < 2 or y.size < 2 or (_constant(x) and _constant(y)):
      p = low = high = None
    else:
      result = stats.ttest_ind(x, y, equal_var=False)
      ci = result.confidence_interval(confidence)
      p, low, high = _defined(result.pvalue), float(ci.low), float(ci.high)
  favoured = None
  if math.isfinite(difference) and difference != 0:
    favoured = a if (difference > 0) == higher_is_better else b
  return Comparison(a, b, test, n_a, n_b, difference, low, high, p, None,
                    favoured, None, math.nan)


def pairwise_tests(values_by_optimizer: Mapping[str, Mapping[int, float]], *,
                   higher_is_better: bool, paired_by_seed: bool = True,
                   confidence: float = 0.95,
                   alpha: Optional[float] = None) -> list[Comparison]:
  """Every pair of optimizers of one configuration (module docstring).

  ``values_by_optimizer[optimizer][seed]`` is one run's value (diverged
  runs left out). Pairs come in the order of the mapping (``a`` before
  ``b``); the Holm adjustment runs over all of them. ``alpha``: the level
  below which an adjusted p-value names a winner (default
  ``1 − confidence``).
  """
  alpha = 1 - confidence if alpha is None else alpha
  if not 0 < alpha < 1:
    raise OptBenchError(f"alpha must be in (0, 1), got {alpha}")
  names = list(values_by_optimizer)
  for name in names:
    values = list(values_by_optimizer[name].values())
    if values:
      _finite_values(values, f"pairwise_tests: {name}")
  results = [_compare(a, b, values_by_optimizer[a], values_by_optimizer[b],
                      paired_by_seed, higher_is_better, confidence)
             for i, a in enumerate(names) for b in names[i + 1:]]
  adjusted = holm([r.p for r in results])
  return [dataclasses.replace(
      r, p_holm=p, alpha=alpha,
      winner=r.favoured if p is not None and p < alpha else None)
          for r, p in zip(results, adjusted)]


Direction = Union[bool, Mapping[str, bool]]


def _direction(higher_is_better: Direction, configuration: str) -> bool:
  if isinstance(higher_is_better, Mapping):
    return bool(higher_is_better[configuration])
  return bool(higher_is_better)


class Ranking(NamedTuple):
  """``per_configuration[configuration][optimizer]`` = rank (1 = best);
  ``rows``: optimizer, average_rank, configurations, wins — best first."""
  per_configuration: dict
  rows: list


def _is_value(v) -> bool:
  return v is not None and math.isfinite(float(v))


def average_ranks(table: Mapping[str, Mapping[str, Optional[float]]], *,
                  higher_is_better: Direction) -> Ranking:
  """Average rank of each optimizer over the configurations of ``table``
  (``table[configuration][optimizer]`` = its value, e.g. the mean best
  primary metric over seeds; ``None``/NaN = diverged or missing). Every
  optimizer that appears anywhere is ranked in every configuration (absent
  = missing). ``wins``: configurations where it has rank 1 or shares the
  best value (a tie at the top is a win for each)."""
  optimizers = list(dict.fromkeys(o for row in table.values() for o in row))
  if not optimizers:
    raise OptBenchError("average_ranks: the table is empty")
  per_configuration, wins = {}, dict.fromkeys(optimizers, 0)
  for configuration, row in table.items():
    sign = -1.0 if _direction(higher_is_better, configuration) else 1.0
    # Missing values get +inf (worst); rankdata averages tied ranks.
    keys = [sign * float(row[o]) if _is_value(row.get(o)) else math.inf
            for o in optimizers]
    ranks = stats.rankdata(keys, method="average")
    per_configuration[configuration] = {
        o: float(r) for o, r in zip(optimizers, ranks)}
    best = min(keys)
    for o, key in zip(optimizers, keys):
      if math.isfinite(key) and key == best:
        wins[o] += 1
  rows = [{"optimizer": o,
           "average_rank": float(np.mean([per_configuration[c][o]
                                          for c in per_configuration])),
           "configurations": len(per_configuration), "wins": wins[o]}
          for o in optimizers]
  rows.sort(key=lambda r: (r["average_rank"], -r["wins"]))
  return Ranking(per_configuration, rows)


class RankCorrelation(NamedTuple):
  """Kendall's τ-b and Spearman's ρ between two rankings of ``n`` items
  (None where undefined: fewer than two items, or a ranking all ties)."""
  kendall: Optional[float]
  spearman: Optional[float]
  n: int


def rank_correlation(a: Sequence[float], b: Sequence[float]
                     ) -> RankCorrelation:
  """How much two rankings of the same items agree (``scipy.stats``'
  ``kendalltau`` (τ-b, ties corrected) and ``spearmanr``)."""
  if len(a) != len(b):
    raise OptBenchError("rank_correlation: rankings of different lengths")
  if len(a) < 2 or _constant(np.asarray(a, float)) or _constant(
      np.asarray(b, float)):
    return RankCorrelation(None, None, len(a))
  return RankCorrelation(float(stats.kendalltau(a, b).statistic),
                         float(stats.spearmanr(a, b).statistic), len(a))


def target_value(best: float, fraction: float, higher_is_better: bool
                 ) -> float:
  """The target of a configuration: ``f · best`` (higher is better) or
  ``best / f`` (lower is better), for a positive metric."""
  if not 0 < fraction <= 1:
    raise OptBenchError(f"the target fraction must be in (0, 1], got "
                        f"{fraction}")
  return fraction * best if higher_is_better else best / fraction


class Reached(NamedTuple):
  """When a run first reached its target: 1-based epoch, cumulative
  training time (seconds, compilation excluded) and, from the history's
  cumulative counts (None in a history written before they were counted),
  optimizer steps and evaluations: gradient evaluations plus
  Hessian-vector products (:mod:`optbench_jax.transforms.cost`)."""
  epoch: int
  time_s: float
  steps: Optional[int] = None
  evaluations: Optional[int] = None


def time_to_target(history: Sequence[dict], target: float, *, metric: str,
                   higher_is_better: bool,
                   time_key: str = "train_time_s") -> Optional[Reached]:
  """The first epoch whose ``metric`` reaches ``target`` (``≥`` if higher is
  better, else ``≤``) and the ``time_key`` summed up to and including it;
  ``None`` if never reached. Epochs without the metric (``--eval-every``)
  count in the time; a diverged epoch ends the search."""
  elapsed = 0.0
  for record in history:
    if record.get("status") == "diverged":
      return None
    elapsed += float(record.get(time_key) or 0.0)
    value = record.get(metric)
    if value is None or not math.isfinite(float(value)):
      continue
    if (value >= target) if higher_is_better else (value <= target):
      counts = [record.get(k) for k in ("grad_evals", "hvps")]
      return Reached(int(record["epoch"]), elapsed, record.get("steps"),
                     None if None in counts else int(sum(counts)))
  return None


def _cost(v) -> float:
  return float(v) if _is_value(v) else math.inf


def performance_ratios(costs: Mapping[str, Mapping[str, Optional[float]]]
                       ) -> dict:
  """``r[p][s] = t_{p,s} / min_s t_{p,s}``; a failure (``None``/∞/NaN) and
  every solver of a problem nobody solved get ``∞``."""
  ratios = {}
  for problem, row in costs.items():
    values = {s: _cost(t) for s, t in row.items()}
    best = min(values.values(), default=math.inf)
    ratios[problem] = {
        s: (math.inf if not math.isfinite(t) else 1.0 if t == best else
            t / best if best > 0 else math.inf)
        for s, t in values.items()}
  return ratios


def _within(value: float, bound: float) -> bool:
  """``value ≤ bound`` for a solved problem; a failure (∞) never is, even
  for ``bound = ∞`` (so ρ_s(∞) is the fraction solved)."""
  return math.isfinite(value) and value <= bound


class Profile(NamedTuple):
  """``rho[solver][k]`` = ρ_s(``taus[k]``); ``ratios[problem][solver]``."""
  taus: np.ndarray
  rho: dict
  ratios: dict


def _solvers(costs: Mapping) -> list[str]:
  return list(dict.fromkeys(s for row in costs.values() for s in row))


def performance_profile(costs: Mapping[str, Mapping[str, Optional[float]]],
                        taus: Optional[Sequence[float]] = None) -> Profile:
  """Dolan–Moré performance profile (module docstring) of
  ``costs[problem][solver]``; a solver absent from a problem failed it.
  Default ``taus``: 200 points spaced logarithmically from 1 to the
  largest finite ratio times 1.05, at least to 2."""
  if not costs:
    raise OptBenchError("performance_profile: no problems")
  solvers = _solvers(costs)
  full = {p: {s: row.get(s) for s in solvers} for p, row in costs.items()}
  ratios = performance_ratios(full)
  if taus is None:
    finite = [r for row in ratios.values() for r in row.values()
              if math.isfinite(r)]
    top = max(finite, default=1.0) * 1.05
    taus = np.geomspace(1.0, max(top, 2.0), 200)
  taus = np.asarray(taus, dtype=np.float64)
  rho = {s: np.asarray([np.mean([_within(ratios[p][s], tau)
                                 for p in ratios]) for tau in taus])
         for s in solvers}
  return Profile(taus, rho, ratios)


def fraction_solved(costs: Mapping[str, Mapping[str, Optional[float]]],
                    budgets: Sequence[float]) -> dict:
  """Time-to-target curves: ``{solver: fraction of problems with cost ≤ b
  for each budget b}`` (a failure or absence never counts)."""
  if not costs:
    raise OptBenchError("fraction_solved: no problems")
  budgets = np.asarray(budgets, dtype=np.float64)
  return {s: np.asarray([np.mean([_within(_cost(row.get(s)), b)
                                  for row in costs.values()])
                         for b in budgets]) for s in _solvers(costs)}
