"""The PyTorch twin: built from the model's registry entry, timed eagerly.

The twin is ``spec.torch_twin(info)`` with the JAX program's initial
weights copied in (``convert.flax_to_torch`` with ``spec.conversion(info)``),
so both sides start from the same model. Each step is ``zero_grad /
forward / backward / step`` with SGD (the engine's learning rate and
momentum) and the task's PyTorch reference loss (``Task.reference_loss``,
``optbench_jax/reference/torch_losses.py``: it reads the batch,
``torch_batch``, and computes the loss; a target may be a tuple of arrays),
in ``model.train()`` mode, on the same fixed batch as the JAX step;
``--warmup`` steps (at least one) run first, and timings end with
``torch.cuda.synchronize()`` on a GPU.
"""
from __future__ import annotations

import jax
import numpy as np
import torch

from optbench_jax.nn import convert
from optbench_jax.reference import torch_losses, torch_models

from speed import jax_timing
from speed.clock import Timing, repeat


def unavailable(workload):
  """Why the model has no PyTorch side, or None."""
  spec = workload.spec
  if workload.task.reference_loss is None:
    return (f"task {workload.task.name} names no PyTorch reference loss "
            f"(reference_loss)")
  if spec.torch_twin is None:
    return "the model's registry entry has no PyTorch twin (torch_twin)"
  if spec.conversion is None:
    return ("the model's registry entry has no weight conversion "
            "(conversion) to start its PyTorch twin from the same weights")
  return None


def twin(workload, args) -> torch.nn.Module:
  """The twin, on ``--device``, with the JAX program's initial weights."""
  spec, info = workload.spec, workload.info
  state_dict = convert.flax_to_torch(
      jax_timing.initial_variables(workload.jax), spec.conversion(info))
  model = torch_models.load_numpy_state_dict(spec.torch_twin(info),
                                             state_dict)
  return model.to(torch.device(args.device))


def compiled_twin(workload, args) -> torch.nn.Module:
  return torch.compile(twin(workload, args))


def time_steps(model, workload, args) -> Timing:
  """``--steps`` training steps per repeat; loss: of the first warm-up step."""
  device = torch.device(args.device)
  sync = ((lambda _: torch.cuda.synchronize()) if args.device == "cuda"
          else (lambda _: None))
  reference = torch_losses.for_task(workload.task)
  inputs, target = reference.torch_batch(jax.device_get(workload.jax.batch))
  to_torch = lambda x: torch.from_numpy(np.array(x)).to(device)
  inputs = tuple(to_torch(x) for x in inputs)
  target = (tuple(to_torch(t) for t in target)
            if isinstance(target, tuple) else to_torch(target))
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=jax_timing.LEARNING_RATE,
                        momentum=jax_timing.MOMENTUM)
  loss_fn = reference(workload.task, model)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(*inputs), target)
    loss.backward()
    opt.step()
    return loss

  losses = [step() for _ in range(max(args.warmup, 1))]
  loss0 = float(losses[0].detach().to("cpu"))
  sync(None)

  def steps(_):
    for _ in range(args.steps):
      step()

  times, _ = repeat(steps, args.repeats, sync)
  return Timing(times, loss0)
