"""A finished run healed on ``--resume`` to what an uninterrupted run leaves.

A finished run (``run_metadata.json`` and ``history.json`` intact, a final
status: :func:`~optbench_jax.store.read_finished`) is not trained again,
but a kill, a full disk or a bad copy may have damaged its other files:

* ``.tmp-*`` files (a kill inside an atomic write) are removed;
* missing plots (a kill between the history and the plots) are drawn;
* a missing or damaged ``checkpoints/initial`` is written again: the
  initial parameters are a function of the seed alone;
* a damaged epoch checkpoint is deleted with every later one, and the run
  is trained again from the last intact epoch before it (from the start if
  there is none), as deterministically as any resumed run;
* a damaged ``samples/epoch_NNN.json`` or ``samples/test.json`` is written
  again from the checkpoint of its epoch: a task's samples are its
  decoding of the fixed validation subset (of the test split after the
  last epoch) with that epoch's parameters. When that checkpoint is no
  longer kept or cannot be read, the run is trained again from the last
  epoch before the damage (:func:`~optbench_jax.train.resume.usable_epochs`),
  as deterministically as any resumed run.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from optbench_jax import store
from optbench_jax.train import checkpoint, plots
from optbench_jax.train.checkpoint import Checkpoints
from optbench_jax.engine.evaluation import SAMPLES
from optbench_jax.train.settings import RunConfig
from optbench_jax.engine.state import run_slice, stack_runs
from optbench_jax.workload import Workload


def write_samples(run_dir: str, epoch, metrics: dict) -> None:
  """Takes a task's sample outputs out of ``metrics`` (``finalize``'s
  ``"samples"``: e.g. source / reference / hypothesis triples) and writes
  them to ``samples/epoch_NNN.json`` (``samples/test.json``: ``epoch``
  None), if there are any."""
  samples = metrics.pop(SAMPLES, None)
  if samples:
    store.write_json(store.samples_path(run_dir, epoch), samples)


def heal_finished(run: store.StoredRun, rc: RunConfig,
                  setup: Callable[[], Any]) -> bool:
  """Heals the finished ``run`` (module docstring); ``setup()`` gives the
  run's :class:`~optbench_jax.train.run.RunSetup`, called only when
  something has to be computed. Returns False when the run has to be
  trained again (damaged samples whose epoch's checkpoint is gone)."""
  run_dir = run.run_dir
  store.remove_partial_writes(run_dir)
  store.remove_partial_writes(os.path.join(run_dir, store.SAMPLES))
  if rc.checkpoint and _drop_damaged_epochs(run_dir, rc):
    return False
  damaged = store.damaged_samples(run_dir)
  initial_lost = rc.checkpoint and not checkpoint.initial_intact(run_dir)
  if damaged or initial_lost:
    built = setup()
    program = built.program(1)
    state = run_slice(program.initial_state(
        [rc.seed], [rc.learning_rate], built.example, [rc.traced_values]), 0)
    if damaged and not _rewrite_samples(run, rc, built, program, state,
                                        damaged):
      return False
    if initial_lost:
      checkpoints = Checkpoints(run_dir, rc.keep_checkpoints)
      checkpoints.save_initial(state.params)
      checkpoints.close()
  primary = Workload.of(rc).task.primary_metric
  if not all(os.path.exists(p) for p in plots.run_plot_paths(primary,
                                                             run_dir)):
    plots.plot_run(run_dir, rc, primary, run.history)
  return True


def _drop_damaged_epochs(run_dir: str, rc: RunConfig) -> bool:
  """Deletes the first damaged epoch checkpoint and every later one;
  whether there was one."""
  checkpoints = Checkpoints(run_dir, rc.keep_checkpoints)
  try:
    damaged = checkpoints.damaged_epochs()
    if damaged:
      checkpoints.drop_after(min(damaged) - 1)
  finally:
    checkpoints.close()
  return bool(damaged)


def _rewrite_samples(run: store.StoredRun, rc: RunConfig, setup, program,
                     like, damaged: dict) -> bool:
  """Evaluates each damaged sample file's epoch again from its checkpoint
  and rewrites the file; False if a checkpoint needed is not kept or
  cannot be read."""
  if not rc.checkpoint:
    return False
  last = run.metadata.get("epochs_run")
  checkpoints = Checkpoints(run.run_dir, rc.keep_checkpoints)
  try:
    kept = checkpoints.epochs()
    if any((last if e is None else e) not in kept for e in damaged.values()):
      return False
    for epoch in damaged.values():
      state = checkpoints.restore(last if epoch is None else epoch, like)
      split = setup.val if epoch is not None else setup.splits.test
      (metrics,) = program.evaluate(program.place(stack_runs([state])),
                                    setup.data(program, split))
      write_samples(run.run_dir, epoch, metrics)
  except store.DamagedFile:
    return False
  finally:
    checkpoints.close()
  return True
