"""The optimizer registry: name -> factory, family, defaults and needed extras.

Every optimizer is an ``optax.GradientTransformation`` (or
``GradientTransformationExtraArgs``) built by a factory
``factory(learning_rate, **hyperparameters)``. :func:`make` builds one by the
name users type; :func:`available` lists them all.

Extras protocol
---------------
The training engine passes the same keyword extras to every optimizer's
``update`` and each transformation takes what it uses (optax ignores the rest).
An optimizer lists in ``needs`` what it requires beyond the gradient, so the
engine builds only those (a data-driven choice, never a branch on a name):

``value``          the mini-batch loss at ``params`` (a scalar).
``value_fn``       ``value_fn(params) -> loss`` on the current mini-batch.
``grad_fn``        ``grad_fn(params) -> (loss, grads)`` on the current
                   mini-batch (same dropout key); two-pass methods (SAM, GSAM)
                   call it themselves.
``hvp_fn``         ``hvp_fn(params, v) -> H v``, the Hessian-vector product of
                   the mini-batch loss (forward-over-reverse).
``key``            a fresh PRNG key for stochastic estimators (Hutchinson).
``kfac_stats``     per-layer Kronecker statistics captured by the model.
``full_grad``      the optimizer's ``epoch_start`` hook receives the
                   full-training-set gradient at the start of every epoch
                   (SVRG's snapshot).

A transformation that needs an extra it was not given raises
:func:`missing_extra`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from optbench_jax.errors import OptBenchError
from optbench_jax.registry import Registry

FAMILIES = ("gd", "adaptive", "sharpness", "wrapper", "variance_reduction",
            "second_order")
EXTRAS = ("value", "value_fn", "grad_fn", "hvp_fn", "key", "kfac_stats",
          "full_grad")
WEIGHT_DECAY_MODES = ("coupled", "decoupled", "none")


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One registry entry.

  Attributes:
    name: the name users type.
    factory: ``factory(learning_rate, **hyperparameters)`` returning a
      GradientTransformation. When ``weight_decay == "decoupled"`` it must also
      accept ``weight_decay`` (and may accept ``mask``).
    family: one of :data:`FAMILIES`.
    default_lr: the default learning rate of the benchmark protocol.
    hyperparameters: the defaults from the original paper (passed to factory).
    weight_decay: the thesis protocol's treatment of ``--weight-decay``:
      ``"decoupled"`` (AdamW-like, passed to the factory), ``"coupled"``
      (SGD-like L2: ``optax.add_decayed_weights`` before the optimizer) or
      ``"none"``.
    needs: extras beyond gradients (see the module docstring).
    paper: the citation.
    reference: the PyTorch reference the tests compare against ("" if none).
    prepare_for_eval: ``(params, opt_state) -> params`` giving the parameters
      to evaluate (Schedule-Free's averaged iterate, Lookahead's slow weights);
      None means the training parameters.
    epoch_start: ``(opt_state, params, full_grad) -> opt_state`` called at the
      start of each epoch when ``"full_grad"`` is in ``needs``.
  """
  name: str
  factory: Callable[..., optax.GradientTransformation]
  family: str
  default_lr: float
  hyperparameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  weight_decay: str = "coupled"
  needs: frozenset = frozenset()
  paper: str = ""
  reference: str = ""
  prepare_for_eval: Optional[Callable[[Any, Any], Any]] = None
  epoch_start: Optional[Callable[[Any, Any, Any], Any]] = None

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"{self.name}: family {self.family!r} not in {FAMILIES}")
    if self.weight_decay not in WEIGHT_DECAY_MODES:
      raise ValueError(f"{self.name}: weight_decay {self.weight_decay!r}")
    unknown = set(self.needs) - set(EXTRAS)
    if unknown:
      raise ValueError(f"{self.name}: unknown extras {sorted(unknown)}")
    if "full_grad" in self.needs and self.epoch_start is None:
      raise ValueError(f"{self.name}: needs full_grad but has no epoch_start")


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


# The engine's ``jax.vmap`` axis when it trains several runs in one program.
RUN_AXIS = "runs"


def any_run(predicate: jax.Array) -> jax.Array:
  """``predicate`` made common to all runs the engine trains together.

  Under ``jax.vmap`` a ``lax.cond`` whose predicate is batched becomes a
  ``select`` that evaluates *both* branches on every step, so a periodic
  inverse / eigendecomposition (KFAC, Shampoo, Sophia, AdaHessian) would be
  recomputed every step. The engine vmaps over the named axis ``RUN_AXIS``;
  inside it this returns ``any`` of the runs' predicates as an unbatched
  scalar, so the ``cond`` stays a branch. Predicates on step counts are equal
  across runs (they step in lockstep), so results are unchanged. Outside the
  engine's vmap the predicate is returned as is.
  """
  try:
    return jax.lax.pmax(jnp.asarray(predicate, jnp.int32), RUN_AXIS) > 0
  except NameError:  # not inside the engine's vmap over runs
    return predicate


def sequential_on_cpu(fn: Callable) -> Callable:
  """``fn`` (a matrix decomposition) whose ``vmap`` is a loop on the CPU.

  On XLA:CPU (jax 0.10.2) several *batched* LAPACK calls in one program
  (e.g. KFAC's per-layer inverses once the engine vmaps over runs) can
  deadlock the intra-op thread pool — reproduced with eight batched
  ``jnp.linalg.inv`` in one jit on 2 cores. Unbatched calls are fine, so on
  the CPU backend the batch is a ``lax.map`` loop
  (``jax.custom_batching.sequential_vmap``); on accelerators the batched
  call is kept. Results are the unbatched call's, per run.
  """
  sequential = jax.custom_batching.sequential_vmap(fn)

  def call(*args):
    return sequential(*args) if jax.default_backend() == "cpu" else fn(*args)

  return call


def register(spec: OptimizerSpec) -> OptimizerSpec:
  """Adds ``spec`` to the registry (one line per optimizer module)."""
  return OPTIMIZERS.register(spec.name, spec)


def get(name: str) -> OptimizerSpec:
  return OPTIMIZERS.get(name)


def decay_mask(params: Any) -> Any:
  """True for tensors that get weight decay / trust ratios: ndim >= 2.

  Biases and normalisation scales/offsets (1-D) are excluded, as in the LARS
  and LAMB papers and AlgoPerf's parameter types.
  """
  return jax.tree_util.tree_map(lambda p: getattr(p, "ndim", 0) > 1, params)


def make(name: str, learning_rate: Optional[float] = None,
         weight_decay: float = 0.0, weight_decay_mask: Any = decay_mask,
         **hyperparameters) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer registered as ``name``.

  Args:
    name: a registered name (see :func:`available`).
    learning_rate: a float or an optax schedule; defaults to the registry's.
    weight_decay: applied as the registry's ``weight_decay`` mode says
      (decoupled by the factory, or coupled L2 chained before it).
    weight_decay_mask: which parameters are decayed (default: ndim >= 2).
    **hyperparameters: override the paper defaults; names follow optax's.
  """
  spec = get(name)
  unknown = set(hyperparameters) - set(spec.hyperparameters)
  if unknown:
    raise OptBenchError(
        f"optimizer {name!r} has no hyperparameter(s) {sorted(unknown)}; "
        f"valid: {sorted(spec.hyperparameters) or 'none'}")
  lr = spec.default_lr if learning_rate is None else learning_rate
  kwargs = {**spec.hyperparameters, **hyperparameters}
  if spec.weight_decay == "decoupled":
    kwargs["weight_decay"] = weight_decay
    if "mask" in _parameters(spec.factory):
      kwargs["mask"] = weight_decay_mask
    return optax.with_extra_args_support(spec.factory(lr, **kwargs))
  tx = optax.with_extra_args_support(spec.factory(lr, **kwargs))
  if weight_decay and spec.weight_decay == "coupled":
    tx = optax.chain(optax.add_decayed_weights(weight_decay, weight_decay_mask),
                     tx)
  elif weight_decay:
    raise OptBenchError(f"optimizer {name!r} does not take weight decay")
  return tx


def _parameters(fn: Callable) -> set[str]:
  import inspect
  return set(inspect.signature(fn).parameters)


# The order of listings and of ``--optimizers all``: the source benchmark's 16,
# then the further methods, then the recent optax.contrib ones; optimizers not
# named here follow in registration order.
CANONICAL_ORDER = (
    "sgd", "sgd_momentum", "lars", "rmsprop", "adam", "adagrad", "adadelta",
    "adafactor", "adabelief", "adamw", "radam", "lion", "lamb", "yogi", "sam",
    "gsam",
    "nesterov", "amsgrad", "lookahead", "ranger", "svrg", "kfac", "shampoo",
    "adahessian", "sophia", "adan", "lbfgs",
    "muon", "schedule_free_adamw", "adopt", "ademamix", "prodigy",
    "dadapt_adamw", "dog", "madgrad")


def available() -> dict[str, OptimizerSpec]:
  """All registered optimizers by name, in :data:`CANONICAL_ORDER`."""
  rank = {name: i for i, name in enumerate(CANONICAL_ORDER)}
  names = sorted(OPTIMIZERS.names(),
                 key=lambda n: (rank.get(n, len(rank)), ))
  return {name: OPTIMIZERS.get(name) for name in names}


def missing_extra(optimizer: str, extra: str) -> OptBenchError:
  """The error a transformation raises when the engine did not supply ``extra``."""
  return OptBenchError(
      f"optimizer {optimizer!r} needs the extra argument {extra!r} in "
      f"update(); pass {extra}=... (the optbench_jax engine supplies it when "
      f"the registry entry lists it in `needs`)")
