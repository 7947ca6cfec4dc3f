"""What a run's history says: the convergence rule, summary rows, epochs,
cumulative counts.

The files these rows go to are the run store's (``optbench_jax/store.py``).

Convergence epoch (documented rule): the first epoch ``e`` after which the
validation loss never improves on the best value reached up to ``e`` by more
than ``CONVERGENCE_RTOL`` (1 %, relative), i.e. the first ``e`` with
``min(val_loss[e+1:]) >= (1 − rtol) · min(val_loss[:e+1])``, where ``e``
is not the last evaluated epoch: at least one later evaluation must confirm
it. A run whose last evaluation still improved by more than ``rtol`` (or
that was evaluated once) has **not converged**: its summary row says
``converged=False`` and leaves ``convergence_epoch`` empty, so "converged at
the last epoch" and "never converged" are not confused. Time to convergence
is the training time (compilation excluded) summed up to and including the
convergence epoch. Epochs are numbered from 1. With ``--eval-every N`` the
rule runs over the evaluated epochs.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence

from optbench_jax.transforms.cost import COSTS

CONVERGENCE_RTOL = 0.01
SUMMARY_COLUMNS = (
    "task", "dataset", "model", "optimizer", "seed", "learning_rate", "status",
    "epochs_run", "primary_metric", "best_primary", "best_primary_epoch",
    "best_val_loss", "final_primary", "final_val_loss", "test_primary",
    "converged", "convergence_epoch", "time_to_convergence_s", "train_time_s",
    "compile_time_s", "total_runtime_s", "runs_in_program")


def convergence_epoch(val_losses: Sequence[float],
                      rtol: float = CONVERGENCE_RTOL) -> Optional[int]:
  """1-based convergence epoch by the rule in the module docstring; None
  when the run has not converged (or has no finite validation loss)."""
  values = [v if v is not None and math.isfinite(v) else math.inf
            for v in val_losses]
  for e in range(len(values) - 1):
    best_so_far = min(values[:e + 1])
    if math.isfinite(best_so_far) and (
        min(values[e + 1:]) >= (1 - rtol) * best_so_far):
      return e + 1
  return None


def summarize(history: Sequence[dict], metadata: dict,
              higher_is_better: bool) -> dict:
  """One summary row (the campaign's ``summary.csv``) from a run's history."""
  primary = metadata["primary_metric"]
  ok = [h for h in history if h.get("status") != "diverged"]
  row = {k: metadata.get(k) for k in ("task", "dataset", "model", "optimizer",
                                      "seed", "learning_rate")}
  row.update(status=metadata.get("status"), epochs_run=len(history),
             primary_metric=primary,
             compile_time_s=metadata.get("compile_time_s"),
             runs_in_program=metadata.get("runs_in_program"),
             total_runtime_s=metadata.get("total_runtime_s"),
             train_time_s=sum(h.get("train_time_s") or 0.0 for h in history),
             test_primary=(metadata.get("test_metrics") or {}).get(primary))
  values = [h.get(primary) for h in ok if h.get(primary) is not None]
  if values:
    pick = max if higher_is_better else min
    best = pick(values)
    row.update(best_primary=best, best_primary_epoch=next(
        h["epoch"] for h in ok if h.get(primary) == best),
               final_primary=values[-1])
  # Epochs without an evaluation (--eval-every) have no validation loss.
  val = [h.get("val_loss") for h in history if h.get("val_loss") is not None]
  finite_val = [v for v in val if math.isfinite(v)]
  if finite_val:
    row.update(best_val_loss=min(finite_val), final_val_loss=val[-1])
  evaluated = [h for h in ok if h.get("val_loss") is not None]
  conv = convergence_epoch([h["val_loss"] for h in evaluated])
  if finite_val:
    row["converged"] = conv is not None
  if conv is not None:
    epoch = evaluated[conv - 1]["epoch"]
    row.update(convergence_epoch=epoch, time_to_convergence_s=sum(
        h.get("train_time_s") or 0.0 for h in ok if h["epoch"] <= epoch))
  return row


def long_format(history: Iterable[dict], metadata: dict) -> list[dict]:
  """Rows of ``epochs.csv``: one per (run, epoch)."""
  keys = {k: metadata.get(k) for k in ("task", "dataset", "model", "optimizer",
                                       "seed", "learning_rate")}
  return [{**keys, **h} for h in history]


def cumulative(history: Sequence[dict], train_metrics: Mapping, steps: int,
               train_time: float) -> dict:
  """A run's totals after an epoch: its history's last record's plus the
  epoch's ``steps``, evaluations (:mod:`~optbench_jax.transforms.cost`),
  training examples and seconds (``train_metrics``: the engine's sums over
  the epoch); None after a record without them (a history written before
  they were counted)."""
  epoch = {"steps": steps,
           **{k: int(round(float(train_metrics[k]))) for k in COSTS},
           "examples_seen": int(round(float(train_metrics["count"]))),
           "cumulative_train_time_s": train_time}
  last = history[-1] if history else {}
  return {k: (v if not history else
              None if last.get(k) is None else last[k] + v)
          for k, v in epoch.items()}
