"""Timing shared by both frameworks: repeated timed runs and their median."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, NamedTuple, Optional


class Timing(NamedTuple):
  """What timing one variant gives.

  times: seconds of each of ``--repeats`` timed runs of ``--steps`` steps;
  loss: the variant's check loss (first step, or first timed epoch);
  fields: extra result entries (e.g. XLA's FLOP counts);
  memory: compiled memory sizes, where the framework reports them.
  """
  times: list
  loss: Optional[float]
  fields: dict = {}
  memory: Optional[dict] = None


def repeat(run: Callable[[int], Any], repeats: int,
           sync: Callable[[Any], Any]) -> tuple[list, Any]:
  """Times ``sync(run(i))`` for i < repeats; (times, first result)."""
  times, first = [], None
  for i in range(repeats):
    start = time.perf_counter()
    out = run(i)
    sync(out)
    times.append(time.perf_counter() - start)
    if i == 0:
      first = out
  return times, first


def median_rate(times, steps) -> float:
  return steps / statistics.median(times)
