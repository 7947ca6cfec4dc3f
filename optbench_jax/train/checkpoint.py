"""Orbax checkpoints of the train state, one per epoch end, for ``--resume``.

``<run_dir>/checkpoints/epochs/<epoch>`` holds the whole :class:`TrainState`
(params, batch statistics, optimizer and plateau state); the last two are
kept by default, every epoch with ``--keep-checkpoints 0`` (the history file
is written after the checkpoint, so a kill between the two falls back to the
previous one), and the initial parameters are kept apart
(``checkpoints/initial``) for analyses that interpolate between initial and
final parameters.

A checkpoint that cannot be read (truncated or missing files: Orbax and
TensorStore raise plain exceptions with many lines) raises
:class:`~optbench_jax.store.DamagedFile` naming its directory, on one line.
A damaged ``checkpoints/initial`` is replaced when the initial parameters
are saved again (they are a function of the seed alone).
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from optbench_jax import store
from optbench_jax.train import interrupts
from optbench_jax.engine import distributed

REASON_LIMIT = 200   # characters of Orbax's message quoted in DamagedFile


def _damaged(path: str, e: BaseException) -> store.DamagedFile:
  """``e`` (Orbax's, or TensorStore's: dozens of lines, the cause chained
  inside) as one line: the innermost cause's type and first line, quoted
  paths elided (``path`` names the checkpoint)."""
  while e.__cause__ is not None or e.__context__ is not None:
    e = e.__cause__ or e.__context__
  first = (str(e).strip().splitlines() or [""])[0]
  first = re.sub(r'"/[^"]*"', "…", first)
  return store.DamagedFile(path, f"{type(e).__name__}: "
                                 f"{first[:REASON_LIMIT]}")


class Checkpoints:
  def __init__(self, run_dir: str, keep: int = 2):
    """``keep``: the latest epochs kept (0: all)."""
    self.run_dir = run_dir
    self.manager = ocp.CheckpointManager(
        store.epoch_checkpoints(run_dir),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep or None,
                                             create=True,
                                             enable_async_checkpointing=False),
        # states are saved with StandardSave: its handler also reads an
        # epoch's metadata (damaged_epochs)
        item_handlers=ocp.StandardCheckpointHandler())

  def save(self, epoch: int, state: Any) -> None:
    with interrupts.critical():
      self.manager.save(epoch, args=ocp.args.StandardSave(_payload(state)))
      self.manager.wait_until_finished()

  def epochs(self) -> list[int]:
    return list(self.manager.all_steps())

  def damaged_epochs(self) -> list[int]:
    """The kept epochs whose checkpoint cannot be read in full."""
    return [epoch for epoch in self.epochs()
            if not _readable(lambda: self.manager.item_metadata(epoch),
                             lambda abstract: self.manager.restore(
                                 epoch, args=ocp.args.StandardRestore(
                                     abstract)))]

  def drop_after(self, epoch: int) -> None:
    """Deletes the checkpoints of epochs after ``epoch`` (a resumed run
    writes them again)."""
    for step in self.epochs():
      if step > epoch:
        self.manager.delete(step)

  def restore(self, epoch: int, like: Any) -> Any:
    """The state of ``epoch``, in the structure of ``like``;
    :class:`~optbench_jax.store.DamagedFile` if it cannot be read."""
    try:
      restored = self.manager.restore(
          epoch, args=ocp.args.StandardRestore(_abstract_payload(like)))
    except Exception as e:  # pylint: disable=broad-except
      raise _damaged(os.path.join(store.epoch_checkpoints(self.run_dir),
                                  str(epoch)), e) from None
    return _rebuild(restored, like)

  def save_initial(self, params: Any) -> None:
    """Saves the initial parameters unless an intact copy is there (a
    damaged one is replaced)."""
    path = store.initial_checkpoint(self.run_dir)
    if os.path.exists(path):
      if initial_intact(self.run_dir):
        return
      if distributed.is_primary():
        shutil.rmtree(path)
      distributed.barrier("damaged-initial-removed")
    with interrupts.critical(), ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(path, _payload(params))

  def close(self) -> None:
    with interrupts.critical():
      self.manager.close()


def restore_initial(run_dir: str, like: Any) -> Any:
  """The initial parameters, in the structure of ``like``;
  :class:`~optbench_jax.store.DamagedFile` if they cannot be read."""
  path = store.initial_checkpoint(run_dir)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      payload = checkpointer.restore(path, _abstract_payload(like))
  except Exception as e:  # pylint: disable=broad-except
    raise _damaged(path, e) from None
  return _rebuild(payload, like)


def initial_intact(run_dir: str) -> bool:
  """Whether ``checkpoints/initial`` exists and every array in it can be
  read (read in full: a truncated array file shows only then)."""
  path = store.initial_checkpoint(run_dir)
  if not os.path.isdir(path):
    return False
  with ocp.StandardCheckpointer() as checkpointer:
    return _readable(lambda: checkpointer.metadata(path),
                     lambda abstract: checkpointer.restore(path, abstract))


def _readable(metadata: Callable[[], Any],
              restore: Callable[[Any], Any]) -> bool:
  """Whether a checkpoint's ``metadata()``, then a ``restore`` of every
  array it lists (onto one local device, whatever devices wrote it),
  succeed."""
  host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    stored = metadata()
    stored = getattr(stored, "item_metadata", stored)
    restore({k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=host)
             for k, v in stored.items()})
  except Exception:  # pylint: disable=broad-except
    return False
  return True


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
