"""Runs: the host's side of training — chunking, resume and files.

``train_runs`` trains runs that differ only in seed and learning rate
together, in one compiled :class:`~optbench_jax.engine.program.Program`
(everything compiled lives there). How many go together is chosen from the
compiled program's memory footprint and the device's free memory; the rest
follow in further chunks of the same size (a short last chunk is padded with
a copy whose results are discarded, so nothing recompiles). Each run gets
its own directory and files, equal (to float tolerance) to training it alone
(``run_one``): its keys come from its own seed, the split from
``split_seed``. Wall times of runs trained together are the shared
program's (``runs_in_program`` in the metadata says how many).

Writes, under the run directory, ``run_metadata.json`` (every setting, the
resolved learning rate, versions, device, seed, git commit, compile time,
status), ``history.json`` (one record per epoch), per-run plots and Orbax
checkpoints. A run whose training or validation loss becomes NaN/inf stops
and is recorded as ``diverged``. With ``resume=True`` a finished run is
skipped (its damaged files healed: :mod:`~optbench_jax.train.heal`) and an
unfinished one continues from its last checkpoint; epoch keys are derived
from the seed and the epoch number, so the resumed run's results equal an
uninterrupted run's.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from typing import Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from optbench_jax import data as data_lib
from optbench_jax import store, transforms
from optbench_jax.data.base import Splits
from optbench_jax.errors import OptBenchError
from optbench_jax.train import heal, outputs, plots
from optbench_jax.engine import distributed, memory
from optbench_jax.train import resume as resume_lib
from optbench_jax.train import metadata as metadata_lib
from optbench_jax.engine import optimizer as optimizer_lib
from optbench_jax.train.checkpoint import Checkpoints
from optbench_jax.train.plan import RunSpec
from optbench_jax.engine.program import Compiled, Hyper, Program
from optbench_jax.train.settings import RunConfig
from optbench_jax.engine.state import run_slice, unalias
from optbench_jax.workload import Workload

def _finite(x) -> bool:
  return x is not None and math.isfinite(x)


def _first(split, n: Optional[int]):
  """The first ``n`` examples of ``split`` (all for None; no split stays
  none)."""
  if not split or n is None:
    return split
  return data_lib.take(split, np.arange(min(n, data_lib.num_examples(split))))


def program_key(rc: RunConfig) -> RunConfig:
  """What runs trained in one program share: everything but the seed, the
  learning rate and the traced hyperparameters' values (and the trial
  number)."""
  traced = set(rc.traced_hyperparameters)
  return dataclasses.replace(
      rc, seed=0, learning_rate=1.0, trial=None,
      weight_decay=None if "weight_decay" in traced else rc.weight_decay,
      optimizer_hyperparameters={
          k: v for k, v in rc.optimizer_hyperparameters.items()
          if k not in traced})


@dataclasses.dataclass
class _Member:
  """One run of a program: its config, directory and bookkeeping."""
  rc: RunConfig
  run_dir: Optional[str]      # None: padding (trained, results discarded)
  meta: dict = dataclasses.field(default_factory=dict)
  history: list = dataclasses.field(default_factory=list)
  checkpoints: Optional[Checkpoints] = None
  status: str = "completed"
  live: bool = True


class RunSetup:
  """What every chunk of a group shares: task, optimizer, hyper, data."""

  def __init__(self, rc: RunConfig, splits: Splits):
    self.workload = Workload.of(rc)
    self.task = self.workload.task
    if not splits.info.stats:
      raise OptBenchError(
          "the splits are not fitted by the task: make them with "
          "optbench_jax.workload.Workload.splits (load, prepare and fit)")
    self.rc, self.splits = rc, splits
    self.spec = transforms.get(rc.optimizer)
    self.mesh = distributed.make_mesh(rc.devices)
    self.devices = 1 if self.mesh is None else self.mesh.devices.size
    self.val = _first(splits.val, rc.eval_max_samples)
    self.test = _first(splits.test, rc.test_max_samples)
    self.n_train = data_lib.num_examples(splits.train)
    self.n_val = data_lib.num_examples(self.val)
    self.steps_per_epoch = math.ceil(self.n_train / rc.batch_size)
    eval_batch = min(rc.eval_batch_size, self.n_val)
    eval_batch = -(-eval_batch // self.devices) * self.devices
    self.hyper = Hyper(batch_size=rc.batch_size, eval_batch_size=eval_batch,
                       total_steps=self.steps_per_epoch * rc.epochs,
                       scheduler=rc.scheduler, warmup_steps=rc.warmup_steps,
                       label_smoothing=rc.label_smoothing,
                       precision=rc.precision)
    self.free_memory = memory.free_device_memory()
    data_bytes = memory.nbytes(splits.train) + memory.nbytes(self.val)
    self.on_device = {"device": True, "host": False}.get(
        rc.data_placement,
        data_bytes <= memory.DATA_ON_DEVICE_SHARE * self.free_memory)
    if not self.on_device and distributed.multi_process():
      raise OptBenchError("--data-placement host (streaming) is not "
                          "supported with --distributed yet; the splits "
                          "must fit on the devices")
    self.data_bytes = data_bytes if self.on_device else 0
    self.example = Program.example(splits.train)
    self.pretrained = self.workload.pretrained(rc)

  def program(self, runs: int) -> Program:
    rc = self.rc
    model = self.workload.build_model(self.splits.info, init=rc.init,
                                      width=rc.width)
    tx = optimizer_lib.build(rc.optimizer, rc.learning_rate,
                             weight_decay=rc.weight_decay,
                             grad_clip=rc.grad_clip,
                             hyperparameters=rc.optimizer_hyperparameters,
                             exclude_bias_norm=rc.exclude_bias_norm,
                             traced=rc.traced_hyperparameters)
    return Program(self.task, model, self.splits.info, self.spec, tx,
                   self.hyper, runs=runs, mesh=self.mesh,
                   pretrained=self.pretrained,
                   optimizer_keywords=rc.optimizer_hyperparameters)

  def data(self, program: Program, split) -> dict:
    arrays = {k: np.asarray(v) for k, v in split.items()}
    return program.place(arrays) if self.on_device else arrays

  def compile(self, program: Program, members, train_data) -> Compiled:
    return program.compile([m.rc.seed for m in members],
                           [m.rc.learning_rate for m in members], train_data,
                           self.example, on_device=self.on_device,
                           hyperparameters=[m.rc.traced_values
                                            for m in members])


def train_runs(runs: Sequence[RunSpec], splits: Splits, *,
               resume: bool = False,
               on_epoch: Optional[Callable[[int, dict], None]] = None,
               max_together: Optional[int] = None,
               memory_budget: Optional[int] = None,
               stored: Optional[Mapping[str, store.StoredRun]] = None
               ) -> list[tuple[list[dict], dict]]:
  """Trains runs that differ only in seed, learning rate and traced
  hyperparameters (tuning trials), together.

  Args:
    runs: the runs, as the plan resolved them (``plan.make_plan``'s
      ``runs_of(optimizer)``, or ``plan.plan_runs`` for runs given one by
      one); all settings but ``seed``, ``learning_rate`` and the traced
      hyperparameters' values equal (:func:`program_key`).
    splits: the fitted data (``Workload.splits``).
    resume: finished runs are read back (their damaged files healed:
      :mod:`~optbench_jax.train.heal`), unfinished ones continue from their
      last common checkpoint (or restart when they have none in common).
      Whether the stored runs are this plan's was checked at the plan's
      edge (``plan.check_store``).
    on_epoch: ``on_epoch(index_in_runs, record)`` after each epoch of a run.
    max_together: at most this many runs in one program (None: memory-based).
    memory_budget: bytes a program may use (None: a share of free memory).
    stored: the runs on disk by directory, as ``plan.check_store`` read
      them (None, or a directory not in it: read here).

  Returns one ``(history, metadata)`` per run, in the order of ``runs``.
  """
  if not runs:
    return []
  rcs = [spec.config for spec in runs]
  run_dirs = [spec.run_dir for spec in runs]
  if any(program_key(rc) != program_key(rcs[0]) for rc in rcs):
    raise OptBenchError("runs trained together may differ only in seed, "
                        "learning rate and traced hyperparameters")
  results: list = [None] * len(rcs)
  pending = []
  setup = None

  def setup_of() -> RunSetup:   # the group's, built once, when needed
    nonlocal setup
    if setup is None:
      setup = RunSetup(rcs[0], splits)
    return setup

  for i, (rc, run_dir) in enumerate(zip(rcs, run_dirs)):
    finished = None
    if resume:
      run = (stored or {}).get(run_dir) or store.read_run(run_dir)
      finished = run if run.finished else None
    if finished is not None and heal.heal_finished(finished, rc, setup_of):
      results[i] = (finished.history, finished.metadata)
    else:
      pending.append(i)
  if not pending:
    return results
  setup = setup_of()
  budget = memory_budget or int(memory.PROGRAM_MEMORY_SHARE *
                                setup.free_memory)
  size = min(len(pending), max_together or len(pending))
  program = compiled = train_data = None
  while pending:
    members = [_Member(rcs[i], run_dirs[i]) for i in pending[:size]]
    members += [_Member(members[-1].rc, None)
                for _ in range(size - len(members))]
    if program is None or program.runs != size:
      program = setup.program(size)
      train_data = setup.data(program, splits.train)
      compiled = setup.compile(program, members, train_data)
      if (max_together is None and compiled.bytes is not None
          and compiled.bytes > budget and size > 1):
        size = memory.runs_that_fit(compiled.bytes, size, budget,
                                    setup.data_bytes)
        program = None
        continue  # recompile for fewer runs
    chunk = pending[:size]
    callback = None
    if on_epoch is not None:
      callback = lambda j, record, chunk=chunk: on_epoch(chunk[j], record)
    _train_chunk(setup, program, compiled, train_data, members,
                 resume=resume, on_epoch=callback)
    for j, member in enumerate(members):
      if member.run_dir is not None:
        results[pending[j]] = (member.history, member.meta)
    pending = pending[size:]
  return results


def run_one(spec: RunSpec, splits: Splits, *, resume: bool = False,
            on_epoch: Optional[Callable[[dict], None]] = None
            ) -> tuple[list[dict], dict]:
  """Trains one run; returns ``(history, metadata)``."""
  callback = (lambda _, record: on_epoch(record)) if on_epoch else None
  return train_runs([spec], splits, resume=resume, on_epoch=callback)[0]


def _base_metadata(setup: RunSetup, rc: RunConfig) -> dict:
  splits, task, spec = setup.splits, setup.task, setup.spec
  info = splits.info
  return {**dataclasses.asdict(rc), "primary_metric": task.primary_metric,
          "higher_is_better": task.higher_is_better,
          "optimizer_family": spec.family,
          "optimizer_defaults": dict(spec.hyperparameters),
          "weight_decay_mode": spec.weight_decay,
          "optimizer_needs": sorted(spec.needs),
          "dataset_info": {"num_classes": info.num_classes,
                           "input_shape": list(info.input_shape),
                           "source": info.source,
                           "stats": metadata_lib.describe_stats(info.stats),
                           "provenance": dict(info.provenance)},
          "max_samples_unit": task.sample_unit,
          "n_train": setup.n_train, "n_val": setup.n_val,
          "n_test": (data_lib.num_examples(setup.test)
                     if setup.test else 0),
          "steps_per_epoch": setup.steps_per_epoch,
          "convergence_rule": f"first epoch after which val loss never "
                              f"improves by > {outputs.CONVERGENCE_RTOL:.0%} "
                              f"(relative) on the best so far",
          "data_parallel_devices": setup.devices,
          "data_on_device": setup.on_device,
          "versions": metadata_lib.package_versions(),
          "device": metadata_lib.device_description(),
          "git_commit": metadata_lib.git_commit(), "status": "running"}


def _open_runs(setup: RunSetup, members, compiled: Compiled, runs: int,
               resume: bool) -> None:
  """Creates the run directories, their metadata and checkpoint managers."""
  real = [m for m in members if m.run_dir is not None]
  for m in real:
    os.makedirs(m.run_dir, exist_ok=True)
    store.remove_partial_writes(m.run_dir)
    store.remove_partial_writes(os.path.join(m.run_dir, store.SAMPLES))
    m.meta = {**_base_metadata(setup, m.rc), "runs_in_program": runs,
              "program_bytes": compiled.bytes,
              "compile_time_s": compiled.compile_time_s}
    if m.rc.checkpoint and not resume and distributed.is_primary():
      shutil.rmtree(os.path.join(m.run_dir, store.CHECKPOINTS),
                    ignore_errors=True)
  distributed.barrier("checkpoints-cleared")
  for m in real:
    if m.rc.checkpoint:
      m.checkpoints = Checkpoints(m.run_dir, m.rc.keep_checkpoints)


def _diverged(m: _Member, train_finite: bool, train_loss: float,
              val_loss: Optional[float]) -> bool:
  """NaN/inf losses; with ``divergence_factor`` also losses above that
  multiple of the first epoch's training loss."""
  losses = [train_loss] + ([] if val_loss is None else [val_loss])
  if not train_finite or not all(_finite(x) for x in losses):
    return True
  factor = m.rc.divergence_factor
  if factor is None:
    return False
  reference = m.history[0]["train_loss"] if m.history else train_loss
  return max(losses) > factor * reference


def _record(m: _Member, epoch: int, train_metrics: dict,
            metrics: Optional[dict], times: tuple[float, float],
            steps: int) -> dict:
  """The history record of one run's epoch; marks a diverged run."""
  train_loss = float(train_metrics["loss_sum"]) / max(
      float(train_metrics["count"]), 1.0)
  metrics = dict(metrics or {"loss": None})
  heal.write_samples(m.run_dir, epoch + 1, metrics)
  val_loss = metrics.pop("loss")
  diverged = _diverged(m, bool(train_metrics["finite"]), train_loss, val_loss)
  record = {"epoch": epoch + 1, "train_loss": train_loss,
            "val_loss": val_loss, **metrics,
            "learning_rate": float(train_metrics["learning_rate"]),
            "grad_norm": float(train_metrics["grad_norm"]),
            "train_time_s": times[0], "eval_time_s": times[1],
            **outputs.cumulative(m.history, train_metrics, steps,
                                 times[0]),
            "status": "diverged" if diverged else "ok"}
  if diverged:
    m.status, m.live = "diverged", False
  return record


def _evaluates(rc: RunConfig, epoch: int) -> bool:
  """Whether the validation split is evaluated after ``epoch`` (0-based)."""
  return (epoch + 1) % rc.eval_every == 0 or epoch + 1 == rc.epochs


def _train_chunk(setup: RunSetup, program: Program, compiled: Compiled,
                 train_data, members: list[_Member], *, resume: bool,
                 on_epoch) -> None:
  rc = setup.rc
  _open_runs(setup, members, compiled, program.runs, resume)
  state, start_epoch = resume_lib.initial_state(setup, program, members,
                                                resume)
  val_data = setup.data(program, setup.val)
  real = [m for m in members if m.run_dir is not None]
  for m in real:
    store.write_json(os.path.join(m.run_dir, store.METADATA), m.meta)
  _, train_keys = program.run_keys([m.rc.seed for m in members])

  for epoch in range(start_epoch, rc.epochs):
    t_train = time.perf_counter()
    if program.needs_epoch_start:
      state = unalias(program.epoch_start(state, train_data))
    state, train_metrics = compiled.run_epoch(
        state, train_data, program.epoch_keys(train_keys, epoch))
    train_metrics = distributed.to_host(train_metrics)
    for k, v in program.epoch_start_cost(setup.n_train).items():
      train_metrics[k] = train_metrics[k] + v
    train_time = time.perf_counter() - t_train
    t_eval = time.perf_counter()
    evaluated = (program.evaluate(state, val_data) if _evaluates(rc, epoch)
                 else [None] * program.runs)
    times = (train_time, time.perf_counter() - t_eval)
    measured = _sharpness(setup, program, state, train_keys, epoch)
    for j, m in enumerate(members):
      if m.live and m.run_dir is not None:
        m.history.append(_record(m, epoch, run_slice(train_metrics, j),
                                 evaluated[j], times, setup.steps_per_epoch))
        m.history[-1].update(run_slice(measured, j))
    if rc.scheduler == "plateau" and evaluated[0] is not None:
      losses = [v["loss"] if _finite(v["loss"]) else 0.0 for v in evaluated]
      state = program.update_plateau(state, np.asarray(losses, np.float32))
    _save_epoch(members, state, epoch, on_epoch)
    if not any(m.live for m in real):
      break
  _finish(setup, program, members, state)


# Folded into a run's training key: the stream of its sharpness
# measurements' keys (then folded with the epoch), apart from the epochs'.
_SHARPNESS_STREAM = 0x5348


def _sharpness(setup: RunSetup, program: Program, state, train_keys,
               epoch: int) -> dict:
  """``--track-sharpness``: ``{key: values over runs}`` of this epoch's
  measurement (:mod:`~optbench_jax.engine.sharpness`), or ``{}``; a
  non-finite value (a diverged run) is None."""
  every = setup.rc.track_sharpness
  if not every or (epoch + 1) % every:
    return {}
  train = setup.splits.train
  size = min(setup.hyper.eval_batch_size, setup.n_train)
  batch = {k: np.asarray(v[:size]) for k, v in train.items()}
  batch["mask"] = np.ones(size, np.float32)
  keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(train_keys,
                                                         _SHARPNESS_STREAM)
  values = program.measure_sharpness(state, program.place(batch),
                                     program.epoch_keys(keys, epoch))
  number = lambda k, x: (None if not math.isfinite(x) else
                         int(x) if k.endswith(("iterations", "probes"))
                         else float(x))
  return {k: np.asarray([number(k, x) for x in np.asarray(v, np.float64)],
                        object) for k, v in values.items()}


def _save_epoch(members, state, epoch: int, on_epoch) -> None:
  """Checkpoint first, then the history: a kill between the two repeats the
  epoch on resume (deterministically), never loses it."""
  for j, m in enumerate(members):
    if (m.run_dir is None or not m.history
        or m.history[-1]["epoch"] != epoch + 1):
      continue
    if m.live and m.checkpoints is not None:
      m.checkpoints.save(epoch + 1, run_slice(state, j))
    store.write_json(os.path.join(m.run_dir, store.HISTORY), m.history)
    if on_epoch is not None:
      on_epoch(j, m.history[-1])


def _finish(setup: RunSetup, program: Program, members, state) -> None:
  """Test metrics, final metadata and plots of the chunk's runs."""
  real = [m for m in members if m.run_dir is not None]
  if setup.test and any(m.status == "completed" for m in real):
    test = program.evaluate(state, setup.data(program, setup.test))
    for j, m in enumerate(members):
      if m.run_dir is not None and m.status == "completed":
        metrics = dict(test[j])
        heal.write_samples(m.run_dir, None, metrics)
        m.meta["test_metrics"] = metrics
  for m in real:
    if m.checkpoints is not None:
      m.checkpoints.close()
    m.meta.update(status=m.status, epochs_run=len(m.history),
                  total_runtime_s=m.meta["compile_time_s"] + sum(
                      h["train_time_s"] + h["eval_time_s"] for h in m.history))
    plots.plot_run(m.run_dir, m.rc, setup.task.primary_metric, m.history)
    # The metadata says "completed" only once everything else is written.
    store.write_json(os.path.join(m.run_dir, store.METADATA), m.meta)
