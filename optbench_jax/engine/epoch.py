"""Batches of an epoch and its metrics, accumulated on the device.

Every batch of a run has the same shape (the last one padded, its padding
masked out), so the step compiles once; the epoch's metrics are summed in
the scan's carry and read once per epoch.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.transforms.cost import COSTS


def num_examples(data: Mapping) -> int:
  return next(iter(data.values())).shape[0]


def batches(n: int, batch_size: int, key: Optional[jax.Array]):
  """Indices ``(steps, batch)`` and mask; shuffled when ``key`` is given."""
  steps = math.ceil(n / batch_size)
  order = jax.random.permutation(key, n) if key is not None else jnp.arange(n)
  flat = jnp.arange(steps * batch_size)
  index = order[flat % n].reshape(steps, batch_size)
  mask = (flat < n).astype(jnp.float32).reshape(steps, batch_size)
  return index, mask


# Summed over the epoch's steps: the loss, the valid examples, the gradient
# norm (averaged by :func:`epoch_metrics`) and the step's evaluations
# (:mod:`~optbench_jax.transforms.cost`).
_SUMS = ("loss_sum", "count", "grad_norm") + COSTS


def zero_totals(shape):
  """Epoch metrics before the first step (see :func:`accumulate`)."""
  return {**{k: jnp.zeros(shape) for k in _SUMS},
          "finite": jnp.ones(shape, bool), "learning_rate": jnp.zeros(shape)}


def accumulate(totals, step_metrics):
  """Adds one step's metrics: sums, all-finite, last learning rate."""
  return {**{k: totals[k] + step_metrics[k] for k in _SUMS},
          "finite": jnp.logical_and(totals["finite"], step_metrics["finite"]),
          "learning_rate": step_metrics["learning_rate"]}


def epoch_metrics(totals, steps: int):
  """The epoch's metrics: the mean gradient norm over its ``steps``."""
  return {**totals, "grad_norm": totals["grad_norm"] / steps}


class Example:
  """A one-example batch, hashable by value (a static jit argument).

  Two examples with equal arrays (names, shapes, dtypes and bytes) are equal,
  so a new object with the same content does not recompile.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
    self._key = tuple(sorted((k, v.shape, v.dtype.str, v.tobytes())
                             for k, v in self.arrays.items()))

  def __hash__(self) -> int:
    return hash(self._key)

  def __eq__(self, other) -> bool:
    return isinstance(other, Example) and self._key == other._key
