"""Where a run starts: fresh (initial parameters saved) or resumed.

A group of runs trained together resumes from the last epoch that all of
them have both a checkpoint and an ``ok`` history record for (the history is
written after the checkpoint, so a kill between the two repeats the epoch,
deterministically), before any damaged sample file; without one they
restart, their stale checkpoints removed. A damaged ``checkpoints/initial``
is written again (``Checkpoints.save_initial``). Padding runs (no
directory) restore from a real run's checkpoint.
"""
from __future__ import annotations

import math
import os
import shutil
import warnings
from typing import Optional

from optbench_jax import store
from optbench_jax.engine import distributed
from optbench_jax.train.checkpoint import Checkpoints
from optbench_jax.engine.program import Program
from optbench_jax.engine.state import run_slice, stack_runs, unalias


def usable_epochs(checkpoints: Optional[Checkpoints], run_dir: str
                  ) -> list[int]:
  """Epochs that have both a checkpoint and an ``ok`` history record, and
  come before every damaged sample file (training on from an earlier epoch
  writes it again, as an uninterrupted run did).

  There are none when the history or the metadata is missing or damaged: the
  run's settings and epochs cannot be trusted, so it is trained again.
  """
  if checkpoints is None:
    return []
  try:
    history = store.read_history(run_dir)
    meta = store.read_json_if_intact(os.path.join(run_dir, store.METADATA),
                                     dict)
    saved = checkpoints.epochs()
  except (store.DamagedFile, OSError, ValueError):
    return []
  if history is None or meta is None:
    return []
  recorded = {h.get("epoch") for h in history if h.get("status") == "ok"}
  damaged = [e for e in store.damaged_samples(run_dir).values()
             if e is not None]
  before = min(damaged, default=math.inf)
  return [e for e in saved if e in recorded and e < before]


def common_resume_epochs(real) -> list[int]:
  """Epochs every run of the group can resume from, latest first."""
  common = None
  for m in real:
    usable = set(usable_epochs(m.checkpoints, m.run_dir))
    common = usable if common is None else common & usable
  return sorted(common or (), reverse=True)


def restore(program: Program, members, state, epoch: int):
  """The runs' states at the end of ``epoch``, and their histories so far."""
  real = [m for m in members if m.run_dir is not None]
  restored = []
  for j, m in enumerate(members):
    source = m if m.run_dir is not None else real[-1]
    restored.append(source.checkpoints.restore(epoch, run_slice(state, j)))
    if m.run_dir is not None:
      m.history = [h for h in store.read_history(m.run_dir)
                   if h["epoch"] <= epoch]
  return unalias(program.place(stack_runs(restored)))


def fresh_start(members, state) -> None:
  """Drops stale checkpoints of an unresumable attempt; saves the initial
  parameters."""
  for j, m in enumerate(members):
    if m.run_dir is None or m.checkpoints is None:
      continue
    if m.checkpoints.epochs():
      m.checkpoints.close()
      distributed.barrier("stale-checkpoints-closed")
      if distributed.is_primary():
        shutil.rmtree(os.path.join(m.run_dir, store.CHECKPOINTS))
      distributed.barrier("stale-checkpoints-removed")
      m.checkpoints = Checkpoints(m.run_dir, m.rc.keep_checkpoints)
    m.checkpoints.save_initial(run_slice(state.params, j))


def initial_state(setup, program: Program, members, resume: bool):
  """The state to start from and its epoch (0, or the resumed epoch)."""
  state = program.initial_state(
      [m.rc.seed for m in members], [m.rc.learning_rate for m in members],
      setup.example, [m.rc.traced_values for m in members])
  real = [m for m in members if m.run_dir is not None]
  epochs = (common_resume_epochs(real) if resume and setup.rc.checkpoint
            else [])
  for epoch in epochs:
    try:
      restored = restore(program, members, state, epoch)
    except store.DamagedFile as e:
      # A damaged checkpoint (truncated files, OCDBT/ZSTD errors): fall
      # back to the one before, never a result built on damaged state.
      warnings.warn(f"damaged checkpoint {e}; trying an earlier one")
      continue
    for j, m in enumerate(members):
      if m.run_dir is not None:
        m.checkpoints.drop_after(epoch)
        m.checkpoints.save_initial(run_slice(state.params, j))
    return restored, epoch
  fresh_start(members, state)
  return state, 0
