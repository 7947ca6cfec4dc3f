"""The device description, its peak FLOP/s and model FLOPs utilisation.

MFU: FLOPs per step are XLA's count (``cost_analysis()["flops"]``) of the
compiled single-run train step, i.e. the whole step — forward, backward,
optimizer update, gradient norm and metrics — not an analytic count of the
model's multiply-adds. (The count of the scanned epoch is recorded too, but
XLA's cost analysis counts a loop body once, not once per iteration, so it is
not divided by the steps.) Achieved FLOP/s = FLOPs/step × the ``jax_epoch``
(``jax_bf16``) steps/s; MFU = achieved ÷ the device's dense peak from
``PEAK_FLOPS``: fp32 MFU against the TF32 tensor-core peak when JAX's default
matmul precision lets XLA use TF32 (the GPU default), else against the plain
FP32 peak; bf16 MFU against the BF16 tensor-core peak, with the fp32 step's
FLOP count. On a CPU or an unlisted device MFU is unavailable (``None``,
printed ``n/a``: a CPU has no reliable peak) unless ``--peak-flops`` gives
the peak; the achieved FLOP/s are reported in every case.

For the token models (``text_generation``: decoder-only) the analytic
estimate 6 × parameters × token positions per step (Kaplan et al. 2020: 2
FLOPs per parameter per token forward, 4 backward; attention's quadratic
term and the optimizer left out; padding included, as it is computed) is
recorded beside XLA's count as a cross-check; MFU uses XLA's count.
"""
from __future__ import annotations

import os
import platform
import re

import jax
import torch

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
# MFU columns: (name, the steps/s it is computed from, the peak it uses).
MFU_RATES = (("fp32", "jax_epoch_steps_per_s", "fp32_peak_flops"),
             ("bf16", "jax_bf16_steps_per_s", "bf16_peak_flops"))


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "cpu"


def parse_peak_flops(text):
  """``--peak-flops FP32[,BF16]`` -> {"fp32", "tf32", "bf16"} FLOP/s (one
  value: the same peak for both), or None."""
  if not text:
    return None
  values = [float(v) for v in str(text).split(",")]
  if len(values) not in (1, 2) or min(values) <= 0:
    raise ValueError("--peak-flops takes FP32[,BF16], positive FLOP/s")
  return {"fp32": values[0], "tf32": values[0], "bf16": values[-1]}


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
      "peak_flops_given": parse_peak_flops(getattr(args, "peak_flops", None)),
  }


def peak_flops(device: dict):
  """(PEAK_FLOPS key, its entry) for the JAX device, or (None, None);
  ``--peak-flops`` wins over the table."""
  if device.get("peak_flops_given"):
    return "--peak-flops", device["peak_flops_given"]
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
  if device.get("peak_flops_given"):
    return "fp32"
  precision = device["jax_default_matmul_precision"].lower()
  return "fp32" if precision in ("highest", "float32") else "tf32"


def no_peak(device: dict) -> str:
  if device["jax_platform"] == "cpu":
    return "n/a on CPU (no reliable peak FLOP/s; give one with --peak-flops)"
  return (f"no peak FLOP/s for {device['jax_platform']} device "
          f"{device['jax_device_kind']!r} (give one with --peak-flops)")


def analytic_flops(result: dict):
  """6 × parameters × token positions per step, for decoder-only language
  models (``text_generation``), else None."""
  if result.get("task") != "text_generation" or not result.get("parameters"):
    return None
  positions = result["batch_size"] * result["seq_len"]
  return 6.0 * result["parameters"] * positions


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
  for name, rate_key, peak_key in MFU_RATES:
    rate, peak = result.get(rate_key), out[peak_key]
    achieved = flops * rate if flops and rate else None
    out[f"{name}_achieved_flops_per_s"] = achieved
    out[f"{name}_mfu"] = achieved / peak if achieved and peak else None
  analytic = analytic_flops(result)
  if analytic:
    out["analytic_flops_per_step"] = analytic
    out["analytic_flops_note"] = ("6 x parameters x token positions (batch x "
                                  "seq_len); cross-check only, MFU uses XLA's "
                                  "count")
    out["xla_over_analytic"] = flops / analytic if flops else None
  if not peaks:
    out["unavailable"] = no_peak(device)
  elif not flops:
    out["unavailable"] = "XLA reported no FLOP count for the step"
  return out
