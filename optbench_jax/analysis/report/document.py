"""The report document: ``report.md`` with its sections, written with the
tables and figures of the other modules; :func:`write_report`."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Sequence

from optbench_jax import store
from optbench_jax.analysis.report import figures, ranking, render, tables
from optbench_jax.analysis.report.options import Options
from optbench_jax.analysis.report.runs import (Configuration, Run,
                                               group_runs, read_runs)
from optbench_jax.errors import OptBenchError
from optbench_jax.train import outputs

REPORT_FILE = "report.md"


class _Document:
  """Markdown being written, with links relative to the report folder."""

  def __init__(self, report_dir: str):
    self.report_dir = report_dir
    self.lines: list[str] = []

  def add(self, *lines: str) -> None:
    self.lines.extend(lines)

  def link(self, path: str) -> str:
    return os.path.relpath(path, self.report_dir).replace(os.sep, "/")

  def image(self, path: str, alt: str) -> None:
    self.add(f"![{alt}]({self.link(path)})", "")

  def table(self, table: render.Table) -> None:
    """The table in Markdown, linking its CSV and LaTeX files."""
    csv, tex = render.write_table(table, self.report_dir)
    self.add(f"*{table.title}* ([csv]({self.link(csv)}), "
             f"[tex]({self.link(tex)}))", "", render.markdown_table(table),
             "")


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
      f"{100 * outputs.CONVERGENCE_RTOL:g} % (relative), confirmed by at "
      "least one later evaluation; a run whose last evaluation still "
      "improved by more is **not converged** (averages of convergence are "
      "over the converged runs, their count shown). Time to convergence "
      "is the training time (compilation excluded) up to it. Total time is "
      "the run's wall time including compilation and evaluation; runs "
      "trained together in one program share its times.",
      "- **Numbers**: a mean's interval (or an estimate's standard error) "
      "is rounded to 2 significant digits and the mean to the same decimal "
      "place; a number alone has 4 significant digits. CSV files keep "
      "full precision. Bold: the best mean of a metric column (not a "
      "significance claim).",
      "- **Pairwise comparisons** (best primary metric): runs with the same "
      "seed share initialisation, data order and split, so pairs are "
      "compared with a paired t-test on the per-seed differences (Welch's "
      "t-test when fewer than two seeds are shared); p-values adjusted over "
      "all pairs of a configuration by Holm's method. A side is named "
      f"better only where the adjusted p < α = {1 - opts.confidence:.2g} "
      f"(1 − the {opts.percent} confidence); otherwise 'no significant "
      "difference'. '–': undefined (one run, or no variance).",
      "- **Average rank**: per configuration, optimizers ranked by the mean "
      "best primary metric (each optimizer at its best learning rate; ties "
      "share the average rank; diverged or missing = worst rank), averaged "
      f"over {len(configurations)} configuration(s).",
      "- **Performance profiles** (Dolan & Moré 2002): a problem is one "
      "configuration and seed, each optimizer at its best learning rate; "
      "the cost is the training time per run (runs trained together in one "
      "program: its time divided by their number) or the epochs "
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


def _versions(meta: dict) -> str:
  return ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())


def _what_was_run(doc: _Document, runs: Sequence[Run],
                  configurations: Sequence[Configuration]) -> None:
  doc.add("## What was run", "")
  doc.table(tables.overview_table(configurations))
  meta = [r.metadata for r in runs if r.metadata]
  distinct = tables.distinct
  doc.add("- Devices: " + "; ".join(distinct(ranking.device_words(m) for m in meta)),
          "- Versions: " + "; ".join(distinct(_versions(m) for m in meta)),
          "- Git commits: " + ", ".join(distinct(
              str(m.get("git_commit")) for m in meta)), "")


def _configuration_section(doc: _Document, config: Configuration,
                           opts: Options,
                           defaults: Optional[Configuration] = None) -> None:
  doc.add(f"## {config.name}", "",
          f"Primary metric: **{config.primary}** "
          f"({'higher' if config.higher_is_better else 'lower'} is better).",
          "")
  doc.table(tables.summary_table(config, opts))
  tests = tables.table_of_test_metrics(config, opts)
  if tests is not None:
    doc.add("### Test metrics", "")
    doc.table(tests)
  drawn = figures.configuration_figures(config, opts, doc.report_dir)
  doc.add("### Training curves", "")
  for path in drawn["all"]:
    doc.image(path, os.path.basename(path))
  for label in config.groups:
    for path in drawn.get(label, []):
      doc.image(path, f"{label}: {os.path.basename(path)}")
  tuning = tables.campaign_rows(config, store.TUNING)
  if tuning:
    doc.add("### Tuning", "",
            "The results above are the selected trial's re-runs on seeds "
            "that selection did not see. The budget figure: the expected "
            "best validation value over every subset of that many trials.",
            "")
    doc.table(tables.tuning_table(config, tuning))
    budget_rows = tables.campaign_rows(config, store.BUDGET)
    if budget_rows:   # written once an optimizer's trials have all finished
      doc.image(figures.budget_figure(config, budget_rows, doc.report_dir),
                "tuning budget")
    compared = defaults and ranking.defaults_vs_tuned_table(config, defaults)
    if compared:
      doc.add("### Defaults vs tuned", "")
      doc.table(compared)
  doc.add("### Pairwise comparisons", "")
  doc.table(tables.pairwise_table(config, opts))
  analysed = tables.analysis_table(config)
  if analysed is not None or drawn["analysis"]:
    doc.add("### Landscape and Hessian analyses", "")
  if analysed is not None:
    doc.table(analysed)
  for run_name, path in drawn["analysis"]:
    doc.image(path, f"{run_name}: {os.path.basename(path)}")


def _across_configurations(doc: _Document, campaign_dir: str,
                           runs: Sequence[Run],
                           configurations: Sequence[Configuration],
                           opts: Options) -> None:
  shared = figures.shared_analysis_figures(campaign_dir, runs,
                                           doc.report_dir)
  if shared:
    doc.add("## Analyses across runs", "")
    for where, path in shared:
      doc.image(path, f"{where}: {os.path.basename(path)}")
  doc.add("## Ranking across configurations", "")
  doc.table(ranking.ranking_table(configurations))
  costs, targets = ranking.target_costs(configurations, opts)
  timing = ranking.timing_note(configurations)
  doc.add("## Performance profiles and time to target", "")
  if costs:
    doc.add(f"Times: {timing}.", "")
    doc.table(ranking.profile_table(costs, timing))
    doc.image(figures.profile_figure(costs, opts, doc.report_dir, timing),
              "performance profiles")
    doc.image(figures.time_to_target_figure(costs, opts, doc.report_dir,
                                            timing), "time to target")
    doc.table(ranking.time_to_target_table(costs, targets, opts, timing))
  else:
    doc.add("No completed run: no target to reach.", "")


@contextlib.contextmanager
def _writing(report_dir: str) -> Iterator[None]:
  """A file the report cannot write is a one-line error."""
  try:
    yield
  except OSError as e:
    where = e.filename or report_dir
    raise OptBenchError(f"cannot write the report into {report_dir} "
                        f"({where}: {e.strerror or e}); give a writable "
                        f"--output-dir") from None


def write_report(campaign_dir: str, out_dir: Optional[str] = None, *,
                 confidence: float = 0.95, ci_method: str = "t",
                 target_fraction: float = 0.95,
                 defaults_dir: Optional[str] = None) -> str:
  """Writes the report of the campaign under ``campaign_dir`` into
  ``out_dir`` (default ``<campaign_dir>/report``); returns the path of
  ``report.md``. ``defaults_dir``: a campaign of the same configurations
  at the optimizers' defaults, which each tuned configuration is compared
  with (its "Defaults vs tuned" table)."""
  opts = Options(confidence, ci_method, target_fraction)
  report_dir = out_dir or os.path.join(campaign_dir, store.REPORT)
  runs = read_runs(campaign_dir, exclude=[report_dir])
  configurations = group_runs(runs)
  if not configurations:
    raise OptBenchError(f"no readable {store.METADATA} under {campaign_dir}")
  defaults = {}
  if defaults_dir is not None:
    defaults = {c.name: c for c in group_runs(read_runs(
        defaults_dir, exclude=[os.path.join(defaults_dir, store.REPORT)]))}
    if not set(defaults) & {c.name for c in configurations}:
      raise OptBenchError(f"--defaults {defaults_dir} holds none of the "
                          f"configurations of {campaign_dir}")
  with _writing(report_dir):
    os.makedirs(report_dir, exist_ok=True)
    store.remove_partial_writes(report_dir, recursive=True)
    doc = _Document(report_dir)
    doc.add("# Optimizer benchmark report", "",
            f"Campaign: `{os.path.abspath(campaign_dir)}` — {len(runs)} run "
            f"directories, {len(configurations)} configuration(s).", "")
    _what_was_run(doc, runs, configurations)
    doc.add("## Methods", "", *_methods(opts, configurations))
    for config in configurations:
      _configuration_section(doc, config, opts, defaults.get(config.name))
    _across_configurations(doc, campaign_dir, runs, configurations, opts)
    doc.add("## Diverged and unfinished runs", "")
    problems = tables.problems_table(runs, report_dir)
    if problems is None:
      doc.add("None: every run completed.", "")
    else:
      doc.table(problems)
    doc.add("## All runs", "")
    doc.table(tables.runs_table(runs, report_dir))
    path = os.path.join(report_dir, REPORT_FILE)
    store.write_text(path, "\n".join(doc.lines))
  return path
