"""The run's optimizer: registry optimizer + clipping + an injected step LR.

``tx = chain(clip_by_global_norm(c) | identity, inject_hyperparams(make)(lr))``.
The engine writes each step's learning rate into the injected hyperparameter,
so schedules, plateau scaling and learning-rate grids are traced values and
nothing recompiles; the inner optimizer (what ``make(name)`` returns) is
untouched, so ``prepare_for_eval`` and ``epoch_start`` hooks see its state.
The injected state is found by its type's name (``optax.tree.get`` /
``optax.tree.set``), never by its position in the chain.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

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
          exclude_bias_norm: bool = False
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
  """
  hyperparameters = dict(hyperparameters or {})
  # Unknown names and keywords, and conflicting masks, fail here, before
  # tracing.
  transforms.make(name, learning_rate, weight_decay=weight_decay,
                  exclude_bias_norm=exclude_bias_norm, **hyperparameters)
  inner = optax.inject_hyperparams(
      lambda learning_rate: transforms.make(
          name, learning_rate, weight_decay=weight_decay,
          exclude_bias_norm=exclude_bias_norm, **hyperparameters))
  clip = optax.clip_by_global_norm(grad_clip) if grad_clip else optax.identity()
  return optax.chain(clip, inner(learning_rate=learning_rate))


def set_learning_rate(opt_state, learning_rate):
  """``opt_state`` with the injected learning rate replaced."""
  hyperparams = optax.tree.get(opt_state, "hyperparams", filtering=_injected)
  return optax.tree.set(
      opt_state, _injected,
      hyperparams=dict(hyperparams, learning_rate=learning_rate))


def inner_state(opt_state):
  """The state of the registry optimizer itself (what ``make`` returned)."""
  return optax.tree.get(opt_state, "inner_state", filtering=_injected)


def with_inner_state(opt_state, inner):
  """``opt_state`` with the registry optimizer's state replaced by ``inner``."""
  return optax.tree.set(opt_state, _injected, inner_state=inner)
