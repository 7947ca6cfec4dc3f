"""Where a run starts: fresh (initial parameters saved) or resumed.

A group of runs trained together resumes from the last epoch that all of
them have both a checkpoint and an ``ok`` history record for (the history is
written after the checkpoint, so a kill between the two repeats the epoch,
deterministically); without one they restart, their stale checkpoints
removed. Padding runs (no directory) restore from a real run's checkpoint.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional

from optbench_jax.train import distributed, outputs
from optbench_jax.train.checkpoint import Checkpoints
from optbench_jax.train.program import Program
from optbench_jax.train.state import run_slice, stack_runs, unalias


def usable_epochs(checkpoints: Optional[Checkpoints], run_dir: str
                   ) -> list[int]:
  """Epochs that have both a checkpoint and an ``ok`` history record."""
  hist_path = os.path.join(run_dir, "history.json")
  if checkpoints is None or not os.path.exists(hist_path):
    return []
  recorded = {h["epoch"] for h in outputs.read_json(hist_path)
              if h.get("status") == "ok"}
  return [e for e in checkpoints.epochs() if e in recorded]


def common_resume_epoch(real) -> Optional[int]:
  common = None
  for m in real:
    usable = set(usable_epochs(m.checkpoints, m.run_dir))
    common = usable if common is None else common & usable
  return max(common) if common else None


def restore(program: Program, members, state, epoch: int):
  """The runs' states at the end of ``epoch``, and their histories so far."""
  real = [m for m in members if m.run_dir is not None]
  restored = []
  for j, m in enumerate(members):
    source = m if m.run_dir is not None else real[-1]
    restored.append(source.checkpoints.restore(epoch, run_slice(state, j)))
    if m.run_dir is not None:
      m.history = [h for h in outputs.read_json(
          os.path.join(m.run_dir, "history.json")) if h["epoch"] <= epoch]
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
        shutil.rmtree(os.path.join(m.run_dir, "checkpoints"))
      distributed.barrier("stale-checkpoints-removed")
      m.checkpoints = Checkpoints(m.run_dir)
    m.checkpoints.save_initial(run_slice(state.params, j))


def initial_state(setup, program: Program, members, resume: bool):
  """The state to start from and its epoch (0, or the resumed epoch)."""
  state = program.initial_state([m.rc.seed for m in members],
                                [m.rc.learning_rate for m in members],
                                setup.example)
  real = [m for m in members if m.run_dir is not None]
  epoch = (common_resume_epoch(real) if resume and setup.rc.checkpoint
           else None)
  if epoch is not None:
    return restore(program, members, state, epoch), epoch
  fresh_start(members, state)
  return state, 0
