"""The compiled program of R ≥ 1 runs trained together.

``Program`` owns everything that is compiled: the train step, the scanned
and the streamed epoch, evaluation, the PRNG key schedule, ahead-of-time
compilation for either data placement, and each run's evaluation metrics.
The host's concerns (which runs share a program, resume, files) belong to
``train/run.py``.

``train_step(state, batch, key) -> (state, metrics)`` is a pure function that
knows neither the task nor the optimizer: the task supplies the model inputs,
the loss and the metrics, the optimizer registry supplies the transformation
and the list of extras it needs. ``train_epoch`` shuffles, batches (the last
batch padded and masked), augments and steps through a whole epoch as one
``lax.scan`` on the device, returning summed metrics once per epoch.

Every function is ``jax.vmap``-ed over a leading axis of runs (named
``RUN_AXIS``, so that optimizers' periodic ``lax.cond`` stay branches:
``transforms.any_run``) of the state and of the keys; one run is ``R = 1``.
The data are shared; each run has its own data order, augmentation and
dropout keys and its own (traced) base learning rate. Two orthogonal options
change how, never what, the program computes:

* ``mesh`` — data parallel: the batch is sharded over the mesh's ``data``
  axis (``NamedSharding``), parameters and state replicated; XLA's SPMD
  partitioner inserts the gradient all-reduce.
* ``Hyper.precision="bf16"`` — the model computes in bfloat16 (its ``dtype``
  field); parameters, gradients, optimizer state and the loss stay float32.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optbench_jax.data.base import DatasetInfo
from optbench_jax.errors import OptBenchError
from optbench_jax.nn.curvature import KFAC_INPUTS, PERTURBATIONS, layer_statistics
from optbench_jax.tasks.base import Task
from optbench_jax.engine import distributed, memory, schedules
from optbench_jax.engine import optimizer as optimizer_lib
from optbench_jax.engine.evaluation import Evaluation
from optbench_jax.engine.hooks import Hooks
from optbench_jax.engine.sharpness import Sharpness
from optbench_jax.engine.epoch import (Example, accumulate, batches,
                                       epoch_metrics, num_examples, zero_totals)
from optbench_jax.engine.precision import to_float32, with_compute_dtype
from optbench_jax.engine.state import TrainState, unalias, with_pretrained
from optbench_jax.engine.streaming import prefetch
from optbench_jax.transforms import OptimizerSpec, build_extras, step_cost
from optbench_jax.transforms.base import RUN_AXIS

_CAPTURE_COLLECTIONS = (KFAC_INPUTS, PERTURBATIONS)


class LossAux(NamedTuple):
  """What the training loss returns beside its mean."""
  model_state: Any      # the updated non-parameter collections
  loss_sum: jax.Array   # summed over the batch's valid examples
  count: jax.Array      # number of valid examples


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


@dataclasses.dataclass(frozen=True)
class Compiled:
  """A program's epoch, compiled ahead of time for one data placement.

  ``run_epoch(state, data, keys) -> (state, metrics)``; ``executable`` is the
  compiled XLA program (the epoch, or the streamed step).
  """
  run_epoch: Callable[..., tuple[TrainState, dict]]
  executable: Any
  compile_time_s: float
  bytes: Optional[int]
  on_device: bool


class Program(Evaluation, Hooks, Sharpness):
  """Builds and jit-compiles the functions of one (task, model, optimizer).

  Args:
    runs: how many runs (R ≥ 1) are stacked on the leading axis of the
      state, the keys and the base learning rates.
    mesh: a one-axis (``"data"``) device mesh for data parallelism, or None.
    pretrained: top-level parameter submodules that replace the freshly
      initialised ones in every run (``{"distilbert": encoder params}``),
      or None.
    optimizer_keywords: the keywords ``tx`` was built with (None: the
      registry's defaults); they say what a step costs
      (:func:`~optbench_jax.transforms.step_cost`).
  """

  def __init__(self, task: Task, model: nn.Module, info: DatasetInfo,
               spec: OptimizerSpec, tx: optax.GradientTransformation,
               hyper: Hyper, *, runs: int = 1, mesh: Optional[Mesh] = None,
               pretrained: Optional[Mapping[str, Any]] = None,
               optimizer_keywords: Optional[Mapping[str, Any]] = None):
    if runs < 1:
      raise ValueError(f"a program trains at least one run (got {runs})")
    self.task, self.info = task, info
    self.model = with_compute_dtype(model, hyper.precision)
    self.spec, self.tx, self.hyper = spec, tx, hyper
    self.runs, self.mesh = runs, mesh
    self.pretrained = pretrained
    self.step_cost = step_cost(spec.name, optimizer_keywords)
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
    vm = self._over_runs
    # The model's variables and the rest of the state, two programs: the
    # first is the same for every optimizer training this model on this
    # input shape (one compilation, reused through the persistent cache).
    self.init_variables = jax.jit(vm(self._init_variables, (0, None)),
                                  static_argnums=1)
    self.init_state = jax.jit(vm(self._init_state, (0, 0, 0, None)))
    self.train_epoch = jax.jit(vm(self._train_epoch, (0, None, 0)),
                               donate_argnums=0)
    self.streamed_step = jax.jit(vm(self._step_and_accumulate,
                                    (0, 0, None, 0, 0)), donate_argnums=(0, 4))
    self.eval_batch = jax.jit(vm(self._eval_batch, (0, None, None, None)))
    self.eval_streamed_batch = jax.jit(vm(self._eval_streamed_batch, (0, None)))
    self.prepared_params = jax.jit(vm(self.eval_params, (0,)))
    self.update_plateau = jax.jit(vm(self._update_plateau, (0, 0)))
    self.sharpness = jax.jit(vm(self._sharpness, (0, None, 0)))
    self.epoch_start = jax.jit(vm(self._epoch_start, (0, None)),
                               donate_argnums=0)
    self.epoch_plan = jax.jit(vm(self._epoch_plan, (None, 0)),
                              static_argnums=0)
    self._add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))

  def _over_runs(self, fn, in_axes):
    return jax.vmap(fn, in_axes=in_axes, axis_name=RUN_AXIS)

  # -- placement -------------------------------------------------------------
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
    return NamedSharding(self.mesh, PartitionSpec(
        *([None] * leading), distributed.DATA_AXIS))

  def place(self, tree):
    """Puts arrays on the program's devices (replicated over the mesh)."""
    return jax.tree.map(lambda x: distributed.put(x, self.sharding), tree)

  def _shard(self, batch):
    """Shards the batch axis over the mesh (a no-op without a mesh)."""
    if self.mesh is None:
      return batch
    return jax.lax.with_sharding_constraint(batch, self.batch_sharding())

  # -- keys and initial state ------------------------------------------------
  @staticmethod
  def run_keys(seeds: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """(initialisation keys, training keys) of runs with these seeds.

    Each run's pair comes from its seed alone, so a run's numbers never
    depend on which other runs share its program.
    """
    pairs = [jax.random.split(jax.random.key(int(s))) for s in seeds]
    return (jnp.stack([p[0] for p in pairs]),
            jnp.stack([p[1] for p in pairs]))

  def epoch_keys(self, train_keys: jax.Array, epoch: int) -> jax.Array:
    """The runs' keys of ``epoch`` (its data order, augmentation, dropout)."""
    return self.place(jax.vmap(jax.random.fold_in, in_axes=(0, None))(
        train_keys, epoch))

  @staticmethod
  def example(data: Mapping[str, np.ndarray]) -> Example:
    """A one-example batch, hashable by value (``init``'s static argument)."""
    return Example({k: np.asarray(v[:1]) for k, v in data.items()})

  def initial_state(self, seeds: Sequence[int],
                    learning_rates: Sequence[float], example: Example,
                    hyperparameters: Optional[Sequence[Mapping[str, float]]]
                    = None) -> TrainState:
    """The runs' initial states, on the program's devices;
    ``hyperparameters``: each run's traced hyperparameters (None: the
    values the optimizer was built with, for every run)."""
    k_init, _ = self.run_keys(seeds)
    state = self.init(k_init, example,
                      jnp.asarray(learning_rates, jnp.float32),
                      self.pretrained, self.per_run(hyperparameters))
    return unalias(self.place(state))

  @staticmethod
  def per_run(hyperparameters: Optional[Sequence[Mapping[str, float]]]
              ) -> dict[str, jax.Array]:
    """Runs' traced hyperparameters, one array (over runs) per name."""
    if not hyperparameters or not hyperparameters[0]:
      return {}
    return {k: jnp.asarray([float(h[k]) for h in hyperparameters],
                           jnp.float32) for k in hyperparameters[0]}

  def init(self, keys: jax.Array, example: Example, base_lr: jax.Array,
           pretrained: Optional[Mapping[str, Any]],
           hyperparameters: Optional[Mapping[str, jax.Array]] = None
           ) -> TrainState:
    """The runs' initial states (a leading run axis): their model variables
    from ``keys`` on ``example`` (:attr:`init_variables`), the ``pretrained``
    weights in place of the random ones, the optimizer's state with each
    run's traced ``hyperparameters`` (arrays over runs, by name)."""
    return self.init_state(self.init_variables(keys, example), base_lr,
                           dict(hyperparameters or {}), pretrained)

  def _init_variables(self, key: jax.Array, example: Example
                      ) -> dict[str, Any]:
    k_params, k_dropout = jax.random.split(key)
    batch = self.task.preprocess(
        {k: jnp.asarray(v) for k, v in example.arrays.items()}, self.info)
    variables = self.model.init({"params": k_params, "dropout": k_dropout},
                                *self.task.model_inputs(batch), train=False)
    return {k: v for k, v in variables.items()
            if k not in _CAPTURE_COLLECTIONS}

  def _init_state(self, variables: dict[str, Any], base_lr: jax.Array,
                  hyperparameters: Mapping[str, jax.Array],
                  pretrained: Optional[Mapping[str, Any]]) -> TrainState:
    variables = dict(variables)
    params = with_pretrained(variables.pop("params"), pretrained)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
        opt_state=optimizer_lib.set_hyperparameters(self.tx.init(params),
                                                    hyperparameters),
        plateau=self.plateau.init(jnp.zeros(())),
        base_lr=jnp.asarray(base_lr, jnp.float32))

  # -- compilation -----------------------------------------------------------
  def compile(self, seeds: Sequence[int], learning_rates: Sequence[float],
              train_data, example: Example, *, on_device: bool,
              hyperparameters: Optional[Sequence[Mapping[str, float]]] = None
              ) -> Compiled:
    """Compiles the epoch from abstract shapes (nothing is allocated)."""
    k_init, k_train = self.run_keys(seeds)
    lrs = jnp.asarray(learning_rates, jnp.float32)
    abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                              sharding=self.sharding)
    state = jax.tree.map(abstract, jax.eval_shape(
        lambda k, lr, h: self.init(k, example, lr, self.pretrained, h),
        k_init, lrs, self.per_run(hyperparameters)))
    key = abstract(k_train)
    t0 = time.perf_counter()
    if on_device:
      executable = self.train_epoch.lower(state, train_data, key).compile()
      run_epoch = executable
    else:
      executable = self._compile_streamed_step(state, train_data, key)
      run_epoch = lambda s, d, k: self.train_epoch_streamed(
          s, d, k, step=executable)
    return Compiled(run_epoch=run_epoch, executable=executable,
                    compile_time_s=time.perf_counter() - t0,
                    bytes=memory.program_bytes(executable),
                    on_device=on_device)

  def _compile_streamed_step(self, state, data, key):
    lead = (self.runs,)
    abstract = lambda shape, dtype: jax.ShapeDtypeStruct(
        shape, dtype, sharding=self.sharding)
    sharded = lambda shape, dtype: jax.ShapeDtypeStruct(
        shape, dtype, sharding=self.batch_sharding(len(lead)))
    batch = {k: sharded(lead + (self.hyper.batch_size,) + v.shape[1:], v.dtype)
             for k, v in data.items()}
    batch["mask"] = sharded(lead + (self.hyper.batch_size,), np.float32)
    totals = jax.tree.map(lambda x: abstract(x.shape, x.dtype),
                          jax.eval_shape(lambda: zero_totals(lead)))
    return self.streamed_step.lower(state, batch, abstract((), np.int32), key,
                                    totals).compile()

  # -- the model ---------------------------------------------------------------
  def apply(self, variables, *args, method=None, rng=None, mutable=False,
            **kwargs):
    """``model.apply`` at the program's precision, outputs in float32.

    Any method of the model (``method=``) with any mutable collections
    (``mutable=["cache"]`` for decoding with a key/value cache): the same
    return convention as Flax (outputs, or ``(outputs, mutated)`` when
    ``mutable`` is not False). ``rng`` feeds the ``dropout`` stream.
    """
    rngs = {"dropout": rng} if rng is not None else {}
    result = self.model.apply(variables, *args, method=method, rngs=rngs,
                              mutable=mutable, **kwargs)
    return to_float32(result)

  # -- training ----------------------------------------------------------------
  def _loss_fn(self, params, model_state, batch, rng):
    outputs, mutated = self.apply(
        {"params": params, **model_state}, *self.task.model_inputs(batch),
        train=True, rng=rng, mutable=list(model_state))
    loss_sum, count = self.task.loss(outputs, batch,
                                     self.hyper.label_smoothing)
    loss = loss_sum / jnp.maximum(count, 1.0)
    return loss, LossAux(mutated, loss_sum, count)

  def learning_rate(self, state: TrainState) -> jax.Array:
    return state.base_lr * self.lr_shape(state.step) * state.plateau.scale

  def train_step(self, state: TrainState, batch, key):
    """One optimizer step on ``batch`` (already augmented and preprocessed)."""
    k_dropout, k_optimizer = jax.random.split(key)
    loss_fn = lambda p: self._loss_fn(p, state.model_state, batch, k_dropout)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    lr = self.learning_rate(state)
    opt_state = optimizer_lib.set_learning_rate(state.opt_state, lr)
    extras = build_extras(
        self.spec.needs, loss_fn, value=loss, key=k_optimizer,
        kfac_stats_fn=lambda p: self._layer_statistics(p, state.model_state,
                                                       batch, k_dropout),
        params=state.params)
    before = optimizer_lib.inner_state(opt_state)
    updates, opt_state = self.tx.update(grads, opt_state, state.params,
                                        **extras)
    cost = self.step_cost(before, optimizer_lib.inner_state(opt_state))
    params = optax.apply_updates(state.params, updates)
    state = state.replace(step=state.step + 1, params=params,
                          model_state=aux.model_state, opt_state=opt_state)
    return state, {"loss_sum": aux.loss_sum, "count": aux.count,
                   "finite": jnp.isfinite(loss),
                   "grad_norm": optax.global_norm(grads), "learning_rate": lr,
                   **cost}

  def _layer_statistics(self, params, model_state, batch, rng):
    def apply_fn(variables, mutable):
      return self.apply({**variables, **model_state},
                        *self.task.model_inputs(batch), train=True, rng=rng,
                        mutable=list(mutable) + list(model_state))

    def loss_of_outputs(outputs):
      loss_sum, count = self.task.loss(outputs, batch,
                                       self.hyper.label_smoothing)
      return loss_sum / jnp.maximum(count, 1.0)

    stats = to_float32(layer_statistics(apply_fn, loss_of_outputs, params))
    return {**stats, "mask": batch["mask"]}

  def _epoch_plan(self, n: int, key):
    """The epoch's batches ``(index, mask)`` and the key of its steps."""
    k_order, k_steps = jax.random.split(key)
    index, mask = batches(n, self.hyper.batch_size, k_order)
    return index, mask, k_steps

  def _step_and_accumulate(self, state, batch, i, k_steps, totals):
    """Augments, preprocesses and trains on step ``i``'s raw batch; the
    epoch's metrics accumulate on the device."""
    k_augment, k_step = jax.random.split(jax.random.fold_in(k_steps, i))
    batch = self._shard(batch)
    batch = self.task.preprocess(
        self.task.augment(batch, k_augment, self.info), self.info)
    state, metrics = self.train_step(state, batch, k_step)
    return state, accumulate(totals, metrics)

  def _train_epoch(self, state: TrainState, data, key):
    index, mask, k_steps = self._epoch_plan(num_examples(data), key)

    def body(carry, xs):
      i, idx, m = xs
      batch = {k: v[idx] for k, v in data.items()}
      batch["mask"] = m
      state, totals = carry
      return self._step_and_accumulate(state, batch, i, k_steps, totals), None

    (state, totals), _ = jax.lax.scan(
        body, (state, zero_totals(())),
        (jnp.arange(index.shape[0]), index, mask))
    return state, epoch_metrics(totals, index.shape[0])

  def train_epoch_streamed(self, state: TrainState, data, keys, *, step=None):
    """``train_epoch`` for data kept on the host (numpy arrays).

    The same batches and keys as ``train_epoch``: the epoch's order is drawn
    on the device, a thread gathers each batch on the host and puts it on
    the device ahead of the step that consumes it; metrics stay on the
    device until the caller reads them.
    """
    index, mask, k_steps = self.epoch_plan(num_examples(data), keys)
    index, mask = np.asarray(index), np.asarray(mask)
    k_steps = self.place(k_steps)
    steps = index.shape[-2]
    totals = self.place(zero_totals((self.runs,)))
    step = step or self.streamed_step

    def host_batch(i):
      idx = index[:, i, :]
      batch = {k: v[idx] for k, v in data.items()}
      batch["mask"] = mask[:, i, :]
      return jax.device_put(batch, self.batch_sharding(1))

    for i, batch in enumerate(prefetch(host_batch, steps)):
      state, totals = step(state, batch, self.place(np.int32(i)), k_steps,
                           totals)
    return state, epoch_metrics(totals, steps)
