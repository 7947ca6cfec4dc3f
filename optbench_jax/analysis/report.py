"""The campaign report: Markdown, the same tables as CSV and LaTeX, figures.

:func:`write_report` rebuilds everything from the per-run files
(``run_metadata.json`` + ``history.json``) it finds anywhere under the
campaign directory — the output root with many configurations, one
configuration, or a tree merged from ``--shard`` parts — never from the
campaign's aggregate files (``summary.csv``, ``seeds.csv``), which a shard
writes for its own part only. It writes into ``<campaign_dir>/report/``:

* ``report.md``: what was run (configurations, optimizers, seeds, epochs,
  devices, versions), the statistical methods, per configuration the
  cross-optimizer table in the source benchmark's layout (optimizer, best
  primary metric, best validation loss, convergence epoch, time to
  convergence, total time; mean ± confidence interval over seeds), test
  metrics, training curves and pairwise comparisons; the ranking across
  configurations; performance profiles and time-to-target curves; diverged
  and unfinished runs. Links are relative: the folder can be moved.
* ``tables/**/*.csv`` (full precision) and ``tables/**/*.tex`` (booktabs).
* ``figures/``: per configuration the cross-optimizer primary metric and
  validation loss (mean over seeds with a shaded confidence band), per
  optimizer the dual-axis metric / validation-loss plot and the train vs
  validation loss plot of the mean over seeds
  (:func:`optbench_jax.train.plots.run_plots`), copies of the runs' own
  analysis figures (``<run>/analysis/*.png``), and across the campaign the
  performance profiles and time-to-target curves.

Statistics over seeds use the completed runs; a diverged run is counted and
listed as diverged, an unfinished one (no final status, or a history shorter
than ``epochs_run``) as unfinished. Methods:
:mod:`optbench_jax.analysis.statistics`; the convergence rule:
:mod:`optbench_jax.train.outputs`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from optbench_jax.analysis import statistics  # noqa: E402
from optbench_jax.errors import OptBenchError  # noqa: E402
from optbench_jax.train import outputs, plots  # noqa: E402
from optbench_jax.train.run import FINISHED  # noqa: E402

REPORT_DIR = "report"
METADATA, HISTORY = "run_metadata.json", "history.json"
# Never holding runs: checkpoints, sample outputs, analyses, earlier reports.
SKIP_DIRS = ("checkpoints", "samples", "analysis", REPORT_DIR)
# Summary columns reported as mean ± interval over seeds, with their format.
STAT_COLUMNS = (("best_primary", "best {primary}", "metric"),
                ("best_val_loss", "best val loss", "metric"),
                ("convergence_epoch", "convergence epoch", "epoch"),
                ("time_to_convergence_s", "time to convergence (s)", "time"),
                ("total_runtime_s", "total time (s)", "time"),
                ("test_primary", "test {primary}", "metric"))


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


@dataclasses.dataclass
class Run:
  """One run directory: its files, state and summary row.

  ``state``: ``completed``, ``diverged``, ``unfinished`` or ``unreadable``
  (a damaged or missing ``run_metadata.json``).
  """
  run_dir: str
  metadata: dict
  history: list
  state: str
  row: dict = dataclasses.field(default_factory=dict)
  label: str = ""

  @property
  def configuration(self) -> str:
    return "/".join(str(self.metadata.get(k)) for k in ("task", "dataset",
                                                         "model"))

  @property
  def seed(self) -> int:
    return self.metadata.get("seed", 0)


def _read_run(run_dir: str) -> Run:
  try:
    meta = outputs.read_json_if_intact(os.path.join(run_dir, METADATA))
    history = outputs.read_json_if_intact(os.path.join(run_dir, HISTORY))
  except outputs.DamagedFile:
    return Run(run_dir, {}, [], "unreadable")
  if not meta:
    return Run(run_dir, {}, history or [], "unreadable")
  history = history or []
  finished = (meta.get("status") in FINISHED
              and len(history) == meta.get("epochs_run"))
  run = Run(run_dir, meta, history,
            meta["status"] if finished else "unfinished")
  if "primary_metric" in meta and "higher_is_better" in meta:
    run.row = outputs.summarize(history, meta, bool(meta["higher_is_better"]))
  return run


def find_runs(campaign_dir: str, exclude: Sequence[str] = ()) -> list[Run]:
  """Every run directory under ``campaign_dir`` (one holding
  ``run_metadata.json`` or ``history.json``), in path order."""
  if not os.path.isdir(campaign_dir):
    raise OptBenchError(f"--campaign-dir {campaign_dir} is not a directory")
  skip = {os.path.realpath(p) for p in exclude}
  runs = []
  for root, dirs, files in os.walk(campaign_dir):
    dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and
                     os.path.realpath(os.path.join(root, d)) not in skip)
    if METADATA in files or HISTORY in files:
      runs.append(_read_run(root))
  if not runs:
    raise OptBenchError(f"no {METADATA} under {campaign_dir}; give a "
                        f"campaign's output directory")
  return runs


@dataclasses.dataclass
class Configuration:
  """The runs of one (task, dataset, model), grouped by optimizer label
  (``"adam"``, or ``"adam lr=0.001"`` when the optimizer has several
  learning rates)."""
  name: str
  primary: str
  higher_is_better: bool
  runs: list
  groups: dict = dataclasses.field(default_factory=dict)

  @property
  def task(self) -> str:
    return self.runs[0].metadata["task"]

  @property
  def dataset(self) -> str:
    return self.runs[0].metadata["dataset"]

  @property
  def model(self) -> str:
    return self.runs[0].metadata["model"]


def _label(meta: dict, several_lrs: bool) -> str:
  if several_lrs:
    return f"{meta['optimizer']} lr={float(meta['learning_rate']):g}"
  return str(meta["optimizer"])


def group_runs(runs: Sequence[Run]) -> list[Configuration]:
  """Readable runs by configuration (sorted) and optimizer label (in order
  of first appearance)."""
  by_name: dict = {}
  for run in runs:
    if run.state != "unreadable":
      by_name.setdefault(run.configuration, []).append(run)
  configurations = []
  for name in sorted(by_name):
    members = by_name[name]
    directions = {(r.metadata.get("primary_metric"),
                   r.metadata.get("higher_is_better")) for r in members}
    if len(directions) != 1 or None in next(iter(directions)):
      raise OptBenchError(
          f"{name}: the runs disagree on (or lack) primary_metric / "
          f"higher_is_better: {sorted(map(str, directions))}")
    primary, higher = next(iter(directions))
    lrs: dict = {}
    for r in members:
      lrs.setdefault(r.metadata.get("optimizer"), set()).add(
          r.metadata.get("learning_rate"))
    config = Configuration(name, primary, bool(higher), members)
    for r in sorted(members, key=lambda r: (str(r.metadata.get("optimizer")),
                                            r.metadata.get("learning_rate")
                                            or 0.0, r.seed)):
      r.label = _label(r.metadata, len(lrs[r.metadata.get("optimizer")]) > 1)
      config.groups.setdefault(r.label, []).append(r)
    configurations.append(config)
  return configurations


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
  """``tables/<name>.csv`` and ``.tex``; returns the two paths."""
  base = os.path.join(out_dir, "tables", table.name)
  outputs.write_csv(base + ".csv", table.csv_rows, table.csv_columns)
  outputs.write_atomic(base + ".tex", latex_table(table))
  return [base + ".csv", base + ".tex"]


@dataclasses.dataclass(frozen=True)
class Options:
  """The report's statistical choices (checked on construction)."""
  confidence: float = 0.95
  ci_method: str = "t"
  target_fraction: float = 0.95

  def __post_init__(self):
    statistics.check_ci_options(self.confidence, self.ci_method)
    statistics.target_value(1.0, self.target_fraction, True)

  def interval(self, values: Sequence[float]
               ) -> Optional[statistics.Interval]:
    values = [float(v) for v in values
              if v is not None and math.isfinite(float(v))]
    if not values:
      return None
    return statistics.mean_ci(values, confidence=self.confidence,
                              method=self.ci_method)

  @property
  def percent(self) -> str:
    return f"{100 * self.confidence:g} %"


def _completed(runs: Sequence[Run]) -> list[Run]:
  return [r for r in runs if r.state == "completed"]


def _primary_label(config: Configuration) -> str:
  arrow = "↑" if config.higher_is_better else "↓"
  return f"{config.primary} {arrow}"


def summary_table(config: Configuration, opts: Options) -> Table:
  """The source benchmark's cross-optimizer table, mean ± CI over seeds."""
  has_test = any(r.row.get("test_primary") is not None
                 for r in _completed(config.runs))
  columns = [c for c in STAT_COLUMNS
             if c[0] != "test_primary" or has_test]
  headers = (["optimizer", "learning rate", "seeds", "diverged"]
             + [h.format(primary=config.primary) for _, h, _ in columns])
  cells, csv_rows = [], []
  for label, runs in config.groups.items():
    done = _completed(runs)
    diverged = sum(r.state == "diverged" for r in runs)
    lr = runs[0].metadata.get("learning_rate")
    row = [label, format_number(lr, "metric"), str(len(done)), str(diverged)]
    raw = {"optimizer": runs[0].metadata.get("optimizer"), "label": label,
           "learning_rate": lr, "primary_metric": config.primary,
           "n_completed": len(done), "n_diverged": diverged,
           "ci_method": opts.ci_method, "confidence": opts.confidence}
    for key, _, kind in columns:
      ci = opts.interval([r.row.get(key) for r in done])
      row.append(format_interval(ci, kind) if done else "diverged"
                 if diverged else "unfinished")
      if ci is not None:
        raw.update({f"{key}_mean": ci.mean, f"{key}_std": ci.std,
                    f"{key}_low": ci.low, f"{key}_high": ci.high,
                    f"{key}_n": ci.n})
    cells.append(row)
    csv_rows.append(raw)
  csv_columns = (["optimizer", "label", "learning_rate", "primary_metric",
                  "n_completed", "n_diverged", "ci_method", "confidence"]
                 + [f"{k}_{s}" for k, _, _ in columns
                    for s in ("mean", "std", "low", "high", "n")])
  return Table(f"{config.name}/summary",
               f"{config.name}: results per optimizer (mean over completed "
               f"seeds; {_ci_words(opts)})", headers, cells, csv_columns,
               csv_rows, align="ll" + "r" * (len(headers) - 2))


def _ci_words(opts: Options) -> str:
  if opts.ci_method == "t":
    return f"± half-width of the {opts.percent} Student-t interval"
  return f"[{opts.percent} percentile-bootstrap interval]"


def table_of_test_metrics(config: Configuration, opts: Options
                       ) -> Optional[Table]:
  """Every test metric of the completed runs, mean ± CI per optimizer."""
  keys = list(dict.fromkeys(
      k for r in _completed(config.runs)
      for k, v in (r.metadata.get("test_metrics") or {}).items()
      if isinstance(v, (int, float))))
  if not keys:
    return None
  cells, csv_rows = [], []
  for label, runs in config.groups.items():
    done = [r for r in _completed(runs) if r.metadata.get("test_metrics")]
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
  return Table(f"{config.name}/test_metrics",
               f"{config.name}: test metrics ({_ci_words(opts)})",
               ["optimizer", "runs"] + keys, cells,
               ["label", "n"] + [f"{k}_{s}" for k in keys
                                 for s in ("mean", "low", "high")], csv_rows)


def _analysis_result(run: Run, name: str) -> Optional[dict]:
  try:
    return outputs.read_json_if_intact(
        os.path.join(run.run_dir, "analysis", f"{name}.json"))
  except outputs.DamagedFile:
    return None


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
          "curves", {}).get("initial → final")
      if not spectrum and not path:
        continue
      raw = {"label": label, "seed": run.seed,
             "lambda_max": (spectrum.get("top_eigenvalues") or [None])[0],
             "trace": spectrum.get("trace"),
             "trace_stderr": spectrum.get("trace_stderr")}
      if path:
        inside = [l for a, l in zip(path["alphas"], path["losses"])
                  if 0.0 <= a <= 1.0 and l is not None]
        ends = [l for a, l in zip(path["alphas"], path["losses"])
                if a in (0.0, 1.0) and l is not None]
        raw["final_loss"] = next((l for a, l in zip(path["alphas"],
                                                    path["losses"])
                                  if a == 1.0), None)
        if inside and len(ends) == 2:
          raw["barrier"] = max(inside) - max(ends)
      trace = format_number(raw["trace"])
      if raw["trace_stderr"] is not None:
        trace += f" ± {format_number(raw['trace_stderr'])}"
      cells.append([label, str(run.seed), format_number(raw["lambda_max"]),
                    trace, format_number(raw.get("final_loss")),
                    format_number(raw.get("barrier"))])
      csv_rows.append(raw)
  if not cells:
    return None
  return Table(f"{config.name}/analysis",
               f"{config.name}: Hessian and 1-D path at the final parameters "
               f"(analysis subset)",
               ["optimizer", "seed", "λ_max", "trace", "final loss",
                "barrier on the path from the initial parameters"], cells,
               ["label", "seed", "lambda_max", "trace", "trace_stderr",
                "final_loss", "barrier"], csv_rows)


def _seed_values(runs: Sequence[Run], key: str) -> dict:
  return {r.seed: float(r.row[key]) for r in _completed(runs)
          if r.row.get(key) is not None and math.isfinite(float(r.row[key]))}


def pairwise_table(config: Configuration, opts: Options) -> Table:
  """Every pair of optimizers on the best primary metric."""
  comparisons = statistics.pairwise_tests(
      {label: _seed_values(runs, "best_primary")
       for label, runs in config.groups.items()},
      higher_is_better=config.higher_is_better, confidence=opts.confidence)
  headers = ["A", "B", "test", "n (A, B)", "mean difference A - B",
             f"{opts.percent} CI", "p", "Holm p", "better"]
  cells = [[c.a, c.b, c.test, f"{c.n_a}, {c.n_b}",
            format_number(c.difference, "metric"),
            "–" if c.low is None else
            f"[{format_number(c.low)}, {format_number(c.high)}]",
            format_number(c.p, "p"), format_number(c.p_holm, "p"),
            c.better or "–"] for c in comparisons]
  columns = [f.name for f in dataclasses.fields(statistics.Comparison)]
  return Table(f"{config.name}/pairwise",
               f"{config.name}: pairwise comparisons of the best "
               f"{config.primary}", headers, cells, columns,
               [dataclasses.asdict(c) for c in comparisons],
               align="lllrrrrrl")


def _group_mean(runs: Sequence[Run], key: str) -> Optional[float]:
  values = list(_seed_values(runs, key).values())
  return float(np.mean(values)) if values else None


def best_groups(config: Configuration) -> dict:
  """Per optimizer, its label (learning rate) with the best mean best
  primary metric (an optimizer that only diverged keeps its first
  label)."""
  chosen: dict = {}
  for label, runs in config.groups.items():
    optimizer = runs[0].metadata.get("optimizer")
    value = _group_mean(runs, "best_primary")
    if optimizer not in chosen or _better(value, chosen[optimizer][1],
                                          config.higher_is_better):
      chosen[optimizer] = (label, value)
  return chosen


def _better(value: Optional[float], than: Optional[float],
            higher_is_better: bool) -> bool:
  if value is None:
    return False
  if than is None:
    return True
  return value > than if higher_is_better else value < than


def ranking_table(configurations: Sequence[Configuration]) -> Table:
  table = {c.name: {o: v for o, (_, v) in best_groups(c).items()}
           for c in configurations}
  ranking = statistics.average_ranks(
      table, higher_is_better={c.name: c.higher_is_better
                               for c in configurations})
  names = [c.name for c in configurations]
  headers = ["optimizer", "average rank", "configurations", "wins"] + names
  cells = [[r["optimizer"], f"{r['average_rank']:.2f}",
            str(r["configurations"]), str(r["wins"])]
           + [f"{ranking.per_configuration[n][r['optimizer']]:g}"
              for n in names] for r in ranking.rows]
  csv_rows = [{**r, **{f"rank {n}": ranking.per_configuration[n][
      r["optimizer"]] for n in names}} for r in ranking.rows]
  return Table("ranking", "Average rank across configurations (1 = best, "
               "by the mean best primary metric)", headers, cells,
               ["optimizer", "average_rank", "configurations", "wins"]
               + [f"rank {n}" for n in names], csv_rows)


def target_costs(configurations: Sequence[Configuration], opts: Options):
  """Per problem ``(configuration, seed)`` and optimizer (at its best
  learning rate): when the run reached the configuration's target.
  Returns ``(costs, targets)``: ``costs[problem][optimizer]`` a
  :class:`statistics.Reached` or None; ``targets[configuration]``."""
  costs, targets = {}, {}
  for config in configurations:
    bests = [r.row["best_primary"] for r in _completed(config.runs)
             if r.row.get("best_primary") is not None]
    if not bests:
      continue
    best = max(bests) if config.higher_is_better else min(bests)
    target = statistics.target_value(best, opts.target_fraction,
                                     config.higher_is_better)
    targets[config.name] = (best, target)
    chosen = best_groups(config)
    seeds = sorted({r.seed for r in config.runs if r.state in FINISHED})
    for seed in seeds:
      row = {}
      for optimizer, (label, _) in chosen.items():
        run = next((r for r in config.groups[label]
                    if r.seed == seed and r.state in FINISHED), None)
        row[optimizer] = None if run is None else statistics.time_to_target(
            run.history, target, metric=config.primary,
            higher_is_better=config.higher_is_better)
      costs[(config.name, seed)] = row
  return costs, targets


def _cost_view(costs: dict, field: str) -> dict:
  return {p: {s: None if c is None else getattr(c, field)
              for s, c in row.items()} for p, row in costs.items()}


def time_to_target_table(costs: dict, targets: dict,
                         opts: Options) -> Table:
  rows = []
  for (name, seed), row in costs.items():
    for optimizer, reached in row.items():
      rows.append({"configuration": name, "seed": seed,
                   "optimizer": optimizer, "best": targets[name][0],
                   "target": targets[name][1],
                   "epoch": reached and reached.epoch,
                   "time_s": reached and reached.time_s})
  cells = [[r["configuration"], str(r["seed"]), r["optimizer"],
            format_number(r["target"]),
            "not reached" if r["epoch"] is None else str(r["epoch"]),
            format_number(r["time_s"], "time")] for r in rows]
  return Table("time_to_target", "Epoch and training time at which each run "
               f"first reached {opts.target_fraction:g} of its "
               "configuration's best result",
               ["configuration", "seed", "optimizer", "target", "epoch",
                "training time (s)"], cells,
               ["configuration", "seed", "optimizer", "best", "target",
                "epoch", "time_s"], rows, align="lrlrrr")


def profile_table(costs: dict) -> Table:
  """ρ_s(1) (fastest) and ρ_s(∞) (solved) of both profiles."""
  rows = []
  for field, what in (("time_s", "time"), ("epoch", "epochs")):
    profile = statistics.performance_profile(_cost_view(costs, field),
                                             [1.0, math.inf])
    for optimizer, rho in profile.rho.items():
      rows.append({"cost": what, "optimizer": optimizer,
                   "fastest": float(rho[0]), "solved": float(rho[1])})
  cells = [[r["cost"], r["optimizer"], f"{r['fastest']:.2f}",
            f"{r['solved']:.2f}"] for r in rows]
  return Table("performance_profile", "Performance profiles: fraction of "
               "problems where the optimizer is fastest (ρ(1)) and where it "
               "reaches the target at all (ρ(∞))",
               ["cost", "optimizer", "ρ(1) fastest", "ρ(∞) solved"], cells,
               ["cost", "optimizer", "fastest", "solved"], rows,
               align="llrr")


def _save(fig, path: str) -> str:
  with outputs.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)
  return path


def _finite(value) -> bool:
  return value is not None and math.isfinite(float(value))


def _curve_runs(runs: Sequence[Run]) -> list[Run]:
  """Completed runs; if none, the diverged ones (curves up to divergence)."""
  return _completed(runs) or [r for r in runs if r.state == "diverged"]


def _per_epoch(runs: Sequence[Run], key: str) -> dict:
  values: dict = {}
  for run in runs:
    for record in run.history:
      if _finite(record.get(key)):
        values.setdefault(record["epoch"], []).append(float(record[key]))
  return dict(sorted(values.items()))


def mean_history(runs: Sequence[Run], keys: Sequence[str]) -> list[dict]:
  """One record per epoch with the mean over runs of each key (runs
  without a finite value at that epoch left out)."""
  per_key = {k: _per_epoch(runs, k) for k in keys}
  epochs = sorted({e for values in per_key.values() for e in values})
  return [{"epoch": e, **{k: float(np.mean(per_key[k][e]))
                          for k in keys if e in per_key[k]}}
          for e in epochs]


def band_plots(config: Configuration, opts: Options, out_dir: str
               ) -> list[str]:
  """Cross-optimizer primary metric and validation loss
  (:func:`optbench_jax.train.plots.campaign_plots`): the mean over seeds per
  optimizer with the shaded confidence band."""
  histories, bands = {}, {}
  keys = (config.primary, "val_loss")
  for label, runs in config.groups.items():
    curve = _curve_runs(runs)
    per_key = {key: _per_epoch(curve, key) for key in keys}
    if not per_key[config.primary]:
      continue
    name = f"{label} (n={len(curve)})"
    histories[name] = mean_history(curve, keys)
    for key, per_epoch in per_key.items():
      intervals = [opts.interval(v) for v in per_epoch.values()]
      bands.setdefault(name, {})[key] = (
          list(per_epoch),
          [ci.low if ci.low is not None else ci.mean for ci in intervals],
          [ci.high if ci.high is not None else ci.mean for ci in intervals])
  return plots.campaign_plots(
      histories, config.primary, f"{config.model} on {config.dataset}: mean "
      f"over seeds, {opts.percent} CI band", out_dir, bands=bands)


def _slug(label: str) -> str:
  return label.replace(" lr=", "/lr_").replace(" ", "_")


def configuration_figures(config: Configuration, opts: Options,
                          report_dir: str) -> dict:
  """Writes the configuration's figures; returns ``{"all": [...],
  label: [...], "analysis": [(run name, path), ...]}`` (absolute paths)."""
  fig_dir = os.path.join(report_dir, "figures", config.name)
  figures = {"all": band_plots(config, opts, fig_dir), "analysis": []}
  keys = (config.primary, "val_loss", "train_loss")
  for label, runs in config.groups.items():
    curve = _curve_runs(runs)
    if not curve:
      continue
    seeds = ", ".join(str(r.seed) for r in curve)
    title = (f"{label}: {config.model} on {config.dataset}\n"
             f"mean over seeds {seeds}" if len(curve) > 1 else
             f"{label}: {config.model} on {config.dataset}, seed {seeds}")
    figures[label] = plots.run_plots(mean_history(curve, keys),
                                     config.primary, title,
                                     os.path.join(fig_dir, _slug(label)))
  for run in config.runs:
    analysis = os.path.join(run.run_dir, "analysis")
    if not os.path.isdir(analysis):
      continue
    run_name = f"{run.label} seed={run.seed}"
    target = os.path.join(fig_dir, "analysis", _slug(run.label),
                          f"seed_{run.seed}")
    for name in sorted(os.listdir(analysis)):
      if name.endswith(".png"):
        os.makedirs(target, exist_ok=True)
        shutil.copyfile(os.path.join(analysis, name),
                        os.path.join(target, name))
        figures["analysis"].append((run_name, os.path.join(target, name)))
  return figures


def shared_analysis_figures(campaign_dir: str, runs: Sequence[Run],
                            report_dir: str) -> list[tuple[str, str]]:
  """Copies the figures of ``analysis/`` folders that belong to no run
  (``analyze`` over several runs writes its cross-run figures beside them);
  returns ``(where, copied path)`` pairs."""
  run_dirs = {os.path.realpath(r.run_dir) for r in runs}
  found = []
  for root, dirs, _ in os.walk(campaign_dir):
    if os.path.realpath(root) in run_dirs | {os.path.realpath(report_dir)}:
      dirs[:] = []
      continue
    dirs[:] = sorted(d for d in dirs
                     if d == "analysis" or d not in SKIP_DIRS)
    if os.path.basename(root) != "analysis":
      continue
    where = os.path.relpath(os.path.dirname(root), campaign_dir)
    for name in sorted(os.listdir(root)):
      if name.endswith(".png"):
        target = os.path.normpath(os.path.join(
            report_dir, "figures", "analysis", where, name))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(root, name), target)
        found.append((where, target))
  return found


def _step_axes(ax, x_label: str, title: str, log: bool) -> None:
  if log:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(ticker.LogLocator(base=2, subs=(1.0, 1.5)))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel(x_label)
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title, fontsize="medium")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")


def profile_figure(costs: dict, opts: Options, report_dir: str) -> str:
  """Dolan–Moré profiles with time and with epochs as the cost."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, (field, what) in zip(axes, (("time_s", "training time"),
                                      ("epoch", "epochs"))):
    profile = statistics.performance_profile(_cost_view(costs, field))
    for optimizer, rho in profile.rho.items():
      ax.step(profile.taus, rho, where="post", label=optimizer)
    _step_axes(ax, "τ (ratio to the fastest)",
               f"cost: {what} to reach {opts.target_fraction:g} × best",
               log=True)
  axes[0].set_ylabel(f"ρ(τ): fraction of {len(costs)} problems")
  fig.suptitle("Performance profiles (Dolan & Moré 2002)")
  fig.tight_layout()
  return _save(fig, os.path.join(report_dir, "figures",
                                 "performance_profile.png"))


def time_to_target_figure(costs: dict, opts: Options, report_dir: str
                          ) -> str:
  """Fraction of problems solved against the training time and epochs."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, (field, what) in zip(axes, (("time_s", "training time (s)"),
                                      ("epoch", "epoch"))):
    view = _cost_view(costs, field)
    finite = sorted({float(c) for row in view.values() for c in row.values()
                     if c is not None})
    top = (finite[-1] if finite else 1.0) * 1.1
    budgets = np.asarray(sorted({0.0, *finite, top}))
    for optimizer, fraction in statistics.fraction_solved(
        view, budgets).items():
      ax.step(budgets, fraction, where="post", label=optimizer)
    if field == "epoch":
      ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    _step_axes(ax, what, f"target: {opts.target_fraction:g} × the "
               "configuration's best", log=False)
  axes[0].set_ylabel(f"fraction of {len(costs)} problems solved")
  fig.suptitle("Time to target (configurations × seeds)")
  fig.tight_layout()
  return _save(fig, os.path.join(report_dir, "figures",
                                 "time_to_target.png"))


def _distinct(values: Sequence) -> list:
  return list(dict.fromkeys(values))


def _device(meta: dict) -> str:
  device = meta.get("device") or {}
  return (f"{device.get('platform', '?')} ({device.get('kind', '?')}) × "
          f"{device.get('count', '?')}")


def _versions(meta: dict) -> str:
  return ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())


def overview_table(configurations: Sequence[Configuration]) -> Table:
  cells, rows = [], []
  for c in configurations:
    meta = [r.metadata for r in c.runs]
    row = {"configuration": c.name, "primary_metric": c.primary,
           "higher_is_better": c.higher_is_better,
           "optimizers": " ".join(_distinct(str(m.get("optimizer"))
                                            for m in meta)),
           "learning_rates": " ".join(f"{float(lr):g}" for lr in _distinct(
               m.get("learning_rate") for m in meta) if lr is not None),
           "seeds": " ".join(str(s) for s in sorted(_distinct(
               r.seed for r in c.runs))),
           "epochs": " ".join(str(e) for e in _distinct(
               m.get("epochs") for m in meta)),
           "completed": sum(r.state == "completed" for r in c.runs),
           "diverged": sum(r.state == "diverged" for r in c.runs),
           "unfinished": sum(r.state == "unfinished" for r in c.runs)}
    rows.append(row)
    cells.append([row["configuration"], _primary_label(c),
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
  """Diverged, unfinished and unreadable runs."""
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
                 "state": r.state, "status": r.metadata.get("status"),
                 "epochs_recorded": len(r.history),
                 "epochs": r.metadata.get("epochs"),
                 "diverged_at_epoch": diverged_at,
                 "run_dir": os.path.relpath(r.run_dir, report_dir)})
  if not rows:
    return None
  cells = [[row["configuration"], str(row["optimizer"]), str(row["seed"]),
            format_number(row["learning_rate"]), row["state"],
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
           "learning_rate": "metric", "convergence_epoch": "epoch",
           "time_to_convergence_s": "time", "total_runtime_s": "time"}
  headers = ["configuration", "optimizer", "seed", "learning rate", "state",
             "best primary", "best val loss", "convergence epoch",
             "time to convergence (s)", "total time (s)"]
  cells = [["/".join(str(row.get(k)) for k in ("task", "dataset", "model"))]
           + [format_number(row.get(k), kinds[k]) if k in kinds
              else str(row.get(k)) for k in shown] for row in rows]
  return Table("runs", "Every run", headers, cells,
               columns, rows, align="llrrl" + "r" * 5)


class _Document:
  """Markdown being written, with links relative to the report folder."""

  def __init__(self, report_dir: str):
    self.report_dir = report_dir
    self.lines: list[str] = []
    self.tables: list[str] = []

  def add(self, *lines: str) -> None:
    self.lines.extend(lines)

  def link(self, path: str) -> str:
    return os.path.relpath(path, self.report_dir).replace(os.sep, "/")

  def image(self, path: str, alt: str) -> None:
    self.add(f"![{alt}]({self.link(path)})", "")

  def table(self, table: Table) -> None:
    paths = write_table(table, self.report_dir)
    self.tables.extend(paths)
    self.add(f"*{table.title}* ([csv]({self.link(paths[0])}), "
             f"[tex]({self.link(paths[1])}))", "", markdown_table(table), "")


def _methods(opts: Options, configurations: Sequence[Configuration]
             ) -> list[str]:
  ci = ("Student-t interval x̄ ± t_{(1+c)/2, n−1}·s/√n" if opts.ci_method ==
        "t" else "percentile bootstrap of the mean (10,000 resamples, "
        "numpy.random.default_rng(0))")
  return [
      f"- **Over seeds**: mean over the completed runs of each optimizer with "
      f"the {opts.percent} {ci}; one seed gives no interval. Diverged runs "
      "are counted separately, not averaged.",
      "- **Convergence epoch**: the first epoch after which the validation "
      f"loss never improves on the best so far by more than "
      f"{100 * outputs.CONVERGENCE_RTOL:g} % (relative); time to convergence "
      "is the training time (compilation excluded) up to it. Total time is "
      "the run's wall time including compilation and evaluation; runs "
      "trained together in one program share its times.",
      "- **Pairwise comparisons** (best primary metric): runs with the same "
      "seed share initialisation, data order and split, so pairs are "
      "compared with a paired t-test on the per-seed differences (Welch's "
      "t-test when fewer than two seeds are shared); p-values adjusted over "
      "all pairs of a configuration by Holm's method. '–': undefined "
      "(one run, or no variance).",
      "- **Average rank**: per configuration, optimizers ranked by the mean "
      "best primary metric (each optimizer at its best learning rate; ties "
      "share the average rank; diverged or missing = worst rank), averaged "
      f"over {len(configurations)} configuration(s).",
      "- **Performance profiles** (Dolan & Moré 2002): a problem is one "
      "configuration and seed, each optimizer at its best learning rate; "
      "the cost is the training time (or epochs) "
      "until the primary metric first reaches the target, "
      f"{opts.target_fraction:g} × the best result of the configuration "
      f"(higher is better) or best / {opts.target_fraction:g} (lower is "
      "better); ρ(τ) is the fraction of problems solved within τ times the "
      "fastest optimizer's cost, a run that never reaches the target "
      "counts as ∞. **Time to target**: fraction of problems solved within "
      "a budget of training time or epochs.",
      "- **Training curves**: the cross-optimizer figures show the mean over "
      f"seeds with the {opts.percent} confidence band; the per-optimizer "
      "figures show the mean over seeds.", ""]


def _what_was_run(doc: _Document, runs: Sequence[Run],
                  configurations: Sequence[Configuration]) -> None:
  doc.add("## What was run", "")
  doc.table(overview_table(configurations))
  meta = [r.metadata for r in runs if r.metadata]
  doc.add("- Devices: " + "; ".join(_distinct(_device(m) for m in meta)),
          "- Versions: " + "; ".join(_distinct(_versions(m) for m in meta)),
          "- Git commits: " + ", ".join(_distinct(
              str(m.get("git_commit")) for m in meta)), "")


def _configuration_section(doc: _Document, config: Configuration,
                           opts: Options) -> None:
  doc.add(f"## {config.name}", "",
          f"Primary metric: **{config.primary}** "
          f"({'higher' if config.higher_is_better else 'lower'} is better).",
          "")
  doc.table(summary_table(config, opts))
  tests = table_of_test_metrics(config, opts)
  if tests is not None:
    doc.add("### Test metrics", "")
    doc.table(tests)
  figures = configuration_figures(config, opts, doc.report_dir)
  doc.add("### Training curves", "")
  for path in figures["all"]:
    doc.image(path, os.path.basename(path))
  for label in config.groups:
    for path in figures.get(label, []):
      doc.image(path, f"{label}: {os.path.basename(path)}")
  doc.add("### Pairwise comparisons", "")
  doc.table(pairwise_table(config, opts))
  analysed = analysis_table(config)
  if analysed is not None or figures["analysis"]:
    doc.add("### Landscape and Hessian analyses", "")
  if analysed is not None:
    doc.table(analysed)
  if figures["analysis"]:
    for run_name, path in figures["analysis"]:
      doc.image(path, f"{run_name}: {os.path.basename(path)}")


def write_report(campaign_dir: str, out_dir: Optional[str] = None, *,
                 confidence: float = 0.95, ci_method: str = "t",
                 target_fraction: float = 0.95) -> str:
  """Writes the report of the campaign under ``campaign_dir`` into
  ``out_dir`` (default ``<campaign_dir>/report``); returns the path of
  ``report.md``."""
  opts = Options(confidence, ci_method, target_fraction)
  report_dir = out_dir or os.path.join(campaign_dir, REPORT_DIR)
  runs = find_runs(campaign_dir, exclude=[report_dir])
  configurations = group_runs(runs)
  if not configurations:
    raise OptBenchError(f"no readable {METADATA} under {campaign_dir}")
  os.makedirs(report_dir, exist_ok=True)
  doc = _Document(report_dir)
  doc.add("# Optimizer benchmark report", "",
          f"Campaign: `{os.path.abspath(campaign_dir)}` — {len(runs)} run "
          f"directories, {len(configurations)} configuration(s).", "")
  _what_was_run(doc, runs, configurations)
  doc.add("## Methods", "", *_methods(opts, configurations))
  for config in configurations:
    _configuration_section(doc, config, opts)
  shared = shared_analysis_figures(campaign_dir, runs, report_dir)
  if shared:
    doc.add("## Analyses across runs", "")
    for where, path in shared:
      doc.image(path, f"{where}: {os.path.basename(path)}")
  doc.add("## Ranking across configurations", "")
  doc.table(ranking_table(configurations))
  costs, targets = target_costs(configurations, opts)
  doc.add("## Performance profiles and time to target", "")
  if costs:
    doc.table(profile_table(costs))
    doc.image(profile_figure(costs, opts, report_dir), "performance profiles")
    doc.image(time_to_target_figure(costs, opts, report_dir),
              "time to target")
    doc.table(time_to_target_table(costs, targets, opts))
  else:
    doc.add("No completed run: no target to reach.", "")
  doc.add("## Diverged and unfinished runs", "")
  problems = problems_table(runs, report_dir)
  if problems is None:
    doc.add("None: every run completed.", "")
  else:
    doc.table(problems)
  doc.add("## All runs", "")
  doc.table(runs_table(runs, report_dir))
  path = os.path.join(report_dir, "report.md")
  outputs.write_atomic(path, "\n".join(doc.lines))
  return path
