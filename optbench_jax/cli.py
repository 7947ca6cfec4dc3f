"""Command line: ``python -m optbench_jax {run,list}``.

Parses arguments into a run specification and hands it to the engine; user
mistakes print one line (``error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from optbench_jax.errors import OptBenchError


def _lr_overrides(text: str) -> dict[str, float]:
  overrides = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    name, sep, value = item.partition("=")
    try:
      if not sep:
        raise ValueError
      overrides[name.strip()] = float(value)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"--lr-overrides expects name=lr,... (got {item!r})") from None
  return overrides


def _number_list(kind, flag):
  def parse(text: str):
    try:
      values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"{flag} expects a comma-separated list (got {text!r})") from None
    if not values:
      raise argparse.ArgumentTypeError(f"{flag} is empty")
    return values
  return parse


def _auto_int(text: str) -> Optional[int]:
  return None if text.lower() in ("auto", "all") else int(text)


def _optional_int(text: str) -> Optional[int]:
  return None if text.lower() in ("none", "all", "0") else int(text)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m optbench_jax",
      description="A JAX benchmark of deep-learning optimizers.")
  sub = parser.add_subparsers(dest="command", required=True)

  run = sub.add_parser("run", help="train one configuration with several "
                       "optimizers under one protocol")
  run.add_argument("--task", required=True)
  run.add_argument("--dataset", required=True)
  run.add_argument("--model", required=True)
  run.add_argument("--optimizers", default="all",
                   help="'all' or a comma-separated list")
  run.add_argument("--epochs", type=int, default=20)
  run.add_argument("--batch-size", type=int, default=128)
  run.add_argument("--max-samples", type=_optional_int, default=None,
                   help="cap on the training split")
  run.add_argument("--num-workers", type=int, default=0,
                   help="accepted for compatibility with the PyTorch "
                   "framework; data are batched on the device, so unused")
  run.add_argument("--lr-overrides", type=_lr_overrides, default={},
                   help="per-optimizer learning rates: name=lr,...")
  run.add_argument("--seed", type=int, default=0)
  run.add_argument("--lr-policy", default="per-optimizer",
                   help="per-optimizer (registry defaults) or fixed (--lr)")
  run.add_argument("--lr", type=float, default=None)
  run.add_argument("--scheduler", default=None,
                   help="cosine, plateau or none (default: the task's)")
  run.add_argument("--warmup-steps", type=int, default=0)
  run.add_argument("--grad-clip", type=float, default=None,
                   help="global-norm clipping (default: the task's; 0 = off)")
  run.add_argument("--label-smoothing", type=float, default=None)
  run.add_argument("--weight-decay", type=float, default=0.0)
  run.add_argument("--output-dir", default="results")
  run.add_argument("--data-dir", default=None,
                   help="dataset cache directory (HF datasets / TFDS)")
  run.add_argument("--resume", action="store_true",
                   help="skip finished runs, continue unfinished ones from "
                   "their last checkpoint")
  run.add_argument("--quiet", action="store_true", help="no progress bars")
  run.add_argument("--seeds", type=_number_list(int, "--seeds"),
                   default=None,
                   help="several seeds, e.g. 0,1,2 (overrides --seed); the "
                   "runs of one optimizer train together in one program")
  run.add_argument("--lr-grid", type=_number_list(float, "--lr-grid"),
                   default=None,
                   help="train every optimizer at each of these learning "
                   "rates, e.g. 1e-4,3e-4,1e-3 (one compiled program)")
  run.add_argument("--runs-per-program", type=_auto_int, default=None,
                   help="at most this many runs (seeds x LRs) in one "
                   "program; 'auto' (default) fits them to device memory")
  run.add_argument("--precision", default="fp32",
                   help="fp32 or bf16 (bfloat16 compute, float32 parameters "
                   "and optimizer state)")
  run.add_argument("--devices", type=_auto_int, default=None,
                   help="data-parallel over this many local devices "
                   "(default: all)")
  run.add_argument("--data-placement", default="auto",
                   help="auto, device (epoch gathered inside the compiled "
                   "program) or host (streamed with prefetching)")
  run.add_argument("--distributed", action="store_true",
                   help="several processes (hosts) train together: "
                   "jax.distributed.initialize, a mesh over all their "
                   "devices; see optbench_jax/train/distributed.py")
  run.add_argument("--coordinator", default=None,
                   help="with --distributed: HOST:PORT of process 0 "
                   "(default: detected from the cluster manager)")
  run.add_argument("--num-processes", type=int, default=None)
  run.add_argument("--process-id", type=int, default=None)
  run.add_argument("--compile-cache", default=None,
                   help="persistent XLA compilation cache directory "
                   "(default ~/.cache/optbench_jax/xla or "
                   "$OPTBENCH_COMPILE_CACHE; 'off' disables)")

  sub.add_parser("list", help="tasks, datasets, models and optimizers")
  return parser


def cmd_run(args) -> int:
  from optbench_jax.train import distributed
  from optbench_jax.train.campaign import CampaignConfig, run_campaign
  if args.distributed:
    distributed.initialize(args.coordinator, args.num_processes,
                           args.process_id)
  elif any(v is not None for v in (args.coordinator, args.num_processes,
                                   args.process_id)):
    raise OptBenchError("--coordinator / --num-processes / --process-id go "
                        "with --distributed")
  cfg = CampaignConfig(
      task=args.task, dataset=args.dataset, model=args.model,
      optimizers=args.optimizers, epochs=args.epochs,
      batch_size=args.batch_size, max_samples=args.max_samples,
      seed=args.seed, lr_policy=args.lr_policy, lr=args.lr,
      lr_overrides=args.lr_overrides, scheduler=args.scheduler,
      warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
      label_smoothing=args.label_smoothing, weight_decay=args.weight_decay,
      output_dir=args.output_dir, data_dir=args.data_dir, resume=args.resume,
      quiet=args.quiet, compile_cache=args.compile_cache, seeds=args.seeds,
      lr_grid=args.lr_grid, runs_per_program=args.runs_per_program,
      precision=args.precision, devices=args.devices,
      data_placement=args.data_placement)
  rows = run_campaign(cfg)
  if distributed.is_primary():
    _print_summary(rows, args.output_dir)
  return 0


def _fmt(value, spec=".4f"):
  return "-" if value is None or value == "" else format(value, spec)


def _print_summary(rows, output_dir) -> None:
  if not rows:
    return
  primary = rows[0]["primary_metric"]
  label = lambda r: r["optimizer"] + (
      f" lr={r['learning_rate']:g} s={r['seed']}"
      if len({(x["learning_rate"], x["seed"]) for x in rows
              if x["optimizer"] == r["optimizer"]}) > 1 else "")
  width = max(22, max(len(label(r)) for r in rows) + 2)
  print(f"\n{'run':<{width}}{'status':<11}{'best ' + primary:>16}"
        f"{'epoch':>7}{'best val loss':>15}{'conv. epoch':>13}{'time s':>9}")
  for r in rows:
    print(f"{label(r):<{width}}{r['status']:<11}"
          f"{_fmt(r.get('best_primary')):>16}"
          f"{_fmt(r.get('best_primary_epoch'), 'd'):>7}"
          f"{_fmt(r.get('best_val_loss')):>15}"
          f"{_fmt(r.get('convergence_epoch'), 'd'):>13}"
          f"{_fmt(r.get('total_runtime_s'), '.1f'):>9}")
  print(f"results under {output_dir}")


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
  print(f"  {'name':<22}{'family':<20}{'default lr':>11}  needs")
  for name, spec in transforms.available().items():
    needs = ", ".join(sorted(spec.needs)) or "-"
    print(f"  {name:<22}{spec.family:<20}{spec.default_lr:>11.3g}  {needs}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return {"run": cmd_run, "list": cmd_list}[args.command](args)
  except OptBenchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted; continue with --resume", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
