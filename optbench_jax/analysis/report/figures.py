"""The report's figures: per configuration the cross-optimizer curves with
confidence bands and each optimizer's mean curves
(:mod:`optbench_jax.train.plots`), copies of the runs' analysis figures,
and across the campaign the performance profiles and time-to-target
curves. Drawn on bare :class:`matplotlib.figure.Figure` objects (Agg, no
pyplot state)."""
from __future__ import annotations

import math
import os
import shutil
import textwrap
from typing import Sequence

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from optbench_jax import store
from optbench_jax.analysis import budget, statistics
from optbench_jax.analysis.report.options import Options
from optbench_jax.analysis.report.ranking import cost_fields, cost_view
from optbench_jax.analysis.report.runs import Configuration, Run, completed
from optbench_jax.train import plots


def _save(fig: Figure, path: str) -> str:
  """Saves atomically (a kill leaves no truncated image)."""
  with store.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  return path


def _finite(value) -> bool:
  return value is not None and math.isfinite(float(value))


def _curve_runs(runs: Sequence[Run]) -> list[Run]:
  """Completed runs; if none, the diverged ones (curves up to divergence)."""
  return completed(runs) or [r for r in runs if r.state == "diverged"]


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


def _copy_pngs(source: str, target: str) -> list[str]:
  """Copies the PNG files of ``source`` into ``target``; returns them."""
  copied = []
  for name in sorted(os.listdir(source)):
    if name.endswith(".png"):
      os.makedirs(target, exist_ok=True)
      shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
      copied.append(os.path.join(target, name))
  return copied


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
    analysis = os.path.join(run.run_dir, store.ANALYSIS)
    if not os.path.isdir(analysis):
      continue
    run_name = f"{run.label} seed={run.seed}"
    target = os.path.join(fig_dir, store.ANALYSIS, _slug(run.label),
                          f"seed_{run.seed}")
    figures["analysis"] += [(run_name, path)
                            for path in _copy_pngs(analysis, target)]
  return figures


def shared_analysis_figures(campaign_dir: str, runs: Sequence[Run],
                            report_dir: str) -> list[tuple[str, str]]:
  """Copies the figures of ``analysis/`` folders that belong to no run
  (``analyze`` over several runs writes its cross-run figures beside them);
  returns ``(where, copied path)`` pairs."""
  skip = {os.path.realpath(r.run_dir) for r in runs}
  skip.add(os.path.realpath(report_dir))
  found = []
  for root, dirs, _ in os.walk(campaign_dir):
    if os.path.realpath(root) in skip:
      dirs[:] = []
      continue
    dirs[:] = sorted(d for d in dirs
                     if d == store.ANALYSIS or d not in store.NOT_RUNS)
    if os.path.basename(root) != store.ANALYSIS:
      continue
    where = os.path.relpath(os.path.dirname(root), campaign_dir)
    target = os.path.normpath(os.path.join(report_dir, "figures",
                                           store.ANALYSIS, where))
    found += [(where, path) for path in _copy_pngs(root, target)]
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


def _timing_footnote(fig: Figure, timing: str) -> None:
  """How the times were measured, under the axes."""
  fig.text(0.5, 0.01, textwrap.fill(timing, 150), ha="center", va="bottom",
           fontsize="small")
  fig.tight_layout(rect=(0, 0.08, 1, 1))


def profile_figure(costs: dict, opts: Options, report_dir: str,
                   timing: str) -> str:
  """Dolan–Moré profiles with time, epochs and (where counted) evaluations
  as the cost; ``timing``
  (:func:`~optbench_jax.analysis.report.ranking.timing_note`) under them."""
  fields = cost_fields(costs)
  fig = Figure(figsize=(5.5 * len(fields), 4.6))
  axes = fig.subplots(1, len(fields))
  for ax, (field, what) in zip(axes, fields):
    what = "training time per run" if field == "time_s" else what
    profile = statistics.performance_profile(cost_view(costs, field))
    for optimizer, rho in profile.rho.items():
      ax.step(profile.taus, rho, where="post", label=optimizer)
    _step_axes(ax, "τ (ratio to the fastest)",
               f"cost: {what} to reach {opts.target_fraction:g} × best",
               log=True)
  axes[0].set_ylabel(f"ρ(τ): fraction of {len(costs)} problems")
  fig.suptitle("Performance profiles (Dolan & Moré 2002)")
  _timing_footnote(fig, timing)
  return _save(fig, os.path.join(report_dir, "figures",
                                 "performance_profile.png"))


def time_to_target_figure(costs: dict, opts: Options, report_dir: str,
                          timing: str) -> str:
  """Fraction of problems solved against the training time, epochs and
  (where counted) evaluations; ``timing`` under them."""
  fields = cost_fields(costs)
  fig = Figure(figsize=(5.5 * len(fields), 4.6))
  axes = fig.subplots(1, len(fields))
  labels = {"time_s": "training time per run (s)", "epoch": "epoch",
            "evaluations": "gradient evaluations + Hessian-vector products"}
  for ax, (field, _) in zip(axes, fields):
    what = labels[field]
    view = cost_view(costs, field)
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
  _timing_footnote(fig, timing)
  return _save(fig, os.path.join(report_dir, "figures",
                                 "time_to_target.png"))


def budget_figure(config: Configuration, rows: Sequence[dict],
                  report_dir: str) -> str:
  """The expected best validation value per number of trials: the
  campaign's ``budget.csv`` rows, drawn by ``analysis/budget.py``."""
  curve = [{"optimizer": r["optimizer"], "trials": int(r["trials"]),
            "expected_best": float(r["expected_best"])
            if r["expected_best"] else None} for r in rows]
  fig = budget.budget_figure(curve, config.primary,
                             f"{config.model} on {config.dataset}")
  return _save(fig, os.path.join(report_dir, "figures", config.name,
                                 store.BUDGET_FIGURE))
