"""Orbax checkpoints of the train state, one per epoch end, for ``--resume``.

``<run_dir>/checkpoints/<epoch>`` holds the whole :class:`TrainState` (params,
batch statistics, optimizer and plateau state); the last two are kept by
default, every epoch with ``--keep-checkpoints 0`` (the history file is
written after the checkpoint, so a kill between the two falls back to the
previous one), and the
initial parameters are kept apart (``checkpoints/initial``) for analyses that
interpolate between initial and final parameters.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from optbench_jax import store
from optbench_jax.train import interrupts


class Checkpoints:
  def __init__(self, run_dir: str, keep: int = 2):
    """``keep``: the latest epochs kept (0: all)."""
    self.directory = os.path.abspath(os.path.join(run_dir,
                                                  store.CHECKPOINTS))
    self.manager = ocp.CheckpointManager(
        os.path.join(self.directory, "epochs"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep or None,
                                             create=True,
                                             enable_async_checkpointing=False))

  def save(self, epoch: int, state: Any) -> None:
    with interrupts.critical():
      self.manager.save(epoch, args=ocp.args.StandardSave(_payload(state)))
      self.manager.wait_until_finished()

  def epochs(self) -> list[int]:
    return list(self.manager.all_steps())

  def drop_after(self, epoch: int) -> None:
    """Deletes the checkpoints of epochs after ``epoch`` (a resumed run
    writes them again)."""
    for step in self.epochs():
      if step > epoch:
        self.manager.delete(step)

  def restore(self, epoch: int, like: Any) -> Any:
    restored = self.manager.restore(
        epoch, args=ocp.args.StandardRestore(_abstract_payload(like)))
    return _rebuild(restored, like)

  def save_initial(self, params: Any) -> None:
    path = os.path.join(self.directory, "initial")
    if not os.path.exists(path):
      with interrupts.critical(), ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, _payload(params))

  def close(self) -> None:
    with interrupts.critical():
      self.manager.close()


def restore_initial(run_dir: str, like: Any) -> Any:
  path = os.path.abspath(os.path.join(run_dir, store.CHECKPOINTS, "initial"))
  with ocp.StandardCheckpointer() as checkpointer:
    return _rebuild(checkpointer.restore(path, _abstract_payload(like)), like)


# A checkpoint holds the state's leaves by tree path ("params.conv1.kernel",
# "opt_state.1.inner_state.0.mu.params.conv1.kernel"): readable, and stable
# when an unrelated part of the state changes. The tree structure (optimizer
# NamedTuples, ...) and any zero-size leaves (Orbax stores none) come from a
# freshly built state of the same program.
def _key(path) -> str:
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return ".".join(parts)


def _payload(tree) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  payload = {_key(path): leaf for path, leaf in leaves if leaf.size}
  if len(payload) != sum(1 for _, leaf in leaves if leaf.size):
    raise ValueError("two leaves of the state have the same tree path")
  return payload


def _abstract_payload(like) -> dict:
  return {k: ocp.utils.to_shape_dtype_struct(v)
          for k, v in _payload(like).items()}


def _rebuild(payload: dict, like):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  return jax.tree.unflatten(
      treedef, [payload.get(_key(path), leaf) for path, leaf in leaves])
