"""A report table and how it is written: display cells as Markdown and
LaTeX (booktabs), raw rows as CSV (full precision).

One rule for the digits of a number shown with its uncertainty (an
interval's half-width, a standard error): the uncertainty is rounded to
``UNCERTAINTY_DIGITS`` significant digits and the value to the same decimal
place (``0.8944 ± 0.04781`` → ``0.894 ± 0.048``; a bootstrap interval's
ends likewise, from its half-width). A number without an uncertainty, or
with a zero one, keeps the digits of its kind (:func:`format_number`), and
a zero uncertainty is written with the value's decimals (``1.000 ±
0.000``)."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

from optbench_jax import store
from optbench_jax.analysis import statistics

UNCERTAINTY_DIGITS = 2
METRIC_DIGITS = 4      # significant digits of a metric shown alone


@dataclasses.dataclass
class Table:
  """One table: display cells (Markdown, LaTeX) and raw rows (CSV);
  ``bold``: the ``(row, column)`` cells to emphasise (e.g. the best result
  of a column), bold in Markdown and LaTeX."""
  name: str               # path under tables/, without extension
  title: str
  headers: list
  cells: list
  csv_columns: list
  csv_rows: list
  align: str = ""         # LaTeX column alignment; default l then r
  bold: set = dataclasses.field(default_factory=set)

  def column_spec(self) -> str:
    return self.align or "l" + "r" * (len(self.headers) - 1)


def _missing(x) -> bool:
  return x is None or (isinstance(x, float) and math.isnan(x))


def _fixed(x: float, decimals: int) -> str:
  """``x`` rounded to ``decimals`` places (negative: tens, hundreds …)."""
  if decimals < 0:
    return format(round(x, decimals), ".0f")
  return format(x, f".{decimals}f")


def _metric_decimals(x: float) -> Optional[int]:
  """Decimals of ``METRIC_DIGITS`` significant digits; None where fixed
  notation would be unreadable (scientific notation instead)."""
  if x == 0 or not math.isfinite(x):
    return 0
  exponent = math.floor(math.log10(abs(x)))
  if exponent < -3 or exponent >= 6:
    return None
  return max(0, METRIC_DIGITS - 1 - exponent)


def format_number(x: Optional[float], kind: str = "metric") -> str:
  """A number shown alone: metrics with 4 significant digits (trailing
  zeros kept: ``1.000``), epochs as integers (1 decimal for a mean), times
  with 1 decimal, p-values with 3 significant digits, settings (a learning
  rate) as given (``0.0003``); missing values as "–"."""
  if _missing(x):
    return "–"
  x = float(x)
  if not math.isfinite(x):
    return "∞" if x > 0 else "−∞"
  if kind == "metric":
    decimals = _metric_decimals(x)
    return (format(x, f".{METRIC_DIGITS - 1}e") if decimals is None
            else _fixed(x, decimals))
  if kind == "epoch":
    return _fixed(x, 0 if x == round(x) else 1)
  spec = {"time": ".1f", "p": ".3g", "setting": "g"}[kind]
  return format(x, spec)


def _lone_decimals(x: float, kind: str) -> int:
  """The decimals of ``x`` shown alone (:func:`format_number`), in fixed
  notation."""
  if kind == "metric":
    decimals = _metric_decimals(x)
    if decimals is None:
      decimals = max(0, METRIC_DIGITS - 1 - math.floor(math.log10(abs(x))))
    return decimals
  if kind == "epoch":
    return 0 if x == round(x) else 1
  return 1 if kind == "time" else 3


def _uncertainty_decimals(width: float) -> int:
  """Decimals that leave ``UNCERTAINTY_DIGITS`` significant digits of
  ``width`` (> 0) after rounding (0.0996 → 0.10, not 0.100)."""
  exponent = math.floor(math.log10(width))
  decimals = UNCERTAINTY_DIGITS - 1 - exponent
  if round(width, decimals) >= 10 ** (exponent + 1):
    decimals -= 1
  return decimals


def decimals_for(value: float, width: Optional[float], kind: str) -> int:
  """The decimal place of ``value ± width`` by the module's rule; a width
  within rounding of zero (≤ 1e-12 relative) counts as zero."""
  if (_missing(width) or not math.isfinite(width)
      or abs(width) <= 1e-12 * abs(value)):
    return _lone_decimals(value, kind)
  return _uncertainty_decimals(abs(width))


def format_estimate(value: Optional[float], width: Optional[float],
                    kind: str = "metric") -> str:
  """``value ± width`` by the module's rule (``value`` alone without a
  width)."""
  if _missing(value):
    return "–"
  if _missing(width):
    return format_number(value, kind)
  decimals = decimals_for(value, width, kind)
  return f"{_fixed(value, decimals)} ± {_fixed(abs(width), decimals)}"


def format_value(value: Optional[float], width: Optional[float],
                 kind: str = "metric") -> str:
  """``value`` alone, at the decimal place ``value ± width`` would have."""
  if _missing(value):
    return "–"
  if _missing(width):
    return format_number(value, kind)
  return _fixed(value, decimals_for(value, width, kind))


def format_range(value: Optional[float], low: Optional[float],
                 high: Optional[float], kind: str = "metric") -> str:
  """``[low, high]`` (``value`` fixes the decimals with the half-width)."""
  if _missing(low) or _missing(high):
    return "–"
  decimals = decimals_for(value if not _missing(value) else low,
                          (high - low) / 2, kind)
  return f"[{_fixed(low, decimals)}, {_fixed(high, decimals)}]"


def format_interval(ci: Optional[statistics.Interval], kind: str) -> str:
  """``mean ± half-width`` (t), ``mean [low, high]`` (bootstrap), ``mean``
  (one value), by the module's rule."""
  if ci is None:
    return "–"
  if ci.low is None:
    return format_number(ci.mean, kind)
  if ci.method == "t":
    return format_estimate(ci.mean, ci.half_width, kind)
  decimals = decimals_for(ci.mean, ci.half_width, kind)
  return (f"{_fixed(ci.mean, decimals)} "
          f"{format_range(ci.mean, ci.low, ci.high, kind)}")


def _markdown_cell(text) -> str:
  return str(text).replace("|", "\\|")


def markdown_table(table: Table) -> str:
  lines = ["| " + " | ".join(map(_markdown_cell, table.headers)) + " |",
           "| " + " | ".join("---" if a == "l" else "---:"
                             for a in table.column_spec()) + " |"]
  lines += ["| " + " | ".join(
      f"**{_markdown_cell(c)}**" if (i, j) in table.bold
      else _markdown_cell(c) for j, c in enumerate(row)) + " |"
            for i, row in enumerate(table.cells)]
  return "\n".join(lines)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%",
                  "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "–": "--", "−": "$-$", "≤": r"$\le$",
                  "×": r"$\times$", "∞": r"$\infty$", "ρ": r"$\rho$",
                  "τ": r"$\tau$", "↑": r"$\uparrow$",
                  "↓": r"$\downarrow$", "λ": r"$\lambda$",
                  "α": r"$\alpha$"}


def latex_escape(text) -> str:
  out = "".join(_LATEX_ESCAPES.get(c, c) for c in str(text))
  return "".join(_LATEX_SYMBOLS.get(c, c) for c in out)


def latex_table(table: Table) -> str:
  """A booktabs ``table`` environment with the table's caption."""
  rows = [" & ".join(latex_escape(c) for c in table.headers) + r" \\"]
  body = [" & ".join(rf"\textbf{{{latex_escape(c)}}}" if (i, j) in table.bold
                     else latex_escape(c) for j, c in enumerate(row))
          + r" \\" for i, row in enumerate(table.cells)]
  label = "tab:" + table.name.replace("/", ":")
  return "\n".join([
      r"% \usepackage{booktabs}", r"\begin{table}[ht]", r"\centering",
      rf"\caption{{{latex_escape(table.title)}}}",
      rf"\label{{{label}}}",
      rf"\begin{{tabular}}{{{table.column_spec()}}}", r"\toprule", *rows,
      r"\midrule", *body, r"\bottomrule", r"\end{tabular}", r"\end{table}",
      ""])


def write_table(table: Table, out_dir: str) -> list[str]:
  """``tables/<name>.csv`` (full precision) and ``.tex``; returns the two
  paths."""
  base = os.path.join(out_dir, "tables", table.name)
  store.write_csv(base + ".csv", table.csv_rows, table.csv_columns)
  store.write_text(base + ".tex", latex_table(table))
  return [base + ".csv", base + ".tex"]
