"""Steady-state training speed: the JAX engine (jit, vmap, bf16) vs PyTorch.

For each model (``cnn_scratch`` on MNIST-shaped 28×28×1 images, ``resnet18``
on CIFAR-shaped 32×32×3 images, 10 classes, random data; ``lstm_sentiment``
and ``gpt_small`` are reported as "not implemented yet" while they are not in
the model registry) this times, in one process, on the same device, from the
same initial weights, with SGD (momentum 0.9, learning rate 0.01, constant)
on the mean cross-entropy:

* ``jax_step``: the engine's own train step (``jax.jit(Program.train_step,
  donate_argnums=0)``, compiled ahead of time) called ``--steps`` times on
  one fixed, pre-made, device-resident batch;
* ``jax_epoch``: the engine's scanned epoch (``Program.train_epoch``, one
  ``lax.scan`` of ``--steps`` steps) over a device-resident uint8 dataset of
  ``steps × batch`` images: the shuffle, the gathers and the normalisation are
  inside the timed region, as in a real run (augmentation is off);
* ``jax_vmap`` (``--vmap-runs R``, default 16, 0 = off): the same scanned
  epoch of a ``Program(..., runs=R)``: R runs trained together in one
  compiled program (``jax.vmap`` over a leading run axis), sharing the data,
  each with its own initialisation, data-order and step keys and its own
  (traced) learning rate, all 0.01. Reported as program steps/s and as
  *run-steps/s* = R × steps / time; ``vmap_speedup`` = run-steps/s ÷
  ``jax_epoch`` steps/s, the gain over training the R runs one after another;
* ``jax_bf16`` (off with ``--no-bf16``): the single-run scanned epoch with
  ``Hyper(precision="bf16")``: the model computes in bfloat16, parameters,
  optimizer state and loss stay float32;
* ``torch_eager``: the identical PyTorch model (``optbench_jax.reference``),
  ``model.train()``, ``zero_grad / forward / backward / step`` on the same
  fixed batch as ``jax_step`` (NCHW);
* ``torch_compile`` (``--torch-compile``): the same with
  ``torch.compile(model)``.

Each steps/s figure is ``steps / time`` for the median of ``--repeats``
timed runs of ``--steps`` steps, after a warm-up that compiles (JAX step: one
call of the AOT-compiled step; JAX epochs: compiled ahead of time, not run;
PyTorch: ``--warmup`` steps). examples/s = steps/s × batch (vmap: run-steps/s
× batch). JAX timings end with ``block_until_ready``; PyTorch timings with
``torch.cuda.synchronize()`` on a GPU. The loss of the first step on the
fixed batch is printed for both sides, as a check that they start from the
same model; the mean loss of the first timed epoch is printed for the fp32,
bf16 and vmapped epochs.

Model FLOPs utilisation (MFU): FLOPs per step are XLA's count
(``cost_analysis()["flops"]``) of the compiled single-run train step, i.e.
the whole step — forward, backward, optimizer update, gradient norm and
metrics — not an analytic count of the model's multiply-adds. (The count of
the scanned epoch is recorded too, but XLA's cost analysis counts a loop body
once, not once per iteration, so it is not divided by the steps.) Achieved
FLOP/s = FLOPs/step × the ``jax_epoch`` (``jax_bf16``) steps/s; MFU = achieved
÷ the device's dense peak from ``PEAK_FLOPS`` (NVIDIA datasheets): fp32 MFU
against the TF32 tensor-core peak when JAX's default matmul precision lets
XLA use TF32 (the GPU default), else against the plain FP32 peak; bf16 MFU
against the BF16 tensor-core peak, with the fp32 step's FLOP count. On a CPU
or an unlisted device MFU is unavailable (``null``).

With ``--project`` (default) the script projects the training time of the
part of the thesis campaign (8 tasks × 2 datasets × 2 models × 16 optimizers ×
20 epochs × 3 seeds) that it can measure: image classification on MNIST
(60,000 training images) and CIFAR-10 (50,000) with ``cnn_scratch`` and
``resnet18``, from the measured rates; see ``project`` and
``benchmarks/README.md`` for the assumptions, which are also printed.

Usage::

  JAX_PLATFORMS=cpu python benchmarks/step_speed.py --models cnn_scratch \\
      --batch-size 32 --steps 3 --repeats 1 --vmap-runs 4      # CPU, quick
  python benchmarks/step_speed.py --device cuda --steps 100 --repeats 5 \\
      --torch-compile --json step_speed.json                    # GPU

On a CPU ``resnet18`` at batch 128 takes tens of seconds per step (about 45 s
on 2 shared cores), and this script times it up to six ways; for a CPU check
use ``--models cnn_scratch`` or a small ``--batch-size``.

JAX runs on its default backend (``JAX_PLATFORMS=cpu`` forces the CPU);
``--device`` picks PyTorch's. GPU memory preallocation of JAX is turned off
(``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set) so that both frameworks
fit on one GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from optbench_jax import models, tasks, transforms  # noqa: E402
from optbench_jax.data.base import DatasetInfo  # noqa: E402
from optbench_jax.models import convert  # noqa: E402
from optbench_jax.reference import torch_models  # noqa: E402
from optbench_jax.train import optimizer as optimizer_lib  # noqa: E402
from optbench_jax.train.program import Hyper, Program  # noqa: E402

# Models this script knows how to benchmark (input shape of its random data).
SHAPES = {"cnn_scratch": (28, 28, 1), "resnet18": (32, 32, 3)}
# Models the issue asks for that the package does not have yet: reported as
# "not implemented yet" unless registered (and given a recipe above).
PLANNED = ("lstm_sentiment", "gpt_small")
KNOWN = tuple(SHAPES) + PLANNED
NUM_CLASSES = 10
OPTIMIZER = "sgd_momentum"   # optax.sgd(lr, momentum=0.9) in the registry
LEARNING_RATE = 0.01
MOMENTUM = 0.9

# Dense (no sparsity) peak FLOP/s, from NVIDIA's datasheets: "NVIDIA H100
# Tensor Core GPU" datasheet, H100 SXM column (FP32 67 TFLOPS; TF32 989 and
# BF16 1,979 TFLOPS are quoted with 2:4 sparsity, so dense is half); "NVIDIA
# H200 Tensor Core GPU" datasheet, H200 SXM column (the same figures as H100
# SXM); "NVIDIA A100 Tensor Core GPU" datasheet (FP32 19.5, TF32 156, BF16
# 312 TFLOPS dense; PCIe and SXM alike). Matched on jax.devices()[0]
# .device_kind; anything else (CPU, H100 PCIe/NVL, H200 NVL, GH200, ...) has
# no entry and gets MFU null rather than a guess.
PEAK_FLOPS = {
    "H100 SXM": {"fp32": 67e12, "tf32": 494e12, "bf16": 989e12},
    "H200 SXM": {"fp32": 67e12, "tf32": 494e12, "bf16": 989e12},
    "A100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12},
}
PEAK_PATTERNS = (  # (regex on device_kind minus "NVIDIA ", PEAK_FLOPS key)
    (r"^H100 (80GB HBM3|SXM)", "H100 SXM"),
    (r"^H200( SXM|$)", "H200 SXM"),
    (r"^A100[- ]", "A100"),
)

# The thesis campaign: 8 tasks × 2 datasets × 2 models × 16 optimizers,
# 20 epochs each, 3 seeds.
CAMPAIGN = {"tasks": 8, "datasets_per_task": 2, "models_per_task": 2,
            "optimizers": 16, "epochs": 20, "seeds": 3}
# The part this script can measure: (task, dataset, training examples,
# input shape) × the models of that task.
PROJECTED_TASK = "image_classification"
PROJECTED_DATASETS = (("mnist", 60_000, (28, 28, 1)),
                      ("cifar10", 50_000, (32, 32, 3)))
PROJECTED_MODELS = ("cnn_scratch", "resnet18")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=",".join(KNOWN),
                      help="comma-separated: " + ", ".join(KNOWN)
                      + " (the last two: reported as not implemented while "
                        "they are not in the model registry)")
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
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default=None, help="also write results here")
  args = parser.parse_args(argv)
  args.models = [m.strip() for m in args.models.split(",") if m.strip()]
  for m in args.models:
    if m not in KNOWN:
      parser.error(f"unknown model {m!r}; valid: {', '.join(KNOWN)}")
  if args.device == "cuda" and not torch.cuda.is_available():
    parser.error("--device cuda but torch.cuda.is_available() is False")
  if min(args.steps, args.repeats, args.batch_size) < 1:
    parser.error("--steps, --repeats and --batch-size must be >= 1")
  if args.vmap_runs < 0:
    parser.error("--vmap-runs must be >= 0")
  return args


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "cpu"


def device_info(args) -> dict:
  jax_device = jax.devices()[0]
  if args.device == "cuda":
    torch_name = torch.cuda.get_device_name()
  else:
    torch_name = cpu_name()
  return {
      "jax_platform": jax_device.platform,
      "jax_device_kind": jax_device.device_kind,
      "torch_device": args.device, "torch_device_name": torch_name,
      "torch_threads": torch.get_num_threads(),
      "cpu_count": os.cpu_count(), "host": platform.node(),
      "versions": {"jax": jax.__version__, "torch": torch.__version__,
                   "python": platform.python_version()},
      "torch_cudnn_benchmark": torch.backends.cudnn.benchmark,
      "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
      "torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
      "jax_default_matmul_precision": str(
          jax.config.jax_default_matmul_precision),
  }


def median_rate(times, steps) -> float:
  return steps / statistics.median(times)


def error_text(e: BaseException) -> str:
  return f"{type(e).__name__}: {e}"[:500]


# -- FLOPs and peaks ---------------------------------------------------------
def xla_flops(analysis):
  """``flops`` of a ``cost_analysis()`` (a dict, or a list of one dict)."""
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  flops = float(analysis["flops"])
  return flops if flops > 0 else None


def memory_stats(compiled) -> dict:
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  keys = ("argument_size_in_bytes", "output_size_in_bytes",
          "alias_size_in_bytes", "temp_size_in_bytes")
  return {k: int(getattr(stats, k)) for k in keys if hasattr(stats, k)}


def peak_flops(device: dict):
  """(PEAK_FLOPS key, its entry) for the JAX device, or (None, None)."""
  if device["jax_platform"] != "gpu":
    return None, None
  kind = re.sub(r"^NVIDIA\s+", "", device["jax_device_kind"].strip())
  for pattern, key in PEAK_PATTERNS:
    if re.search(pattern, kind, flags=re.IGNORECASE):
      return key, PEAK_FLOPS[key]
  return None, None


def fp32_peak_kind(device: dict) -> str:
  """Which peak fp32 MFU is measured against: "tf32" or "fp32".

  JAX's default matmul precision on an Ampere/Hopper GPU lets XLA run
  float32 matmuls and convolutions on TF32 tensor cores; only
  ``jax_default_matmul_precision`` = highest / float32 forces true FP32.
  """
  precision = device["jax_default_matmul_precision"].lower()
  return "fp32" if precision in ("highest", "float32") else "tf32"


def mfu(result: dict, device: dict) -> dict:
  """Model FLOPs utilisation of the fp32 and bf16 scanned epochs."""
  flops = result.get("xla_flops_per_step")
  key, peaks = peak_flops(device)
  fp32_kind = fp32_peak_kind(device)
  epoch_flops = result.get("xla_flops_epoch_compiled")
  out = {"flops_per_step": flops,
         "flops_source": result.get("xla_flops_source"),
         "flops_note": "XLA cost_analysis() of the whole compiled train step "
                       "(forward, backward, optimizer update, gradient norm, "
                       "metrics), not an analytic model count; bf16 MFU uses "
                       "the same (fp32 step's) count",
         # ~1: XLA counted the scan body once; ~steps: once per iteration.
         "epoch_flops_over_step_flops": (epoch_flops / flops
                                         if epoch_flops and flops else None),
         "peak_table_entry": key, "fp32_mfu_against": fp32_kind,
         "fp32_peak_flops": peaks[fp32_kind] if peaks else None,
         "bf16_peak_flops": peaks["bf16"] if peaks else None}
  for name, rate_key, peak in (
      ("fp32", "jax_epoch_steps_per_s", out["fp32_peak_flops"]),
      ("bf16", "jax_bf16_steps_per_s", out["bf16_peak_flops"])):
    rate = result.get(rate_key)
    achieved = flops * rate if flops and rate else None
    out[f"{name}_achieved_flops_per_s"] = achieved
    out[f"{name}_mfu"] = achieved / peak if achieved and peak else None
  if not peaks:
    out["unavailable"] = (
        f"no peak FLOP/s for {device['jax_platform']} device "
        f"{device['jax_device_kind']!r} in PEAK_FLOPS")
  elif not flops:
    out["unavailable"] = "XLA reported no FLOP count for the step"
  return out


# -- JAX ---------------------------------------------------------------------
def make_program(name, batch_size, steps, info, *, runs=None,
                 precision="fp32"):
  task = tasks.get("image_classification")
  model = task.build_model(name, info)
  tx = optimizer_lib.build(OPTIMIZER, LEARNING_RATE,
                           hyperparameters={"momentum": MOMENTUM})
  hyper = Hyper(batch_size=batch_size, eval_batch_size=batch_size,
                total_steps=max(steps, 1), scheduler="none",
                precision=precision)
  return task, Program(task, model, info, transforms.get(OPTIMIZER), tx,
                       hyper, runs=runs)


def make_init(program, example, seed, runs=None):
  """``() -> TrainState`` with the jitted ``Program.init`` (new API).

  ``example`` is one ``program.example(...)`` object, reused on every call
  (it is a static argument, hashed by identity: a new one recompiles).
  """
  if runs is None:
    return lambda: program.init(jax.random.key(seed), example,
                                jnp.float32(LEARNING_RATE))
  keys = jax.random.split(jax.random.key(seed), runs)
  lrs = jnp.full((runs,), LEARNING_RATE, jnp.float32)
  return lambda: program.init(keys, example, lrs)


def time_jax_step(program, init, batch, args):
  """(times, initial loss, XLA FLOPs of one step) of the jitted step."""
  step = jax.jit(program.train_step, donate_argnums=0)
  key = jax.random.key(args.seed + 1)
  state = init()
  lowered = step.lower(state, batch, key)
  compiled = lowered.compile()
  flops = {"compiled": xla_flops(compiled.cost_analysis()),
           "lowered": xla_flops(lowered.cost_analysis())}
  state, metrics = compiled(state, batch, key)   # warm-up
  loss0 = float(metrics["loss_sum"] / metrics["count"])
  jax.block_until_ready(state)
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = compiled(state, batch, key)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return times, loss0, flops


def time_jax_epoch(program, init, data, args, runs=None):
  """(times, mean loss of the first timed epoch, compiled executable)."""
  state = init()
  key = jax.random.key(args.seed + 2)
  keys = (lambda i: jax.random.fold_in(key, i)) if runs is None else (
      lambda i: jax.random.split(jax.random.fold_in(key, i), runs))
  # Compiled ahead of time: the same executable as ``program.train_epoch``
  # (same jit, same donation), without running a whole warm-up epoch.
  epoch_keys = jax.block_until_ready([keys(i) for i in range(args.repeats)])
  epoch = program.train_epoch.lower(state, data, epoch_keys[0]).compile()
  times, loss = [], None
  for i in range(args.repeats):
    start = time.perf_counter()
    state, metrics = epoch(state, data, epoch_keys[i])
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    if loss is None:   # runs: the mean over runs
      loss = float(jnp.mean(metrics["loss_sum"] / metrics["count"]))
  return times, loss, epoch


# -- PyTorch -----------------------------------------------------------------
def time_torch(model, x, y, args):
  """(times, initial loss) of ``steps`` eager training steps."""
  sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE,
                        momentum=MOMENTUM)
  loss_fn = torch.nn.CrossEntropyLoss()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss

  loss0 = None
  for i in range(max(args.warmup, 1)):
    loss = step()
    if i == 0:
      loss0 = float(loss.detach().to("cpu"))
  sync()
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      step()
    sync()
    times.append(time.perf_counter() - start)
  return times, loss0


def not_implemented(name) -> dict:
  if name in models.MODELS:
    reason = ("registered in optbench_jax.models, but this script has no "
              "benchmark recipe (input data, PyTorch twin) for it yet")
  else:
    reason = "not in the model registry (optbench_jax.models)"
  return {"model": name, "status": "not implemented yet", "reason": reason}


def bench_model(name, args):
  if name not in SHAPES or name not in models.MODELS:
    result = not_implemented(name)
    print(f"[{name}] not implemented yet: {result['reason']}", flush=True)
    return result
  shape = SHAPES[name]
  b, n = args.batch_size, args.batch_size * args.steps
  rng = np.random.RandomState(args.seed)
  images = rng.randint(0, 256, (n, *shape), dtype=np.uint8)
  labels = rng.randint(0, NUM_CLASSES, n).astype(np.int32)
  unit = images.astype(np.float32) / 255.0
  info = DatasetInfo(
      name="random", task="image_classification", num_classes=NUM_CLASSES,
      input_shape=shape, source="random",
      extra={"augmentation": "none"},
      mean=tuple(float(m) for m in unit.mean(axis=(0, 1, 2))),
      std=tuple(float(s) for s in unit.std(axis=(0, 1, 2))))
  del unit
  task, program = make_program(name, b, args.steps, info)
  train_arrays = {"image": images, "label": labels}

  # One fixed batch, preprocessed (normalised) once, on the device.
  batch = task.preprocess(
      {"image": jnp.asarray(images[:b]), "label": jnp.asarray(labels[:b]),
       "mask": jnp.ones((b,), jnp.float32)}, info)
  batch = jax.block_until_ready(batch)
  data = jax.block_until_ready({"image": jax.device_put(images),
                                "label": jax.device_put(labels)})
  init = make_init(program, program.example(train_arrays), args.seed)
  state0 = init()
  variables = {"params": state0.params, **state0.model_state}
  rules = convert.mapping(name, **(
      {"input_shape": shape} if name == "cnn_scratch" else {}))
  state_dict = convert.flax_to_torch(jax.device_get(variables), rules)
  del state0, variables

  result = {"model": name, "status": "measured", "input_shape": list(shape),
            "batch_size": b, "steps": args.steps, "repeats": args.repeats,
            "times_s": {}, "memory_bytes": {}}

  print(f"[{name}] JAX step ...", flush=True)
  times, result["initial_loss_jax"], flops = time_jax_step(
      program, init, batch, args)
  result["times_s"]["jax_step"] = times
  result["jax_step_steps_per_s"] = median_rate(times, args.steps)
  result["xla_flops_per_step"] = flops["compiled"] or flops["lowered"]
  result["xla_flops_source"] = (
      "compiled train step" if flops["compiled"] else
      "lowered (unoptimised) train step" if flops["lowered"] else None)
  result["xla_flops_per_step_lowered"] = flops["lowered"]

  print(f"[{name}] JAX scanned epoch ...", flush=True)
  times, result["epoch_loss_jax"], epoch = time_jax_epoch(
      program, init, data, args)
  result["times_s"]["jax_epoch"] = times
  result["jax_epoch_steps_per_s"] = median_rate(times, args.steps)
  # XLA counts a while-loop body once: this is about one step, not `steps`.
  result["xla_flops_epoch_compiled"] = xla_flops(epoch.cost_analysis())
  result["memory_bytes"]["jax_epoch"] = memory_stats(epoch)
  del epoch, init

  if not args.no_bf16:
    print(f"[{name}] JAX scanned epoch, bf16 ...", flush=True)
    try:
      _, bf16 = make_program(name, b, args.steps, info, precision="bf16")
      times, result["epoch_loss_jax_bf16"], epoch = time_jax_epoch(
          bf16, make_init(bf16, bf16.example(train_arrays), args.seed),
          data, args)
      result["times_s"]["jax_bf16"] = times
      result["jax_bf16_steps_per_s"] = median_rate(times, args.steps)
      result["memory_bytes"]["jax_bf16"] = memory_stats(epoch)
      del epoch, bf16
    except Exception as e:  # pylint: disable=broad-except
      result["jax_bf16_error"] = error_text(e)
      print(f"[{name}] bf16 failed: {result['jax_bf16_error']}", flush=True)

  if args.vmap_runs:
    runs = args.vmap_runs
    print(f"[{name}] JAX scanned epoch, vmap over {runs} runs ...",
          flush=True)
    try:
      _, vmapped = make_program(name, b, args.steps, info, runs=runs)
      times, result["epoch_loss_jax_vmap"], epoch = time_jax_epoch(
          vmapped,
          make_init(vmapped, vmapped.example(train_arrays), args.seed, runs),
          data, args, runs=runs)
      rate = median_rate(times, args.steps)
      result.update({
          "vmap_runs": runs, "jax_vmap_steps_per_s": rate,
          "jax_vmap_run_steps_per_s": runs * rate,
          "vmap_speedup": runs * rate / result["jax_epoch_steps_per_s"]})
      result["times_s"]["jax_vmap"] = times
      result["memory_bytes"]["jax_vmap"] = memory_stats(epoch)
      del epoch, vmapped
    except Exception as e:  # pylint: disable=broad-except
      result["vmap_runs"] = runs
      result["jax_vmap_error"] = error_text(e)
      print(f"[{name}] vmap failed: {result['jax_vmap_error']}", flush=True)
  del data

  device = torch.device(args.device)
  x = torch.from_numpy(np.asarray(batch["image"]).transpose(0, 3, 1, 2)
                       .copy()).to(device)
  y = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64)).to(device)

  def twin():
    model = torch_models.build(name, NUM_CLASSES, shape)
    return torch_models.load_numpy_state_dict(model, state_dict).to(device)

  print(f"[{name}] PyTorch eager ...", flush=True)
  times, result["initial_loss_torch"] = time_torch(twin(), x, y, args)
  result["times_s"]["torch_eager"] = times
  result["torch_eager_steps_per_s"] = median_rate(times, args.steps)
  if args.torch_compile:
    print(f"[{name}] torch.compile ...", flush=True)
    try:
      times, _ = time_torch(torch.compile(twin()), x, y, args)
      result["torch_compile_steps_per_s"] = median_rate(times, args.steps)
      result["times_s"]["torch_compile"] = times
    except Exception as e:  # pylint: disable=broad-except
      result["torch_compile_error"] = error_text(e)
      print(f"[{name}] torch.compile failed: {result['torch_compile_error']}",
            flush=True)

  # examples/s and ratios.
  for col in ("jax_step", "jax_epoch", "jax_bf16", "torch_eager",
              "torch_compile"):
    if f"{col}_steps_per_s" in result:
      result[f"{col}_examples_per_s"] = result[f"{col}_steps_per_s"] * b
  if "jax_vmap_run_steps_per_s" in result:
    result["jax_vmap_examples_per_s"] = result["jax_vmap_run_steps_per_s"] * b
  eager = result["torch_eager_steps_per_s"]
  result["jax_step_over_eager"] = result["jax_step_steps_per_s"] / eager
  result["jax_epoch_over_eager"] = result["jax_epoch_steps_per_s"] / eager
  if "torch_compile_steps_per_s" in result:
    result["jax_epoch_over_compile"] = (result["jax_epoch_steps_per_s"]
                                        / result["torch_compile_steps_per_s"])
  if "jax_bf16_steps_per_s" in result:
    result["bf16_speedup"] = (result["jax_bf16_steps_per_s"]
                              / result["jax_epoch_steps_per_s"])
  return result


# -- campaign projection -----------------------------------------------------
def project(results, args) -> dict:
  """Projected training time of the measurable part of the thesis campaign.

  Per (dataset, model) of image classification: 16 optimizers × 3 seeds =
  48 runs of 20 epochs of ceil(train examples / batch) steps, at the measured
  rate of the model (at its own benchmark input shape, whatever the
  dataset's). Sequential: every run alone, at ``jax_epoch`` steps/s.
  Vmapped: one program per optimizer with its 3 seeds as runs (different
  optimizers cannot share a program); with R = ``--vmap-runs`` ≥ 3 the time
  lies between ``lower`` (a 3-run program reaches the measured R-run
  run-steps/s; run throughput grows with the runs, so this is optimistic)
  and ``upper`` (a 3-run program step takes as long as an R-run one;
  pessimistic, it does less work).
  """
  c = CAMPAIGN
  seeds, optimizers, epochs = c["seeds"], c["optimizers"], c["epochs"]
  runs_per_combo = optimizers * seeds
  total_runs = (c["tasks"] * c["datasets_per_task"] * c["models_per_task"]
                * runs_per_combo)
  measured = {r["model"]: r for r in results if r.get("status") == "measured"}
  batch = args.batch_size
  rows = []
  for dataset, n, shape in PROJECTED_DATASETS:
    for name in PROJECTED_MODELS:
      row = {"task": PROJECTED_TASK, "dataset": dataset,
             "train_examples": n, "dataset_input_shape": list(shape),
             "model": name, "runs": runs_per_combo}
      r = measured.get(name)
      if r is None:
        row["status"] = "not projected: model not measured in this run"
        rows.append(row)
        continue
      steps_per_epoch = math.ceil(n / batch)
      run_steps = epochs * steps_per_epoch
      row.update({
          "status": "projected", "batch_size": batch,
          "rate_input_shape": r["input_shape"],
          "rate_shape_matches_dataset": r["input_shape"] == list(shape),
          "steps_per_epoch": steps_per_epoch, "steps_per_run": run_steps,
          "sequential_s": runs_per_combo * run_steps
                          / r["jax_epoch_steps_per_s"]})
      if "jax_vmap_run_steps_per_s" in r:
        vmap_runs = r["vmap_runs"]
        row["vmap_programs"] = optimizers
        row["vmap_runs_per_program"] = seeds
        row["vmap_measured_runs"] = vmap_runs
        estimate = runs_per_combo * run_steps / r["jax_vmap_run_steps_per_s"]
        if vmap_runs >= seeds:
          row["vmapped_lower_s"] = estimate
          row["vmapped_upper_s"] = (optimizers * run_steps
                                    / r["jax_vmap_steps_per_s"])
        else:
          row["vmapped_estimate_s"] = estimate
      rows.append(row)
  def total(selected):
    done = [r for r in selected if r["status"] == "projected"]
    out = {"runs": sum(r["runs"] for r in done),
           "complete": len(done) == len(selected)}
    for key in ("sequential_s", "vmapped_lower_s", "vmapped_upper_s",
                "vmapped_estimate_s"):
      if done and all(key in r for r in done):
        out[key] = sum(r[key] for r in done)
    return out

  totals = total(rows)
  matched = total([r for r in rows if (r["dataset"], r["model"]) in (
      ("mnist", "cnn_scratch"), ("cifar10", "resnet18"))])
  registered = set(tasks.TASKS.names())
  other_tasks = c["tasks"] - len({PROJECTED_TASK} & registered)
  other_runs = (other_tasks * c["datasets_per_task"] * c["models_per_task"]
                * runs_per_combo)
  assumptions = [
      f"campaign: {c['tasks']} tasks x {c['datasets_per_task']} datasets x "
      f"{c['models_per_task']} models x {optimizers} optimizers x {epochs} "
      f"epochs x {seeds} seeds = {total_runs} runs; projected here: "
      f"{PROJECTED_TASK} on MNIST (60,000 train) and CIFAR-10 (50,000 "
      f"train) x cnn_scratch, resnet18 = {len(rows) * runs_per_combo} runs",
      "training steps only, at the measured steady-state rates: no "
      "evaluation, compilation, data loading, checkpoints or host work "
      "between epochs; the full training splits (the engine's 10 % "
      "validation hold-out is ignored)",
      f"batch {batch} (this run's --batch-size) for every run",
      "optimizer cost differences ignored: every optimizer is assumed to "
      "step as fast as the measured SGD+momentum (second-order and "
      "two-pass optimizers are slower)",
      "each model's rate is measured at its own benchmark input shape "
      "(cnn_scratch 28x28x1 = MNIST, resnet18 32x32x3 = CIFAR-10) and used "
      "for both datasets: the combinations marked * (cnn_scratch on "
      "CIFAR-10, resnet18 on MNIST) use a rate measured at the other shape; "
      "'total' covers all 2 datasets x 2 models, 'matched pairs' only "
      "cnn_scratch/MNIST and resnet18/CIFAR-10 (each at its measured shape)",
      "sequential: the 48 runs of a (dataset, model) one after another at "
      "the single-run scanned-epoch rate (jax_epoch)",
      "vmapped: the 48 runs grouped by optimizer, one program of 3 seeds per "
      "optimizer (16 programs); only the --vmap-runs R program was measured: "
      "lower = 3-run programs reach the measured R-run run-steps/s "
      "(optimistic), upper = a 3-run program step takes as long as the "
      "measured R-run program step (pessimistic; needs R >= 3); with R < 3 "
      "a single estimate at the R-run run-steps/s",
  ]
  return {"campaign": dict(c, total_runs=total_runs), "rows": rows,
          "totals": totals, "totals_matched_pairs": matched,
          "assumptions": assumptions,
          "not_projected": [{
              "what": f"the {other_tasks} other tasks of the campaign "
                      f"({other_runs} runs)",
              "reason": "not projected: models not implemented"}]}


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


def format_projection(projection) -> str:
  c = projection["campaign"]
  lines = [f"Projected training time of the thesis campaign "
           f"({c['total_runs']} runs; measurable part only):"]
  head = (f"  {'dataset':<8} {'model':<12} {'steps/ep':>8} {'steps/run':>9} "
          f"{'sequential':>11} {'vmapped, 3 seeds/program':>26}")
  lines += [head, "  " + "-" * (len(head) - 2)]
  for r in projection["rows"]:
    if r["status"] != "projected":
      lines.append(f"  {r['dataset']:<8} {r['model']:<12} {r['status']}")
      continue
    mark = "" if r["rate_shape_matches_dataset"] else "*"
    if "vmapped_lower_s" in r:
      vmapped = (f"{duration(r['vmapped_lower_s'])} - "
                 f"{duration(r['vmapped_upper_s'])}")
    elif "vmapped_estimate_s" in r:
      vmapped = f"~{duration(r['vmapped_estimate_s'])}"
    else:
      vmapped = "not measured"
    lines.append(f"  {r['dataset']:<8} {r['model'] + mark:<12} "
                 f"{r['steps_per_epoch']:>8} {r['steps_per_run']:>9} "
                 f"{duration(r['sequential_s']):>11} {vmapped:>26}")
  for label, t in (("total", projection["totals"]),
                   ("matched pairs", projection["totals_matched_pairs"])):
    if "sequential_s" not in t:
      continue
    if "vmapped_lower_s" in t:
      vmapped = (f"{duration(t['vmapped_lower_s'])} - "
                 f"{duration(t['vmapped_upper_s'])}")
    elif "vmapped_estimate_s" in t:
      vmapped = f"~{duration(t['vmapped_estimate_s'])}"
    else:
      vmapped = "-"
    partial = "" if t["complete"] else ", partial"
    lines.append(f"  {label + ' (' + str(t['runs']) + ' runs' + partial + ')':<40}"
                 f" {duration(t['sequential_s']):>11} {vmapped:>26}")
  if any(r.get("rate_shape_matches_dataset") is False
         for r in projection["rows"]):
    lines.append("  * rate measured at the model's own input shape, not "
                 "this dataset's")
  for item in projection["not_projected"]:
    lines.append(f"  {item['what']}: {item['reason']}")
  lines.append("  assumptions:")
  lines += [f"   - {a}" for a in projection["assumptions"]]
  return "\n".join(lines)


# -- output ------------------------------------------------------------------
def cell(value, width=9) -> str:
  if value is None:
    return f"{'-':>{width}}"
  if isinstance(value, str):
    return f"{value:>{width}}"
  return f"{value:{width}.4g}"


def format_table(results, device, args) -> str:
  vmap_title = f"JAX vmap x{args.vmap_runs}" if args.vmap_runs else "JAX vmap"
  groups = [("jax_step", "JAX step"), ("jax_epoch", "JAX epoch"),
            ("jax_vmap", vmap_title), ("jax_bf16", "JAX bf16"),
            ("torch_eager", "torch eager"), ("torch_compile", "torch.compile")]
  ratios = [("jax_epoch_over_eager", "epoch/"), ("vmap_speedup", "vmap"),
            ("mfu_fp32", "MFU"), ("mfu_bf16", "MFU")]
  ratio_sub = ["eager", "speedup", "fp32", "bf16"]
  top = f"{'':<14}" + "".join(f" {t:^19}" for _, t in groups) + "".join(
      f" {t:>7}" for _, t in ratios)
  sub = f"{'model':<14}" + "".join(
      f" {'run-st/s' if g == 'jax_vmap' else 'steps/s':>9} {'ex/s':>9}"
      for g, _ in groups) + "".join(f" {s:>7}" for s in ratio_sub)

  def why_missing(r, group):
    if f"{group}_error" in r:
      return "failed"
    if group == "jax_vmap" and not args.vmap_runs:
      return "off"
    if group == "jax_bf16" and args.no_bf16:
      return "off"
    if group == "torch_compile" and not args.torch_compile:
      return "off"
    return None

  fp32_kind = fp32_peak_kind(device)
  if peak_flops(device)[0] is None:
    mfu_note = (f"MFU unavailable ('-'): no peak FLOP/s for "
                f"{device['jax_platform']} device {device['jax_device_kind']!r}")
  else:
    mfu_note = (f"MFU fp32 against the {fp32_kind.upper()} peak, MFU bf16 "
                f"against the BF16 peak of {peak_flops(device)[0]}")
  lines = [f"JAX: {device['jax_platform']} ({device['jax_device_kind']}); "
           f"PyTorch: {device['torch_device']} "
           f"({device['torch_device_name']}, "
           f"{device['torch_threads']} threads); batch {args.batch_size}, "
           f"{args.steps} steps x {args.repeats} repeats",
           "median steps/s and examples/s, higher is better; vmap: run-steps/s"
           " = runs x steps/s, ex/s = runs x batch x steps/s; vmap speedup = "
           f"vmap run-steps/s / JAX epoch steps/s; {mfu_note}",
           top, sub, "-" * len(sub)]
  for r in results:
    if r.get("status") != "measured":
      lines.append(f"{r['model']:<14} {r['status']}: {r['reason']}")
      continue
    cells = []
    for group, _ in groups:
      rate_key = ("jax_vmap_run_steps_per_s" if group == "jax_vmap"
                  else f"{group}_steps_per_s")
      if rate_key in r:
        cells += [cell(r[rate_key]), cell(r[f"{group}_examples_per_s"])]
      else:
        cells += [cell(why_missing(r, group))] * 2
    m = r.get("mfu", {})
    cells += [cell(r.get("jax_epoch_over_eager"), 7),
              cell(r.get("vmap_speedup"), 7),
              cell(m.get("fp32_mfu"), 7), cell(m.get("bf16_mfu"), 7)]
    lines.append(f"{r['model']:<14} " + " ".join(cells))
  measured = [r for r in results if r.get("status") == "measured"]
  if measured:
    lines.append("first-step loss (same weights, same batch): " + "; ".join(
        f"{r['model']} JAX {r['initial_loss_jax']:.6f} / "
        f"torch {r['initial_loss_torch']:.6f}" for r in measured))
    losses = []
    for r in measured:
      parts = [f"fp32 {r['epoch_loss_jax']:.4f}"]
      if "epoch_loss_jax_bf16" in r:
        parts.append(f"bf16 {r['epoch_loss_jax_bf16']:.4f}")
      if "epoch_loss_jax_vmap" in r:
        parts.append(f"vmap (mean of {r['vmap_runs']} runs, own inits) "
                     f"{r['epoch_loss_jax_vmap']:.4f}")
      losses.append(f"{r['model']} " + ", ".join(parts))
    lines.append("mean loss of the first timed epoch: " + "; ".join(losses))
    for r in measured:
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
        text += f"; MFU unavailable: {m['unavailable']}"
      else:
        text += (f"; peaks ({m['peak_table_entry']}): {fp32_kind} "
                 f"{m['fp32_peak_flops']:.4g}, bf16 "
                 f"{m['bf16_peak_flops']:.4g} FLOP/s")
      lines.append(text)
  return "\n".join(lines)


def command_line(argv) -> str:
  env = " ".join(f"{k}={shlex.quote(os.environ[k])}"
                 for k in ("JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "XLA_FLAGS")
                 if k in os.environ)
  cmd = shlex.join(["python", sys.argv[0]] + list(argv))
  return f"{env} {cmd}" if env else cmd


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.device == "cuda":
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
  torch.manual_seed(args.seed)
  device = device_info(args)
  results = []
  for name in args.models:
    result = bench_model(name, args)
    if result.get("status") == "measured":
      result["mfu"] = mfu(result, device)
    results.append(result)
  print(format_table(results, device, args))
  projection = project(results, args) if args.project else None
  if projection:
    print(format_projection(projection))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": device, "config": {
          "batch_size": args.batch_size, "steps": args.steps,
          "repeats": args.repeats, "warmup": args.warmup,
          "vmap_runs": args.vmap_runs, "bf16": not args.no_bf16,
          "torch_compile": args.torch_compile, "seed": args.seed,
          "optimizer": f"SGD(lr={LEARNING_RATE}, momentum={MOMENTUM})",
          "command": command_line(argv),
          "environment": {k: os.environ[k] for k in (
              "JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_FLAGS",
              "CUDA_VISIBLE_DEVICES") if k in os.environ},
      }, "results": results, "projection": projection}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
