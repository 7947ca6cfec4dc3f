"""Runs: (task, dataset, model, optimizer) + hyperparameters → results.

``train_runs`` trains runs that differ only in seed and learning rate
together, in one compiled program (``Program(runs=R)``: the train state is
``jax.vmap``-ed over a leading run axis). How many go together is chosen
from the compiled program's memory footprint and the device's free memory;
the rest follow in further chunks of the same size (a short last chunk is
padded with a copy whose results are discarded, so nothing recompiles). Each
run still gets its own directory and files, equal (to float tolerance) to
training it alone (``run_one``). Wall times of runs trained together are
the shared program's (``runs_in_program`` in the metadata says how many).

Writes, under the run directory, ``run_metadata.json`` (every setting, the
resolved learning rate, versions, device, seed, git commit, compile time,
status), ``history.json`` (one record per epoch), per-run plots and Orbax
checkpoints. A run whose training or validation loss becomes NaN/inf stops
and is recorded as ``diverged``. With ``resume=True`` a finished run is
skipped and an unfinished one continues from its last checkpoint; epoch keys
are derived from the seed and the epoch number, so the resumed run's results
equal an uninterrupted run's.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from optbench_jax import tasks, transforms
from optbench_jax.data.base import Splits
from optbench_jax.errors import OptBenchError
from optbench_jax.train import distributed
from optbench_jax.train import metadata as metadata_lib
from optbench_jax.train import optimizer as optimizer_lib
from optbench_jax.train import outputs, plots
from optbench_jax.train.checkpoint import Checkpoints
from optbench_jax.train.program import DATA_AXIS, Hyper, Program, unalias

FINISHED = ("completed", "diverged")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  task: str
  dataset: str
  model: str
  optimizer: str
  learning_rate: float
  epochs: int = 20
  batch_size: int = 128
  eval_batch_size: int = 512
  max_samples: Optional[int] = None
  seed: int = 0
  scheduler: str = "cosine"
  warmup_steps: int = 0
  grad_clip: Optional[float] = None
  label_smoothing: float = 0.0
  weight_decay: float = 0.0
  optimizer_hyperparameters: dict = dataclasses.field(default_factory=dict)
  val_fraction: float = 0.1
  checkpoint: bool = True
  split_seed: Optional[int] = None     # None: ``seed`` (metadata only here)
  precision: str = "fp32"
  devices: Optional[int] = None        # data-parallel devices; None: all
  data_placement: str = "auto"         # auto | device | host


DATA_PLACEMENTS = ("auto", "device", "host")
# Share of the free device memory the data may take and stay on the device.
DATA_ON_DEVICE_SHARE = 0.25
# Share of the free device memory a program (with its runs) may plan for.
PROGRAM_MEMORY_SHARE = 0.8


def run_dir_for(output_dir: str, rc: RunConfig, *, lr_dir: bool = False,
                seed_dir: bool = False) -> str:
  """``<output>/<task>/<dataset>/<model>/<optimizer>[/lr_<lr>][/seed_<s>]``."""
  parts = [output_dir, rc.task, rc.dataset, rc.model, rc.optimizer]
  if lr_dir:
    parts.append(f"lr_{rc.learning_rate:g}")
  if seed_dir:
    parts.append(f"seed_{rc.seed}")
  return os.path.join(*parts)


def run_label(rc: RunConfig, *, lr_dir: bool = False,
              seed_dir: bool = False) -> str:
  label = rc.optimizer
  if lr_dir:
    label += f" lr={rc.learning_rate:g}"
  if seed_dir:
    label += f" seed={rc.seed}"
  return label


def read_finished(run_dir: str) -> Optional[tuple[list, dict]]:
  """(history, metadata) of a finished run in ``run_dir``, else None."""
  meta_path = os.path.join(run_dir, "run_metadata.json")
  hist_path = os.path.join(run_dir, "history.json")
  if not (os.path.exists(meta_path) and os.path.exists(hist_path)):
    return None
  meta = outputs.read_json(meta_path)
  if meta.get("status") not in FINISHED:
    return None
  return outputs.read_json(hist_path), meta


def _finite(x) -> bool:
  return x is not None and math.isfinite(x)


def make_mesh(devices: Optional[int]) -> Optional[Mesh]:
  """A one-axis data-parallel mesh over ``devices`` local devices.

  ``None`` means all of them; one device means no mesh (the plain program).
  """
  if distributed.multi_process():
    # One mesh over every process's devices (see train/distributed.py).
    available = jax.devices()
    if devices not in (None, len(available)):
      raise OptBenchError(f"--devices {devices}: with --distributed the mesh "
                          f"spans all {len(available)} devices of the "
                          f"{jax.process_count()} processes")
    return Mesh(np.array(available), (DATA_AXIS,))
  available = jax.local_devices()
  count = len(available) if devices is None else devices
  if not 1 <= count <= len(available):
    raise OptBenchError(f"--devices {count}: this machine has "
                        f"{len(available)} {available[0].platform} device(s)")
  if count == 1:
    return None
  return Mesh(np.array(available[:count]), (DATA_AXIS,))


def free_device_memory(device=None) -> int:
  """Bytes free on ``device`` (accelerator) or in host RAM (CPU)."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def program_bytes(compiled) -> Optional[int]:
  """Peak device memory of a compiled program (arguments + outputs + temps)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # backend without it
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes
             - m.alias_size_in_bytes + m.temp_size_in_bytes)


def _nbytes(arrays) -> int:
  return int(sum(np.asarray(v).nbytes for v in arrays.values()))


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, i: Optional[int]):
  return tree if i is None else jax.tree.map(lambda x: x[i], tree)


def _shared(rc: RunConfig) -> RunConfig:
  return dataclasses.replace(rc, seed=0, learning_rate=0.0)


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


class _Setup:
  """What every chunk of a group shares: task, optimizer, hyper, data."""

  def __init__(self, rc: RunConfig, splits: Splits):
    if rc.data_placement not in DATA_PLACEMENTS:
      raise OptBenchError(f"unknown --data-placement {rc.data_placement!r}; "
                          f"valid: {', '.join(DATA_PLACEMENTS)}")
    self.rc, self.splits = rc, splits
    self.task = tasks.get(rc.task)
    self.spec = transforms.get(rc.optimizer)
    self.mesh = make_mesh(rc.devices)
    self.devices = 1 if self.mesh is None else self.mesh.devices.size
    self.n_train = len(next(iter(splits.train.values())))
    self.n_val = len(next(iter(splits.val.values())))
    self.steps_per_epoch = math.ceil(self.n_train / rc.batch_size)
    eval_batch = min(rc.eval_batch_size, self.n_val)
    eval_batch = -(-eval_batch // self.devices) * self.devices
    self.hyper = Hyper(batch_size=rc.batch_size, eval_batch_size=eval_batch,
                       total_steps=self.steps_per_epoch * rc.epochs,
                       scheduler=rc.scheduler, warmup_steps=rc.warmup_steps,
                       label_smoothing=rc.label_smoothing,
                       precision=rc.precision)
    self.free_memory = free_device_memory()
    data_bytes = _nbytes(splits.train) + _nbytes(splits.val)
    self.on_device = {"device": True, "host": False}.get(
        rc.data_placement, data_bytes <= DATA_ON_DEVICE_SHARE * self.free_memory)
    if not self.on_device and distributed.multi_process():
      raise OptBenchError("--data-placement host (streaming) is not "
                          "supported with --distributed yet; the splits "
                          "must fit on the devices")
    self.data_bytes = data_bytes if self.on_device else 0

  def program(self, runs: Optional[int], learning_rate: float) -> Program:
    rc = self.rc
    model = self.task.build_model(rc.model, self.splits.info)
    tx = optimizer_lib.build(rc.optimizer, learning_rate,
                             weight_decay=rc.weight_decay,
                             grad_clip=rc.grad_clip,
                             hyperparameters=rc.optimizer_hyperparameters)
    return Program(self.task, model, self.splits.info, self.spec, tx,
                   self.hyper, runs=runs, mesh=self.mesh)

  def data(self, program: Program, split) -> dict:
    arrays = {k: np.asarray(v) for k, v in split.items()}
    return program.place(arrays) if self.on_device else arrays


def _run_inputs(members: Sequence[_Member], runs: Optional[int]):
  """Initialisation keys, training keys and base learning rates of the runs
  (each key pair from the run's seed); stacked when ``runs`` is set."""
  pairs = [jax.random.split(jax.random.key(m.rc.seed)) for m in members]
  if runs is None:
    return (pairs[0][0], pairs[0][1],
            jnp.float32(members[0].rc.learning_rate))
  return (jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs]),
          jnp.asarray([m.rc.learning_rate for m in members], jnp.float32))


def _compile(setup: _Setup, program: Program, members, train_data):
  """AOT-compiles the epoch (abstract state: nothing is allocated)."""
  k_init, k_train, lrs = _run_inputs(members, program.runs)
  example = program.example(setup.splits.train)
  state = jax.eval_shape(lambda k, lr: program.init(k, example, lr),
                         k_init, lrs)
  sharding = program.sharding
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                      sharding=sharding), state)
  key = jax.ShapeDtypeStruct(k_train.shape, k_train.dtype, sharding=sharding)
  t0 = time.perf_counter()
  if setup.on_device:
    compiled = program.train_epoch.lower(state, train_data, key).compile()
  else:
    compiled = program.compile_streamed_step(state, train_data, key)
  return compiled, time.perf_counter() - t0


def train_runs(rcs: Sequence[RunConfig], splits: Splits,
               run_dirs: Sequence[str], *, resume: bool = False,
               on_epoch: Optional[Callable[[int, dict], None]] = None,
               max_together: Optional[int] = None,
               memory_budget: Optional[int] = None
               ) -> list[tuple[list[dict], dict]]:
  """Trains runs that differ only in seed / learning rate, together.

  Args:
    rcs: the runs; all fields but ``seed`` and ``learning_rate`` equal.
    run_dirs: one directory per run.
    resume: finished runs are read back, unfinished ones continue from their
      last common checkpoint (or restart when they have none in common).
    on_epoch: ``on_epoch(index_in_rcs, record)`` after each epoch of a run.
    max_together: at most this many runs in one program (None: memory-based).
    memory_budget: bytes a program may use (None: a share of free memory).

  Returns one ``(history, metadata)`` per run, in the order of ``rcs``.
  """
  if not rcs:
    return []
  if any(_shared(rc) != _shared(rcs[0]) for rc in rcs):
    raise OptBenchError("runs trained together may differ only in seed and "
                        "learning rate")
  results: list = [None] * len(rcs)
  pending = []
  for i, (rc, run_dir) in enumerate(zip(rcs, run_dirs)):
    finished = read_finished(run_dir) if resume else None
    if finished is not None:
      results[i] = finished
    else:
      pending.append(i)
  if not pending:
    return results
  setup = _Setup(rcs[0], splits)
  budget = memory_budget or int(PROGRAM_MEMORY_SHARE * setup.free_memory)
  size = min(len(pending), max_together or len(pending))
  compiled = None
  while pending:
    members = [_Member(rcs[i], run_dirs[i]) for i in pending[:size]]
    members += [_Member(members[-1].rc, None)
                for _ in range(size - len(members))]
    runs = None if size == 1 and len(rcs) == 1 else size
    if compiled is None or compiled[0].runs != runs:
      program = setup.program(runs, members[0].rc.learning_rate)
      train_data = setup.data(program, splits.train)
      executable, compile_time = _compile(setup, program, members, train_data)
      need = program_bytes(executable)
      if (max_together is None and runs is not None and need is not None
          and need > budget and size > 1):
        per_run = max(1, (need - setup.data_bytes) // size)
        size = max(1, min(size - 1, (budget - setup.data_bytes) // per_run))
        continue  # recompile for fewer runs
      compiled = (program, train_data, executable, compile_time, need)
    program, train_data, executable, compile_time, need = compiled
    chunk = pending[:size]
    callback = None
    if on_epoch is not None:
      callback = lambda j, record, chunk=chunk: on_epoch(chunk[j], record)
    _train_chunk(setup, program, members, train_data, executable,
                 compile_time, need, resume=resume, on_epoch=callback)
    for j, member in enumerate(members):
      if member.run_dir is not None:
        results[pending[j]] = (member.history, member.meta)
    pending = pending[size:]
  return results


def run_one(rc: RunConfig, splits: Splits, run_dir: str, *,
            resume: bool = False,
            on_epoch: Optional[Callable[[dict], None]] = None
            ) -> tuple[list[dict], dict]:
  """Trains one run; returns ``(history, metadata)``."""
  callback = (lambda _, record: on_epoch(record)) if on_epoch else None
  return train_runs([rc], splits, [run_dir], resume=resume,
                    on_epoch=callback)[0]


def _base_metadata(setup: _Setup, rc: RunConfig) -> dict:
  splits, task, spec = setup.splits, setup.task, setup.spec
  return {**dataclasses.asdict(rc), "primary_metric": task.primary_metric,
          "higher_is_better": task.higher_is_better,
          "optimizer_family": spec.family,
          "optimizer_defaults": dict(spec.hyperparameters),
          "weight_decay_mode": spec.weight_decay,
          "optimizer_needs": sorted(spec.needs),
          "dataset_info": {"num_classes": splits.info.num_classes,
                           "input_shape": list(splits.info.input_shape),
                           "source": splits.info.source,
                           "mean": splits.info.mean, "std": splits.info.std},
          "n_train": setup.n_train, "n_val": setup.n_val,
          "n_test": (len(next(iter(splits.test.values())))
                     if splits.test else 0),
          "steps_per_epoch": setup.steps_per_epoch,
          "convergence_rule": f"first epoch after which val loss never "
                              f"improves by > {outputs.CONVERGENCE_RTOL:.0%} "
                              f"(relative) on the best so far",
          "data_parallel_devices": setup.devices,
          "data_on_device": setup.on_device,
          "versions": metadata_lib.package_versions(),
          "device": metadata_lib.device_description(),
          "git_commit": metadata_lib.git_commit(), "status": "running"}


def _common_resume_epoch(members) -> Optional[int]:
  common = None
  for m in members:
    if m.run_dir is None:
      continue
    usable = set(_usable_epochs(m.checkpoints, m.run_dir))
    common = usable if common is None else common & usable
  return max(common) if common else None


def _train_chunk(setup: _Setup, program: Program, members: list[_Member],
                 train_data, executable, compile_time: float,
                 need: Optional[int], *, resume: bool, on_epoch) -> None:
  rc0, splits, task = members[0].rc, setup.splits, setup.task
  runs = program.runs
  index = (lambda j: None) if runs is None else (lambda j: j)
  real = [m for m in members if m.run_dir is not None]
  for m in real:
    os.makedirs(m.run_dir, exist_ok=True)
    m.meta = {**_base_metadata(setup, m.rc),
              "runs_in_program": runs or 1, "program_bytes": need}
    if m.rc.checkpoint and not resume and distributed.is_primary():
      shutil.rmtree(os.path.join(m.run_dir, "checkpoints"),
                    ignore_errors=True)
  distributed.barrier("checkpoints-cleared")
  for m in real:
    if m.rc.checkpoint:
      m.checkpoints = Checkpoints(m.run_dir)

  key_init, key_train, lrs = _run_inputs(members, runs)
  state = unalias(program.place(
      program.init(key_init, program.example(splits.train), lrs)))
  start_epoch = 0
  resume_epoch = (_common_resume_epoch(real) if resume and rc0.checkpoint
                  else None)
  if resume_epoch is not None:
    restored = []
    for j, m in enumerate(members):
      like = _member(state, index(j))
      source = m if m.run_dir is not None else real[-1]
      restored.append(source.checkpoints.restore(resume_epoch, like))
      if m.run_dir is not None:
        m.history = [h for h in outputs.read_json(
            os.path.join(m.run_dir, "history.json"))
            if h["epoch"] <= resume_epoch]
    state = restored[0] if runs is None else _stack(restored)
    state = unalias(program.place(state))
    start_epoch = resume_epoch
  else:
    for j, m in enumerate(real):
      if m.checkpoints is None:
        continue
      if m.checkpoints.epochs():  # stale epochs of an unresumable attempt
        m.checkpoints.close()
        distributed.barrier("stale-checkpoints-closed")
        if distributed.is_primary():
          shutil.rmtree(os.path.join(m.run_dir, "checkpoints"))
        distributed.barrier("stale-checkpoints-removed")
        m.checkpoints = Checkpoints(m.run_dir)
      m.checkpoints.save_initial(_member(state.params, index(j)))
  val_data = setup.data(program, splits.val)
  for m in real:
    m.meta["compile_time_s"] = compile_time
    outputs.write_json(os.path.join(m.run_dir, "run_metadata.json"), m.meta)

  fold = (jax.random.fold_in if runs is None else
          jax.vmap(jax.random.fold_in, in_axes=(0, None)))
  epoch_key = lambda e: program.place(fold(key_train, e))
  train = executable if setup.on_device else (
      lambda s, d, k: program.train_epoch_streamed(s, d, k, step=executable))

  for epoch in range(start_epoch, rc0.epochs):
    t_train = time.perf_counter()
    if program.needs_epoch_start:
      state = unalias(program.epoch_start(state, train_data))
    state, train_metrics = train(state, train_data, epoch_key(epoch))
    train_metrics = distributed.to_host(train_metrics)
    train_time = time.perf_counter() - t_train
    t_eval = time.perf_counter()
    evaluated = _evaluate(task, program, state, val_data, splits)
    eval_time = time.perf_counter() - t_eval
    val_losses = []
    for j, m in enumerate(members):
      metrics = dict(evaluated[j])
      val_losses.append(metrics["loss"])
      if not m.live or m.run_dir is None:
        continue
      tm = _member(train_metrics, index(j))
      train_loss = float(tm["loss_sum"]) / max(float(tm["count"]), 1.0)
      diverged = (not bool(tm["finite"]) or not _finite(train_loss)
                  or not _finite(metrics["loss"]))
      record = {"epoch": epoch + 1, "train_loss": train_loss,
                "val_loss": metrics.pop("loss"), **metrics,
                "learning_rate": float(tm["learning_rate"]),
                "grad_norm": float(tm["grad_norm"]),
                "train_time_s": train_time, "eval_time_s": eval_time,
                "status": "diverged" if diverged else "ok"}
      m.history.append(record)
      if diverged:
        m.status, m.live = "diverged", False
    if rc0.scheduler == "plateau":
      losses = [v if _finite(v) else 0.0 for v in val_losses]
      state = program.update_plateau(
          state, jnp.float32(losses[0]) if runs is None
          else jnp.asarray(losses, jnp.float32))
    # Checkpoint first, then the history: a kill between the two repeats the
    # epoch on resume (deterministically), never loses it.
    for j, m in enumerate(members):
      if m.run_dir is None or not m.history or m.history[-1]["epoch"] != epoch + 1:
        continue
      if m.live and m.checkpoints is not None:
        m.checkpoints.save(epoch + 1, _member(state, index(j)))
      outputs.write_json(os.path.join(m.run_dir, "history.json"), m.history)
      if on_epoch is not None:
        on_epoch(j, m.history[-1])
    if not any(m.live for m in real):
      break

  if splits.test and any(m.status == "completed" for m in real):
    test = _evaluate(task, program, state, setup.data(program, splits.test),
                     splits)
    for j, m in enumerate(members):
      if m.run_dir is not None and m.status == "completed":
        m.meta["test_metrics"] = test[j]
  for m in real:
    if m.checkpoints is not None:
      m.checkpoints.close()
    m.meta.update(status=m.status, epochs_run=len(m.history),
                  total_runtime_s=compile_time + sum(
                      h["train_time_s"] + h["eval_time_s"] for h in m.history))
    outputs.write_json(os.path.join(m.run_dir, "run_metadata.json"), m.meta)
    title = f"{m.rc.optimizer} — {m.rc.model} on {m.rc.dataset}"
    plots.run_plots(m.history, task.primary_metric, title, m.run_dir)


def _usable_epochs(checkpoints: Optional[Checkpoints], run_dir: str
                   ) -> list[int]:
  """Epochs that have both a checkpoint and an ``ok`` history record."""
  hist_path = os.path.join(run_dir, "history.json")
  if checkpoints is None or not os.path.exists(hist_path):
    return []
  recorded = {h["epoch"] for h in outputs.read_json(hist_path)
              if h.get("status") == "ok"}
  return [e for e in checkpoints.epochs() if e in recorded]


def _evaluate(task, program, state, data, splits: Splits) -> list[dict]:
  """The task's metrics, one dict per run of the program."""
  totals, gathered, mask = distributed.to_host(program.evaluate(state, data))
  keep = np.asarray(mask) > 0
  results = []
  for j in range(program.runs or 1):
    i = None if program.runs is None else j
    member_totals = _member(totals, i)
    if task.gathered_stats:
      member_totals = {**member_totals, **{
          k: np.asarray(_member(v, i))[keep] for k, v in gathered.items()}}
    results.append(task.finalize(member_totals, splits.info))
  return results
