"""Tuning: the trials of ``--tune random|grid`` and how one is selected.

* ``--tune random --trials N``: ``N`` points of the optimizer's search space
  (its registry entry's ``search_space``, :mod:`optbench_jax.transforms.search`)
  by a scrambled Halton sequence seeded with ``--tune-seed``: AlgoPerf's
  quasi-random search.
* ``--tune grid --trials N``: ``N`` learning rates log-spaced over the
  space's learning-rate range (both ends included), every other
  hyperparameter at its default: DeepOBS's protocol.

A setting the campaign fixes is not searched: with ``--weight-decay`` (or
a configuration of an experiment script that sets it) every trial uses
that weight decay and the space's ``weight_decay`` dimension is left out.
Every trial trains on ``--tune-seed``. The trial selected is the one with the
best validation value of the task's primary metric (the best over its
evaluated epochs, as ``summary.csv``'s ``best_primary``; a diverged trial is
never selected, ties go to the lower trial number); it is then re-run on
``--seeds``, which the trials did not use, and those re-runs are the
campaign's results: selection never sees the runs whose figures are
reported (on a dataset without a test split they are measured on the same
validation examples that selected the trial).

A search space's continuous dimensions (:class:`~optbench_jax.transforms.
search.Range`) other than the learning rate are *traced*: injected into the
optimizer's state (``engine/optimizer.py``), so trials that differ only in
them, their learning rates and seeds train vmapped in one compiled program.
Choices (:class:`~optbench_jax.transforms.search.Choice`) are static: trials
with different choices train in different programs.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from optbench_jax import transforms
from optbench_jax.transforms import search


def space(optimizer: str, fixed: Sequence[str] = ()
          ) -> Mapping[str, search.Dimension]:
  """The optimizer's search space without the ``fixed`` dimensions."""
  return {k: v for k, v in transforms.get(optimizer).search_space.items()
          if k not in fixed}


def traced(optimizer: str, tune: str, fixed: Sequence[str] = ()
           ) -> tuple[str, ...]:
  """The hyperparameters the trials of ``optimizer`` vary as traced values
  (besides the learning rate, always traced): the space's ranges under
  ``--tune random``, none under ``--tune grid``."""
  if tune != "random":
    return ()
  return tuple(k for k, dim in space(optimizer, fixed).items()
               if k != "learning_rate" and isinstance(dim, search.Range))


def points(optimizer: str, tune: str, trials: int, seed: int,
           fixed: Sequence[str] = ()) -> list[dict[str, Any]]:
  """The trials' hyperparameters (``learning_rate``, possibly
  ``weight_decay`` and factory keywords), in trial order; ``fixed``: the
  dimensions the campaign sets (``weight_decay`` with ``--weight-decay``),
  left out of the search."""
  dims = space(optimizer, fixed)
  if tune == "random":
    return search.sample(dims, trials, seed)
  if tune == "grid":
    lr = dims["learning_rate"]
    if not isinstance(lr, search.Range) or lr.scale != "log":
      raise ValueError(f"{optimizer}: --tune grid needs a log range of "
                       f"learning rates (its space has {lr.describe()})")
    if trials == 1:
      return [{"learning_rate": math.sqrt(lr.low * lr.high)}]
    step = (math.log(lr.high) - math.log(lr.low)) / (trials - 1)
    return [{"learning_rate": math.exp(math.log(lr.low) + i * step)}
            for i in range(trials)]
  raise ValueError(f"--tune {tune!r} has no trials")


def select(rows: Sequence[Mapping[str, Any]], higher_is_better: bool
           ) -> Optional[int]:
  """The index in ``rows`` (summary rows of the trials, in trial order) of
  the trial selected: the best ``best_primary`` among the trials that did
  not diverge; None when none has a finite value."""
  best = None
  for i, row in enumerate(rows):
    value = row.get("best_primary")
    if (row.get("status") != "completed" or value is None
        or not math.isfinite(value)):
      continue
    if best is None or (value > rows[best]["best_primary"] if higher_is_better
                        else value < rows[best]["best_primary"]):
      best = i
  return best
