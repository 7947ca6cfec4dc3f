"""The evaluations the engine counts equal the loss evaluations a program runs.

Each optimizer that evaluates more than one mini-batch gradient per step
declares it (``OptimizerSpec.cost``); the engine sums the declaration on the
device. Here the task's loss counts its own calls (``jax.debug.callback``,
executed each time the compiled program evaluates it: inside ``lax.cond``
branches taken, ``lax.while_loop`` iterations, under differentiation) during
one epoch of the engine's compiled ``train_epoch`` (and SVRG's
``epoch_start``), and the count must equal the counted gradient evaluations
plus Hessian-vector products. K-FAC's capture pass runs the model but not
the loss: it is the one ``forward_passes``.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import tasks, transforms
from optbench_jax.data.base import DatasetInfo
from optbench_jax.engine import optimizer as optimizer_lib
from optbench_jax.engine.program import Hyper, Program
from optbench_jax.nn import layers

N, BATCH = 20, 8          # three steps, the last one padded
STEPS = math.ceil(N / BATCH)


class TinyMLP(nn.Module):
  """Two of the project's dense layers (K-FAC captures their statistics):
  the smallest model that compiles fast."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = nn.relu(layers.Dense(8)(x.reshape(x.shape[0], -1)))
    return layers.Dense(3)(x)


class CountingTask:
  """``task`` whose training loss counts the times it is evaluated."""

  def __init__(self, task):
    self._task, self.calls = task, 0

  def __getattr__(self, name):
    return getattr(self._task, name)

  def _called(self):
    self.calls += 1

  def loss(self, outputs, batch, label_smoothing=0.0):
    jax.debug.callback(self._called)
    return self._task.loss(outputs, batch, label_smoothing)


def _epoch(name, keywords=None, lr=None):
  """One epoch of ``name``; returns (loss calls counted, the epoch's
  counters, the program's epoch-start counters)."""
  info = DatasetInfo("random", "image_classification", num_classes=3,
                     input_shape=(8, 8, 1))
  task = CountingTask(tasks.get("image_classification"))
  spec = transforms.get(name)
  lr = spec.default_lr if lr is None else lr
  tx = optimizer_lib.build(name, lr, hyperparameters=keywords)
  program = Program(task, TinyMLP(), info, spec, tx,
                    Hyper(batch_size=BATCH, eval_batch_size=BATCH,
                          total_steps=STEPS, scheduler="none"),
                    optimizer_keywords=keywords)
  rng = np.random.RandomState(0)
  raw = {"image": rng.uniform(size=(N, 8, 8, 1)).astype(np.float32),
         "label": rng.randint(0, 3, N).astype(np.int32)}
  data = jax.tree.map(jnp.asarray, raw)
  state = program.initial_state([0], [lr], program.example(raw))
  jax.effects_barrier()
  task.calls = 0
  if program.needs_epoch_start:
    state = program.epoch_start(state, data)
  _, totals = program.train_epoch(state, data, program.epoch_keys(
      program.run_keys([0])[1], 0))
  jax.effects_barrier()
  counts = {k: float(totals[k][0]) for k in transforms.COSTS}
  return task.calls, counts, program.epoch_start_cost(N)


# (optimizer, keywords, expected per epoch: grad_evals, hvps, forward passes)
DECLARED = [
    ("adam", None, (STEPS, 0, 0)),
    ("sam", None, (2 * STEPS, 0, 0)),
    ("gsam", None, (2 * STEPS, 0, 0)),
    ("svrg", None, (2 * STEPS, 0, 0)),         # + the full-gradient pass
    ("adahessian", None, (STEPS, STEPS, 0)),
    ("sophia", {"update_period": 2}, (STEPS, 2, 0)),   # steps 0 and 2
    ("kfac", None, (2 * STEPS, 0, STEPS)),
]


@pytest.mark.parametrize("name,keywords,expected", DECLARED,
                         ids=[d[0] for d in DECLARED])
def test_counted_evaluations_equal_the_loss_calls(name, keywords, expected):
  calls, counts, at_start = _epoch(name, keywords)
  assert (counts["grad_evals"], counts["hvps"],
          counts["forward_passes"]) == expected
  full_pass = at_start["grad_evals"]
  assert full_pass == (STEPS if name == "svrg" else 0)
  assert calls == counts["grad_evals"] + counts["hvps"] + full_pass


def test_line_search_evaluations_are_counted_as_they_ran():
  """L-BFGS: one gradient per step plus each zoom iteration (a number the
  search decides at run time), two per iteration under the engine's vmap
  (both branches of the search's ``lax.cond`` run)."""
  calls, counts, _ = _epoch("lbfgs", lr=1.0)
  assert counts["grad_evals"] >= 3 * STEPS  # ≥ one iteration per step
  assert calls == counts["grad_evals"] and counts["hvps"] == 0


def test_wrappers_add_their_base_declaration():
  cost = transforms.step_cost("sam", {"base": "sam"})
  counts = cost(None, None)
  assert float(counts["grad_evals"]) == 3  # engine + SAM + its base SAM
