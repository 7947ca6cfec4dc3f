"""A tuned campaign's trials on disk: selection, re-runs and their files.

``--tune random|grid`` (``train/tuning.py``) trains each optimizer's trials
under ``<campaign>/trials/<optimizer>/trial_NNN``, selects the best on
validation once every trial of the optimizer is finished, and re-runs it on
``--seeds`` where an untuned campaign's runs go. The selection is computed
from the trials on disk (never stored apart from them), so every process of
a sharded campaign, and a resumed one, selects the same trial. Written per
campaign, from every finished trial on disk:

* ``tuning.csv``: one row per trial (its hyperparameters, status, best
  validation value, whether it was selected);
* ``budget.csv`` and ``budget.png``: the expected best validation value
  with 1, 2, 4, … N trials (``analysis/budget.py``).
"""
from __future__ import annotations

import json
import os
from typing import Optional

from optbench_jax import store
from optbench_jax.analysis import budget
from optbench_jax.train import outputs, plots, settings, tuning
from optbench_jax.train.plan import Plan, RunSpec

TUNING_COLUMNS = ("optimizer", "trial", "learning_rate", "hyperparameters",
                  "status", "primary_metric", "best_primary",
                  "best_primary_epoch", "selected", "seed")


def trial_rows(plan: Plan, optimizer: str) -> list[Optional[dict]]:
  """Each trial's summary row (None: not finished, or trained with other
  settings), in trial order."""
  higher = plan.workload.task.higher_is_better
  rows = []
  for spec in plan.trials_of(optimizer):
    run = store.read_finished(spec.run_dir)
    if run is None or settings.differences(run.metadata, spec.config):
      rows.append(None)
      continue
    rows.append(outputs.summarize(run.history, run.metadata, higher))
  return rows


def selected(plan: Plan, optimizer: str,
             rows: Optional[list[Optional[dict]]] = None
             ) -> Optional[RunSpec]:
  """The trial selected for ``optimizer``: None until all its trials are
  finished, or when none has a finite validation value. ``rows``: its
  :func:`trial_rows`, when already read."""
  if rows is None:
    rows = trial_rows(plan, optimizer)
  if not rows or any(r is None for r in rows):
    return None
  index = tuning.select(rows, plan.workload.task.higher_is_better)
  return None if index is None else plan.trials_of(optimizer)[index]


def final_runs(plan: Plan) -> list[RunSpec]:
  """The campaign's runs: an untuned campaign's planned runs; a tuned
  campaign's re-runs of the trials selected so far."""
  if not plan.tuned:
    return list(plan.runs)
  out = []
  for optimizer in plan.optimizers:
    trial = selected(plan, optimizer)
    if trial is not None:
      out.extend(plan.reruns(trial.config))
  return out


def write_files(plan: Plan, out_dir: str) -> None:
  """``tuning.csv``, ``budget.csv`` and ``budget.png`` from the finished
  trials on disk (the caller holds the campaign lock)."""
  task = plan.workload.task
  rows, values = [], {}
  for optimizer in plan.optimizers:
    mine = trial_rows(plan, optimizer)
    chosen = selected(plan, optimizer, mine)
    for spec, row in zip(plan.trials_of(optimizer), mine):
      if row is None:
        continue
      rc = spec.config
      rows.append({**row, "trial": rc.trial, "hyperparameters": json.dumps(
          {**({"weight_decay": rc.weight_decay}
              if rc.weight_decay is not None else {}),
           **rc.optimizer_hyperparameters}, sort_keys=True),
                   "selected": chosen is not None and chosen.run_dir ==
                   spec.run_dir})
    if mine and all(r is not None for r in mine):
      values[optimizer] = [r.get("best_primary")
                           if r.get("status") == "completed" else None
                           for r in mine]
  store.write_csv(os.path.join(out_dir, store.TUNING), rows, TUNING_COLUMNS)
  if not values:
    return
  budget_rows = budget.budget_rows(values, task.higher_is_better,
                                   task.primary_metric)
  store.write_csv(os.path.join(out_dir, store.BUDGET), budget_rows,
                  budget.BUDGET_COLUMNS)
  c = plan.campaign
  fig = budget.budget_figure(
      budget_rows, task.primary_metric,
      f"{c.model} on {c.dataset}: --tune {c.tune}, {c.trials} trials")
  plots.save(fig, os.path.join(out_dir, store.BUDGET_FIGURE))
