"""A report table and how it is written: display cells as Markdown and
LaTeX (booktabs), raw rows as CSV, numbers with a fixed precision."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

from optbench_jax import store
from optbench_jax.analysis import statistics


@dataclasses.dataclass
class Table:
  """One table: display cells (Markdown, LaTeX) and raw rows (CSV)."""
  name: str               # path under tables/, without extension
  title: str
  headers: list
  cells: list
  csv_columns: list
  csv_rows: list
  align: str = ""         # LaTeX column alignment; default l then r

  def column_spec(self) -> str:
    return self.align or "l" + "r" * (len(self.headers) - 1)


def format_number(x: Optional[float], kind: str = "metric") -> str:
  """Metrics with 4 significant digits, epochs with 3, times with 1
  decimal, p-values with 3 significant digits; missing values as "–"."""
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "–"
  spec = {"metric": ".4g", "epoch": ".3g", "time": ".1f", "p": ".3g"}[kind]
  return format(float(x), spec)


def format_interval(ci: Optional[statistics.Interval], kind: str) -> str:
  """``mean ± half-width`` (t), ``mean [low, high]`` (bootstrap), ``mean``
  (one value)."""
  if ci is None:
    return "–"
  text = format_number(ci.mean, kind)
  if ci.low is None:
    return text
  if ci.method == "t":
    return f"{text} ± {format_number(ci.half_width, kind)}"
  return (f"{text} [{format_number(ci.low, kind)}, "
          f"{format_number(ci.high, kind)}]")


def _markdown_cell(text) -> str:
  return str(text).replace("|", "\\|")


def markdown_table(table: Table) -> str:
  lines = ["| " + " | ".join(map(_markdown_cell, table.headers)) + " |",
           "| " + " | ".join("---" if a == "l" else "---:"
                             for a in table.column_spec()) + " |"]
  lines += ["| " + " | ".join(map(_markdown_cell, row)) + " |"
            for row in table.cells]
  return "\n".join(lines)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%",
                  "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "–": "--", "−": "$-$", "≤": r"$\le$",
                  "×": r"$\times$", "∞": r"$\infty$", "ρ": r"$\rho$",
                  "τ": r"$\tau$", "↑": r"$\uparrow$",
                  "↓": r"$\downarrow$", "λ": r"$\lambda$"}


def latex_escape(text) -> str:
  out = "".join(_LATEX_ESCAPES.get(c, c) for c in str(text))
  return "".join(_LATEX_SYMBOLS.get(c, c) for c in out)


def latex_table(table: Table) -> str:
  """A booktabs ``table`` environment with the table's caption."""
  rows = [" & ".join(latex_escape(c) for c in table.headers) + r" \\"]
  body = [" & ".join(latex_escape(c) for c in row) + r" \\"
          for row in table.cells]
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
