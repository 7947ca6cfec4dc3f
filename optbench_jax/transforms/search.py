"""Search spaces: the hyperparameters each optimizer's tuning samples.

A registry entry's ``search_space`` maps a name to a :class:`Range` or a
:class:`Choice`. Names are ``learning_rate``, ``weight_decay`` (applied in
the entry's weight-decay mode) or keywords of the entry's factory. Every
space has ``learning_rate``; an entry that declares none gets
:func:`default_space`. Each dimension names its source.

Ranges that AlgoPerf's paper baselines publish
(``reference_algorithms/paper_baselines/<name>/tuning_search_space.json``
in ``mlcommons/algorithmic-efficiency``) are used as published, with their
parametrisation: ``one_minus_beta1`` becomes a :class:`Range` over
``1 - β₁`` (``one_minus=True``). :func:`sample` draws points of a space by
scrambled Halton sequences (``scipy.stats.qmc.Halton``), AlgoPerf's
quasi-random search.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence, Union

SCALES = ("log", "linear")
ALGOPERF = ("AlgoPerf paper baseline {name} (mlcommons/algorithmic-"
            "efficiency, reference_algorithms/paper_baselines/{name}/"
            "tuning_search_space.json)")
DECADE = ("optbench_jax: a decade either side of the registry default "
          "(no published space for this optimizer as registered)")


@dataclasses.dataclass(frozen=True)
class Range:
  """A continuous dimension: ``low ≤ x ≤ high`` on a ``log`` or ``linear``
  scale; with ``one_minus`` the range is over ``1 - value`` (AlgoPerf's
  ``one_minus_beta1``)."""
  low: float
  high: float
  scale: str
  source: str
  one_minus: bool = False

  def __post_init__(self):
    if self.scale not in SCALES:
      raise ValueError(f"scale {self.scale!r} not in {SCALES}")
    if not (math.isfinite(self.low) and math.isfinite(self.high)
            and self.low < self.high):
      raise ValueError(f"range [{self.low}, {self.high}] is empty")
    if self.scale == "log" and self.low <= 0:
      raise ValueError(f"a log range needs low > 0 (got {self.low})")

  def value(self, u: float) -> float:
    """The point at ``u`` in [0, 1] of the range."""
    if self.scale == "log":
      x = math.exp(math.log(self.low)
                   + u * (math.log(self.high) - math.log(self.low)))
    else:
      x = self.low + u * (self.high - self.low)
    x = min(max(x, self.low), self.high)
    return 1.0 - x if self.one_minus else x

  def describe(self) -> str:
    what = "1 − x" if self.one_minus else "x"
    return f"{what} {self.scale}-uniform [{self.low:g}, {self.high:g}]"


@dataclasses.dataclass(frozen=True)
class Choice:
  """A finite set of values, drawn with equal probability."""
  values: tuple
  source: str

  def __post_init__(self):
    if not self.values:
      raise ValueError("a choice needs values")

  def value(self, u: float) -> Any:
    return self.values[min(int(u * len(self.values)), len(self.values) - 1)]

  def describe(self) -> str:
    return "one of " + ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                 for v in self.values)


Dimension = Union[Range, Choice]


def default_space(default_lr: float) -> dict[str, Dimension]:
  """The learning rate alone, log-uniform over a decade either side of
  ``default_lr``."""
  return {"learning_rate": Range(default_lr / 10, default_lr * 10, "log",
                                 DECADE)}


def algoperf(name: str, **dimensions) -> dict[str, Dimension]:
  """Dimensions as AlgoPerf's baseline ``name`` publishes them (each given
  as ``(low, high, scale[, one_minus])`` or a tuple of choices in a list)."""
  source = ALGOPERF.format(name=name)
  out = {}
  for key, spec in dimensions.items():
    if isinstance(spec, list):
      out[key] = Choice(tuple(spec), source)
    else:
      low, high, scale, *one_minus = spec
      out[key] = Range(low, high, scale, source, bool(one_minus
                                                      and one_minus[0]))
  return out


def check(name: str, space: Mapping[str, Dimension],
          keywords: Sequence[str], takes_weight_decay: bool) -> None:
  """A registry entry's space: ``learning_rate`` present, every other name
  ``weight_decay`` (for an entry that takes it) or a factory keyword."""
  if "learning_rate" not in space:
    raise ValueError(f"{name}: its search space has no learning_rate")
  for key, dim in space.items():
    if not isinstance(dim, (Range, Choice)):
      raise ValueError(f"{name}: search dimension {key!r} is {dim!r}")
    if key == "weight_decay" and not takes_weight_decay:
      raise ValueError(f"{name}: searches weight_decay, which it refuses")
    if key not in ("learning_rate", "weight_decay") and key not in keywords:
      raise ValueError(f"{name}: search dimension {key!r} is not a keyword "
                       f"of its factory")


def sample(space: Mapping[str, Dimension], n: int, seed: int
           ) -> list[dict[str, Any]]:
  """``n`` points of ``space``: a scrambled Halton sequence (``seed``), one
  coordinate per dimension in the space's order."""
  from scipy.stats import qmc
  if n < 1:
    raise ValueError(f"n must be at least 1 (got {n})")
  names = list(space)
  unit = qmc.Halton(d=len(names), scramble=True, seed=seed).random(n)
  return [{k: space[k].value(float(u)) for k, u in zip(names, row)}
          for row in unit]
