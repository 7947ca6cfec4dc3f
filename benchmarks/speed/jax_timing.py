"""Every call the benchmark makes into the engine (``optbench_jax.train``).

One ``Program`` per measured variant, always with a leading run axis: R = 1
for the single-run variants, R = ``--vmap-runs`` for ``jax_vmap``; the R
runs get keys ``jax.random.split(key(seed), R)`` and learning rates ``(R,)``.
The step is the program's step vmapped over that axis
(``jax.jit(jax.vmap(program.train_step, axis_name=RUN_AXIS))``, state
donated), compiled ahead of time; the epochs are ``program.train_epoch``,
compiled ahead of time (``.lower(...).compile()``: the same executable,
without running a warm-up epoch). Timings end with ``jax.block_until_ready``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from optbench_jax import tasks, transforms
from optbench_jax.engine import optimizer as optimizer_lib
from optbench_jax.engine.program import Hyper, Program
from optbench_jax.transforms.base import RUN_AXIS

from speed.clock import Timing, repeat

OPTIMIZER = "sgd_momentum"   # optax.sgd(lr, momentum=0.9) in the registry
LEARNING_RATE = 0.01
MOMENTUM = 0.9


@dataclasses.dataclass
class Built:
  """A program and ``() -> its initial state`` (init compiled once)."""
  program: Program
  init: Callable[[], Any]


@dataclasses.dataclass
class Setup:
  """The JAX side of a workload, shared by its variants."""
  base: Built                   # the single-run fp32 program
  batch: dict                   # one fixed, preprocessed batch on the device
  data: dict                    # the whole random dataset on the device


def build(workload, args, *, runs=1, precision="fp32") -> Built:
  spec = workload.spec
  tx = optimizer_lib.build(OPTIMIZER, LEARNING_RATE,
                           hyperparameters={"momentum": MOMENTUM})
  task = tasks.get(spec.task)
  # The task's label smoothing (e.g. 0.1 for translation), as its PyTorch
  # reference loss (``Task.reference_loss``); no gradient clipping on either
  # side.
  hyper = Hyper(batch_size=args.batch_size, eval_batch_size=args.batch_size,
                total_steps=args.steps, scheduler="none", precision=precision,
                label_smoothing=float(task.default_label_smoothing))
  program = Program(task, spec.build(workload.info),
                    workload.info, transforms.get(OPTIMIZER), tx, hyper,
                    runs=runs)
  example = program.example(workload.arrays)
  keys = jax.random.split(jax.random.key(args.seed), runs)
  lrs = jnp.full((runs,), LEARNING_RATE, jnp.float32)
  # No pretrained weights (``program.pretrained`` is None): random init.
  return Built(program, lambda: program.init(keys, example, lrs,
                                             program.pretrained))


def setup(workload, args) -> Setup:
  base = build(workload, args)
  b = args.batch_size
  batch = {k: jnp.asarray(v[:b]) for k, v in workload.arrays.items()}
  batch["mask"] = jnp.ones((b,), jnp.float32)
  batch = base.program.task.preprocess(batch, workload.info)
  data = {k: jax.device_put(v) for k, v in workload.arrays.items()}
  return Setup(base, jax.block_until_ready(batch),
               jax.block_until_ready(data))


def initial_variables(setup_: Setup) -> dict:
  """The Flax variables of the single run's initial state, on the host."""
  state = setup_.base.init()
  variables = {"params": state.params, **state.model_state}
  return jax.device_get(jax.tree.map(lambda x: x[0], variables))


def parameter_count(setup_: Setup) -> int:
  """Trainable parameters of one run (shapes only, nothing computed)."""
  state = jax.eval_shape(setup_.base.init)
  return int(sum(x.size for x in jax.tree.leaves(state.params))
             // setup_.base.program.runs)


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


def mean_loss(metrics) -> float:
  """The loss of ``metrics``, averaged over the runs."""
  return float(jnp.mean(metrics["loss_sum"] / metrics["count"]))


def time_step(built: Built, workload, args) -> Timing:
  """The jitted step, ``--steps`` calls per repeat on the fixed batch.

  Warm-up: one call. Loss: of that first step. Fields: XLA's FLOPs of the
  compiled (or, failing that, the lowered) step.
  """
  batch = workload.jax.batch
  step = jax.jit(jax.vmap(built.program.train_step, in_axes=(0, None, 0),
                          axis_name=RUN_AXIS), donate_argnums=0)
  keys = jax.random.split(jax.random.key(args.seed + 1), built.program.runs)
  state = built.init()
  lowered = step.lower(state, batch, keys)
  compiled = lowered.compile()
  flops, flops_lowered = (xla_flops(compiled.cost_analysis()),
                          xla_flops(lowered.cost_analysis()))
  state, metrics = compiled(state, batch, keys)   # warm-up
  carry = {"state": jax.block_until_ready(state)}

  def steps(_):
    for _ in range(args.steps):
      carry["state"], out = compiled(carry["state"], batch, keys)
    return carry["state"], out

  times, _ = repeat(steps, args.repeats, jax.block_until_ready)
  return Timing(times, mean_loss(metrics), {
      "xla_flops_per_step": flops or flops_lowered,
      "xla_flops_source": ("compiled train step" if flops else
                           "lowered (unoptimised) train step"
                           if flops_lowered else None),
      "xla_flops_per_step_lowered": flops_lowered})


def time_epoch(built: Built, workload, args) -> Timing:
  """The scanned epoch, once per repeat, on the device-resident data.

  Loss: the mean (over runs) loss of the first timed epoch. Fields: XLA's
  FLOPs of the compiled epoch (it counts a loop body once).
  """
  data = workload.jax.data
  key = jax.random.key(args.seed + 2)
  epoch_keys = jax.block_until_ready(
      [jax.random.split(jax.random.fold_in(key, i), built.program.runs)
       for i in range(args.repeats)])
  carry = {"state": built.init()}
  epoch = built.program.train_epoch.lower(carry["state"], data,
                                          epoch_keys[0]).compile()

  def run(i):
    carry["state"], metrics = epoch(carry["state"], data, epoch_keys[i])
    return carry["state"], metrics

  times, (_, metrics) = repeat(run, args.repeats, jax.block_until_ready)
  return Timing(times, mean_loss(metrics),
                {"xla_flops_epoch_compiled": xla_flops(epoch.cost_analysis())},
                memory_stats(epoch))
