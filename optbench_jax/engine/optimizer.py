"""The run's optimizer: registry optimizer + clipping + an injected step LR.

``tx = chain(clip_by_global_norm(c) | identity, inject_hyperparams(make)(lr))``.
The engine writes each step's learning rate into the injected hyperparameter,
so schedules, plateau scaling and learning-rate grids are traced values and
nothing recompiles; the inner optimizer (what ``make(name)`` returns) is
untouched, so ``prepare_for_eval`` and ``epoch_start`` hooks see its state.
The injected state is found by its type's name (``optax.tree.get`` /
``optax.tree.set``), never by its position in the chain.

A run's ``traced`` hyperparameters (tuning's continuous dimensions: β₁,
momentum, weight decay, ...) are injected beside the learning rate: they
live in the optimizer's state, one value per run of a program
(:func:`set_hyperparameters`), so trials that differ only in them train
vmapped in one compiled program. A run is built the same way whether it
trains alone or beside others, so its numbers do not depend on its
neighbours.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional, Sequence

import jax.numpy as jnp
import optax

from optbench_jax import transforms

# The NamedTuple that ``optax.inject_hyperparams`` keeps: its ``hyperparams``
# hold the learning rate, its ``inner_state`` the registry optimizer's state.
# (Named, not computed: nothing here may touch a JAX backend at import time,
# since ``--distributed`` must initialise it first.)
_INJECTED = optax.InjectStatefulHyperparamsState.__name__


def _injected(path, value) -> bool:
  del value
  return getattr(path[-1], "tuple_name", None) == _INJECTED


def build(name: str, learning_rate: float, *,
          weight_decay: Optional[float] = None,
          grad_clip: Optional[float] = None,
          hyperparameters: Optional[Mapping[str, Any]] = None,
          exclude_bias_norm: bool = False,
          traced: Sequence[str] = ()
          ) -> optax.GradientTransformationExtraArgs:
  """The run's optimizer ``name`` (see the module docstring).

  Args:
    name: a registered optimizer.
    learning_rate: the initial learning rate (the engine sets each step's).
    weight_decay: passed to :func:`optbench_jax.transforms.make` (None:
      the optimizer's default).
    grad_clip: clip the global gradient norm to this value (None: no clip).
    hyperparameters: the optimizer's keywords.
    exclude_bias_norm: exempt 1-D tensors from weight decay and trust ratios
      (``--exclude-bias-norm``; off by default, as the source protocol).
    traced: names among ``weight_decay`` and the keys of
      ``hyperparameters`` to inject as state (their values here are the
      initial ones; :func:`set_hyperparameters` gives each run its own).
  """
  hyperparameters = dict(hyperparameters or {})
  # Unknown names and keywords, and conflicting masks, fail here, before
  # tracing.
  transforms.make(name, learning_rate, weight_decay=weight_decay,
                  exclude_bias_norm=exclude_bias_norm, **hyperparameters)
  values = {"weight_decay": weight_decay, **hyperparameters}
  if set(traced) - set(values) or ("weight_decay" in traced
                                   and weight_decay is None):
    raise ValueError(f"traced hyperparameters {sorted(traced)} need values "
                     f"(given: {sorted(values)})")
  static = {k: v for k, v in hyperparameters.items() if k not in traced}
  fixed_decay = None if "weight_decay" in traced else weight_decay

  def make(**injected):
    decay = injected.pop("weight_decay", fixed_decay)
    return transforms.make(name, weight_decay=decay,
                           exclude_bias_norm=exclude_bias_norm, **static,
                           **injected)

  # inject_hyperparams binds its arguments to the factory's signature.
  make.__signature__ = inspect.Signature([
      inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY)
      for k in ("learning_rate", *traced)])
  inner = optax.inject_hyperparams(make)
  clip = optax.clip_by_global_norm(grad_clip) if grad_clip else optax.identity()
  return optax.chain(clip, inner(learning_rate=learning_rate,
                                 **{k: float(values[k]) for k in traced}))


def set_learning_rate(opt_state, learning_rate):
  """``opt_state`` with the injected learning rate replaced."""
  hyperparams = optax.tree.get(opt_state, "hyperparams", filtering=_injected)
  return optax.tree.set(
      opt_state, _injected,
      hyperparams=dict(hyperparams, learning_rate=learning_rate))


def set_hyperparameters(opt_state, values: Mapping[str, Any]):
  """``opt_state`` with the injected hyperparameters ``values`` (traced
  names, see :func:`build`) replaced; the learning rate is the engine's."""
  if not values:
    return opt_state
  hyperparams = optax.tree.get(opt_state, "hyperparams", filtering=_injected)
  unknown = sorted(set(values) - set(hyperparams))
  if unknown:
    raise ValueError(f"{unknown} are not traced hyperparameters of this "
                     f"optimizer (traced: {sorted(hyperparams)})")
  return optax.tree.set(
      opt_state, _injected,
      hyperparams={**hyperparams, **{
          k: jnp.asarray(v, hyperparams[k].dtype) for k, v in values.items()}})


def inner_state(opt_state):
  """The state of the registry optimizer itself (what ``make`` returned)."""
  return optax.tree.get(opt_state, "inner_state", filtering=_injected)


def with_inner_state(opt_state, inner):
  """``opt_state`` with the registry optimizer's state replaced by ``inner``."""
  return optax.tree.set(opt_state, _injected, inner_state=inner)
