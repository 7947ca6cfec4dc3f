"""The report's statistical choices: confidence, interval method, target."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

from optbench_jax.analysis import statistics


@dataclasses.dataclass(frozen=True)
class Options:
  """The report's statistical choices (checked on construction).

  ``confidence`` and ``ci_method`` (``"t"`` or ``"bootstrap"``): the interval
  of a mean over seeds; ``target_fraction``: the target of the time-to-target
  and performance-profile measures, as a fraction of a configuration's best.
  """
  confidence: float = 0.95
  ci_method: str = "t"
  target_fraction: float = 0.95

  def __post_init__(self):
    statistics.check_ci_options(self.confidence, self.ci_method)
    statistics.target_value(1.0, self.target_fraction, True)

  def interval(self, values: Sequence[float]
               ) -> Optional[statistics.Interval]:
    """The mean of the finite ``values`` with its interval; None if none."""
    values = [float(v) for v in values
              if v is not None and math.isfinite(float(v))]
    if not values:
      return None
    return statistics.mean_ci(values, confidence=self.confidence,
                              method=self.ci_method)

  @property
  def percent(self) -> str:
    return f"{100 * self.confidence:g} %"

  @property
  def ci_words(self) -> str:
    """How a table caption names the interval."""
    if self.ci_method == "t":
      return f"± half-width of the {self.percent} Student-t interval"
    return f"[{self.percent} percentile-bootstrap interval]"
