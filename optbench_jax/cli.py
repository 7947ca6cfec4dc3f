"""Command line: ``python -m optbench_jax {run,list,analyze,report}``.

Parses arguments into a run specification and hands it to the engine; user
mistakes print one line (``error: ...``) and exit with status 2. Every
command's flags are generated from settings declared once
(``optbench_jax/flags.py``): ``run``'s in ``train/settings.py`` (and its
process options here), ``analyze``'s in ``analysis/analyze.py``,
``report``'s here.
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from typing import Optional, Sequence

from optbench_jax import flags
from optbench_jax.errors import OptBenchError
from optbench_jax.flags import setting
from optbench_jax.train import settings


@dataclasses.dataclass(frozen=True, kw_only=True)
class Processes:
  """``run``'s process-level options (not run settings)."""
  distributed: bool = setting(
      False, "several processes (hosts) train together: "
      "jax.distributed.initialize, a mesh over all their devices; see "
      "optbench_jax/engine/distributed.py")
  coordinator: Optional[str] = setting(
      None, "with --distributed: HOST:PORT of process 0 (default: detected "
      "from the cluster manager)", check=flags.not_empty)
  num_processes: Optional[int] = setting(
      None, "with --distributed: how many processes (default: detected "
      "from the cluster manager)", check=flags.at_least(1))
  process_id: Optional[int] = setting(
      None, "with --distributed: this process's index, from 0 (default: "
      "detected from the cluster manager)", check=flags.at_least(0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportFlags:
  """``report``'s flags."""
  campaign_dir: str = setting(
      help="a campaign's output directory (or one configuration's), merged "
      "shards included", check=flags.existing_directory)
  output_dir: Optional[str] = setting(
      None, "where the report goes (default: <campaign-dir>/report)",
      check=flags.directory)
  defaults: Optional[str] = setting(
      None, "a campaign directory of the same configurations trained at the "
      "optimizers' defaults: each tuned configuration gets a 'Defaults vs "
      "tuned' table (ranks at defaults and tuned, Kendall's tau, "
      "Spearman's rho; default: no such table)",
      check=flags.existing_directory)


Parser = flags.Parser  # one-line errors, for every command


def build_parser() -> argparse.ArgumentParser:
  parser = Parser(
      prog="python -m optbench_jax",
      description="A JAX benchmark of deep-learning optimizers.")
  sub = parser.add_subparsers(dest="command", required=True,
                              parser_class=Parser)

  run = sub.add_parser("run", help="train one configuration with several "
                       "optimizers under one protocol")
  flags.add_flags(run, settings.CampaignConfig)
  flags.add_flags(run, Processes, group=(
      "several processes", "process-level options (not run settings)"))
  sub.add_parser("list", help="tasks, datasets, models and optimizers")
  from optbench_jax.data import commands as data_commands
  data_commands.add_parser(sub)
  from optbench_jax.analysis import analyze
  analyzer = sub.add_parser(
      "analyze", help="loss landscapes and Hessian spectra of finished runs")
  flags.add_flags(analyzer, analyze.Selection)
  flags.add_flags(analyzer, analyze.Options)
  report = sub.add_parser("report", help="a Markdown report (tables also as "
                          "CSV and LaTeX, figures) of a finished campaign")
  flags.add_flags(report, ReportFlags)
  return parser


def cmd_run(args) -> int:
  from optbench_jax.engine import distributed
  from optbench_jax.campaign.runner import run_campaign
  processes = flags.from_args(Processes, args)
  flags.check(processes)
  if processes.distributed:
    distributed.initialize(processes.coordinator, processes.num_processes,
                           processes.process_id)
  elif any(v is not None for v in (processes.coordinator,
                                   processes.num_processes,
                                   processes.process_id)):
    raise OptBenchError("--coordinator / --num-processes / --process-id go "
                        "with --distributed")
  cfg = flags.from_args(settings.CampaignConfig, args)
  rows = run_campaign(cfg)
  if distributed.is_primary():
    _print_summary(rows, cfg.output_dir)
  return 0


def _print_summary(rows, output_dir) -> None:
  from optbench_jax.campaign import console
  for line in console.summary_lines(rows, output_dir):
    print(line)


def cmd_analyze(args) -> int:
  from optbench_jax.analysis import analyze
  analysis = analyze.analyze(flags.from_args(analyze.Selection, args),
                             flags.from_args(analyze.Options, args))
  from optbench_jax.campaign import console
  for line in console.analysis_lines(analysis):
    print(line)
  return 0


def cmd_report(args) -> int:
  from optbench_jax.analysis import report
  options = flags.from_args(ReportFlags, args)
  flags.check(options)  # before any run is read
  path = report.write_report(options.campaign_dir, options.output_dir,
                             defaults_dir=options.defaults)
  print(f"report: {path}")
  return 0


def cmd_list(args) -> int:
  del args
  from optbench_jax import data, models, tasks, transforms
  print("Tasks (datasets; models; primary metric):")
  for name, task in tasks.TASKS.items():
    direction = "higher" if task.higher_is_better else "lower"
    print(f"  {name}")
    print(f"    datasets: {', '.join(data.names_for(name))}")
    print(f"    models:   {', '.join(models.names_for(name))}")
    print(f"    primary:  {task.primary_metric} ({direction} is better); "
          f"scheduler {task.default_scheduler}")
  print("\nOptimizers (update also uses: what the engine hands the "
        "optimizer's update\nbesides the gradient, built from the "
        "mini-batch loss or the model; see\noptbench_jax/transforms/base.py; "
        "default wd: the weight decay\nwithout --weight-decay, the PyTorch "
        "reference's default):")
  print(f"  {'name':<22}{'family':<20}{'default lr':>11}{'default wd':>11}"
        f"  update also uses")
  for name, spec in transforms.available().items():
    uses = ", ".join(sorted(spec.needs)) or "-"
    decay = transforms.default_weight_decay(name)
    print(f"  {name:<22}{spec.family:<20}{spec.default_lr:>11.3g}"
          f"{decay:>11.3g}  {uses}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else argv
  args = parser.parse_args(flags.attach_values(argv, parser))
  # SIGTERM (a scheduler's preemption) ends a run as Ctrl-C does; neither
  # interrupts a checkpoint write (train/interrupts.py).
  from optbench_jax.train import interrupts
  previous = {s: signal.signal(s, interrupts.request_stop)
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    from optbench_jax.data import commands as data_commands
    return {"run": cmd_run, "list": cmd_list, "analyze": cmd_analyze,
            "report": cmd_report,
            "data": data_commands.main}[args.command](args)
  except OptBenchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted" + ("; continue with --resume"
                           if args.command == "run" else ""), file=sys.stderr)
    return 130
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)


if __name__ == "__main__":
  sys.exit(main())
