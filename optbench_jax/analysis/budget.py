"""Results per tuning budget: the best an optimizer reaches with k trials.

With ``N`` trials trained, the result of a budget of ``k ≤ N`` trials is the
expected best value over the ``C(N, k)`` subsets of ``k`` trials drawn
without replacement (Schneider et al. 2021, "Descending through a Crowded
Valley", and Dodge et al. 2019's expected validation performance): with the
finite values sorted from worst to best, ``v₁ … v_f``, and ``m = N − f``
trials without one (diverged),

    P(best of the subset = vᵢ) = C(i − 1 + m, k − 1) / C(N, k),
    P(no finite value)          = C(m, k) / C(N, k),

and the budget's figure is ``E[best | some finite value]``, reported with
the probability ``1 − C(m, k)/C(N, k)`` that a budget of ``k`` trials has
a finite result at all.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from matplotlib import colormaps, ticker
from matplotlib.figure import Figure

BUDGET_COLUMNS = ("optimizer", "trials", "expected_best", "p_finite",
                  "primary_metric")


def expected_best(values: Sequence[Optional[float]], k: int,
                  higher_is_better: bool) -> tuple[Optional[float], float]:
  """``(E[best of k random trials | a finite one], P(a finite one))`` for
  trial results ``values`` (None or non-finite: no result)."""
  n = len(values)
  if not 1 <= k <= n:
    raise ValueError(f"k must be in [1, {n}] (got {k})")
  finite = sorted((v for v in values if v is not None and math.isfinite(v)),
                  reverse=not higher_is_better)   # worst first
  m = n - len(finite)
  total = math.comb(n, k)
  p_finite = 1.0 - math.comb(m, k) / total
  if not finite:
    return None, 0.0
  mean = sum(v * math.comb(i + m, k - 1)
             for i, v in enumerate(finite)) / total
  return mean / p_finite, p_finite


def budgets(n: int) -> list[int]:
  """1, 2, 4, … up to ``n``, and ``n``."""
  out, k = [], 1
  while k < n:
    out.append(k)
    k *= 2
  return out + [n]


def budget_rows(trials: dict[str, Sequence[Optional[float]]],
                higher_is_better: bool, primary: str) -> list[dict]:
  """``budget.csv``'s rows: per optimizer (its trials' validation values,
  in trial order), per budget."""
  rows = []
  for optimizer, values in trials.items():
    for k in budgets(len(values)):
      best, p = expected_best(values, k, higher_is_better)
      rows.append({"optimizer": optimizer, "trials": k, "expected_best": best,
                   "p_finite": p, "primary_metric": primary})
  return rows


def budget_figure(rows: Sequence[dict], primary: str, title: str) -> Figure:
  """The expected best validation value against the number of trials, one
  line per optimizer."""
  fig = Figure(figsize=(7.5, 4.8))
  ax = fig.subplots()
  optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
  colours = colormaps["tab10" if len(optimizers) <= 10 else "tab20"]
  for k, optimizer in enumerate(optimizers):
    mine = [r for r in rows if r["optimizer"] == optimizer
            and r["expected_best"] is not None]
    ax.plot([r["trials"] for r in mine], [r["expected_best"] for r in mine],
            marker="osD^v<>"[k % 7], color=colours(k % colours.N),
            label=optimizer, markersize=4)
  ax.set_xscale("log", base=2)
  ticks = sorted({r["trials"] for r in rows})
  ax.set_xticks(ticks, [str(t) for t in ticks])
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.set_xlabel("tuning budget (trials)")
  ax.set_ylabel(f"expected best validation {primary}")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2 if len(optimizers) > 8 else 1)
  fig.tight_layout()
  return fig
