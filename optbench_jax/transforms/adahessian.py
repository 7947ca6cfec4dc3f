"""AdaHessian: Adam whose second moment is the squared Hessian diagonal.

Update rule (Yao et al. 2021; ``g_t`` the gradient, ``η`` the learning rate,
``z ~ Rademacher`` one probe per step, ``H`` the mini-batch Hessian)::

  D_t = z ⊙ (H z)                        (Hutchinson estimate of diag H)
  D_t ← mean_{kh,kw} |D_t|               (2-D conv kernels: spatial averaging)
  m_t = β1 m + (1−β1) g_t
  v_t = β2 v + (1−β2) D_t²               (every ``update_period`` steps)
  θ ← θ − η (m_t / (1−β1^t)) / ((v_t / (1−β2^t))^{k/2} + ε) − η λ θ

with Hessian power ``k = 1`` and decoupled weight decay λ (the paper's and
pytorch_optimizer's ``weight_decouple=True``). ``H z`` comes from the
engine's ``hvp_fn(params, z)`` (forward-over-reverse) and ``z`` from the
``key`` extra, one fresh key per step.

Spatial averaging: for 4-D tensors (Flax ``Conv`` kernels ``(kh, kw, in,
out)``) ``|D|`` is averaged over the two spatial axes, as in the paper's code
(``torch.abs(hv * v).sum(dim=[2, 3]) / (kh kw)`` on PyTorch's ``(out, in, kh,
kw)`` layout). 3-D tensors are left alone (Flax attention kernels are 3-D).
pytorch_optimizer's ``AdaHessian`` does not average; the tests feed it our
Hutchinson estimate (``step(hessian=...)``) computed in PyTorch with our
probes ``z``, with the paper's spatial averaging applied on PyTorch's layout.

Hyperparameter mapping to ``pytorch_optimizer.AdaHessian(lr=η, betas=(β1,
β2), eps=ε, hessian_power=k, update_period=p, weight_decay=λ,
hessian_distribution="rademacher")``: identical names here (``b1``, ``b2``,
``eps``, ``hessian_power``, ``update_period``); its bias correction counts
every step, also when ``v`` is only refreshed every ``update_period`` steps,
and so does ours. Paper defaults: η = 0.15, β = (0.9, 0.999), ε = 1e-4
(pytorch_optimizer defaults to η = 0.1, ε = 1e-16).

This module also provides :func:`hutchinson_probes` and
:func:`hutchinson_diagonal`, shared with Sophia-H.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optbench_jax.transforms import cost
from optbench_jax.transforms.base import (
    OptimizerSpec, any_run, missing_extra, register)

DISTRIBUTIONS = ("rademacher", "gaussian")


def hutchinson_probes(key: jax.Array, params: Any,
                      distribution: str = "rademacher") -> Any:
  """One probe ``z`` per tensor, in the params' shapes and dtypes.

  All probes come from a single draw of ``sum(sizes)`` numbers (in at least
  float32), sliced per tensor: one random kernel instead of one per tensor
  keeps compilation fast for models with many tensors.
  """
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"distribution {distribution!r} not in {DISTRIBUTIONS}")
  leaves, treedef = jax.tree.flatten(params)
  if not leaves:
    return params
  dtype = jnp.promote_types(jnp.result_type(*leaves), jnp.float32)
  sizes = [int(np.prod(p.shape)) for p in leaves]
  if distribution == "rademacher":
    flat = jax.random.rademacher(key, (sum(sizes),), dtype=dtype)
  else:
    flat = jax.random.normal(key, (sum(sizes),), dtype=dtype)
  pieces = jnp.split(flat, np.cumsum(sizes)[:-1])
  return jax.tree.unflatten(treedef, [
      z.reshape(p.shape).astype(p.dtype) for z, p in zip(pieces, leaves)])


def hutchinson_diagonal(hvp_fn: Callable[[Any, Any], Any], params: Any,
                        key: jax.Array, distribution: str = "rademacher",
                        spatial_average: bool = False) -> Any:
  """``z ⊙ (H z)``, optionally spatially averaged for 2-D conv kernels."""
  probes = hutchinson_probes(key, params, distribution)
  hz = hvp_fn(params, probes)
  diag = jax.tree.map(lambda z, h: (z * h).astype(z.dtype), probes, hz)
  if spatial_average:
    diag = jax.tree.map(_spatial_average, diag)
  return diag


def _spatial_average(d: jax.Array) -> jax.Array:
  if d.ndim != 4:
    return d
  mean = jnp.mean(jnp.abs(d), axis=(0, 1), keepdims=True)
  return jnp.broadcast_to(mean, d.shape)


class ScaleByAdaHessianState(NamedTuple):
  """State of :func:`scale_by_adahessian` (``mu``, ``nu`` in params' dtype)."""
  count: jax.Array
  mu: Any
  nu: Any


def scale_by_adahessian(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-4,
                        hessian_power: float = 1.0, update_period: int = 1,
                        spatial_average: bool = True,
                        distribution: str = "rademacher"
                        ) -> optax.GradientTransformationExtraArgs:
  """Rescales updates by AdaHessian's Hutchinson second moment.

  ``update(grads, state, params, hvp_fn=..., key=...)``; both extras are
  required (``hvp_fn(params, v) -> H v``).

  References:
    Yao et al., `ADAHESSIAN: An Adaptive Second Order Optimizer for Machine
    Learning <https://arxiv.org/abs/2006.00719>`_, AAAI 2021.
  """
  if update_period < 1:
    raise ValueError("adahessian: update_period must be >= 1")

  def init_fn(params):
    return ScaleByAdaHessianState(count=jnp.zeros([], jnp.int32),
                                  mu=optax.tree.zeros_like(params),
                                  nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None, *, hvp_fn=None, key=None,
                **extra_args):
    del extra_args
    if hvp_fn is None:
      raise missing_extra("adahessian", "hvp_fn")
    if key is None:
      raise missing_extra("adahessian", "key")
    if params is None:
      raise ValueError("adahessian: update() needs params")

    def refreshed_nu():
      diag = hutchinson_diagonal(hvp_fn, params, key, distribution,
                                 spatial_average)
      return optax.tree.update_moment_per_elem_norm(diag, state.nu, b2, 2)

    if update_period == 1:
      nu = refreshed_nu()
    else:
      nu = jax.lax.cond(any_run(state.count % update_period == 0), refreshed_nu,
                        lambda: state.nu)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    count = optax.safe_increment(state.count)
    t = jnp.asarray(count, dtype=float)
    bc1 = 1.0 - b1 ** t
    bc2 = 1.0 - b2 ** t
    new_updates = jax.tree.map(
        lambda m, v: ((m / bc1.astype(m.dtype))
                      / ((v / bc2.astype(v.dtype)) ** (hessian_power / 2.0)
                         + eps)).astype(m.dtype), mu, nu)
    return new_updates, ScaleByAdaHessianState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adahessian(learning_rate: optax.ScalarOrSchedule = 0.15, b1: float = 0.9,
               b2: float = 0.999, eps: float = 1e-4,
               hessian_power: float = 1.0, update_period: int = 1,
               spatial_average: bool = True,
               distribution: str = "rademacher", weight_decay: float = 0.0,
               mask: Optional[Any] = None
               ) -> optax.GradientTransformationExtraArgs:
  """AdaHessian with decoupled weight decay (see the module docstring)."""
  return optax.chain(
      scale_by_adahessian(b1, b2, eps, hessian_power, update_period,
                          spatial_average, distribution),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))


def _hutchinson_cost(keywords, before, after):
  """One Hessian-vector product (one probe) every ``update_period`` steps."""
  del after
  state = cost.find(before, ScaleByAdaHessianState)
  return {"hvps": cost.due(state.count, keywords["update_period"])}


register(OptimizerSpec(
    name="adahessian", factory=adahessian, family="second_order",
    default_lr=0.15,
    weight_decay="decoupled", masks={"weight_decay": "mask"},
    needs=frozenset({"hvp_fn", "key"}), cost=_hutchinson_cost,
    paper="Yao et al. 2021, ADAHESSIAN: An Adaptive Second Order Optimizer "
          "for Machine Learning (AAAI)",
    reference="pytorch_optimizer.AdaHessian (fed our Hutchinson estimates)"))
