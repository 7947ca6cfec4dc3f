"""The train state of a program (one leading axis of runs), its buffers, and
pretrained weights put into its parameters."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax
import jax
import jax.numpy as jnp

from optbench_jax.errors import OptBenchError


@flax.struct.dataclass
class TrainState:
  """Everything a run carries from step to step.

  Inside a :class:`~optbench_jax.engine.program.Program` every leaf has a
  leading axis of runs (``R ≥ 1``).
  """
  step: jax.Array
  params: Any
  model_state: Any          # non-parameter collections (batch_stats)
  opt_state: Any
  plateau: Any              # reduce_on_plateau state (epoch-level)
  base_lr: jax.Array


def unalias(tree):
  """Copies leaves that share a buffer with an earlier leaf.

  Optimizer states may hold the parameters themselves (Lookahead's slow
  weights, SVRG's snapshot); a state whose buffers are donated to the
  compiled epoch must not contain the same buffer twice.
  """
  seen = set()

  def copy_if_seen(x):
    if not isinstance(x, jax.Array):
      return x
    pointer = tuple(shard.data.unsafe_buffer_pointer()
                    for shard in x.addressable_shards)
    if pointer in seen:
      return jnp.copy(x)
    seen.add(pointer)
    return x

  return jax.tree.map(copy_if_seen, tree)


def run_slice(tree, i: int):
  """Run ``i`` of a tree with a leading axis of runs."""
  return jax.tree.map(lambda x: x[i], tree)


def stack_runs(trees):
  """Trees of single runs stacked on a leading axis of runs."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def with_pretrained(params: dict, pretrained: Optional[Mapping[str, Any]]
                    ) -> dict:
  """``params`` with whole submodules replaced by pretrained ones (same
  structure, shapes and dtypes, else a one-line error)."""
  if not pretrained:
    return params
  params = dict(params)
  for name, tree in pretrained.items():
    if name not in params:
      raise OptBenchError(f"pretrained weights for {name!r}, which the model "
                          f"does not have (it has {', '.join(params)})")
    ours = jax.tree.map(lambda x: (x.shape, x.dtype), params[name])
    theirs = jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), tree)
    if ours != theirs:
      raise OptBenchError(f"pretrained weights for {name!r} do not fit the "
                          f"model (shapes or names differ)")
    params[name] = tree
  return params
