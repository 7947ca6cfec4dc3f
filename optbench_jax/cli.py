"""Command line: ``python -m optbench_jax {run,list,analyze,report}``.

Parses arguments into a run specification and hands it to the engine; user
mistakes print one line (``error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import signal
import sys
from typing import Optional, Sequence

from optbench_jax.errors import OptBenchError
from optbench_jax.train import settings


def _typed(field, parse):
  """argparse type: the setting's parser, its errors as argparse errors."""
  def convert(text: str):
    try:
      return parse(text)
    except ValueError as e:
      message = str(e) if str(e).startswith("--") else (
          f"{settings.flag_of(field)} expects {field.type} (got {text!r})")
      raise argparse.ArgumentTypeError(message) from None
  return convert


def _add_settings(parser: argparse.ArgumentParser) -> None:
  """One flag per setting of :class:`settings.CampaignConfig`."""
  for field in settings.fields(settings.CampaignConfig):
    flag = settings.flag_of(field)
    if flag is None:
      continue
    meta = field.metadata
    required = (field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING)
    kwargs = {"dest": field.name, "help": meta["help"]}
    if field.type == "bool":
      parser.add_argument(flag, action="store_true", **kwargs)
      continue
    parse = meta["parse"] or _SCALARS.get(field.type.replace("Optional[", "")
                                          .rstrip("]"), str)
    if required:
      kwargs["required"] = True
    else:
      kwargs["default"] = (field.default_factory()
                           if field.default is dataclasses.MISSING
                           else field.default)
    parser.add_argument(flag, type=_typed(field, parse), **kwargs)


_SCALARS = {"int": int, "float": float, "str": str}


def comma_list(kind, flag: str):
  """argparse type: a comma-separated list of ``kind`` (``--seeds 0,1,2``),
  its errors argparse's one-line errors."""
  parse = settings.number_list(kind, flag)

  def convert(text: str) -> list:
    try:
      return parse(text)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None
  return convert


class Parser(argparse.ArgumentParser):
  """argparse with one-line errors (``error: ...``, exit status 2), as for
  every other bad input; ``--help`` shows the usage."""

  def error(self, message):
    print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
    raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
  parser = Parser(
      prog="python -m optbench_jax",
      description="A JAX benchmark of deep-learning optimizers.")
  sub = parser.add_subparsers(dest="command", required=True,
                              parser_class=Parser)

  run = sub.add_parser("run", help="train one configuration with several "
                       "optimizers under one protocol")
  _add_settings(run)
  process = run.add_argument_group(
      "several processes", "process-level options (not run settings)")
  process.add_argument("--distributed", action="store_true",
                       help="several processes (hosts) train together: "
                       "jax.distributed.initialize, a mesh over all their "
                       "devices; see optbench_jax/engine/distributed.py")
  process.add_argument("--coordinator", default=None,
                       help="with --distributed: HOST:PORT of process 0 "
                       "(default: detected from the cluster manager)")
  process.add_argument("--num-processes", type=int, default=None)
  process.add_argument("--process-id", type=int, default=None)

  sub.add_parser("list", help="tasks, datasets, models and optimizers")
  from optbench_jax.data import commands as data_commands
  data_commands.add_parser(sub)
  _add_analyze(sub)
  report = sub.add_parser("report", help="a Markdown report (tables also as "
                          "CSV and LaTeX, figures) of a finished campaign")
  report.add_argument("--campaign-dir", required=True,
                      help="a campaign's output directory (or one "
                      "configuration's), merged shards included")
  report.add_argument("--output-dir", default=None,
                      help="where the report goes (default: "
                      "<campaign-dir>/report)")
  return parser


def _add_analyze(sub) -> None:
  from optbench_jax.analysis.analyze import ANALYSES, Options
  defaults = Options()
  analyze = sub.add_parser(
      "analyze", help="loss landscapes and Hessian spectra of finished runs")
  analyze.add_argument("--run-dir", required=True,
                       help="a run directory, or a directory above runs "
                       "(every run below it, plus cross-run figures)")
  analyze.add_argument("--what", default=",".join(ANALYSES),
                       help=f"comma-separated: {', '.join(ANALYSES)} "
                       f"(default: all)")
  analyze.add_argument("--seeds", default=None,
                       type=comma_list(int, "--seeds"),
                       help="only the runs of these seeds (comma-separated; "
                       "default: every run)")
  analyze.add_argument("--compare-run", default=None,
                       help="landscape1d also from the final parameters to "
                       "this run's (same task, dataset and model)")
  analyze.add_argument("--split", default=defaults.split,
                       choices=("train", "val", "test"),
                       help="the split whose first --samples examples define "
                       "the loss (default: %(default)s)")
  analyze.add_argument("--samples", type=int, default=defaults.samples,
                       help="examples in the fixed evaluation subset "
                       "(default: %(default)s)")
  analyze.add_argument("--bn", default=defaults.bn, choices=("running",
                                                             "batch"),
                       help="batch norm: the final running statistics "
                       "(eval mode) or each batch's own (default: "
                       "%(default)s)")
  for flag, field, text in (
      ("--points-1d", "points_1d", "points on the 1-D path"),
      ("--points-2d", "points_2d", "grid points per axis of the surface"),
      ("--top-k", "top_k", "top Hessian eigenvalues"),
      ("--top-iterations", "top_iterations",
       "Lanczos iterations of the top eigenvalues"),
      ("--iterations", "iterations",
       "Lanczos iterations per spectral-density probe"),
      ("--probes", "probes", "stochastic Lanczos quadrature probes"),
      ("--trace-probes", "trace_probes", "Hutchinson probes of the trace"),
      ("--seed", "seed", "seed of directions and probes")):
    analyze.add_argument(flag, type=int, default=getattr(defaults, field),
                         help=f"{text} (default: %(default)s)")
  analyze.add_argument("--span", type=float, default=defaults.span,
                       help="the surface covers [-span, span]² in units of "
                       "the filter-normalised directions (default: "
                       "%(default)s)")
  analyze.add_argument("--batch-size", type=int, default=None,
                       help="evaluation batch size (default: the run's)")
  analyze.add_argument("--data-dir", default=None,
                       help="where the run's dataset cache lives, if not "
                       "the default")


_PROCESS_OPTIONS = ("command", "distributed", "coordinator", "num_processes",
                    "process_id")


def cmd_run(args) -> int:
  from optbench_jax.engine import distributed
  from optbench_jax.campaign.runner import run_campaign
  if args.distributed:
    distributed.initialize(args.coordinator, args.num_processes,
                           args.process_id)
  elif any(v is not None for v in (args.coordinator, args.num_processes,
                                   args.process_id)):
    raise OptBenchError("--coordinator / --num-processes / --process-id go "
                        "with --distributed")
  cfg = settings.CampaignConfig(**{k: v for k, v in vars(args).items()
                                   if k not in _PROCESS_OPTIONS})
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
  options = analyze.Options(
      split=args.split, samples=args.samples, bn=args.bn,
      points_1d=args.points_1d, points_2d=args.points_2d, span=args.span,
      top_k=args.top_k, top_iterations=args.top_iterations,
      iterations=args.iterations, probes=args.probes,
      trace_probes=args.trace_probes, seed=args.seed,
      batch_size=args.batch_size)
  written = analyze.analyze(args.run_dir, analyze.parse_what(args.what),
                            options, compare=args.compare_run,
                            data_dir=args.data_dir, seeds=args.seeds)
  from optbench_jax.campaign import console
  for line in console.analysis_lines(written):
    print(line)
  return 0


def cmd_report(args) -> int:
  from optbench_jax.analysis import report
  print(f"report: {report.write_report(args.campaign_dir, args.output_dir)}")
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
  print("\nOptimizers:")
  print(f"  {'name':<22}{'family':<20}{'default lr':>11}"
        f"{'default wd':>11}  needs")
  for name, spec in transforms.available().items():
    needs = ", ".join(sorted(spec.needs)) or "-"
    decay = transforms.default_weight_decay(name)
    print(f"  {name:<22}{spec.family:<20}{spec.default_lr:>11.3g}"
          f"{decay:>11.3g}  {needs}")
  print("  (default wd: the weight decay without --weight-decay, the "
        "PyTorch reference's default)")
  return 0


_NEGATIVE_NUMBER = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


def _attach_values(argv: Sequence[str], parser) -> list[str]:
  """``--seeds -1,2`` → ``--seeds=-1,2``: a value that starts with ``-`` is
  parsed (then judged) instead of being taken for an unknown flag."""
  flags = {flag for action in parser._subparsers._group_actions  # pylint: disable=protected-access
           for sub in action.choices.values()
           for flag, option in sub._option_string_actions.items()  # pylint: disable=protected-access
           if option.nargs is None}
  out = []
  for arg in argv:
    if out and out[-1] in flags and _NEGATIVE_NUMBER.match(arg):
      out[-1] = f"{out[-1]}={arg}"
    else:
      out.append(arg)
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else argv
  args = parser.parse_args(_attach_values(argv, parser))
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
