"""The shared command line of the experiment scripts (``experiments/``).

An experiment script is a module docstring stating where its settings come
from, a list of :class:`Configuration` (one campaign each: task, dataset,
model and the settings of :class:`~optbench_jax.train.settings.CampaignConfig`
that differ from the defaults), a list of optimizers, and::

  if __name__ == "__main__":
    sys.exit(experiment.main(CONFIGURATIONS, OPTIMIZERS, sys.argv[1:],
                             script=__file__, description=__doc__))

:func:`main` gives every script the same flags: ``--configs`` (names or
1-based positions, ranges ``3-5``), ``--optimizers``, ``--seeds``,
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
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

from optbench_jax.errors import OptBenchError
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


def _positive_int(flag: str):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{flag} expects an integer "
                                        f"(got {text!r})") from None
    if value < 1:
      raise argparse.ArgumentTypeError(f"{flag} must be at least 1 "
                                        f"(got {value})")
    return value
  return parse


def build_parser(script: str, description: Optional[str] = None,
                 seeds: Sequence[int] = (0,)) -> argparse.ArgumentParser:
  from optbench_jax.cli import Parser, comma_list  # one-line errors
  from optbench_jax.campaign import dispatch
  stem = os.path.splitext(os.path.basename(script))[0]
  parser = Parser(prog=f"python {os.path.relpath(script)}",
                   description=description,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add = parser.add_argument
  add("--configs", default=None, help="configurations to run: names, "
      "1-based positions or ranges (3-5), comma-separated (default: all; "
      "see --list)")
  add("--optimizers", default=None, help="comma-separated optimizers, for "
      "every configuration (default: the script's)")
  add("--seeds", type=comma_list(int, "--seeds"), default=list(seeds),
      help=f"comma-separated seeds (default: "
      f"{','.join(str(s) for s in seeds)}); the runs of one optimizer train "
      f"together in one program")
  add("--max-samples", type=_positive_int("--max-samples"), default=None,
      help="cap every configuration's training split at N examples (a small "
      "try first)")
  add("--epochs", type=_positive_int("--epochs"), default=None,
      help="epochs of every configuration (default: the script's)")
  add("--output-dir", default=os.path.join("results", stem),
      help="where results are written (default: %(default)s)")
  add("--data-dir", default=None, help="dataset cache directory")
  add("--offline", action="store_true", help="never download: a dataset "
      "or checkpoint missing from the local cache is an error")
  add("--prepare", action="store_true", help="download and check every "
      "dataset and checkpoint the selected configurations need, then exit "
      "(before a sharded or Ray campaign)")
  add("--resume", action=argparse.BooleanOptionalAction, default=True,
      help="skip finished runs and continue unfinished ones from their last "
      "checkpoint (default); --no-resume trains them again from the start")
  add("--shard", default=None, metavar="I/N",
      help="run only the I-th of N disjoint parts (1-based, dealt "
      "round-robin over the work units) into the same --output-dir, e.g. "
      "--shard $SLURM_ARRAY_TASK_ID/4 under #SBATCH --array=1-4")
  add("--backend", choices=dispatch.BACKENDS, default="local",
      help="local: one unit after another in this process (default); ray: "
      "one Ray task per unit (pip install 'optbench_jax[cluster]')")
  add("--ray-address", default=None,
      help="with --backend ray: the cluster to join (default: a running "
      "one Ray finds, else a new local one)")
  add("--ray-cpus", type=float, default=1.0,
      help="with --backend ray on a cluster without GPUs: CPUs per task "
      "(default: %(default)s; with GPUs each task asks for one GPU)")
  add("--quiet", action="store_true", help="no progress bars")
  add("--list", action="store_true", help="print the configurations and "
      "this shard's work units, then exit")
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
    source = spec.download.source if spec.download else None
    print(f"  dataset {spec.name}: " + (
        f"{source.hub_id}, published "
        + ", ".join(f"{s} {n:,}" for s, n in source.sizes.items())
        if source else "no download"))
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
         add_arguments: Optional[Callable[[argparse.ArgumentParser], None]]
         = None,
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
    add_arguments: adds the script's own flags to the parser.
    extra_settings: ``args -> {setting: value}`` applied to every campaign
      (from the script's own flags).
    after: ``after(args, [(name, Plan), ...])`` once the units have run
      (e.g. a figure drawn from the results on disk).
  """
  from optbench_jax.campaign import dispatch
  from optbench_jax.train import interrupts
  parser = build_parser(script, description, seeds)
  if add_arguments is not None:
    add_arguments(parser)
  args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
  previous = {s: signal.signal(s, interrupts.request_stop)
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    plans = [(name, make_plan(cfg)) for name, cfg in campaigns(
        configurations, optimizers, args,
        extra_settings(args) if extra_settings else None)]
    every = dispatch.units(plans)
    todo = (dispatch.shard(every, *dispatch.parse_shard(args.shard))
            if args.shard is not None else every)
    if args.list:
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

