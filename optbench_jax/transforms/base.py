"""The optimizer registry: name -> factory, family, defaults and needed extras.

Every optimizer is an ``optax.GradientTransformation`` (or
``GradientTransformationExtraArgs``) built by a factory
``factory(learning_rate, **keywords)`` whose signature states its defaults
once (:func:`configure` gives an optax function other defaults).
:func:`make` builds one by the name users type, applying the run's settings
(weight decay in the entry's mode, ``exclude_bias_norm`` through the entry's
mask keywords); :func:`available` lists them all.

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

Default weight decay
--------------------
An entry's ``default_weight_decay`` is the default of the PyTorch class its
equivalence test compares it with (``reference``: ``torch.optim`` or
``pytorch_optimizer``, whose defaults the source benchmark trained with),
0 where the reference has none or takes it as a required argument; a
wrapper (mode ``"base"``) decays by its base's default. Only AdamW's is not
0 (``torch.optim.AdamW``: 1e-2; optax's ``adamw`` uses 1e-4).
:func:`make` and a run without ``--weight-decay`` apply it
(:func:`default_weight_decay`).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import types
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from optbench_jax.errors import OptBenchError
from optbench_jax.registry import Registry
from optbench_jax.transforms import search

FAMILIES = ("gd", "adaptive", "sharpness", "wrapper", "variance_reduction",
            "second_order")
EXTRAS = ("value", "value_fn", "grad_fn", "hvp_fn", "key", "kfac_stats",
          "full_grad")
# How ``make(..., weight_decay=λ)`` reaches the rule:
#   coupled    L2 on the gradient, ``g + λθ`` before the rule: ``make`` chains
#              ``optax.add_decayed_weights(λ, mask)`` before the transformation
#              (what optax's own ``weight_decay`` does in sgd-like aliases).
#   decoupled  the rule decays the weights itself: the factory's
#              ``weight_decay`` keyword.
#   base       the factory is a wrapper: it hands ``weight_decay`` and
#              ``exclude_bias_norm`` to its base optimizer, which applies them
#              in its own mode.
#   objective  the factory adds ``λ/2 ‖θ‖²`` to the objective it evaluates
#              (L-BFGS: gradient, value and line search see the same function).
#   none       the rule takes no weight decay (a non-zero value is refused).
WEIGHT_DECAY_MODES = ("coupled", "decoupled", "base", "objective", "none")
# Roles of the parameter masks an entry may expose (``OptimizerSpec.masks``).
MASK_ROLES = ("weight_decay", "trust_ratio")
# ``make``'s own arguments: never hyperparameters of an entry.
RUN_SETTINGS = ("learning_rate", "weight_decay", "exclude_bias_norm")


def exclude_bias_norm_mask(params: Any) -> Any:
  """True for tensors with ndim ≥ 2, False for biases and normalisation scales.

  The mask every weight-decay and trust-ratio mask of an entry receives when
  the run sets ``exclude_bias_norm`` (as the LARS and LAMB papers' practice
  and AlgoPerf's parameter types); by default every tensor is decayed.
  """
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)


def configure(fn: Callable[..., Any], /, **defaults) -> Callable[..., Any]:
  """``fn`` (an optax function) with some keyword defaults replaced.

  The result accepts every parameter of ``fn`` under its name, and its
  signature (``inspect.signature``) carries the new defaults, so the registry
  reads the entry's defaults and valid keywords from it. ``configures`` holds
  ``fn``.
  """
  signature = inspect.signature(fn)
  unknown = set(defaults) - set(signature.parameters)
  if unknown:
    raise ValueError(f"{fn.__name__} has no parameter(s) {sorted(unknown)}")
  signature = signature.replace(parameters=[
      p.replace(default=defaults[p.name]) if p.name in defaults else p
      for p in signature.parameters.values()])

  @functools.wraps(fn)
  def factory(*args, **kwargs):
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return fn(*bound.args, **bound.kwargs)

  factory.__signature__ = signature
  factory.configures = fn
  return factory


def _signature_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
  """``{name: default}`` of ``fn``'s parameters, run settings excluded."""
  out = {}
  for name, p in inspect.signature(fn).parameters.items():
    if name in RUN_SETTINGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
      continue
    if p.default is p.empty:
      raise ValueError(f"{getattr(fn, '__name__', fn)}: parameter {name!r} "
                       f"has no default")
    out[name] = p.default
  return out


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One registry entry.

  The defaults of an entry are those of its factory's signature, stated once
  there; :attr:`hyperparameters` reads them back.

  Attributes:
    name: the name users type.
    factory: ``factory(learning_rate, **hyperparameters)`` returning a
      GradientTransformation; every parameter but ``learning_rate`` has a
      default. Modes ``"decoupled"``, ``"base"`` and ``"objective"`` also take
      ``weight_decay`` (``"base"``: and ``exclude_bias_norm``).
    family: one of :data:`FAMILIES`.
    default_lr: the default learning rate of the benchmark protocol.
    hyperparameters: ``{name: default}`` of the factory's keywords (derived
      from its signature). A mapping given here overrides some of the
      signature's defaults (kept for entries written before; prefer
      :func:`configure` or the factory's own defaults).
    weight_decay: how ``make``'s ``weight_decay`` reaches the rule, one of
      :data:`WEIGHT_DECAY_MODES`.
    default_weight_decay: λ when the run gives none: the default of
      ``reference`` (see the module docstring); 0 for modes ``"none"`` and
      ``"base"`` (a wrapper takes its base's, :func:`default_weight_decay`).
    masks: ``{role: keyword}`` for the factory keywords that take a
      parameter mask, ``role`` in :data:`MASK_ROLES` (e.g. ``{"weight_decay":
      "mask", "trust_ratio": "trust_ratio_mask"}``). With
      ``make(..., exclude_bias_norm=True)`` each gets
      :func:`exclude_bias_norm_mask`. In mode ``"coupled"`` the
      ``weight_decay`` keyword is the mask of the L2 term ``make`` chains.
    needs: extras beyond gradients (see the module docstring).
    paper: the citation.
    reference: the PyTorch reference the tests compare against ("" if none).
    optax_function: the optax function the entry configures or mirrors
      (every keyword of it is accepted under its name); taken from
      ``factory.configures`` when the factory is built by :func:`configure`.
    prepare_for_eval: ``(params, opt_state) -> params`` giving the parameters
      to evaluate (Schedule-Free's averaged iterate, Lookahead's slow weights);
      None means the training parameters.
    epoch_start: ``(opt_state, params, full_grad) -> opt_state`` called at the
      start of each epoch when ``"full_grad"`` is in ``needs``.
    search_space: what tuning samples (:mod:`~optbench_jax.transforms.search`:
      ``learning_rate``, ``weight_decay`` or factory keywords, each with
      its source); None: the learning rate over a decade either side of
      ``default_lr``.
    cost: ``(keywords, state_before, state_after) -> {counter: count}``,
      the evaluations one step makes beyond the engine's mini-batch
      gradient (:mod:`~optbench_jax.transforms.cost`); None: none.
  """
  name: str
  factory: Callable[..., optax.GradientTransformation]
  family: str
  default_lr: float
  hyperparameters: Optional[Mapping[str, Any]] = None
  weight_decay: str = "coupled"
  default_weight_decay: float = 0.0
  masks: Mapping[str, str] = dataclasses.field(default_factory=dict)
  needs: frozenset = frozenset()
  paper: str = ""
  reference: str = ""
  optax_function: Optional[Callable[..., Any]] = None
  prepare_for_eval: Optional[Callable[[Any, Any], Any]] = None
  epoch_start: Optional[Callable[[Any, Any, Any], Any]] = None
  search_space: Optional[Mapping[str, Any]] = None
  cost: Optional[Callable[[Mapping[str, Any], Any, Any],
                          Mapping[str, Any]]] = None

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"{self.name}: family {self.family!r} not in {FAMILIES}")
    if self.weight_decay not in WEIGHT_DECAY_MODES:
      raise ValueError(f"{self.name}: weight_decay {self.weight_decay!r}")
    if not (math.isfinite(self.default_weight_decay)
            and self.default_weight_decay >= 0):
      raise ValueError(f"{self.name}: default_weight_decay "
                       f"{self.default_weight_decay!r}")
    if self.default_weight_decay and self.weight_decay in ("none", "base"):
      raise ValueError(f"{self.name}: weight_decay={self.weight_decay!r} "
                       f"takes no default_weight_decay of its own")
    unknown = set(self.needs) - set(EXTRAS)
    if unknown:
      raise ValueError(f"{self.name}: unknown extras {sorted(unknown)}")
    if self.cost is not None and not callable(self.cost):
      raise ValueError(f"{self.name}: cost must be a function")
    if "full_grad" in self.needs and self.epoch_start is None:
      raise ValueError(f"{self.name}: needs full_grad but has no epoch_start")
    parameters = set(inspect.signature(self.factory).parameters)
    takes = {"decoupled": {"weight_decay"}, "objective": {"weight_decay"},
             "base": {"weight_decay", "exclude_bias_norm", "base"}}
    missing = takes.get(self.weight_decay, set()) - parameters
    if missing:
      raise ValueError(f"{self.name}: weight_decay={self.weight_decay!r} "
                       f"needs a factory taking {sorted(missing)}")
    defaults = _signature_defaults(self.factory)
    for role, keyword in self.masks.items():
      if role not in MASK_ROLES or keyword not in defaults:
        raise ValueError(f"{self.name}: mask {role!r}: {keyword!r}")
    overrides = dict(self.hyperparameters or {})
    unknown = set(overrides) - set(defaults)
    if unknown:
      raise ValueError(f"{self.name}: hyperparameters {sorted(unknown)} are "
                       f"not parameters of the factory")
    object.__setattr__(self, "hyperparameters",
                       types.MappingProxyType({**defaults, **overrides}))
    space = dict(self.search_space if self.search_space is not None
                 else search.default_space(self.default_lr))
    search.check(self.name, space, list(self.hyperparameters),
                 self.weight_decay != "none")
    object.__setattr__(self, "search_space", types.MappingProxyType(space))
    if self.optax_function is None:
      object.__setattr__(self, "optax_function",
                         getattr(self.factory, "configures", None))
    if self.optax_function is not None:
      absent = (set(inspect.signature(self.optax_function).parameters)
                - parameters - set(RUN_SETTINGS))
      if absent:
        raise ValueError(f"{self.name}: keyword(s) {sorted(absent)} of "
                         f"{self.optax_function.__name__} are not accepted")


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


def over_runs() -> bool:
  """Whether the caller is traced inside the engine's ``vmap`` over runs
  (where a ``lax.cond`` with a batched predicate runs both branches)."""
  try:
    jax.lax.axis_index(RUN_AXIS)
  except NameError:
    return False
  return True


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


def default_weight_decay(name: str, **keywords) -> float:
  """The weight decay of optimizer ``name`` when the run gives none.

  The entry's ``default_weight_decay``; for a wrapper (mode ``"base"``),
  that of its base (``keywords["base"]``, else the wrapper's default base).

  Args:
    name: a registered name.
    **keywords: the optimizer's keywords (only ``base`` is read).
  """
  spec = get(name)
  if spec.weight_decay == "base":
    return default_weight_decay(keywords.get("base",
                                             spec.hyperparameters["base"]))
  return spec.default_weight_decay


def make(name: str, learning_rate: Optional[optax.ScalarOrSchedule] = None,
         weight_decay: Optional[float] = None, exclude_bias_norm: bool = False,
         **keywords) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer registered as ``name``.

  With only ``name`` and the learning rate it computes what the entry's
  reference computes at the same settings: every tensor decayed, trust ratios
  wherever the reference applies them.

  Args:
    name: a registered name (see :func:`available`).
    learning_rate: a float or an optax schedule; defaults to the registry's.
    weight_decay: λ, applied as the entry's ``weight_decay`` mode says;
      None: the entry's default (:func:`default_weight_decay`, its
      reference's).
    exclude_bias_norm: exempt 1-D tensors (biases, normalisation scales) from
      weight decay and trust ratios: every mask keyword of the entry
      (``OptimizerSpec.masks``) gets :func:`exclude_bias_norm_mask`. A
      setting of the run (``--exclude-bias-norm``); off by default, as the
      source protocol's PyTorch optimizers received ``model.parameters()``.
    **keywords: the factory's keywords (optax's names where the entry
      configures an optax function), overriding its defaults.

  Raises:
    OptBenchError: an unknown keyword (the message lists all valid ones), an
      explicit mask together with ``exclude_bias_norm``, weight decay for an
      entry without it, or ``exclude_bias_norm`` with weight decay for an
      entry that cannot mask its decay.
  """
  spec = get(name)
  unknown = set(keywords) - set(spec.hyperparameters)
  if unknown:
    raise OptBenchError(
        f"optimizer {name!r} has no keyword(s) {sorted(unknown)}; valid: "
        f"{', '.join(sorted(spec.hyperparameters)) or 'none'} (and "
        f"{', '.join(RUN_SETTINGS)})")
  explicit = sorted(set(keywords) & set(spec.masks.values()))
  if exclude_bias_norm and explicit:
    raise OptBenchError(
        f"optimizer {name!r}: pass either exclude_bias_norm=True or the mask "
        f"keyword(s) {explicit}, not both")
  lr = spec.default_lr if learning_rate is None else learning_rate
  if weight_decay is None:
    weight_decay = default_weight_decay(name, **keywords)
  kwargs = {**spec.hyperparameters, **keywords}
  if exclude_bias_norm:
    for keyword in spec.masks.values():
      kwargs[keyword] = exclude_bias_norm_mask
  mode = spec.weight_decay
  # A traced λ (a tuned hyperparameter, injected per run) has no value at
  # trace time: its decay term is built, as for any non-zero λ.
  decays = not isinstance(weight_decay, numbers.Real) or weight_decay != 0
  coupled_mask = None
  if mode == "coupled" and "weight_decay" in spec.masks:
    # The factory's own decay stays at its default (0): the chained L2 term
    # below takes the mask.
    coupled_mask = kwargs.pop(spec.masks["weight_decay"])
  elif mode == "coupled" and exclude_bias_norm:
    coupled_mask = exclude_bias_norm_mask
  if mode in ("decoupled", "objective", "base"):
    kwargs["weight_decay"] = weight_decay
  if mode == "base":
    kwargs["exclude_bias_norm"] = exclude_bias_norm
  elif (mode in ("decoupled", "objective") and decays
        and exclude_bias_norm and "weight_decay" not in spec.masks):
    raise OptBenchError(
        f"optimizer {name!r} decays every tensor (its rule has no mask); "
        f"exclude_bias_norm needs weight_decay=0 for it")
  if decays and mode == "none":
    raise OptBenchError(f"optimizer {name!r} does not take weight decay")
  tx = optax.with_extra_args_support(spec.factory(lr, **kwargs))
  if decays and mode == "coupled":
    tx = optax.chain(optax.add_decayed_weights(weight_decay, coupled_mask), tx)
  return tx


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
  """The error a transformation raises when ``extra`` was not supplied."""
  return OptBenchError(
      f"optimizer {optimizer!r} needs the extra argument {extra!r} in "
      f"update(); pass {extra}=... (the optbench_jax engine supplies it when "
      f"the registry entry lists it in `needs`)")
