"""The hooks of a program's epoch: SVRG's full gradient, the plateau schedule.

A part of :class:`~optbench_jax.engine.program.Program` (it owns the
compiled ``epoch_start`` and ``update_plateau`` built from the methods
here): an optimizer that needs ``full_grad`` gets, at the start of every
epoch, the mean gradient over the whole training split; the plateau
schedule's scale follows the validation loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from optbench_jax.engine import optimizer as optimizer_lib
from optbench_jax.engine.epoch import batches, num_examples
from optbench_jax.engine.state import TrainState
from optbench_jax.transforms import COSTS

# Dropout key of the full-gradient pass (deterministic, never a training key).
_FULL_GRADIENT_SEED = 2**31 - 1


class Hooks:
  """Epoch hooks of ``Program`` (which supplies ``task``, ``info``,
  ``spec``, ``hyper``, ``plateau`` and ``_loss_fn``)."""

  def _full_gradient(self, state: TrainState, data):
    """Mean gradient of the training loss over the whole split (SVRG)."""
    index, mask = batches(num_examples(data), self.hyper.batch_size, None)

    def body(total, xs):
      idx, m = xs
      batch = {k: v[idx] for k, v in data.items()}
      batch["mask"] = m
      batch = self.task.preprocess(batch, self.info)
      key = jax.random.key(_FULL_GRADIENT_SEED)
      loss_sum = lambda p: self._loss_fn(p, state.model_state, batch,
                                         key)[1].loss_sum
      return jax.tree.map(jnp.add, total, jax.grad(loss_sum)(state.params)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    total, _ = jax.lax.scan(body, zeros, (index, mask))
    return jax.tree.map(lambda g: g / jnp.sum(mask), total)

  def _epoch_start(self, state: TrainState, data):
    full_grad = self._full_gradient(state, data)
    inner = self.spec.epoch_start(optimizer_lib.inner_state(state.opt_state),
                                  state.params, full_grad)
    return state.replace(
        opt_state=optimizer_lib.with_inner_state(state.opt_state, inner))

  def _update_plateau(self, state: TrainState, val_loss):
    _, plateau = self.plateau.update(jnp.zeros(()), state.plateau,
                                     value=val_loss)
    return state.replace(plateau=plateau)

  @property
  def needs_epoch_start(self) -> bool:
    return "full_grad" in self.spec.needs

  def epoch_start_cost(self, n_train: int) -> dict[str, int]:
    """The evaluations of :attr:`epoch_start` on ``n_train`` examples: one
    gradient per batch of the full-gradient pass (none without the hook)."""
    n_batches = -(-n_train // self.hyper.batch_size)
    return {k: (n_batches if k == "grad_evals" and self.needs_epoch_start
                else 0) for k in COSTS}
