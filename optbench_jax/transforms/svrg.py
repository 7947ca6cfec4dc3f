"""SVRG: stochastic variance-reduced gradient (Johnson & Zhang 2013).

At the start of every epoch the engine calls the spec's ``epoch_start`` hook
with the full-training-set gradient; it stores the snapshot ``θ̃ = θ`` and
``μ = ∇F(θ̃)`` (option I of the paper: the snapshot is the last iterate, and
the inner loop is one epoch). Every step then uses, on the current mini-batch
``B``::

  v_t = ∇f_B(θ_t) − ∇f_B(θ̃) + μ            (unbiased, variance → 0 as θ → θ̃)
  θ ← θ + base_update(v_t)                  (base: plain SGD by default)

``∇f_B(θ̃)`` comes from the engine's ``grad_fn(θ̃)`` (same mini-batch, same
dropout key), so each step costs two backward passes plus one full pass per
epoch.

Before the first ``epoch_start`` there is no snapshot, and the update is the
base optimizer applied to the plain gradient (``v_t = g_t``; the ``grad_fn``
branch of the ``lax.cond`` is not executed). The engine calls the hook at the
start of every epoch, so this only matters to hand-written loops, which must
call ``epoch_start`` themselves to get variance reduction (a traced flag
cannot raise inside ``jit``, hence a documented fallback, not an error).

``epoch_start(opt_state, params, full_grad)`` finds the SVRG state anywhere in
``opt_state`` (inside ``optax.chain`` or other wrappers) and is pure
(jit-able). Weight decay is handed to the base optimizer. No PyTorch
reference exists (neither torch nor pytorch_optimizer ships SVRG); the tests
compare with the variance-reduced gradient computed by hand on a
least-squares problem.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optbench_jax.transforms import cost
from optbench_jax.transforms.base import (
    OptimizerSpec, any_run, missing_extra, register)
from optbench_jax.transforms.lookahead import make_base, replace_state


class SVRGState(NamedTuple):
  """State of :func:`svrg`.

  Attributes:
    snapshot: the snapshot parameters θ̃ (params' dtypes).
    full_grad: μ, the full-data gradient at θ̃.
    has_snapshot: whether ``epoch_start`` has run (bool scalar).
    base_state: the base optimizer's state.
  """
  snapshot: Any
  full_grad: Any
  has_snapshot: jax.Array
  base_state: Any


def svrg(base_optimizer: optax.GradientTransformation
         ) -> optax.GradientTransformationExtraArgs:
  """SVRG's variance-reduced gradient fed to ``base_optimizer``.

  ``update(grads, state, params, grad_fn=...)`` with ``grad_fn(params) ->
  (loss, grads)`` on the current mini-batch; :func:`epoch_start` sets the
  snapshot.

  References:
    Johnson & Zhang, `Accelerating Stochastic Gradient Descent using
    Predictive Variance Reduction
    <https://papers.nips.cc/paper/4937>`_, NeurIPS 2013.
  """
  base_tx = optax.with_extra_args_support(base_optimizer)

  def init_fn(params):
    return SVRGState(snapshot=optax.tree.zeros_like(params),
                     full_grad=optax.tree.zeros_like(params),
                     has_snapshot=jnp.zeros([], jnp.bool_),
                     base_state=base_tx.init(params))

  def update_fn(updates, state, params=None, *, grad_fn=None, **extra_args):
    if grad_fn is None:
      raise missing_extra("svrg", "grad_fn")

    def reduced():
      _, snapshot_grads = grad_fn(state.snapshot)
      return jax.tree.map(lambda g, gs, mu: (g - gs + mu).astype(g.dtype),
                          updates, snapshot_grads, state.full_grad)

    direction = jax.lax.cond(any_run(state.has_snapshot), reduced,
                             lambda: updates)
    new_updates, base_state = base_tx.update(
        direction, state.base_state, params, grad_fn=grad_fn, **extra_args)
    return new_updates, state._replace(base_state=base_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def epoch_start(opt_state: Any, params: Any, full_grad: Any) -> Any:
  """Stores ``θ̃ = params`` and ``μ = full_grad`` in every SVRG state."""

  def refresh(state: SVRGState) -> SVRGState:
    cast = lambda new, old: jnp.asarray(new, dtype=old.dtype)
    return state._replace(
        snapshot=jax.tree.map(cast, params, state.snapshot),
        full_grad=jax.tree.map(cast, full_grad, state.full_grad),
        has_snapshot=jnp.ones([], jnp.bool_))

  return replace_state(opt_state, SVRGState, refresh)


def svrg_by_name(learning_rate: optax.ScalarOrSchedule, base: str = "sgd",
                 base_hyperparameters: Optional[Mapping[str, Any]] = None,
                 weight_decay: float = 0.0, exclude_bias_norm: bool = False
                 ) -> optax.GradientTransformationExtraArgs:
  """:func:`svrg` around the registered optimizer ``base``.

  ``weight_decay`` and ``exclude_bias_norm`` go to the base,
  ``base_hyperparameters`` are its keywords.
  """
  inner = make_base("svrg", base, learning_rate, weight_decay,
                    exclude_bias_norm, base_hyperparameters,
                    provides=("grad_fn",))
  return svrg(inner)


def _snapshot_gradient_cost(keywords, before, after):
  """The snapshot's gradient on the mini-batch, once a snapshot exists (the
  full-gradient pass at each epoch's start is the engine's to count), and
  the base's."""
  state = cost.find(before, SVRGState)
  return cost.added({"grad_evals": state.has_snapshot.astype(jnp.float32)},
                    cost.of_base(keywords, before, after))


register(OptimizerSpec(
    name="svrg", factory=svrg_by_name, family="variance_reduction",
    default_lr=0.01, weight_decay="base",
    needs=frozenset({"grad_fn", "full_grad"}), cost=_snapshot_gradient_cost,
    paper="Johnson & Zhang 2013, Accelerating Stochastic Gradient Descent "
          "using Predictive Variance Reduction (NeurIPS)",
    reference="", epoch_start=epoch_start))
