"""Orbax checkpoints of the train state, one per epoch end, for ``--resume``.

``<run_dir>/checkpoints/<epoch>`` holds the whole :class:`TrainState` (params,
batch statistics, optimizer and plateau state); the last two are kept (the history file is written after the checkpoint, so
a kill between the two falls back to the previous one), and the
initial parameters are kept apart (``checkpoints/initial``) for analyses that
interpolate between initial and final parameters.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  def __init__(self, run_dir: str, keep: int = 2):
    self.directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        os.path.join(self.directory, "epochs"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def save(self, epoch: int, state: Any) -> None:
    self.manager.save(epoch, args=ocp.args.StandardSave(_payload(state)))
    self.manager.wait_until_finished()

  def epochs(self) -> list[int]:
    return list(self.manager.all_steps())

  def restore(self, epoch: int, like: Any) -> Any:
    restored = self.manager.restore(
        epoch, args=ocp.args.StandardRestore(_abstract_payload(like)))
    return _rebuild(restored, like)

  def save_initial(self, params: Any) -> None:
    path = os.path.join(self.directory, "initial")
    if not os.path.exists(path):
      with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, _payload(params))

  def close(self) -> None:
    self.manager.close()


def restore_initial(run_dir: str, like: Any) -> Any:
  path = os.path.abspath(os.path.join(run_dir, "checkpoints", "initial"))
  with ocp.StandardCheckpointer() as checkpointer:
    return _rebuild(checkpointer.restore(path, _abstract_payload(like)), like)


# Orbax saves pytrees of non-empty arrays; optimizer states may hold
# zero-size placeholders (Shampoo's unused preconditioners) and arbitrary
# NamedTuples. A checkpoint therefore holds the non-empty leaves by index, and
# the tree structure (and the empty leaves) come from a freshly built state.
def _payload(tree) -> dict:
  return {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(tree))
          if leaf.size}


def _abstract_payload(like) -> dict:
  return {k: ocp.utils.to_shape_dtype_struct(v)
          for k, v in _payload(like).items()}


def _rebuild(payload: dict, like):
  leaves, treedef = jax.tree.flatten(like)
  return jax.tree.unflatten(
      treedef, [payload.get(str(i), leaf) for i, leaf in enumerate(leaves)])
