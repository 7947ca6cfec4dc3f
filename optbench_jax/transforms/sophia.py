"""Sophia-H: clipped diagonal-Hessian preconditioning (Liu et al. 2023).

Update rule (``g_t`` the gradient, ``η`` the learning rate, ``u ~ N(0, I)``
one probe every ``k`` steps, ``H`` the mini-batch Hessian)::

  m_t = β1 m + (1−β1) g_t
  every k steps (t = 1, k+1, 2k+1, …):
    ĥ = u ⊙ (H u)                       (Hutchinson estimate of diag H)
    h_t = β2 h + (1−β2) ĥ
  θ ← θ − η clip(m_t / max(ρ h_t, ε), −1, 1) − η λ θ

the paper's Algorithm 3 (its γ is ``rho`` here, as in the authors' code),
with decoupled weight decay λ. The clip makes each coordinate move at most η
per step, and a non-positive curvature estimate (``ρ h ≤ ε``) gives a
sign-momentum step. ``H u`` comes from the engine's ``hvp_fn`` and ``u``
from the ``key`` extra; on the other steps no Hessian-vector product is
computed (``lax.cond``).

Hyperparameter mapping to ``pytorch_optimizer.SophiaH(lr=L, betas=(β1, β2),
p=P, eps=E, update_period=k, weight_decay=λ)``, which computes
``θ ← θ − L clip(m / max(h, E), −P, P)``: since ``L clip(m / max(h, E), −P,
P) = L P clip(m / max(P h, P E), −1, 1)``, it equals ours with ``η = L P``,
``rho = P``, ``eps = P E`` (and λ_ours = λ_torch / P, because both decay by
learning rate × λ: pass ``weight_decay = λ L / η``). Its defaults (L = 6e-2,
P = 1e-2, E = 1e-12, β = (0.96, 0.99), k = 10) are η = 6e-4, ρ = 0.01,
ε = 1e-14 here; we keep the paper's ε = 1e-12 on ``ρ h``.
pytorch_optimizer draws its probes internally; the tests feed it our
Hutchinson estimate (``step(hessian=...)``) computed in PyTorch with our
probes.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optbench_jax.transforms.adahessian import hutchinson_diagonal
from optbench_jax.transforms import cost
from optbench_jax.transforms.base import (
    OptimizerSpec, any_run, missing_extra, register)


class ScaleBySophiaState(NamedTuple):
  """State of :func:`scale_by_sophia` (``mu``, ``hessian`` in params' dtype)."""
  count: jax.Array
  mu: Any
  hessian: Any


def scale_by_sophia(b1: float = 0.96, b2: float = 0.99, rho: float = 0.01,
                    eps: float = 1e-12, update_period: int = 10,
                    distribution: str = "gaussian"
                    ) -> optax.GradientTransformationExtraArgs:
  """``clip(m / max(ρ h, ε), −1, 1)`` with a Hutchinson ``h`` every k steps.

  ``update(grads, state, params, hvp_fn=..., key=...)``; both extras are
  required.

  References:
    Liu et al., `Sophia: A Scalable Stochastic Second-order Optimizer for
    Language Model Pre-training <https://arxiv.org/abs/2305.14342>`_, ICLR
    2024.
  """
  if update_period < 1:
    raise ValueError("sophia: update_period must be >= 1")

  def init_fn(params):
    return ScaleBySophiaState(count=jnp.zeros([], jnp.int32),
                              mu=optax.tree.zeros_like(params),
                              hessian=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None, *, hvp_fn=None, key=None,
                **extra_args):
    del extra_args
    if hvp_fn is None:
      raise missing_extra("sophia", "hvp_fn")
    if key is None:
      raise missing_extra("sophia", "key")
    if params is None:
      raise ValueError("sophia: update() needs params")

    def refreshed_hessian():
      diag = hutchinson_diagonal(hvp_fn, params, key, distribution)
      return optax.tree.update_moment(diag, state.hessian, b2, 1)

    if update_period == 1:
      hessian = refreshed_hessian()
    else:
      hessian = jax.lax.cond(any_run(state.count % update_period == 0),
                             refreshed_hessian, lambda: state.hessian)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    new_updates = jax.tree.map(
        lambda m, h: jnp.clip(m / jnp.maximum(rho * h, eps), -1.0, 1.0
                              ).astype(m.dtype), mu, hessian)
    return new_updates, ScaleBySophiaState(
        count=optax.safe_increment(state.count), mu=mu, hessian=hessian)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sophia(learning_rate: optax.ScalarOrSchedule = 6e-4, b1: float = 0.96,
           b2: float = 0.99, rho: float = 0.01, eps: float = 1e-12,
           update_period: int = 10, distribution: str = "gaussian",
           weight_decay: float = 0.0, mask: Optional[Any] = None
           ) -> optax.GradientTransformationExtraArgs:
  """Sophia-H with decoupled weight decay (see the module docstring)."""
  return optax.chain(
      scale_by_sophia(b1, b2, rho, eps, update_period, distribution),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))


def _hutchinson_cost(keywords, before, after):
  """One Hessian-vector product (one probe) every ``update_period`` steps."""
  del after
  state = cost.find(before, ScaleBySophiaState)
  return {"hvps": cost.due(state.count, keywords["update_period"])}


register(OptimizerSpec(
    name="sophia", factory=sophia, family="second_order", default_lr=6e-4,
    weight_decay="decoupled", masks={"weight_decay": "mask"},
    needs=frozenset({"hvp_fn", "key"}), cost=_hutchinson_cost,
    paper="Liu et al. 2024, Sophia: A Scalable Stochastic Second-order "
          "Optimizer for Language Model Pre-training (ICLR), Sophia-H",
    reference="pytorch_optimizer.SophiaH (fed our Hutchinson estimates)"))
