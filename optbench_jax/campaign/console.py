"""What the console shows after a command: the run summary of ``run`` and
the headline numbers of ``analyze``, as lines the CLI prints.

Numbers follow the report's digits rule
(:mod:`optbench_jax.analysis.report.render`): 4 significant digits alone,
an estimate's standard error to 2 significant digits with the estimate to
the same decimal place.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from optbench_jax.analysis.report.render import (format_estimate,
                                                 format_number)

if TYPE_CHECKING:
  from optbench_jax.analysis.analyze import Analysis

NOT_CONVERGED = "not converged"


def _cell(value, kind: str = "metric") -> str:
  text = format_number(value, kind)
  return "-" if text == "–" else text


def _convergence(row: dict) -> str:
  if row.get("converged") is False:
    return NOT_CONVERGED
  return _cell(row.get("convergence_epoch"), "epoch")


def _label(row: dict, rows: Sequence[dict]) -> str:
  """The optimizer, with learning rate and seed when it has several."""
  several = len({(r["learning_rate"], r["seed"]) for r in rows
                 if r["optimizer"] == row["optimizer"]}) > 1
  return row["optimizer"] + (
      f" lr={row['learning_rate']:g} s={row['seed']}" if several else "")


def summary_lines(rows: Sequence[dict], output_dir: str) -> list[str]:
  """The table printed after ``run``: per run (summary rows of
  :func:`optbench_jax.train.outputs.summarize`) its status, best
  validation primary metric and its epoch, best validation loss, test
  primary metric (when the dataset has a test split), convergence epoch
  ("not converged" when the rule was not met) and wall time; then how the
  times were measured and where the results are."""
  if not rows:
    return []
  primary = rows[0]["primary_metric"]
  has_test = any(r.get("test_primary") is not None for r in rows)
  columns = [(f"best val {primary}", lambda r: _cell(r.get("best_primary"))),
             ("epoch", lambda r: _cell(r.get("best_primary_epoch"), "epoch")),
             ("best val loss", lambda r: _cell(r.get("best_val_loss")))]
  if has_test:
    columns.append((f"test {primary}", lambda r: _cell(r.get(
        "test_primary"))))
  columns += [("convergence epoch", _convergence),
              ("time s", lambda r: _cell(r.get("total_runtime_s"), "time"))]
  labels = [_label(r, rows) for r in rows]
  width = max(22, max(map(len, labels)) + 2)
  widths = [max(len(header), len(NOT_CONVERGED)
                if header == "convergence epoch" else 8) + 2
            for header, _ in columns]
  lines = ["", f"{'run':<{width}}{'status':<11}" + "".join(
      f"{header:>{w}}" for (header, _), w in zip(columns, widths))]
  for label, row in zip(labels, rows):
    lines.append(f"{label:<{width}}{row['status']:<11}" + "".join(
        f"{show(row):>{w}}" for (_, show), w in zip(columns, widths)))
  together = sorted({int(r.get("runs_in_program") or 1) for r in rows})
  if together != [1]:
    lines.append(
        "time s: wall time of the compiled program (compilation and "
        "evaluation included), shared by the runs it trained together "
        f"(N = {', '.join(map(str, together))})")
  lines.append(f"results under {output_dir}")
  return lines


def analysis_lines(analysis: Analysis) -> list[str]:
  """The lines printed after ``analyze``: per run the Hessian's largest
  eigenvalue, its trace ± standard error and the barrier of the initial →
  final path (those computed), and where its files are; then where the
  cross-run figures are."""
  lines = []
  for run in analysis.runs:
    numbers = []
    if run.trace is not None:
      numbers += [f"λ_max {_cell(run.lambda_max)}",
                  f"trace {format_estimate(*run.trace)} (± standard error)"]
    if "landscape1d" in run.results:
      numbers.append(f"barrier initial → final {_cell(run.barrier)}")
    lines.append(f"{run.label}: " + ("; ".join(numbers) or "analysed"))
    lines.append(f"  figures and numbers under {run.out_dir}")
  if analysis.shared_dir is not None:
    lines.append(f"figures of all runs under {analysis.shared_dir}")
  return lines
