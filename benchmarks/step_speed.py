"""Steady-state training speed: the JAX engine (jit, vmap, bf16) vs PyTorch.

Every model of the model registry (``--models``: all by default) is trained
on random data of its registry entry's example shape (``example_info``), in
one process, on the same device, from the same initial weights, with SGD
(momentum 0.9, learning rate 0.01, constant) on the task's mean loss, in the
ways listed in ``benchmarks/speed/variants.py``: the engine's jitted step,
its scanned epoch, the scanned epoch vmapped over ``--vmap-runs`` runs and in
bfloat16, and the model's PyTorch twin (``torch_twin``), eager and with
``torch.compile``. It prints steps/s, examples/s, real target tokens/s
(token models; ``--seq-len`` or ``name@length`` sets their length), model
FLOPs utilisation
(``speed/device.py``) and a projection of the thesis campaign's training
time (``speed/projection.py``), and writes everything as JSON (``--json``).
See ``benchmarks/README.md``.

Usage::

  JAX_PLATFORMS=cpu python benchmarks/step_speed.py --models cnn_scratch \\
      --batch-size 32 --steps 3 --repeats 1 --vmap-runs 4      # CPU, quick
  python benchmarks/step_speed.py --device cuda --steps 100 --repeats 5 \\
      --torch-compile --json step_speed.json                    # GPU

JAX runs on its default backend (``JAX_PLATFORMS=cpu`` forces the CPU);
``--device`` picks PyTorch's. GPU memory preallocation of JAX is turned off
(``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set) so that both frameworks
fit on one GPU.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The repository (optbench_jax) and this folder (the ``speed`` package).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]

import torch  # noqa: E402

from speed import device as device_lib  # noqa: E402
from speed import projection as projection_lib  # noqa: E402
from speed import report, variants, workload  # noqa: E402


def parse_args(argv=None):
  known = workload.registered()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=",".join(known),
                      help="comma-separated names from the model registry, "
                           "a text model optionally with its sequence length "
                           "(gpt_small@512) (default: all of them: "
                           + ", ".join(known) + ")")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=50,
                      help="steps per timed run (and per scanned epoch)")
  parser.add_argument("--repeats", type=int, default=5,
                      help="timed runs; the median is reported")
  parser.add_argument("--warmup", type=int, default=3,
                      help="PyTorch warm-up steps (JAX: compiled first)")
  parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                      help="PyTorch's device (JAX uses its default backend)")
  parser.add_argument("--torch-compile", action="store_true",
                      help="also time torch.compile(model)")
  parser.add_argument("--no-cudnn-benchmark", action="store_true",
                      help="leave torch.backends.cudnn.benchmark off (it is "
                           "on by default: XLA autotunes its convolutions)")
  parser.add_argument("--vmap-runs", type=int, default=16,
                      help="runs trained together in the vmapped epoch "
                           "(jax_vmap); 0 disables it")
  parser.add_argument("--no-bf16", action="store_true",
                      help="skip the bfloat16 scanned epoch (jax_bf16)")
  parser.add_argument("--no-project", dest="project", action="store_false",
                      help="skip the projection of the thesis campaign")
  parser.add_argument("--seq-len", type=int, default=None,
                      help="sequence length of the text models given "
                           "without '@length' (LM blocks, sources, contexts "
                           "and seq2seq targets; default: each model's "
                           "example_info, 64 for the generation models); "
                           "ignored by image models")
  parser.add_argument("--peak-flops", default=None, metavar="FP32[,BF16]",
                      help="the device's peak FLOP/s for MFU (e.g. 1e12), "
                           "instead of the built-in GPU table; without it "
                           "MFU is n/a on a CPU")
  parser.add_argument("--variants", default=None,
                      help="comma-separated timed columns to run, of "
                           + ", ".join(v.name for v in variants.VARIANTS)
                           + " (default: all that no other flag turns off)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default=None, help="also write results here")
  args = parser.parse_args(argv)
  args.models = [m.strip() for m in args.models.split(",") if m.strip()]
  for m in args.models:
    why = workload.entry_error(m)
    if why:
      parser.error(f"{why}; valid: {', '.join(known)}, text models "
                   f"optionally as name@length")
  if args.variants is not None:
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    names = [v.name for v in variants.VARIANTS]
    unknown = [v for v in args.variants if v not in names]
    if unknown or not args.variants:
      parser.error(f"--variants: unknown {', '.join(unknown) or 'empty'}; "
                   f"valid: {', '.join(names)}")
  if args.seq_len is not None and args.seq_len < 2:
    parser.error("--seq-len must be >= 2")
  try:
    device_lib.parse_peak_flops(args.peak_flops)
  except ValueError as e:
    parser.error(str(e))
  if args.device == "cuda" and not torch.cuda.is_available():
    parser.error("--device cuda but torch.cuda.is_available() is False")
  if min(args.steps, args.repeats, args.batch_size) < 1:
    parser.error("--steps, --repeats and --batch-size must be >= 1")
  if args.vmap_runs < 0:
    parser.error("--vmap-runs must be >= 0")
  return args


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.device == "cuda":
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
  torch.manual_seed(args.seed)
  device = device_lib.device_info(args)
  results = []
  for name in args.models:
    result = variants.bench_model(name, args)
    if result.get("status") == "measured":
      result["mfu"] = device_lib.mfu(result, device)
    results.append(result)
  print(report.format_table(results, device, args))
  projection = projection_lib.project(results, args) if args.project else None
  if projection:
    print(report.format_projection(projection))
  if args.json:
    report.write_json(args.json, device, results, projection, args, argv)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
