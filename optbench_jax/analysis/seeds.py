"""Seed aggregates of a campaign (``seeds.csv``): per optimizer and
learning rate, each summary value's mean, standard deviation and 95 %
Student-t confidence interval over the seeds."""
from __future__ import annotations

import math
from typing import Sequence

from optbench_jax.analysis import statistics

# Per-run values summarised over seeds in ``seeds.csv``.
SEED_METRICS = ("best_primary", "final_primary", "test_primary",
                "best_val_loss", "convergence_epoch")
SEED_COLUMNS = ("task", "dataset", "model", "optimizer", "learning_rate",
                "primary_metric", "n_seeds", "n_diverged",
                "n_converged") + tuple(
                    f"{m}_{s}" for m in SEED_METRICS
                    for s in ("mean", "std", "ci95"))


def over_seeds(rows: Sequence[dict]) -> list[dict]:
  """``seeds.csv`` rows: per (optimizer, learning rate), over seeds.

  For each metric of ``SEED_METRICS``: the mean, the sample standard
  deviation and the half-width of the two-sided 95 % Student-t confidence
  interval of the mean, ``t_{0.975, n−1} · s / √n``, over the seeds whose
  run produced the value (a diverged run has no best/final values; it is
  counted in ``n_diverged``). ``convergence_epoch`` is therefore averaged
  over the ``n_converged`` seeds whose run converged (``summary.csv``'s
  ``converged``), not over all ``n_seeds``.
  """
  groups: dict = {}
  for row in rows:
    groups.setdefault((row["optimizer"], row["learning_rate"]), []).append(row)
  out = []
  for (optimizer, lr), members in groups.items():
    first = members[0]
    summary = {k: first.get(k) for k in ("task", "dataset", "model",
                                         "primary_metric")}
    summary.update(optimizer=optimizer, learning_rate=lr,
                   n_seeds=len(members), n_diverged=sum(
                       m.get("status") == "diverged" for m in members),
                   n_converged=sum(m.get("converged") is True
                                   for m in members))
    for metric in SEED_METRICS:
      values = [float(m[metric]) for m in members
                if m.get(metric) not in (None, "")
                and math.isfinite(float(m[metric]))]
      if not values:
        continue
      interval = statistics.mean_ci(values, confidence=0.95, method="t")
      summary[f"{metric}_mean"] = interval.mean
      if interval.n > 1:
        summary[f"{metric}_std"] = interval.std
        summary[f"{metric}_ci95"] = interval.half_width
    out.append(summary)
  return out
