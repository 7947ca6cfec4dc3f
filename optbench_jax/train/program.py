"""The compiled program of one run, or of several runs trained together.

``train_step(state, batch, key) -> (state, metrics)`` is a pure function that
knows neither the task nor the optimizer: the task supplies the loss and
metrics, the optimizer registry supplies the transformation and the list of
extras it needs. ``train_epoch`` shuffles, batches (the last batch padded and
masked), augments and steps through a whole epoch as one ``lax.scan`` on the
device, returning summed metrics once per epoch; ``evaluate`` likewise steps
through the evaluation split and returns the task's accumulated statistics.

Three orthogonal options change how, never what, the program computes:

* ``runs=R`` — R runs (seeds × learning rates) in one program: every function
  is ``jax.vmap``-ed over a leading run axis (named ``RUN_AXIS``, so that
  optimizers' periodic ``lax.cond`` stay branches: ``transforms.any_run``)
  of the state and of the keys; the data are shared, each run has its own
  data order, augmentation and dropout keys and its own (traced) base
  learning rate.
* ``mesh`` — data parallel: the batch is sharded over the mesh's ``data``
  axis (``NamedSharding``), parameters and state replicated; XLA's SPMD
  partitioner inserts the gradient all-reduce.
* ``Hyper.precision="bf16"`` — the model computes in bfloat16 (its ``dtype``
  field); parameters, gradients, optimizer state and the loss stay float32.

Datasets that fit on the device are gathered inside the compiled epoch
(``train_epoch``); larger ones are batched on the host and streamed with a
prefetching thread into the same step (``train_epoch_streamed``), with the
same batches and keys.
"""
from __future__ import annotations

import dataclasses
import math
import queue
import threading
from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optbench_jax.data.base import DatasetInfo
from optbench_jax.errors import OptBenchError
from optbench_jax.models.layers import KFAC_INPUTS, PERTURBATIONS, layer_statistics
from optbench_jax.tasks.base import Task
from optbench_jax.train import distributed
from optbench_jax.train import optimizer as optimizer_lib
from optbench_jax.train import schedules
from optbench_jax.transforms import OptimizerSpec, build_extras
from optbench_jax.transforms.base import RUN_AXIS

_CAPTURE_COLLECTIONS = (KFAC_INPUTS, PERTURBATIONS)
# Dropout key of the full-gradient pass (deterministic, never a training key).
_FULL_GRADIENT_SEED = 2**31 - 1
PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
DATA_AXIS = "data"
# Batches the streaming pipeline prepares ahead of the device.
PREFETCH = 2


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any          # non-parameter collections (batch_stats)
  opt_state: Any
  plateau: Any              # reduce_on_plateau state (epoch-level)
  base_lr: jax.Array


@dataclasses.dataclass(frozen=True)
class Hyper:
  """The static settings a program is compiled for."""
  batch_size: int
  eval_batch_size: int
  total_steps: int
  scheduler: str = "cosine"
  warmup_steps: int = 0
  label_smoothing: float = 0.0
  precision: str = "fp32"


def with_compute_dtype(model: nn.Module, precision: str) -> nn.Module:
  """The model computing in ``precision`` (its parameters stay float32)."""
  if precision not in PRECISIONS:
    raise OptBenchError(f"unknown --precision {precision!r}; valid: "
                        f"{', '.join(PRECISIONS)}")
  if precision == "fp32":
    return model
  if "dtype" not in {f.name for f in dataclasses.fields(model)}:
    raise OptBenchError(f"model {type(model).__name__} has no compute dtype "
                        f"field, so --precision {precision} cannot apply")
  return model.clone(dtype=PRECISIONS[precision])


def _to_float32(tree):
  """Low-precision floating leaves → float32 (losses, metrics, statistics)."""
  def cast(x):
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and (
        jnp.finfo(x.dtype).bits < 32):
      return x.astype(jnp.float32)
    return x
  return jax.tree.map(cast, tree)


class Program:
  """Builds and jit-compiles the functions of one (task, model, optimizer).

  Args:
    runs: ``None`` for one run; ``R`` for R runs stacked on a leading axis of
      the state, the keys and the base learning rates (see module docstring).
    mesh: a one-axis (``"data"``) device mesh for data parallelism, or None.
  """

  def __init__(self, task: Task, model: nn.Module, info: DatasetInfo,
               spec: OptimizerSpec, tx: optax.GradientTransformation,
               hyper: Hyper, *, runs: Optional[int] = None,
               mesh: Optional[Mesh] = None):
    self.task, self.info = task, info
    self.model = with_compute_dtype(model, hyper.precision)
    self.spec, self.tx, self.hyper = spec, tx, hyper
    self.runs, self.mesh = runs, mesh
    if mesh is not None:
      devices = mesh.devices.size
      for name, size in (("--batch-size", hyper.batch_size),
                         ("evaluation batch size", hyper.eval_batch_size)):
        if size % devices:
          raise OptBenchError(f"{name} {size} is not divisible by the "
                              f"{devices} devices of the data-parallel mesh")
    self.lr_shape = schedules.shape(hyper.scheduler, hyper.total_steps,
                                    hyper.warmup_steps)
    self.plateau = schedules.plateau()
    over_runs = self._over_runs
    self.init = jax.jit(over_runs(self._init, (0, None, 0)),
                        static_argnums=1)
    self.train_epoch = jax.jit(over_runs(self._train_epoch, (0, None, 0)),
                               donate_argnums=0)
    self.eval_batch = jax.jit(over_runs(self._eval_batch, (0, None, None, None)))
    self.eval_streamed_batch = jax.jit(over_runs(self._eval_streamed_batch,
                                                 (0, None)))
    self._add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
    self.update_plateau = jax.jit(over_runs(self._update_plateau, (0, 0)))
    self.epoch_start = jax.jit(over_runs(self._epoch_start, (0, None)),
                               donate_argnums=0)
    self.epoch_plan = jax.jit(over_runs(self._epoch_plan, (None, 0)),
                              static_argnums=0)
    self.streamed_step = jax.jit(
        over_runs(self._step_and_accumulate, (0, 0, None, 0, 0)), donate_argnums=(0, 4))

  def _over_runs(self, fn, in_axes):
    if self.runs is None:
      return fn
    return jax.vmap(fn, in_axes=in_axes, axis_name=RUN_AXIS)

  def _shard(self, batch):
    """Shards the batch axis over the mesh (a no-op without a mesh)."""
    if self.mesh is None:
      return batch
    return jax.lax.with_sharding_constraint(batch, self.batch_sharding())

  @property
  def sharding(self) -> jax.sharding.Sharding:
    """Where state and data live: replicated over the mesh, or device 0."""
    if self.mesh is None:
      return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return NamedSharding(self.mesh, PartitionSpec())

  def batch_sharding(self, leading: int = 0) -> jax.sharding.Sharding:
    """A host batch's placement: split over the mesh on the batch axis."""
    if self.mesh is None:
      return self.sharding
    return NamedSharding(self.mesh,
                         PartitionSpec(*([None] * leading), DATA_AXIS))

  def place(self, tree):
    """Puts arrays on the program's devices (replicated over the mesh)."""
    if self.mesh is None:
      return jax.device_put(tree)
    return jax.tree.map(lambda x: distributed.put(x, self.sharding), tree)

  # -- model ---------------------------------------------------------------
  def apply(self, variables, batch, *, train, rng, mutable=()):
    rngs = {"dropout": rng} if rng is not None else {}
    inputs = self.task.model_inputs(batch)
    if mutable:
      outputs, mutated = self.model.apply(variables, *inputs, train=train,
                                          rngs=rngs, mutable=list(mutable))
      return _to_float32(outputs), _to_float32(mutated)
    return _to_float32(self.model.apply(variables, *inputs, train=train,
                                        rngs=rngs)), {}

  def example(self, data: Mapping[str, np.ndarray]):
    """A hashable one-example batch (the static argument of ``init``)."""
    return _Example({k: np.asarray(v[:1]) for k, v in data.items()})

  def _init(self, key: jax.Array, example: "_Example",
            base_lr: jax.Array) -> TrainState:
    """The initial state; call as ``init(key(s), example(data), base_lr(s))``."""
    k_params, k_dropout = jax.random.split(key)
    batch = self.task.preprocess(
        {k: jnp.asarray(v) for k, v in example.arrays.items()}, self.info)
    variables = self.model.init({"params": k_params, "dropout": k_dropout},
                                *self.task.model_inputs(batch), train=False)
    variables = {k: v for k, v in variables.items()
                 if k not in _CAPTURE_COLLECTIONS}
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
        opt_state=self.tx.init(params),
        plateau=self.plateau.init(jnp.zeros(())),
        base_lr=jnp.asarray(base_lr, jnp.float32))

  # -- training ------------------------------------------------------------
  def _loss_fn(self, params, model_state, batch, rng):
    outputs, mutated = self.apply({"params": params, **model_state}, batch,
                                  train=True, rng=rng,
                                  mutable=tuple(model_state))
    loss_sum, count = self.task.loss(outputs, batch,
                                     self.hyper.label_smoothing)
    loss = loss_sum / jnp.maximum(count, 1.0)
    return loss, (mutated, loss_sum, count)

  def learning_rate(self, state: TrainState) -> jax.Array:
    return state.base_lr * self.lr_shape(state.step) * state.plateau.scale

  def train_step(self, state: TrainState, batch, key):
    """One optimizer step on ``batch`` (already augmented and preprocessed)."""
    k_dropout, k_optimizer = jax.random.split(key)
    loss_fn = lambda p: self._loss_fn(p, state.model_state, batch, k_dropout)
    (loss, (model_state, loss_sum, count)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    lr = self.learning_rate(state)
    opt_state = optimizer_lib.set_learning_rate(state.opt_state, lr)
    extras = build_extras(
        self.spec.needs, loss_fn, value=loss, key=k_optimizer,
        kfac_stats_fn=lambda p: self._layer_statistics(p, state.model_state,
                                                       batch, k_dropout),
        params=state.params)
    updates, opt_state = self.tx.update(grads, opt_state, state.params,
                                        **extras)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(step=state.step + 1, params=params,
                          model_state=model_state, opt_state=opt_state)
    return state, {"loss_sum": loss_sum, "count": count,
                   "finite": jnp.isfinite(loss),
                   "grad_norm": optax.global_norm(grads), "learning_rate": lr}

  def _layer_statistics(self, params, model_state, batch, rng):
    def apply_fn(variables, mutable):
      return self.apply({**variables, **model_state}, batch, train=True,
                        rng=rng, mutable=tuple(mutable) + tuple(model_state))

    def loss_of_outputs(outputs):
      loss_sum, count = self.task.loss(outputs, batch,
                                       self.hyper.label_smoothing)
      return loss_sum / jnp.maximum(count, 1.0)

    stats = _to_float32(layer_statistics(apply_fn, loss_of_outputs, params))
    return {**stats, "mask": batch["mask"]}

  def _batches(self, n: int, batch_size: int, key: Optional[jax.Array]):
    """Indices ``(steps, batch)`` and mask; shuffled when ``key`` is given."""
    steps = math.ceil(n / batch_size)
    order = jax.random.permutation(key, n) if key is not None else jnp.arange(n)
    flat = jnp.arange(steps * batch_size)
    index = order[flat % n].reshape(steps, batch_size)
    mask = (flat < n).astype(jnp.float32).reshape(steps, batch_size)
    return index, mask

  def _epoch_plan(self, n: int, key):
    """The epoch's batches ``(index, mask)`` and the key of its steps."""
    k_order, k_steps = jax.random.split(key)
    index, mask = self._batches(n, self.hyper.batch_size, k_order)
    return index, mask, k_steps

  def _augmented_step(self, state, batch, i, k_steps):
    """Augments, preprocesses and trains on step ``i``'s raw batch."""
    k_augment, k_step = jax.random.split(jax.random.fold_in(k_steps, i))
    batch = self._shard(batch)
    batch = self.task.preprocess(
        self.task.augment(batch, k_augment, self.info), self.info)
    return self.train_step(state, batch, k_step)

  def _train_epoch(self, state: TrainState, data, key):
    index, mask, k_steps = self._epoch_plan(_num_examples(data), key)

    def body(carry, xs):
      i, idx, m = xs
      batch = {k: v[idx] for k, v in data.items()}
      batch["mask"] = m
      state, totals = carry
      return self._step_and_accumulate(state, batch, i, k_steps, totals), None

    (state, totals), _ = jax.lax.scan(
        body, (state, _zero_totals(())),
        (jnp.arange(index.shape[0]), index, mask))
    return state, _epoch_metrics(totals, index.shape[0])

  def _step_and_accumulate(self, state, batch, i, k_steps, totals):
    """One step of an epoch; the epoch's metrics accumulate on the device."""
    state, m = self._augmented_step(state, batch, i, k_steps)
    return state, _accumulate(totals, m)

  def _streamed_totals(self):
    return _zero_totals(() if self.runs is None else (self.runs,))

  def compile_streamed_step(self, state, data, key):
    """AOT-compiles the streamed step for abstract ``state`` and ``key``."""
    lead = () if self.runs is None else (self.runs,)
    abstract = lambda shape, dtype: jax.ShapeDtypeStruct(
        shape, dtype, sharding=self.sharding)
    sharded = lambda shape, dtype: jax.ShapeDtypeStruct(
        shape, dtype, sharding=self.batch_sharding(len(lead)))
    batch = {k: sharded(lead + (self.hyper.batch_size,) + v.shape[1:], v.dtype)
             for k, v in data.items()}
    batch["mask"] = sharded(lead + (self.hyper.batch_size,), np.float32)
    totals = jax.tree.map(lambda x: abstract(x.shape, x.dtype),
                          jax.eval_shape(self._streamed_totals))
    return self.streamed_step.lower(state, batch, abstract((), np.int32), key,
                                    totals).compile()

  def train_epoch_streamed(self, state: TrainState, data, key, *, step=None):
    """``train_epoch`` for data kept on the host (numpy arrays).

    The same batches and keys as ``train_epoch``: the epoch's order is drawn
    on the device, a thread gathers each batch on the host and puts it on
    the device ``PREFETCH`` batches ahead of the step that consumes it;
    metrics stay on the device until the caller reads them.
    """
    n = _num_examples(data)
    index, mask, k_steps = self.epoch_plan(n, key)
    index, mask = np.asarray(index), np.asarray(mask)
    k_steps = self.place(k_steps)
    steps = index.shape[-2]
    shape_lead = index.shape[:-2]
    totals = self.place(self._streamed_totals())
    step = step or self.streamed_step

    def host_batch(i):
      idx = index[..., i, :]
      batch = {k: v[idx] for k, v in data.items()}
      batch["mask"] = mask[..., i, :]
      return jax.device_put(batch, self.batch_sharding(len(shape_lead)))

    for i, batch in enumerate(prefetch(host_batch, steps, PREFETCH)):
      state, totals = step(state, batch, self.place(np.int32(i)), k_steps,
                           totals)
    return state, _epoch_metrics(totals, steps)

  # -- evaluation ----------------------------------------------------------
  def eval_params(self, state: TrainState):
    if self.spec.prepare_for_eval is None:
      return state.params
    return self.spec.prepare_for_eval(
        state.params, optimizer_lib.inner_state(state.opt_state))

  def _eval_streamed_batch(self, state: TrainState, batch):
    variables = {"params": self.eval_params(state), **state.model_state}
    batch = self.task.preprocess(self._shard(batch), self.info)
    outputs = self.task.eval_outputs(self.apply, variables, batch)
    return self.task.eval_stats(outputs, batch, self.info)

  def _eval_batch(self, state: TrainState, data, idx, mask):
    batch = {k: v[idx] for k, v in data.items()}
    batch["mask"] = mask
    return self._eval_streamed_batch(state, batch)

  def evaluate(self, state: TrainState, data):
    """Returns (summed stats, gathered per-example stats, example mask).

    One compiled program per run (the batch step), whatever the split's size:
    batches are dispatched from Python and summed on the device, with no
    host synchronisation until the caller reads the totals. ``data`` on the
    device is gathered inside the compiled step; numpy ``data`` (a split kept
    on the host) is batched and streamed. With ``runs``, stats carry a
    leading run axis and per-example stats are ``(runs, examples, ...)``.
    """
    index, mask = self._batches(_num_examples(data),
                                self.hyper.eval_batch_size, None)
    index, mask = np.asarray(index), np.asarray(mask)
    on_host = isinstance(next(iter(data.values())), np.ndarray)

    def host_batch(i):
      return jax.device_put({**{k: v[index[i]] for k, v in data.items()},
                             "mask": mask[i]}, self.batch_sharding())

    batches = (prefetch(host_batch, index.shape[0], PREFETCH) if on_host
               else range(index.shape[0]))
    gathered = self.task.gathered_stats
    totals, kept = None, []
    for i, batch in enumerate(batches):
      stats = (self.eval_streamed_batch(state, batch) if on_host
               else self.eval_batch(state, data, index[i], mask[i]))
      summed = {k: v for k, v in stats.items() if k not in gathered}
      totals = summed if totals is None else self._add(totals, summed)
      kept.append({k: stats[k] for k in gathered})
    axis = 0 if self.runs is None else 1
    per_example = {k: jnp.concatenate([b[k] for b in kept], axis=axis)
                   for k in gathered}
    return totals, per_example, mask.reshape(-1)

  # -- hooks ---------------------------------------------------------------
  def _full_gradient(self, state: TrainState, data):
    """Mean gradient of the training loss over the whole split (SVRG)."""
    index, mask = self._batches(_num_examples(data), self.hyper.batch_size,
                                None)

    def body(total, xs):
      idx, m = xs
      batch = {k: v[idx] for k, v in data.items()}
      batch["mask"] = m
      batch = self.task.preprocess(batch, self.info)
      loss_sum = lambda p: self._loss_fn(p, state.model_state, batch,
                                         jax.random.key(_FULL_GRADIENT_SEED))[1][1]
      return jax.tree.map(jnp.add, total, jax.grad(loss_sum)(state.params)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    total, _ = jax.lax.scan(body, zeros, (index, mask))
    return jax.tree.map(lambda g: g / jnp.sum(mask), total)

  def _epoch_start(self, state: TrainState, data):
    full_grad = self._full_gradient(state, data)
    inner = self.spec.epoch_start(optimizer_lib.inner_state(state.opt_state),
                                  state.params, full_grad)
    return state.replace(
        opt_state=optimizer_lib.with_inner_state(state.opt_state, inner))

  def _update_plateau(self, state: TrainState, val_loss):
    _, plateau = self.plateau.update(jnp.zeros(()), state.plateau,
                                     value=val_loss)
    return state.replace(plateau=plateau)

  @property
  def needs_epoch_start(self) -> bool:
    return "full_grad" in self.spec.needs


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


def _zero_totals(shape):
  """Epoch metrics before the first step (see ``_accumulate``)."""
  return {"loss_sum": jnp.zeros(shape), "count": jnp.zeros(shape),
          "finite": jnp.ones(shape, bool), "grad_norm": jnp.zeros(shape),
          "learning_rate": jnp.zeros(shape)}


def _accumulate(totals, step_metrics):
  """Adds one step's metrics: sums, all-finite, last learning rate."""
  return {"loss_sum": totals["loss_sum"] + step_metrics["loss_sum"],
          "count": totals["count"] + step_metrics["count"],
          "finite": jnp.logical_and(totals["finite"], step_metrics["finite"]),
          "grad_norm": totals["grad_norm"] + step_metrics["grad_norm"],
          "learning_rate": step_metrics["learning_rate"]}


def _epoch_metrics(totals, steps: int):
  """The epoch's metrics: the mean gradient norm over its ``steps``."""
  return {**totals, "grad_norm": totals["grad_norm"] / steps}


def _num_examples(data) -> int:
  return next(iter(data.values())).shape[0]


class _Example:
  """A one-example batch, hashable by identity (a static jit argument)."""

  def __init__(self, arrays):
    self.arrays = arrays


def prefetch(produce: Callable[[int], Any], count: int, depth: int):
  """Yields ``produce(0..count-1)``, computed ``depth`` items ahead.

  A daemon thread runs ``produce`` (host gathering + ``jax.device_put``,
  which is asynchronous) while the caller dispatches device work; an
  exception in the thread is re-raised in the caller.
  """
  items: queue.Queue = queue.Queue(maxsize=depth)
  done = object()

  def work():
    try:
      for i in range(count):
        items.put(produce(i))
    except BaseException as e:  # handed to the consumer
      items.put(e)
    items.put(done)

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  while True:
    item = items.get()
    if item is done:
      break
    if isinstance(item, BaseException):
      raise item
    yield item
  thread.join()

