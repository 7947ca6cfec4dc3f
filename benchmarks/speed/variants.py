"""What the benchmark measures, as data: one ``Variant`` per timed column.

All variants of a model train from the same initial weights with SGD
(momentum 0.9, learning rate 0.01, constant) on the task's loss:

* ``jax_step``: the engine's train step, jitted, compiled ahead of time,
  called ``--steps`` times on one fixed, pre-made, device-resident batch;
* ``jax_epoch``: the engine's scanned epoch (``Program.train_epoch``, one
  ``lax.scan`` of ``--steps`` steps) over a device-resident dataset of
  ``steps × batch`` raw examples: the shuffle, the gathers and the
  preprocessing are inside the timed region, as in a real run (augmentation
  is off);
* ``jax_vmap`` (``--vmap-runs R``, 0 = off): the same epoch of an R-run
  program: R runs trained together (``jax.vmap`` over the leading run axis),
  sharing the data, each with its own initialisation, data-order and step
  keys and its own (traced) learning rate, all 0.01. Reported as program
  steps/s and as *run-steps/s* = R × steps / time;
* ``jax_bf16`` (off with ``--no-bf16``): the single-run epoch with
  ``Hyper(precision="bf16")``: the model computes in bfloat16, parameters,
  optimizer state and loss stay float32;
* ``torch_eager``: the model's PyTorch twin, on the fixed batch of
  ``jax_step``;
* ``torch_compile`` (``--torch-compile``): the same on
  ``torch.compile(twin)``.

Each rate is ``steps / median(times)`` over ``--repeats`` timed runs, after a
warm-up that compiles. A variant that raises is recorded as
``<name>_error`` and the others go on; a PyTorch variant of a model without
a twin is recorded as ``<name>_unavailable``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from speed import jax_timing, torch_timing
from speed import workload as workload_lib
from speed.clock import Timing, median_rate


@dataclasses.dataclass(frozen=True)
class Variant:
  """One timed column.

  name: the result keys' prefix (``<name>_steps_per_s``, ``times_s[name]``).
  title: the table heading. what: the progress line.
  build(workload, args): what to time; time(built, workload, args) -> Timing.
  loss: the result key of ``Timing.loss``, if it is recorded.
  fields: which of ``Timing.fields`` this variant records.
  runs: the ``args`` attribute holding its run count (also its result key);
    such a variant reports run-steps/s, and 0 runs turns it off.
  off: ``(args attribute, value)``: the variant is off when it has that value.
  unavailable(workload): why it cannot run for a model, or None.
  data: what one step trains on, for tokens/s: ``"batch"`` the fixed batch
    (the step and PyTorch), ``"epoch"`` an average step of the scanned
    epoch over the whole random dataset.
  """
  name: str
  title: str
  what: str
  build: Callable[[Any, Any], Any]
  time: Callable[[Any, Any, Any], Timing]
  loss: Optional[str] = None
  fields: tuple = ()
  runs: Optional[str] = None
  off: Optional[tuple[str, bool]] = None
  unavailable: Callable[[Any], Optional[str]] = lambda workload: None
  data: str = "batch"

  def run_count(self, args) -> int:
    return getattr(args, self.runs) if self.runs else 1

  def is_off(self, args) -> bool:
    chosen = getattr(args, "variants", None)
    if chosen is not None and self.name not in chosen:
      return True
    if self.runs and not self.run_count(args):
      return True
    return bool(self.off) and getattr(args, self.off[0]) == self.off[1]

  def rate_key(self) -> str:
    return f"{self.name}_run_steps_per_s" if self.runs else (
        f"{self.name}_steps_per_s")


VARIANTS = (
    Variant("jax_step", "JAX step", "JAX step",
            build=lambda w, args: w.jax.base, time=jax_timing.time_step,
            loss="initial_loss_jax",
            fields=("xla_flops_per_step", "xla_flops_source",
                    "xla_flops_per_step_lowered")),
    Variant("jax_epoch", "JAX epoch", "JAX scanned epoch",
            build=lambda w, args: w.jax.base, time=jax_timing.time_epoch,
            loss="epoch_loss_jax", fields=("xla_flops_epoch_compiled",),
            data="epoch"),
    Variant("jax_vmap", "JAX vmap", "JAX scanned epoch, vmap over {runs} runs",
            build=lambda w, args: jax_timing.build(w, args,
                                                   runs=args.vmap_runs),
            time=jax_timing.time_epoch, loss="epoch_loss_jax_vmap",
            runs="vmap_runs", data="epoch"),
    Variant("jax_bf16", "JAX bf16", "JAX scanned epoch, bf16",
            build=lambda w, args: jax_timing.build(w, args, precision="bf16"),
            time=jax_timing.time_epoch, loss="epoch_loss_jax_bf16",
            off=("no_bf16", True), data="epoch"),
    Variant("torch_eager", "torch eager", "PyTorch eager",
            build=torch_timing.twin, time=torch_timing.time_steps,
            loss="initial_loss_torch", unavailable=torch_timing.unavailable),
    Variant("torch_compile", "torch.compile", "torch.compile",
            build=torch_timing.compiled_twin, time=torch_timing.time_steps,
            off=("torch_compile", False),
            unavailable=torch_timing.unavailable),
)
# Ratios of rates: (result key, numerator key, denominator key).
RATIOS = (
    ("jax_step_over_eager", "jax_step_steps_per_s", "torch_eager_steps_per_s"),
    ("jax_epoch_over_eager", "jax_epoch_steps_per_s",
     "torch_eager_steps_per_s"),
    ("jax_epoch_over_compile", "jax_epoch_steps_per_s",
     "torch_compile_steps_per_s"),
    ("bf16_speedup", "jax_bf16_steps_per_s", "jax_epoch_steps_per_s"),
    ("vmap_speedup", "jax_vmap_run_steps_per_s", "jax_epoch_steps_per_s"),
)


def error_text(e: BaseException) -> str:
  return f"{type(e).__name__}: {e}"[:500]


def measure(variant: Variant, workload, args, result: dict) -> None:
  """Times ``variant`` and records it in ``result``."""
  runs, name = variant.run_count(args), variant.name
  if variant.runs:
    result[variant.runs] = runs
  timing = variant.time(variant.build(workload, args), workload, args)
  rate = median_rate(timing.times, args.steps)
  result["times_s"][name] = timing.times
  result[f"{name}_steps_per_s"] = rate
  if variant.runs:
    result[variant.rate_key()] = runs * rate
  result[f"{name}_examples_per_s"] = runs * rate * args.batch_size
  tokens = result.get(f"target_tokens_per_step_{variant.data}")
  if tokens is not None:
    result[f"{name}_tokens_per_s"] = runs * rate * tokens
  if variant.loss:
    result[variant.loss] = timing.loss
  result.update({k: timing.fields[k] for k in variant.fields})
  if timing.memory is not None:
    result["memory_bytes"][name] = timing.memory


def sequence_lengths(workload) -> dict:
  stats = workload.info.stats
  if (workload.task.encoded_info(workload.info) is None
      or "max_length" not in stats):
    return {}
  out = {"seq_len": int(stats["max_length"])}
  if "target_length" in stats:
    out["target_len"] = int(stats["target_length"])
  return out


def token_counts(workload, args) -> dict:
  """Real target tokens per step: of the fixed batch (``_batch``) and of an
  average step of the scanned epoch (``_epoch``: all the random data ÷
  steps); empty for tasks without target tokens."""
  total = workload.target_tokens(workload.arrays)
  if total is None:
    return {}
  batch = workload.target_tokens(
      {k: v[:args.batch_size] for k, v in workload.arrays.items()})
  return {"target_tokens_per_step_batch": batch,
          "target_tokens_per_step_epoch": total / args.steps}


def bench_model(name: str, args) -> dict:
  try:
    workload = workload_lib.make(name, args)
  except workload_lib.NotImplementedYet as e:
    print(f"[{name}] not implemented yet: {e}", flush=True)
    return {"model": name, "status": "not implemented yet", "reason": str(e)}
  workload.jax = jax_timing.setup(workload, args)
  result = {"model": name, "registry_model": workload.spec.name,
            "task": workload.spec.task, "status": "measured",
            "input_shape": list(workload.info.input_shape),
            "batch_size": args.batch_size, "steps": args.steps,
            "repeats": args.repeats, "times_s": {}, "memory_bytes": {},
            **sequence_lengths(workload), **token_counts(workload, args),
            "parameters": jax_timing.parameter_count(workload.jax)}
  for variant in VARIANTS:
    if variant.is_off(args):
      continue
    why = variant.unavailable(workload)
    if why:
      result[f"{variant.name}_unavailable"] = why
      continue
    what = variant.what.format(runs=variant.run_count(args))
    print(f"[{name}] {what} ...", flush=True)
    try:
      measure(variant, workload, args, result)
    except Exception as e:  # pylint: disable=broad-except
      result[f"{variant.name}_error"] = error_text(e)
      print(f"[{name}] {what} failed: {result[f'{variant.name}_error']}",
            flush=True)
  for key, numerator, denominator in RATIOS:
    if numerator in result and denominator in result:
      result[key] = result[numerator] / result[denominator]
  return result
