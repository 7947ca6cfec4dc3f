"""Evaluation of a program's runs: the task's statistics over a split.

A part of :class:`~optbench_jax.engine.program.Program` (it owns the compiled
functions ``eval_batch`` and ``eval_streamed_batch``): one compiled batch
step whatever the split's size, totals summed on the device, per-example
stats gathered, and the task's ``finalize`` per run on the host.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.engine import distributed
from optbench_jax.engine import optimizer as optimizer_lib
from optbench_jax.engine.epoch import batches, num_examples
from optbench_jax.engine.state import TrainState
from optbench_jax.engine.streaming import prefetch

SAMPLES = "samples"   # finalize's key for a task's sample outputs (no metric)


class Evaluation:
  """Evaluation methods of ``Program`` (which supplies ``task``, ``info``,
  ``spec``, ``hyper``, ``runs``, ``apply``, the shardings and the jitted
  ``eval_batch`` / ``eval_streamed_batch`` / ``prepared_params`` built from
  the methods here)."""

  def eval_params(self, state: TrainState):
    if self.spec.prepare_for_eval is None:
      return state.params
    return self.spec.prepare_for_eval(
        state.params, optimizer_lib.inner_state(state.opt_state))

  def eval_variables(self, state: TrainState) -> dict:
    """The variables the runs are evaluated with (leading run axis): the
    parameters of :meth:`eval_params` and the model's state. The batch
    steps take these alone, not the optimizer's state: their programs are
    then the same for every optimizer of a configuration (compiled once,
    reused through the persistent compilation cache)."""
    params = (state.params if self.spec.prepare_for_eval is None
              else self.prepared_params(state))
    return {"params": params, **state.model_state}

  def _eval_streamed_batch(self, variables, batch):
    batch = self.task.preprocess(self._shard(batch), self.info)
    outputs = self.task.eval_outputs(self.apply, variables, batch,
                                     self.info)
    return self.task.eval_stats(outputs, batch, self.info)

  def _eval_batch(self, variables, data, idx, mask):
    batch = {k: v[idx] for k, v in data.items()}
    batch["mask"] = mask
    return self._eval_streamed_batch(variables, batch)

  def evaluation_stats(self, state: TrainState, data):
    """Returns (summed stats, gathered per-example stats, example mask).

    One compiled program (the batch step), whatever the split's size:
    batches are dispatched from Python and summed on the device, with no
    host synchronisation until the caller reads the totals. ``data`` on the
    device is gathered inside the compiled step; numpy ``data`` (a split
    kept on the host) is batched and streamed. Stats carry the leading run
    axis; per-example stats are ``(runs, examples, ...)``.
    """
    index, mask = batches(num_examples(data), self.hyper.eval_batch_size,
                          None)
    index, mask = np.asarray(index), np.asarray(mask)
    on_host = isinstance(next(iter(data.values())), np.ndarray)

    def host_batch(i):
      return jax.device_put({**{k: v[index[i]] for k, v in data.items()},
                             "mask": mask[i]}, self.batch_sharding())

    stream = (prefetch(host_batch, index.shape[0]) if on_host
              else range(index.shape[0]))
    gathered = self.task.gathered_stats
    variables = self.eval_variables(state)
    totals, kept = None, []
    for i, batch in enumerate(stream):
      stats = (self.eval_streamed_batch(variables, batch) if on_host
               else self.eval_batch(variables, data, index[i], mask[i]))
      summed = {k: v for k, v in stats.items() if k not in gathered}
      totals = summed if totals is None else self._add(totals, summed)
      kept.append({k: stats[k] for k in gathered})
    per_example = {k: jnp.concatenate([b[k] for b in kept], axis=1)
                   for k in gathered}
    return totals, per_example, mask.reshape(-1)

  def evaluate(self, state: TrainState, data) -> list[dict]:
    """The task's metrics on ``data``, one dict per run."""
    totals, gathered, mask = distributed.to_host(
        self.evaluation_stats(state, data))
    keep = np.asarray(mask) > 0
    results = []
    for j in range(self.runs):
      stats = {k: np.asarray(v[j]) for k, v in totals.items()}
      stats.update({k: np.asarray(v[j])[keep] for k, v in gathered.items()})
      results.append(self.task.finalize(stats, self.info))
    return results

