"""Comparisons across configurations, each optimizer at its best learning
rate: the average rank, and when each run reached its configuration's
target (the time-to-target and performance-profile tables; the figures
draw the same costs).

Times: runs trained together in one compiled program (seeds and learning
rates vmapped, ``runs_in_program`` in their metadata) record the program's
wall time, shared by all of them. A run's training time to the target is
that time divided by the number of runs in its program (each run's share,
so optimizers trained in programs of different sizes compare), as
:func:`timing_note` says beside every time-based table and figure."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from optbench_jax import store
from optbench_jax.analysis import statistics
from optbench_jax.analysis.report.options import Options
from optbench_jax.analysis.report.render import Table, format_number
from optbench_jax.analysis.report.runs import Configuration, Run, completed
from optbench_jax.analysis.report.tables import seed_values


def _group_mean(runs: Sequence[Run], key: str) -> Optional[float]:
  values = list(seed_values(runs, key).values())
  return float(np.mean(values)) if values else None


def _better(value: Optional[float], than: Optional[float],
            higher_is_better: bool) -> bool:
  if value is None:
    return False
  if than is None:
    return True
  return value > than if higher_is_better else value < than


def best_groups(config: Configuration) -> dict:
  """Per optimizer, its label (learning rate) with the best mean best
  primary metric (an optimizer that only diverged keeps its first
  label): ``{optimizer: (label, mean)}``."""
  chosen: dict = {}
  for label, runs in config.groups.items():
    optimizer = runs[0].metadata.get("optimizer")
    value = _group_mean(runs, "best_primary")
    if optimizer not in chosen or _better(value, chosen[optimizer][1],
                                          config.higher_is_better):
      chosen[optimizer] = (label, value)
  return chosen


def defaults_vs_tuned_table(tuned: Configuration, defaults: Configuration
                            ) -> Optional[Table]:
  """Each optimizer's mean best primary metric and rank in the campaign at
  its defaults (``defaults``, at its best learning rate there) and after
  tuning (``tuned``: the selected trials' re-runs), with the rank
  correlation of the two orders; None with fewer than two optimizers in
  both."""
  values = {name: {o: v for o, (_, v) in best_groups(config).items()}
            for name, config in (("defaults", defaults), ("tuned", tuned))}
  both = [o for o in values["tuned"] if o in values["defaults"]]
  if len(both) < 2:
    return None
  ranks = statistics.average_ranks(
      {k: {o: v[o] for o in both} for k, v in values.items()},
      higher_is_better=tuned.higher_is_better).per_configuration
  corr = statistics.rank_correlation([ranks["defaults"][o] for o in both],
                                     [ranks["tuned"][o] for o in both])
  rows = [{"optimizer": o, "default": values["defaults"][o],
           "tuned": values["tuned"][o], "rank_default": ranks["defaults"][o],
           "rank_tuned": ranks["tuned"][o]} for o in both]
  rows.sort(key=lambda r: r["rank_tuned"])
  cells = [[r["optimizer"], format_number(r["default"]),
            format_number(r["tuned"]), f"{r['rank_default']:g}",
            f"{r['rank_tuned']:g}",
            f"{r['rank_default'] - r['rank_tuned']:+g}"] for r in rows]
  words = lambda v: "undefined" if v is None else f"{v:.2f}"
  return Table(f"{tuned.name}/defaults_vs_tuned",
               f"{tuned.name}: mean best validation {tuned.primary} at the "
               f"optimizers' defaults (best learning rate of that campaign) "
               f"and tuned (the selected trial's re-runs), and each "
               f"optimizer's rank (1 = best; diverged = worst); Kendall's "
               f"τ {words(corr.kendall)}, Spearman's ρ "
               f"{words(corr.spearman)} over {corr.n} optimizers",
               ["optimizer", f"default {tuned.primary}",
                f"tuned {tuned.primary}", "rank at default", "rank tuned",
                "rank gained"], cells, list(rows[0]), rows,
               align="lrrrrr")


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


def runs_together(run: Run) -> int:
  """How many runs the run's compiled program trained (its times are the
  program's)."""
  return int(run.metadata.get("runs_in_program") or 1)


def device_words(meta: dict) -> str:
  """``platform (kind) × count`` of a run's metadata."""
  device = meta.get("device") or {}
  return (f"{device.get('platform', '?')} ({device.get('kind', '?')}) × "
          f"{device.get('count', '?')}")


def timing_note(configurations: Sequence[Configuration]) -> str:
  """How the training times of the time-based tables and figures were
  measured, from the finished runs' metadata."""
  finished = [r for c in configurations for r in c.runs
              if r.state in store.FINISHED]
  together = sorted({runs_together(r) for r in finished})
  if together in ([], [1]):
    how = "each run's own training wall time"
  else:
    how = ("the wall time of the compiled program that trained N runs "
           f"together (vmapped; N = {', '.join(map(str, together))}), "
           "divided by N")
  devices = list(dict.fromkeys(device_words(r.metadata) for r in finished))
  noisy = (", which other load on the machine perturbs"
           if any((r.metadata.get("device") or {}).get("platform") == "cpu"
                  for r in finished) else "")
  return (f"training time per run: {how}, summed over the epochs up to the "
          f"target (compilation and evaluation excluded); one unrepeated "
          f"measurement per epoch on {'; '.join(devices) or '?'}{noisy}")


def target_costs(configurations: Sequence[Configuration], opts: Options):
  """Per problem ``(configuration, seed)`` and optimizer (at its best
  learning rate): when the run reached the configuration's target.
  Returns ``(costs, targets)``: ``costs[problem][optimizer]`` a
  :class:`statistics.Reached` or None; ``targets[configuration]`` the pair
  ``(best, target)``. Times are per run (module docstring)."""
  costs, targets = {}, {}
  for config in configurations:
    bests = [r.row["best_primary"] for r in completed(config.runs)
             if r.row.get("best_primary") is not None]
    if not bests:
      continue
    best = max(bests) if config.higher_is_better else min(bests)
    target = statistics.target_value(best, opts.target_fraction,
                                     config.higher_is_better)
    targets[config.name] = (best, target)
    chosen = best_groups(config)
    seeds = sorted({r.seed for r in config.runs if r.state in store.FINISHED})
    for seed in seeds:
      row = {}
      for optimizer, (label, _) in chosen.items():
        run = next((r for r in config.groups[label]
                    if r.seed == seed and r.state in store.FINISHED), None)
        reached = None if run is None else statistics.time_to_target(
            run.history, target, metric=config.primary,
            higher_is_better=config.higher_is_better)
        row[optimizer] = reached and reached._replace(
            time_s=reached.time_s / runs_together(run))
      costs[(config.name, seed)] = row
  return costs, targets


def cost_view(costs: dict, field: str) -> dict:
  """``costs`` with one field of each :class:`statistics.Reached`
  (``time_s``, ``epoch``, ``steps`` or ``evaluations``), None where the
  target was not reached (or the history does not count that field)."""
  return {p: {s: None if c is None else getattr(c, field)
              for s, c in row.items()} for p, row in costs.items()}


# The costs that profiles and time-to-target compare, with their names.
COST_FIELDS = (("time_s", "time"), ("epoch", "epochs"),
               ("evaluations", "evaluations"))


def cost_fields(costs: dict) -> list[tuple[str, str]]:
  """:data:`COST_FIELDS` that every run reaching its target counts
  (histories written before evaluations were counted have none)."""
  return [(field, what) for field, what in COST_FIELDS
          if all(c is None or getattr(c, field) is not None
                 for row in costs.values() for c in row.values())]


def time_to_target_table(costs: dict, targets: dict, opts: Options,
                         timing: str) -> Table:
  """When each run first reached its target; ``timing``:
  :func:`timing_note`."""
  rows = []
  for (name, seed), row in costs.items():
    for optimizer, reached in row.items():
      rows.append({"configuration": name, "seed": seed,
                   "optimizer": optimizer, "best": targets[name][0],
                   "target": targets[name][1],
                   "epoch": reached and reached.epoch,
                   "steps": reached and reached.steps,
                   "evaluations": reached and reached.evaluations,
                   "time_s": reached and reached.time_s})
  count = lambda v: "" if v is None else str(v)
  cells = [[r["configuration"], str(r["seed"]), r["optimizer"],
            format_number(r["target"]),
            "not reached" if r["epoch"] is None else str(r["epoch"]),
            count(r["steps"]), count(r["evaluations"]),
            format_number(r["time_s"], "time")] for r in rows]
  return Table("time_to_target", "Epoch, optimizer steps, evaluations "
               "(gradient evaluations + Hessian-vector products) and "
               "training time at which each run "
               f"first reached {opts.target_fraction:g} of its "
               f"configuration's best result ({timing})",
               ["configuration", "seed", "optimizer", "target", "epoch",
                "steps", "evaluations", "training time per run (s)"], cells,
               ["configuration", "seed", "optimizer", "best", "target",
                "epoch", "steps", "evaluations", "time_s"], rows,
               align="lrlrrrrr")


def profile_table(costs: dict, timing: str) -> Table:
  """ρ_s(1) (fastest) and ρ_s(∞) (solved) of both profiles; ``timing``:
  :func:`timing_note`."""
  rows = []
  for field, what in cost_fields(costs):
    profile = statistics.performance_profile(cost_view(costs, field),
                                             [1.0, math.inf])
    for optimizer, rho in profile.rho.items():
      rows.append({"cost": what, "optimizer": optimizer,
                   "fastest": float(rho[0]), "solved": float(rho[1])})
  cells = [[r["cost"], r["optimizer"], f"{r['fastest']:.2f}",
            f"{r['solved']:.2f}"] for r in rows]
  return Table("performance_profile", "Performance profiles: fraction of "
               "problems where the optimizer is fastest (ρ(1)) and where it "
               f"reaches the target at all (ρ(∞)); {timing}",
               ["cost", "optimizer", "ρ(1) fastest", "ρ(∞) solved"], cells,
               ["cost", "optimizer", "fastest", "solved"], rows,
               align="llrr")
