"""The shared command line of the experiment scripts (``experiments/``).

An experiment script is a module docstring stating where its settings come
from, a list of :class:`Configuration` (one campaign each: task, dataset,
model and the settings of :class:`~optbench_jax.train.settings.CampaignConfig`
that differ from the defaults), a list of optimizers, and::

  if __name__ == "__main__":
    sys.exit(experiment.main(CONFIGURATIONS, OPTIMIZERS, sys.argv[1:],
                             script=__file__, description=__doc__))

:func:`main` gives every script the same flags (:class:`Shared`, declared
with ``flags.setting`` and checked before anything is loaded; a script's
own flags are a dataclass of its own, ``main(..., options=)``):
``--configs`` (names or 1-based positions, ranges ``3-5``),
``--optimizers``, ``--seeds``,
``--max-samples`` and ``--epochs`` (override every configuration's, for a
small try first), ``--output-dir`` (default ``results/<script>``),
``--data-dir``, ``--shard I/N`` and ``--backend local|ray``
(``campaign/dispatch.py``), ``--ray-address``, ``--ray-cpus``, ``--quiet`` and
``--list`` (the configurations and this shard's work units, then exit).
Scripts are **resumable by default**: run again, a script skips finished
runs and continues unfinished ones from their last checkpoint (a run whose
stored settings differ is refused, as ``run --resume`` does);
``--no-resume`` trains the selected runs again from the start (replacing
their results: ``--overwrite``).

Bad input prints one line ``error: ...`` and exits with status 2; a failing
work unit is reported, the others go on, and the script exits with status 1.
A refusal that only a configuration's data can raise (its dataset missing
offline, a batch larger than its training split) comes when that unit loads
its data, before it trains or writes anything, and fails that unit alone:
checking it for every configuration first would mean loading (or
downloading) every dataset before the first run starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

from optbench_jax import flags
from optbench_jax.data.hf import format_sizes
from optbench_jax.errors import OptBenchError
from optbench_jax.flags import (all_of, at_least, directory, each, not_empty,
                                number_list, positive_finite, seed_value,
                                setting)
from optbench_jax.train import settings
from optbench_jax.train.plan import Plan, check_store, make_plan
from optbench_jax.train.settings import CampaignConfig

# What the command line of every script sets; a configuration may not.
COMMAND_LINE_SETTINGS = ("optimizers", "seed", "seeds", "output_dir",
                         "data_dir", "offline", "resume", "overwrite", "quiet")


class Configuration:
  """One campaign of an experiment script.

  Args:
    name: how ``--configs`` and ``--list`` call it.
    task, dataset, model: registry names.
    optimizers: this configuration's optimizers, where they differ from the
      script's list (``--optimizers`` overrides both).
    **campaign_settings: any other field of ``CampaignConfig`` (``epochs``,
      ``batch_size``, ``max_samples``, ``scheduler``, ``max_length``, ...).
  """

  def __init__(self, name: str, *, task: str, dataset: str, model: str,
               optimizers: Optional[Sequence[str]] = None,
               **campaign_settings: Any):
    known = {f.name for f in settings.fields(CampaignConfig)}
    for key in campaign_settings:
      if key not in known or key in COMMAND_LINE_SETTINGS:
        raise OptBenchError(
            f"configuration {name}: {key!r} is not a setting a "
            f"configuration sets; valid: "
            f"{', '.join(sorted(known - set(COMMAND_LINE_SETTINGS)))}")
    self.name, self.task, self.dataset, self.model = name, task, dataset, model
    self.optimizers = None if optimizers is None else list(optimizers)
    self.settings = dict(campaign_settings)

  def __repr__(self) -> str:
    extra = "".join(f", {k}={v!r}" for k, v in self.settings.items())
    return (f"Configuration({self.name!r}, task={self.task!r}, "
            f"dataset={self.dataset!r}, model={self.model!r}{extra})")

  def campaign(self, **overrides: Any) -> CampaignConfig:
    """The ``CampaignConfig``: this configuration's settings, then
    ``overrides`` (the command line's)."""
    values = {"task": self.task, "dataset": self.dataset, "model": self.model,
              **self.settings, **overrides}
    return CampaignConfig(**values)


def select(configurations: Sequence[Configuration], text: Optional[str]
           ) -> list[Configuration]:
  """``--configs``: comma-separated names, 1-based positions or ranges
  (``1-4``), in the script's order; None or ``all``: every one."""
  if text is None or text.strip() == "all":
    return list(configurations)
  by_name = {c.name: i for i, c in enumerate(configurations)}
  chosen = set()
  for item in (s.strip() for s in text.split(",")):
    if not item:
      continue
    if item in by_name:
      chosen.add(by_name[item])
      continue
    first, _, last = item.partition("-")
    try:
      lo, hi = int(first), int(last or first)
    except ValueError:
      lo = hi = 0
    if not 1 <= lo <= hi <= len(configurations):
      raise OptBenchError(
          f"--configs: unknown configuration {item!r}; give names or "
          f"positions 1..{len(configurations)} (see --list)")
    chosen.update(range(lo - 1, hi))
  if not chosen:
    raise OptBenchError("--configs is empty; give names or positions "
                        "(see --list)")
  return [configurations[i] for i in sorted(chosen)]


def _shard(text: str) -> Optional[str]:
  from optbench_jax.campaign import dispatch
  try:
    dispatch.parse_shard(text)
  except OptBenchError as e:
    return str(e)
  return None


def _backends():
  from optbench_jax.campaign import dispatch
  return dispatch.BACKENDS


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shared:
  """The flags every experiment script shares (:func:`main`; a script's
  own are another dataclass, ``main(..., options=)``). The defaults of
  ``output_dir`` and ``seeds`` are the script's (:func:`build_parser`)."""
  configs: Optional[str] = setting(
      None, "configurations to run: names, 1-based positions or ranges "
      "(3-5), comma-separated (default: all; see --list)", check=not_empty)
  optimizers: Optional[str] = setting(
      None, "comma-separated optimizers, for every configuration (default: "
      "the script's)", check=not_empty)
  seeds: Sequence[int] = setting(
      help="comma-separated seeds; the runs of one optimizer train together "
      "in one program", parse=number_list(int, "--seeds"),
      check=each(seed_value), factory=lambda: [0])
  max_samples: Optional[int] = setting(
      None, "cap every configuration's training split at N examples, a "
      "small try first (default: each configuration's own cap)",
      check=at_least(1))
  epochs: Optional[int] = setting(
      None, "epochs of every configuration (default: the script's)",
      check=at_least(1))
  output_dir: str = setting("results", "where results are written",
                            check=all_of(not_empty, directory))
  data_dir: Optional[str] = setting(
      None, "dataset cache directory (default: the data libraries' own "
      "caches)", check=directory)
  offline: bool = setting(
      False, "never download: a dataset or checkpoint missing from the "
      "local cache is an error")
  prepare: bool = setting(
      False, "download and check every dataset and checkpoint the selected "
      "configurations need, then exit (before a sharded or Ray campaign)")
  resume: bool = setting(
      True, "skip finished runs and continue unfinished ones from their "
      "last checkpoint (default); --no-resume trains them again from the "
      "start")
  shard: Optional[str] = setting(
      None, "run only the I-th of N disjoint parts (1-based, dealt "
      "round-robin over the work units) into the same --output-dir, e.g. "
      "--shard $SLURM_ARRAY_TASK_ID/4 under #SBATCH --array=1-4 (default: "
      "every unit)", check=_shard)
  backend: str = setting(
      "local", "local: one unit after another in this process; ray: one "
      "Ray task per unit (pip install 'optbench_jax[cluster]')",
      choices=_backends)
  ray_address: Optional[str] = setting(
      None, "with --backend ray: the cluster to join (default: a running "
      "one Ray finds, else a new local one)", check=not_empty)
  ray_cpus: float = setting(
      1.0, "with --backend ray on a cluster without GPUs: CPUs per task "
      "(with GPUs each task asks for one GPU)", check=positive_finite)
  quiet: bool = setting(False, "no progress bars")
  list_only: bool = setting(False, "print the configurations and this "
                            "shard's work units, then exit", flag="--list")


def build_parser(script: str, description: Optional[str] = None,
                 seeds: Sequence[int] = (0,), options: Optional[type] = None
                 ) -> argparse.ArgumentParser:
  """The script's parser: the :class:`Shared` flags, then the flags of
  ``options`` (the script's own settings' dataclass), if any."""
  stem = os.path.splitext(os.path.basename(script))[0]
  parser = flags.Parser(prog=f"python {os.path.relpath(script)}",
                        description=description,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  flags.add_flags(parser, Shared, defaults={
      "output_dir": os.path.join("results", stem), "seeds": list(seeds)})
  if options is not None:
    flags.add_flags(parser, options, group=(
        "this script's", "settings of this script only"))
  return parser


def campaigns(configurations: Sequence[Configuration],
              optimizers: Sequence[str], args: argparse.Namespace,
              extra: Optional[Mapping[str, Any]] = None
              ) -> list[tuple[str, CampaignConfig]]:
  """``(name, CampaignConfig)`` of each configuration ``args`` selects,
  with the command line's overrides and ``extra`` settings applied."""
  overrides = {"seeds": list(args.seeds), "output_dir": args.output_dir,
               "data_dir": args.data_dir, "offline": args.offline,
               "resume": args.resume,
               "overwrite": not args.resume, "quiet": args.quiet,
               **(extra or {})}
  if args.epochs is not None:
    overrides["epochs"] = args.epochs
  if args.max_samples is not None:
    overrides["max_samples"] = args.max_samples
  chosen = None if args.optimizers is None else args.optimizers
  plan = []
  for config in select(configurations, args.configs):
    names = chosen or ",".join(config.optimizers or optimizers)
    plan.append((config.name, config.campaign(optimizers=names,
                                              **overrides)))
  return plan


def _describe(index: int, name: str, cfg: CampaignConfig,
              width: int) -> str:
  shown = ", ".join(f"{k.replace('_', ' ')} {getattr(cfg, k)}" for k in
                    ("epochs", "batch_size", "max_samples"))
  return (f"  {index:>3}  {name:<{width}}  "
          f"{cfg.task}/{cfg.dataset}/{cfg.model}  ({shown})")


def print_plan(configurations: Sequence[Configuration],
               plans: Sequence[tuple[str, Plan]], todo,
               total_units: int, shard_text: Optional[str]) -> None:
  position = {c.name: i + 1 for i, c in enumerate(configurations)}
  width = max(len(name) for name, _ in plans)
  print(f"configurations ({len(plans)} of {len(configurations)}):")
  for name, plan in plans:
    print(_describe(position[name], name, plan.campaign, width))
  part = f", shard {shard_text}: {len(todo)}" if shard_text else ""
  print(f"work units (configuration/optimizer; {total_units} in all{part}):")
  for unit in todo:
    print(f"  {unit.label}")


def prepare(plans: Sequence[tuple[str, Plan]], data_dir: Optional[str],
            offline: bool) -> int:
  """``--prepare``: lists, then fetches and checks, every dataset and
  pretrained checkpoint the configurations need, each once."""
  from optbench_jax.data import commands
  specs = {(p.workload.task_name, p.workload.dataset): p.workload.dataset_spec
           for _, p in plans}
  checkpoints = {p.campaign.pretrained: p for _, p in plans
                 if p.workload.model_spec.pretrained is not None
                 and p.campaign.pretrained not in (None, "none")}
  print("to prepare:")
  for spec in specs.values():
    download = spec.download
    print(f"  dataset {spec.name}: " + (
        f"{download.origin}, published {format_sizes(download.published)}"
        if download else "no download"))
  for name in checkpoints:
    print(f"  checkpoint {name}")
  commands.prepare(list(specs.values()), data_dir, offline)
  for name, plan in checkpoints.items():
    directory = plan.workload.fetch_pretrained(plan.campaign, offline=offline)
    print(f"{name}: {directory}")
  return 0


def _report(outcome) -> None:
  if not outcome.ok:
    print(f"FAILED {outcome.unit.label}: {outcome.error}", file=sys.stderr,
          flush=True)
    return
  parts = []
  for row in outcome.rows:
    best = row.get("best_primary")
    value = "-" if best is None else f"{best:.4g}"
    parts.append(f"{row['status']} {row['primary_metric']} {value}"
                 + (f" (lr {row['learning_rate']:g}, seed {row['seed']})"
                    if len(outcome.rows) > 1 else ""))
  print(f"done {outcome.unit.label}: {'; '.join(parts)}", flush=True)


def main(configurations: Sequence[Configuration], optimizers: Sequence[str],
         argv: Optional[Sequence[str]] = None, *, script: str = "experiment",
         description: Optional[str] = None, seeds: Sequence[int] = (0,),
         options: Optional[type] = None,
         extra_settings: Optional[Callable[[argparse.Namespace],
                                           Mapping[str, Any]]] = None,
         after: Optional[Callable[[argparse.Namespace, list], None]] = None
         ) -> int:
  """Runs an experiment script's command line; returns the exit status.

  Args:
    configurations, optimizers: the script's lists.
    argv: the arguments (default ``sys.argv[1:]``).
    script: the script's path (its name sets ``prog`` and the default
      output directory).
    description: the ``--help`` text (the script's docstring).
    seeds: the default of ``--seeds``.
    options: the dataclass of the script's own flags (declared with
      ``flags.setting``), checked with the shared ones before anything is
      loaded.
    extra_settings: ``args -> {setting: value}`` applied to every campaign
      (from the script's own flags).
    after: ``after(args, [(name, Plan), ...])`` once the units have run
      (e.g. a figure drawn from the results on disk).
  """
  from optbench_jax.campaign import dispatch
  from optbench_jax.train import interrupts
  parser = build_parser(script, description, seeds, options)
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(flags.attach_values(argv, parser))
  previous = {s: signal.signal(s, interrupts.request_stop)
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    flags.check(flags.from_args(Shared, args))  # before anything is loaded
    if options is not None:
      flags.check(flags.from_args(options, args))
    plans = [(name, make_plan(cfg)) for name, cfg in campaigns(
        configurations, optimizers, args,
        extra_settings(args) if extra_settings else None)]
    every = dispatch.units(plans)
    todo = (dispatch.shard(every, *dispatch.parse_shard(args.shard))
            if args.shard is not None else every)
    if args.list_only:
      print_plan(configurations, plans, todo, len(every), args.shard)
      return 0
    if args.prepare:
      return prepare(plans, args.data_dir, args.offline)
    touched = [(name, plan) for name, plan in plans
               if any(u.plan is plan for u in todo)]
    for _, plan in touched:  # every refusal before anything is trained
      check_store(plan, [u.optimizer for u in todo if u.plan is plan])
    outcomes = dispatch.run(todo, args.backend, address=args.ray_address,
                            cpus_per_task=args.ray_cpus, report=_report)
    if after is not None:
      after(args, touched)
    failed = [o for o in outcomes if not o.ok]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} work units "
          f"finished; results under {args.output_dir}"
          + (f"; failed: {', '.join(o.unit.label for o in failed)}"
             if failed else ""))
    return 1 if failed else 0
  except OptBenchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted; run the same command again to continue",
          file=sys.stderr)
    return 130
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)

