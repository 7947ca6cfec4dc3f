"""The printed tables and the JSON file."""
from __future__ import annotations

import json
import os
import shlex
import sys

from speed import device as device_lib
from speed import jax_timing
from speed.variants import VARIANTS

# Columns after the rates: (heading, subheading, value of a result).
RATIO_COLUMNS = (
    ("epoch/", "eager", lambda r: r.get("jax_epoch_over_eager")),
    ("vmap", "speedup", lambda r: r.get("vmap_speedup")),
    ("MFU", "fp32", lambda r: mfu_cell(r, "fp32")),
    ("MFU", "bf16", lambda r: mfu_cell(r, "bf16")),
)


def mfu_cell(r, name):
  """The MFU, ``n/a`` without a peak (a CPU), ``-`` without a rate."""
  m = r.get("mfu", {})
  if m.get(f"{name}_mfu") is not None:
    return m[f"{name}_mfu"]
  return "n/a" if m.get("unavailable") and m.get(
      f"{name}_achieved_flops_per_s") else None
# Losses of the first timed epoch: (result key, label; {runs}: vmap_runs).
EPOCH_LOSSES = (("epoch_loss_jax", "fp32"), ("epoch_loss_jax_bf16", "bf16"),
                ("epoch_loss_jax_vmap", "vmap (mean of {runs} runs, own "
                                        "inits)"))


def cell(value, width=9) -> str:
  if value is None:
    return f"{'-':>{width}}"
  if isinstance(value, str):
    return f"{value:>{width}}"
  return f"{value:{width}.4g}"


def number(value, digits) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


def why_missing(r, variant, args):
  if f"{variant.name}_error" in r:
    return "failed"
  if f"{variant.name}_unavailable" in r:
    return "n/a"
  return "off" if variant.is_off(args) else None


def title(variant, args) -> str:
  runs = variant.run_count(args) if variant.runs else 0
  return f"{variant.title} x{runs}" if runs else variant.title


def header(device, args, width=14) -> list:
  top = f"{'':<{width}}" + "".join(f" {title(v, args):^19}" for v in VARIANTS) + (
      "".join(f" {t:>7}" for t, _, _ in RATIO_COLUMNS))
  sub = f"{'model':<{width}}" + "".join(
      f" {'run-st/s' if v.runs else 'steps/s':>9} {'ex/s':>9}"
      for v in VARIANTS) + "".join(f" {s:>7}" for _, s, _ in RATIO_COLUMNS)
  peak_key = device_lib.peak_flops(device)[0]
  if peak_key is None:
    mfu_note = f"MFU {device_lib.no_peak(device)}"
  else:
    mfu_note = (f"MFU fp32 against the "
                f"{device_lib.fp32_peak_kind(device).upper()} peak, MFU bf16 "
                f"against the BF16 peak of {peak_key}")
  return [f"JAX: {device['jax_platform']} ({device['jax_device_kind']}); "
          f"PyTorch: {device['torch_device']} "
          f"({device['torch_device_name']}, "
          f"{device['torch_threads']} threads); batch {args.batch_size}, "
          f"{args.steps} steps x {args.repeats} repeats",
          "median steps/s and examples/s, higher is better; vmap: run-steps/s"
          " = runs x steps/s, ex/s = runs x batch x steps/s; vmap speedup = "
          f"vmap run-steps/s / JAX epoch steps/s; {mfu_note}",
          top, sub, "-" * len(sub)]


def flops_line(r, device) -> str:
  m = r["mfu"]
  flops = m["flops_per_step"]
  text = (f"{r['model']}: XLA FLOPs/step {flops:.4g} ({m['flops_source']}"
          f", the whole step incl. backward and optimizer)"
          if flops else f"{r['model']}: XLA gave no FLOP count")
  if m.get("fp32_achieved_flops_per_s"):
    text += f"; achieved fp32 {m['fp32_achieved_flops_per_s']:.4g} FLOP/s"
  if m.get("bf16_achieved_flops_per_s"):
    text += f", bf16 {m['bf16_achieved_flops_per_s']:.4g} FLOP/s"
  if m.get("unavailable"):
    return text + f"; MFU unavailable: {m['unavailable']}"
  return text + (f"; peaks ({m['peak_table_entry']}): "
                 f"{device_lib.fp32_peak_kind(device)} "
                 f"{m['fp32_peak_flops']:.4g}, bf16 "
                 f"{m['bf16_peak_flops']:.4g} FLOP/s")


def format_table(results, device, args) -> str:
  width = max([14] + [len(r["model"]) for r in results])
  lines = header(device, args, width)
  for r in results:
    if r.get("status") != "measured":
      lines.append(f"{r['model']:<{width}} {r['status']}: {r['reason']}")
      continue
    cells = []
    for v in VARIANTS:
      if v.rate_key() in r:
        cells += [cell(r[v.rate_key()]), cell(r[f"{v.name}_examples_per_s"])]
      else:
        cells += [cell(why_missing(r, v, args))] * 2
    cells += [cell(value(r), 7) for _, _, value in RATIO_COLUMNS]
    lines.append(f"{r['model']:<{width}} " + " ".join(cells))
  measured = [r for r in results if r.get("status") == "measured"]
  if not measured:
    return "\n".join(lines)
  lines.append("first-step loss (same weights, same batch): " + "; ".join(
      f"{r['model']} JAX {number(r.get('initial_loss_jax'), 6)} / "
      f"torch {number(r.get('initial_loss_torch'), 6)}" for r in measured))
  losses = []
  for r in measured:
    parts = [f"{label.format(runs=r.get('vmap_runs'))} {r[key]:.4f}"
             for key, label in EPOCH_LOSSES if key in r]
    losses.append(f"{r['model']} " + ", ".join(parts))
  lines.append("mean loss of the first timed epoch: " + "; ".join(losses))
  lines += [flops_line(r, device) for r in measured]
  lines += token_table(measured, device)
  return "\n".join(lines)


def token_table(measured, device) -> list:
  """Tokens/s of the token models (real target tokens: padding not
  counted), FLOPs and FLOP/s; empty when none was measured."""
  rows = [r for r in measured if "target_tokens_per_step_batch" in r]
  if not rows:
    return []
  shown = [v for v in VARIANTS
           if any(f"{v.name}_tokens_per_s" in r for r in rows)]
  width = max(len(f"{r['model']} (b{r['batch_size']})") for r in rows)
  head = (f"{'model':<{width}} {'seq':>7} {'tok/step':>8}" + "".join(
      f" {v.title + ' tok/s':>17}" for v in shown) + f" {'XLA GF/step':>11}"
      f" {'6NT GF/step':>11} {'fp32 GF/s':>9} {'MFU fp32':>8}")
  lines = ["", "Real target tokens/s (padding not counted; tok/step: of the "
           "fixed batch; the epochs average over all their data); GF = 1e9 "
           "FLOPs; XLA: cost analysis of the compiled step, used for MFU; "
           "6NT: 6 x parameters x token positions (decoder-only models, "
           "cross-check)", head, "-" * len(head)]
  for r in rows:
    m = r.get("mfu", {})
    seq = str(r.get("seq_len", "-"))
    if "target_len" in r:
      seq = f"{r['seq_len']}/{r['target_len']}"
    giga = lambda x: None if x is None else x / 1e9
    cells = "".join(f" {cell(r.get(f'{v.name}_tokens_per_s'), 17)}"
                    for v in shown)
    lines.append(
        f"{r['model'] + ' (b' + str(r['batch_size']) + ')':<{width}} "
        f"{seq:>7} {r['target_tokens_per_step_batch']:>8}{cells}"
        f" {cell(giga(m.get('flops_per_step')), 11)}"
        f" {cell(giga(m.get('analytic_flops_per_step')), 11)}"
        f" {cell(giga(m.get('fp32_achieved_flops_per_s')), 9)}"
        f" {cell(mfu_cell(r, 'fp32'), 8)}")
  return lines


def duration(seconds) -> str:
  if seconds is None:
    return "-"
  if seconds < 60:
    return f"{seconds:.0f} s"
  minutes = seconds / 60
  if minutes < 60:
    return f"{minutes:.1f} min"
  hours = minutes / 60
  return f"{hours:.2f} h" if hours < 1000 else f"{hours / 24:.1f} d"


def vmapped_text(t, missing) -> str:
  if "vmapped_lower_s" in t:
    return (f"{duration(t['vmapped_lower_s'])} - "
            f"{duration(t['vmapped_upper_s'])}")
  if "vmapped_estimate_s" in t:
    return f"~{duration(t['vmapped_estimate_s'])}"
  return missing


def format_projection(projection) -> str:
  c = projection["campaign"]
  lines = [f"Projected training time of the thesis campaign "
           f"({c['total_runs']} runs; measurable part only):"]
  head = (f"  {'dataset':<8} {'model':<12} {'steps/ep':>8} {'steps/run':>9} "
          f"{'sequential':>11} "
          f"{'vmapped, ' + str(c['seeds']) + ' seeds/program':>26}")
  lines += [head, "  " + "-" * (len(head) - 2)]
  for r in projection["rows"]:
    if r["status"] != "projected":
      lines.append(f"  {r['dataset']:<8} {r['model']:<12} {r['status']}")
      continue
    mark = "" if r["rate_shape_matches_dataset"] else "*"
    lines.append(f"  {r['dataset']:<8} {r['model'] + mark:<12} "
                 f"{r['steps_per_epoch']:>8} {r['steps_per_run']:>9} "
                 f"{duration(r['sequential_s']):>11} "
                 f"{vmapped_text(r, 'not measured'):>26}")
  for label, t in (("total", projection["totals"]),
                   ("matched pairs", projection["totals_matched_pairs"])):
    if "sequential_s" not in t:
      continue
    partial = "" if t["complete"] else ", partial"
    lines.append(f"  {label + ' (' + str(t['runs']) + ' runs' + partial + ')':<40}"
                 f" {duration(t['sequential_s']):>11} "
                 f"{vmapped_text(t, '-'):>26}")
  if any(r.get("rate_shape_matches_dataset") is False
         for r in projection["rows"]):
    lines.append("  * rate measured at the model's own input shape, not "
                 "this dataset's")
  for item in projection["not_projected"]:
    lines.append(f"  {item['what']}: {item['reason']}")
  lines.append("  assumptions:")
  lines += [f"   - {a}" for a in projection["assumptions"]]
  return "\n".join(lines)


def command_line(argv) -> str:
  env = " ".join(f"{k}={shlex.quote(os.environ[k])}"
                 for k in ("JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "XLA_FLAGS")
                 if k in os.environ)
  cmd = shlex.join(["python", sys.argv[0]] + list(argv))
  return f"{env} {cmd}" if env else cmd


def write_json(path, device, results, projection, args, argv) -> None:
  config = {
      "batch_size": args.batch_size, "steps": args.steps,
      "repeats": args.repeats, "warmup": args.warmup,
      "vmap_runs": args.vmap_runs, "bf16": not args.no_bf16,
      "torch_compile": args.torch_compile, "seed": args.seed,
      "seq_len": getattr(args, "seq_len", None),
      "variants": getattr(args, "variants", None),
      "peak_flops": getattr(args, "peak_flops", None),
      "optimizer": f"SGD(lr={jax_timing.LEARNING_RATE}, "
                   f"momentum={jax_timing.MOMENTUM})",
      "command": command_line(argv),
      "environment": {k: os.environ[k] for k in (
          "JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_FLAGS",
          "CUDA_VISIBLE_DEVICES") if k in os.environ}}
  with open(path, "w") as f:
    json.dump({"device": device, "config": config, "results": results,
               "projection": projection}, f, indent=2)
