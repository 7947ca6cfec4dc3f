"""The report's tables of one configuration (results per optimizer, test
metrics, analyses, pairwise comparisons) and of the whole campaign (what
was run, diverged and unfinished runs, every run): statistics over seeds
into :class:`~optbench_jax.analysis.report.render.Table` objects."""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Optional, Sequence

from optbench_jax import store
from optbench_jax.analysis import landscape, statistics
from optbench_jax.analysis.report.options import Options
from optbench_jax.analysis.report.render import (Table, format_estimate,
                                                 format_interval,
                                                 format_number, format_range,
                                                 format_value)
from optbench_jax.analysis.report.runs import Configuration, Run, completed
from optbench_jax.train import outputs

# Summary columns reported as mean ± interval over seeds: key, header,
# format, and which mean is best (bold): "primary" (the metric's direction),
# "lower", or None (no best marked).
STAT_COLUMNS = (("best_primary", "best {primary}", "metric", "primary"),
                ("best_val_loss", "best val loss", "metric", "lower"),
                ("convergence_epoch", "convergence epoch", "epoch", None),
                ("time_to_convergence_s", "time to convergence (s)", "time",
                 None),
                ("total_runtime_s", "total time (s)", "time", None),
                ("test_primary", "test {primary}", "metric", "primary"))
CONVERGENCE_KEYS = ("convergence_epoch", "time_to_convergence_s")
NOT_CONVERGED = "not converged"


def seed_values(runs: Sequence[Run], key: str) -> dict:
  """``{seed: value}`` of a summary key over the completed runs."""
  return {r.seed: float(r.row[key]) for r in completed(runs)
          if r.row.get(key) is not None and math.isfinite(float(r.row[key]))}


def best_cells(means: Sequence[Optional[float]], higher_is_better: bool
               ) -> list[int]:
  """Indices of the best of ``means`` (ties all best; None never; none
  when fewer than two different values)."""
  finite = [m for m in means if m is not None and math.isfinite(m)]
  if len(set(finite)) < 2:   # nothing to compare, or all equal
    return []
  best = max(finite) if higher_is_better else min(finite)
  return [i for i, m in enumerate(means) if m == best]


def _convergence_cell(ci, done: Sequence[Run], kind: str) -> str:
  """A convergence column's cell: the mean over the converged runs, with
  how many of the completed runs converged when not all did; "not
  converged" when none did."""
  judged = [r for r in done if r.row.get("converged") is not None]
  converged = sum(bool(r.row["converged"]) for r in judged)
  if judged and not converged:
    return NOT_CONVERGED
  text = format_interval(ci, kind)
  if converged < len(judged):
    text += f" ({converged} of {len(judged)} converged)"
  return text


def summary_table(config: Configuration, opts: Options) -> Table:
  """The source benchmark's cross-optimizer table, mean ± CI over seeds;
  the best mean of each metric column in bold."""
  has_test = any(r.row.get("test_primary") is not None
                 for r in completed(config.runs))
  columns = [c for c in STAT_COLUMNS
             if c[0] != "test_primary" or has_test]
  headers = (["optimizer", "learning rate", "seeds", "diverged"]
             + [h.format(primary=config.primary) for _, h, _, _ in columns])
  cells, csv_rows, means = [], [], []
  for label, runs in config.groups.items():
    done = completed(runs)
    diverged = sum(r.state == "diverged" for r in runs)
    lr = runs[0].metadata.get("learning_rate")
    row = [label, format_number(lr, "setting"), str(len(done)), str(diverged)]
    raw = {"optimizer": runs[0].metadata.get("optimizer"), "label": label,
           "learning_rate": lr, "primary_metric": config.primary,
           "n_completed": len(done), "n_diverged": diverged,
           "n_converged": sum(bool(r.row.get("converged")) for r in done),
           "ci_method": opts.ci_method, "confidence": opts.confidence}
    group_means = []
    for key, _, kind, _ in columns:
      ci = opts.interval([r.row.get(key) for r in done])
      group_means.append(ci and ci.mean)
      if not done:
        row.append("diverged" if diverged else "unfinished")
      elif key in CONVERGENCE_KEYS:
        row.append(_convergence_cell(ci, done, kind))
      else:
        row.append(format_interval(ci, kind))
      if ci is not None:
        raw.update({f"{key}_mean": ci.mean, f"{key}_std": ci.std,
                    f"{key}_low": ci.low, f"{key}_high": ci.high,
                    f"{key}_n": ci.n})
    cells.append(row)
    csv_rows.append(raw)
    means.append(group_means)
  bold = set()
  for j, (_, _, _, best) in enumerate(columns):
    if best is not None:
      higher = config.higher_is_better if best == "primary" else False
      bold |= {(i, 4 + j) for i in best_cells([m[j] for m in means],
                                              higher)}
  marked = ", ".join(h.format(primary=config.primary)
                     for _, h, _, best in columns if best is not None)
  csv_columns = (["optimizer", "label", "learning_rate", "primary_metric",
                  "n_completed", "n_diverged", "n_converged", "ci_method",
                  "confidence"]
                 + [f"{k}_{s}" for k, _, _, _ in columns
                    for s in ("mean", "std", "low", "high", "n")])
  return Table(f"{config.name}/summary",
               f"{config.name}: results per optimizer (mean over completed "
               f"seeds; {opts.ci_words}; bold: the best mean of {marked}, "
               f"not a significance claim; convergence over the converged "
               f"runs)", headers, cells, csv_columns, csv_rows,
               align="ll" + "r" * (len(headers) - 2), bold=bold)


def table_of_test_metrics(config: Configuration, opts: Options
                       ) -> Optional[Table]:
  """Every test metric of the completed runs, mean ± CI per optimizer."""
  keys = list(dict.fromkeys(
      k for r in completed(config.runs)
      for k, v in (r.metadata.get("test_metrics") or {}).items()
      if isinstance(v, (int, float))))
  if not keys:
    return None
  cells, csv_rows = [], []
  for label, runs in config.groups.items():
    done = [r for r in completed(runs) if r.metadata.get("test_metrics")]
    if not done:
      continue
    row, raw = [label, str(len(done))], {"label": label, "n": len(done)}
    for key in keys:
      ci = opts.interval([r.metadata["test_metrics"].get(key) for r in done])
      row.append(format_interval(ci, "metric"))
      raw.update({f"{key}_mean": ci and ci.mean, f"{key}_low": ci and ci.low,
                  f"{key}_high": ci and ci.high})
    cells.append(row)
    csv_rows.append(raw)
  # Directions are known for the primary metric and the loss only.
  directions = {config.primary: config.higher_is_better, "loss": False}
  bold = {(i, 2 + j) for j, key in enumerate(keys) if key in directions
          for i in best_cells([r[f"{key}_mean"] for r in csv_rows],
                              directions[key])}
  marked = " and ".join(k for k in keys if k in directions)
  return Table(f"{config.name}/test_metrics",
               f"{config.name}: test metrics ({opts.ci_words}"
               + (f"; bold: the best mean of {marked})" if marked else ")"),
               ["optimizer", "runs"] + keys, cells,
               ["label", "n"] + [f"{k}_{s}" for k in keys
                                 for s in ("mean", "low", "high")], csv_rows,
               bold=bold)


def _analysis_result(run: Run, name: str) -> Optional[dict]:
  try:
    return store.read_json_if_intact(
        os.path.join(run.run_dir, store.ANALYSIS, f"{name}.json"), dict)
  except store.DamagedFile:
    return None


def _path_result(path: dict) -> dict:
  """The final loss and the barrier of a 1-D path ``{alphas, losses}``."""
  points = list(zip(path["alphas"], path["losses"]))
  return {"final_loss": next((l for a, l in points if a == 1.0), None),
          "barrier": landscape.barrier(path["alphas"], path["losses"])}


def analysis_table(config: Configuration) -> Optional[Table]:
  """Per analysed run (``python -m optbench_jax analyze``): the Hessian's
  largest eigenvalue and trace (± its standard error), the loss at the
  final parameters on the analysis subset, and the barrier on the straight
  path from the initial parameters, ``max_{0≤α≤1} L(α) − max(L(0), L(1))``
  (0 when the path is monotone: Goodfellow et al. 2015)."""
  cells, csv_rows = [], []
  for label, runs in config.groups.items():
    for run in runs:
      spectrum = _analysis_result(run, "hessian") or {}
      path = (_analysis_result(run, "landscape1d") or {}).get(
          "curves", {}).get(landscape.INITIAL_TO_FINAL)
      if not spectrum and not path:
        continue
      raw = {"label": label, "seed": run.seed,
             "lambda_max": (spectrum.get("top_eigenvalues") or [None])[0],
             "trace": spectrum.get("trace"),
             "trace_stderr": spectrum.get("trace_stderr")}
      if path:
        raw.update(_path_result(path))
      cells.append([label, str(run.seed), format_number(raw["lambda_max"]),
                    format_estimate(raw["trace"], raw["trace_stderr"]),
                    format_number(raw.get("final_loss")),
                    format_number(raw.get("barrier"))])
      csv_rows.append(raw)
  if not cells:
    return None
  return Table(f"{config.name}/analysis",
               f"{config.name}: Hessian and 1-D path at the final parameters "
               f"(analysis subset; trace ± its standard error over the "
               f"Hutchinson probes)",
               ["optimizer", "seed", "λ_max", "trace", "final loss",
                "barrier on the path from the initial parameters"], cells,
               ["label", "seed", "lambda_max", "trace", "trace_stderr",
                "final_loss", "barrier"], csv_rows)


NO_DIFFERENCE = "no significant difference"


def _verdict(c: statistics.Comparison) -> str:
  """The winner, "no significant difference", or "–" (no test)."""
  if c.winner is not None:
    return c.winner
  return "–" if c.p_holm is None else NO_DIFFERENCE


def pairwise_table(config: Configuration, opts: Options) -> Table:
  """Every pair of optimizers on the best primary metric; a winner only
  where the Holm-adjusted p-value is below ``1 − confidence``."""
  comparisons = statistics.pairwise_tests(
      {label: seed_values(runs, "best_primary")
       for label, runs in config.groups.items()},
      higher_is_better=config.higher_is_better, confidence=opts.confidence)
  alpha = f"{1 - opts.confidence:.2g}"
  headers = ["A", "B", "test", "n (A, B)", "mean difference A - B",
             f"{opts.percent} CI", "p", "Holm p",
             f"better (Holm p < {alpha})"]
  cells = [[c.a, c.b, c.test, f"{c.n_a}, {c.n_b}",
            format_value(c.difference, None if c.low is None
                         else (c.high - c.low) / 2),
            format_range(c.difference, c.low, c.high),
            format_number(c.p, "p"), format_number(c.p_holm, "p"),
            _verdict(c)] for c in comparisons]
  columns = [f.name for f in dataclasses.fields(statistics.Comparison)]
  return Table(f"{config.name}/pairwise",
               f"{config.name}: pairwise comparisons of the best "
               f"{config.primary} (a side is named better only where the "
               f"Holm-adjusted p < α = {alpha})", headers, cells, columns,
               [dataclasses.asdict(c) for c in comparisons],
               align="lllrrrrrl")


def distinct(values: Sequence) -> list:
  """``values`` without repeats, in order."""
  return list(dict.fromkeys(values))


def overview_table(configurations: Sequence[Configuration]) -> Table:
  """Per configuration: optimizers, learning rates, seeds, epochs, runs."""
  cells, rows = [], []
  for c in configurations:
    meta = [r.metadata for r in c.runs]
    row = {"configuration": c.name, "primary_metric": c.primary,
           "higher_is_better": c.higher_is_better,
           "optimizers": " ".join(distinct(str(m.get("optimizer"))
                                           for m in meta)),
           "learning_rates": " ".join(f"{float(lr):g}" for lr in distinct(
               m.get("learning_rate") for m in meta) if lr is not None),
           "seeds": " ".join(str(s) for s in sorted(distinct(
               r.seed for r in c.runs))),
           "epochs": " ".join(str(e) for e in distinct(
               m.get("epochs") for m in meta)),
           "completed": sum(r.state == "completed" for r in c.runs),
           "diverged": sum(r.state == "diverged" for r in c.runs),
           "unfinished": sum(r.state == "unfinished" for r in c.runs)}
    rows.append(row)
    cells.append([row["configuration"], c.primary_label,
                  row["optimizers"].replace(" ", ", "),
                  row["learning_rates"].replace(" ", ", "),
                  row["seeds"].replace(" ", ", "), row["epochs"],
                  f"{row['completed']} / {row['diverged']} / "
                  f"{row['unfinished']}"])
  return Table("overview", "What was run", [
      "configuration", "primary metric", "optimizers", "learning rates",
      "seeds", "epochs", "runs: completed / diverged / unfinished"], cells,
      list(rows[0]) if rows else ["configuration"], rows, align="lllllrr")


def problems_table(runs: Sequence[Run], report_dir: str) -> Optional[Table]:
  """Diverged, unfinished and unreadable runs (these with what is
  damaged)."""
  rows = []
  for r in runs:
    if r.state == "completed":
      continue
    diverged_at = next((h.get("epoch") for h in r.history
                        if h.get("status") == "diverged"), None)
    rows.append({"configuration": r.configuration if r.metadata else "?",
                 "optimizer": r.metadata.get("optimizer", "?"),
                 "seed": r.metadata.get("seed"),
                 "learning_rate": r.metadata.get("learning_rate"),
                 "state": r.state, "problem": r.problem,
                 "status": r.metadata.get("status"),
                 "epochs_recorded": len(r.history),
                 "epochs": r.metadata.get("epochs"),
                 "diverged_at_epoch": diverged_at,
                 "run_dir": os.path.relpath(r.run_dir, report_dir)})
  if not rows:
    return None
  cells = [[row["configuration"], str(row["optimizer"]), str(row["seed"]),
            format_number(row["learning_rate"], "setting"),
            ": ".join(filter(None, (row["state"], row["problem"]))),
            f"{row['epochs_recorded']} / {row['epochs'] or '?'}",
            "–" if row["diverged_at_epoch"] is None
            else str(row["diverged_at_epoch"]), f"`{row['run_dir']}`"]
           for row in rows]
  return Table("diverged_and_unfinished", "Diverged and unfinished runs", [
      "configuration", "optimizer", "seed", "learning rate", "state",
      "epochs recorded / planned", "diverged at epoch", "directory"],
      cells, list(rows[0]), rows, align="llrrlrrl")


def runs_table(runs: Sequence[Run], report_dir: str) -> Table:
  """Every readable run's summary row (the merged ``summary.csv``)."""
  rows = [{**r.row, "state": r.state,
           "run_dir": os.path.relpath(r.run_dir, report_dir)}
          for r in runs if r.row]
  columns = list(outputs.SUMMARY_COLUMNS) + ["state", "run_dir"]
  shown = ("optimizer", "seed", "learning_rate", "state", "best_primary",
           "best_val_loss", "convergence_epoch", "time_to_convergence_s",
           "total_runtime_s")
  kinds = {"best_primary": "metric", "best_val_loss": "metric",
           "learning_rate": "setting", "convergence_epoch": "epoch",
           "time_to_convergence_s": "time", "total_runtime_s": "time"}
  headers = ["configuration", "optimizer", "seed", "learning rate", "state",
             "best primary", "best val loss", "convergence epoch",
             "time to convergence (s)", "total time (s)"]
  def cell(row: dict, key: str) -> str:
    if key in CONVERGENCE_KEYS and row.get("converged") is False:
      return NOT_CONVERGED
    return (format_number(row.get(key), kinds[key]) if key in kinds
            else str(row.get(key)))

  cells = [["/".join(str(row.get(k)) for k in ("task", "dataset", "model"))]
           + [cell(row, k) for k in shown] for row in rows]
  return Table("runs", "Every run", headers, cells,
               columns, rows, align="llrrl" + "r" * 5)


def campaign_rows(config: Configuration, name: str) -> Optional[list[dict]]:
  """The rows of the configuration's campaign file ``name`` (``tuning.csv``,
  ``budget.csv``), None if there is none."""
  c = config.runs[0].metadata
  where = store.campaign_dir_above(config.runs[0].run_dir, c["task"],
                                   c["dataset"], c["model"])
  path = where and os.path.join(where, name)
  if not path or not os.path.isfile(path):
    return None
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def tuning_table(config: Configuration, rows: Sequence[dict]) -> Table:
  """Per optimizer: its trials (finished, diverged) and the one selected
  on validation, whose re-runs on fresh seeds are the results above."""
  cells, csv_rows = [], []
  for optimizer in dict.fromkeys(r["optimizer"] for r in rows):
    mine = [r for r in rows if r["optimizer"] == optimizer]
    chosen = next((r for r in mine if r["selected"] == "True"), None)
    raw = {"optimizer": optimizer, "trials": len(mine),
           "diverged": sum(r["status"] == "diverged" for r in mine),
           "selected_trial": chosen and int(chosen["trial"]),
           "learning_rate": chosen and float(chosen["learning_rate"]),
           "hyperparameters": chosen and chosen["hyperparameters"],
           "best_val": chosen and float(chosen["best_primary"])}
    cells.append([optimizer, str(raw["trials"]), str(raw["diverged"]),
                  "none" if chosen is None else str(raw["selected_trial"]),
                  format_number(raw["learning_rate"]),
                  raw["hyperparameters"] or "–",
                  format_number(raw["best_val"])])
    csv_rows.append(raw)
  return Table(f"{config.name}/tuning",
               f"{config.name}: tuning (trials on the tuning seed; the "
               f"selected trial has the best validation {config.primary})",
               ["optimizer", "trials", "diverged", "selected trial",
                "learning rate", "other hyperparameters",
                f"best val {config.primary}"], cells, list(csv_rows[0]),
               csv_rows, align="lrrrrlr")
