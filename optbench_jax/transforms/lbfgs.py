"""L-BFGS: ``optax.lbfgs`` mapped onto the engine's extras.

Update rule (Nocedal & Wright 1999, Alg. 7.4/7.5; ``s_i = θ_{i+1} − θ_i``,
``y_i = g_{i+1} − g_i``, the last ``m`` pairs kept)::

  d_t = − H_t g_t          (two-loop recursion, H_t^0 = γ_t I,
                             γ_t = s_{t−1}ᵀ y_{t−1} / y_{t−1}ᵀ y_{t−1})
  θ ← θ + η_t d_t          (η_t: zoom line search (strong Wolfe) on the
                             mini-batch loss, or the fixed learning rate)

This is ``optax.lbfgs`` (``optax.scale_by_lbfgs`` + learning rate + optional
``optax.scale_by_zoom_linesearch``). ``update(grads, state, params, value=...,
value_fn=...)``: the engine's ``value`` (mini-batch loss at ``params``) and
``value_fn`` (the mini-batch loss function) are mapped onto optax's
``value``/``value_fn``, and optax's ``grad`` is ``updates`` — so L-BFGS must
receive the raw gradient (do not chain gradient-changing transformations
before it). One ``update`` is one L-BFGS iteration (PyTorch's
``max_iter=1``).

Options beyond ``optax.lbfgs``:

* ``linesearch="zoom"`` (default, optax's strong-Wolfe zoom search, at most
  ``max_linesearch_steps`` evaluations of ``value_fn``) or ``"none"``
  (fixed step η, PyTorch's ``line_search_fn=None``).
* ``first_step_norm``: the first iteration's step is ``min(1, 1/‖g‖) g``;
  optax uses the L2 norm (``2``, default), ``torch.optim.LBFGS`` the L1 norm
  (``1``).
* weight decay: added to the *objective* (``λ/2 ‖θ‖²`` on masked tensors) —
  to the gradient, to ``value`` and to ``value_fn`` — so that the line search
  sees the same function as the direction.

Mapping to ``torch.optim.LBFGS(lr=η, max_iter=1, history_size=m,
line_search_fn=None)``: ``make("lbfgs", η, memory_size=m, linesearch="none",
first_step_norm=1)`` gives the same iterates as long as every curvature pair
has ``sᵀy > 1e-10``. Differences that remain: PyTorch *skips* pairs with
``sᵀy ≤ 1e-10`` (and keeps the previous γ), optax stores every pair (a
non-convex or stochastic loss can give ``sᵀy ≤ 0``, which optax uses as is);
PyTorch stops early when ``max|g| ≤ tolerance_grad`` (1e-7) or
``gᵀd > −tolerance_change`` (1e-9), optax has no tolerances (it always steps).
With ``line_search_fn="strong_wolfe"`` PyTorch runs its own bracketing/cubic
zoom (c1 = 1e-4, c2 = 0.9, at most ``max_eval − 1`` evaluations; with
``max_iter=1`` its default ``max_eval = max_iter·5//4 = 1`` leaves *no*
evaluation, so pass e.g. ``max_eval=26``); optax's zoom uses the same c1, c2
but other trial steps (it doubles where PyTorch extrapolates cubically in
``[t, 10 t]``), so the accepted step sizes agree exactly only while both
accept their first trial (η_t = 1 after the first iteration).
Defaults are optax's: memory 10 (PyTorch 100).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from optbench_jax.transforms import cost
from optbench_jax.transforms.base import (OptimizerSpec, missing_extra,
                                          register)

LINESEARCHES = ("zoom", "none")


def scale_by_lbfgs(memory_size: int = 10, scale_init_precond: bool = True,
                   first_step_norm: int = 2) -> optax.GradientTransformation:
  """``optax.scale_by_lbfgs`` with a choice of norm for the first step.

  Args:
    memory_size: m, the number of (s, y) pairs kept.
    scale_init_precond: use γ_t I (else I) as the initial inverse Hessian.
    first_step_norm: 2 (optax: ``min(1, 1/‖g‖₂) g``) or 1 (PyTorch:
      ``min(1, 1/‖g‖₁) g``).
  """
  if first_step_norm not in (1, 2):
    raise ValueError("lbfgs: first_step_norm must be 1 or 2")
  inner = optax.scale_by_lbfgs(memory_size, scale_init_precond)
  if first_step_norm == 2:
    return inner

  def update_fn(updates, state, params=None):
    precond, new_state = inner.update(updates, state, params)
    l1 = optax.tree.norm(updates, ord=1)
    scale = jnp.minimum(1.0, 1.0 / l1)
    first = jax.tree.map(lambda g: (scale * g).astype(g.dtype), updates)
    precond = jax.tree.map(lambda f, p: jnp.where(state.count == 0, f, p),
                           first, precond)
    return precond, new_state

  return optax.GradientTransformation(inner.init, update_fn)


def _l2_penalty(weight_decay: float, mask: Any):
  """``(θ ↦ λ/2 ‖mask ⊙ θ‖², θ ↦ λ mask ⊙ θ)``."""

  def masks(params):
    if mask is None:
      return jax.tree.map(lambda _: True, params)
    return mask(params) if callable(mask) else mask

  def masked(params):
    return jax.tree.map(lambda p, m: jnp.where(m, p, 0), params,
                        masks(params))

  def value(params):
    return 0.5 * weight_decay * optax.tree.norm(masked(params), squared=True)

  def grad(params):
    return optax.tree.scale(weight_decay, masked(params))

  return value, grad


def lbfgs(learning_rate: optax.ScalarOrSchedule = 1.0, memory_size: int = 10,
          scale_init_precond: bool = True, first_step_norm: int = 2,
          linesearch: Any = "zoom", max_linesearch_steps: int = 20,
          weight_decay: float = 0.0, mask: Optional[Any] = None
          ) -> optax.GradientTransformationExtraArgs:
  """L-BFGS taking the engine's ``value`` and ``value_fn`` extras.

  Args:
    learning_rate: η, the fixed step (``linesearch="none"``) or the scale of
      the direction before the line search (whose first trial step is 1).
    memory_size: m.
    scale_init_precond: γ_t scaling of the initial inverse Hessian.
    first_step_norm: 2 (optax) or 1 (PyTorch), see :func:`scale_by_lbfgs`.
    linesearch: ``"zoom"`` (optax's zoom search with
      ``max_linesearch_steps``), ``"none"``, or as in ``optax.lbfgs`` a line
      search transformation or None (no line search).
    max_linesearch_steps: the zoom search's evaluation budget.
    weight_decay: λ of an L2 term added to the objective.
    mask: which tensors the L2 term covers (None: all).

  References:
    Liu & Nocedal, `On the limited memory BFGS method for large scale
    optimization <https://doi.org/10.1007/BF01589116>`_, Math. Programming
    1989.
  """
  if isinstance(linesearch, str):
    if linesearch not in LINESEARCHES:
      raise ValueError(
          f"lbfgs: linesearch {linesearch!r} not in {LINESEARCHES}")
    search = (optax.scale_by_zoom_linesearch(max_linesearch_steps,
                                             initial_guess_strategy="one")
              if linesearch == "zoom" else None)
  else:
    search = linesearch
  # optax.lbfgs = chain(scale_by_lbfgs, lr, linesearch): swap in our first
  # element (identical unless first_step_norm == 1).
  tx = optax.chain(
      scale_by_lbfgs(memory_size, scale_init_precond, first_step_norm),
      optax.scale_by_learning_rate(learning_rate),
      search if search is not None else optax.identity())
  penalty_value, penalty_grad = _l2_penalty(weight_decay, mask)

  def update_fn(updates, state, params=None, *, value=None, value_fn=None,
                **extra_args):
    del extra_args
    if params is None:
      raise ValueError("lbfgs: update() needs params")
    if weight_decay:
      updates = jax.tree.map(lambda g, d: g + d.astype(g.dtype), updates,
                             penalty_grad(params))
    if search is None:
      return tx.update(updates, state, params)
    if value is None:
      raise missing_extra("lbfgs", "value")
    if value_fn is None:
      raise missing_extra("lbfgs", "value_fn")
    objective = value_fn
    if weight_decay:
      value = value + penalty_value(params)
      objective = lambda p: value_fn(p) + penalty_value(p)
    return tx.update(updates, state, params, value=value, grad=updates,
                     value_fn=objective)

  def init_fn(params):
    # optax's zoom state starts with weak-typed scalars that its update
    # returns strongly typed: fix them, or a jitted step compiles twice.
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)),
                        tx.init(params))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


register(OptimizerSpec(
    name="lbfgs", factory=lbfgs, family="second_order", default_lr=1.0,
    weight_decay="objective", masks={"weight_decay": "mask"},
    optax_function=optax.lbfgs,
    needs=frozenset({"value", "value_fn"}),
    # Each iteration of the zoom search evaluates the loss and its gradient.
    cost=lambda keywords, before, after: {
        "grad_evals": cost.zoom_linesearch_evaluations(after)},
    paper="Liu & Nocedal 1989, On the limited memory BFGS method for large "
          "scale optimization (Math. Programming)",
    reference="torch.optim.LBFGS(max_iter=1, line_search_fn=None)"))
