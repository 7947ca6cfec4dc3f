"""Shampoo: preconditioned stochastic tensor optimization (Gupta et al. 2018).

For a parameter tensor of order ``k`` with gradient ``G_t`` (one statistic per
dimension ``i``, ``G_(i)`` the mode-``i`` unfolding, ``×_i`` the mode-``i``
product)::

  G̃_t  = G_t                          (t = 1, or μ = 0)
  G̃_t  = (1 − μ) G_t + μ U_{t−1}      (momentum, as in the reference)
  H^i_t = ε I + Σ_{s≤t} G̃_(i),s G̃_(i),sᵀ
  R^i_t = (H^i_t)^{−1/(2k)}            recomputed when t % T == 0,
                                      else R^i_{t−1}  (R^i_0 = 0)
  U_t   = G̃_t ×_1 R^1_t ×_2 R^2_t … ×_k R^k_t
  θ_{t+1} = θ_t − η U_t

For a matrix this is ``U = L^{−1/4} G̃ R^{−1/4}`` with ``L = ε I + Σ G̃ G̃ᵀ``,
``R = ε I + Σ G̃ᵀ G̃``; for a vector (a bias) it is full-matrix AdaGrad,
``U = H^{−1/2} g̃``. Scalars are not preconditioned.

The rule follows the reference, ``pytorch_optimizer.Shampoo``, exactly:

* ``ε`` (``matrix_eps``) is added once, as the initial value of the statistics.
* the roots are recomputed on the steps ``t`` (1-based) with
  ``t % preconditioning_compute_steps == 0``; before the first one the roots
  are zero, so with ``preconditioning_compute_steps = T > 1`` the first
  ``T − 1`` updates are zero (the reference's behaviour; grafting, below,
  replaces them by the graft step).
* momentum interpolates the new gradient with the *previous preconditioned
  update* ``U_{t−1}`` (``torch.lerp`` with weight μ, the same formula so that
  the rounding agrees) and the statistics accumulate the interpolated
  gradient ``G̃``; there is no separate momentum after the preconditioner.
* the matrix roots: the reference uses an SVD (in float32, or float64 for
  float64 tensors); we use ``eigh`` of the symmetric statistic in the same
  precision (the parameters' dtype, promoted to at least float32) with the
  eigenvalues floored at ``ε`` (they are ``≥ ε`` in exact arithmetic; round-off
  can push them below, where the SVD would use ``|λ|``). The two agree to
  round-off, amplified along the ``ε`` directions of the statistics (no
  method resolves an eigenvalue ``ε`` better than ``1e-16 ‖H‖``; measured
  agreement: the README's table and tests/transforms/test_shampoo.py).
* coupled weight decay (the registry's ``weight_decay``) is added to the
  gradient *before* the momentum interpolation; the reference adds it after.
  The two coincide when ``momentum == 0`` (the default).

Statistics and roots are kept in the parameters' dtype promoted to float32
(bfloat16 statistics would lose the accumulated sum); the momentum buffer is
in the parameters' dtype. The state holds one :class:`ShampooTensorState` per
parameter, in the parameters' tree; what a tensor does not use (momentum,
graft accumulator, or preconditioners of a tensor above the dimension limit)
is absent, not a placeholder array.

Additions (grafting is off by default, as in the reference; the dimension
limit only touches tensors with a dimension above 4096):

* ``graft`` (``"sgd"`` or ``"adagrad"``): layer-wise grafting (Agarwal et al.
  2020, used by Anil et al. 2020's distributed Shampoo): each tensor's
  Shampoo direction is rescaled to the norm of the graft direction (``G̃``
  for SGD, ``G̃ / (sqrt(Σ G̃²) + diagonal_eps)`` for AdaGrad); tensors without
  preconditioner, and steps before the first root, take the graft direction.
* ``max_preconditioner_dim``: a tensor with a dimension larger than this gets
  no preconditioner at all (its update is ``G̃``, or the graft direction), as
  distributed Shampoo's ``no_preconditioning_for_layers_with_dim_gt``: a
  30 522 × 768 embedding would otherwise need a 30 522² statistic and its
  eigendecomposition. The reference has no limit; the default is 4096 (a
  4096² eigendecomposition per step is already costly).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optbench_jax.transforms.base import (
    OptimizerSpec, any_run, register, sequential_on_cpu)

_GRAFTS = ("none", "sgd", "adagrad")


class ShampooTensorState(NamedTuple):
  """The state of one parameter tensor; unused parts are absent (None, ())."""
  momentum: Optional[jax.Array]  # U_{t−1}; None when μ = 0
  stats: tuple  # H^i per dimension; () when the tensor is not preconditioned
  roots: tuple  # R^i per dimension; () likewise
  graft: Optional[jax.Array]  # AdaGrad graft accumulator; None unless used


class ScaleByShampooState(NamedTuple):
  """State of :func:`scale_by_shampoo`."""
  count: jax.Array  # int32, number of updates done
  tensors: Any  # the params' tree, one ShampooTensorState per tensor


def _matrix_dtype(dtype) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _is_preconditioned(shape, max_dim: int) -> bool:
  return len(shape) >= 1 and all(d <= max_dim for d in shape)


_eigh = sequential_on_cpu(lambda m: tuple(jnp.linalg.eigh(m)))


def _inverse_root(statistic: jax.Array, power: int, eps: float) -> jax.Array:
  """``statistic^(−1/power)`` for a symmetric positive-definite matrix."""
  eigenvalues, eigenvectors = _eigh(statistic)
  eigenvalues = jnp.maximum(eigenvalues, eps)
  return (eigenvectors * eigenvalues ** (-1.0 / power)) @ eigenvectors.T


def _mode_product(x: jax.Array, matrix: jax.Array, axis: int) -> jax.Array:
  """``x ×_axis matrix``: multiplies the axis-``axis`` fibres by ``matrix``."""
  return jnp.moveaxis(jnp.tensordot(matrix, x, axes=(1, axis)), 0, axis)


def _unfolded_gram(x: jax.Array, axis: int) -> jax.Array:
  """``X_(axis) X_(axis)ᵀ``: the mode-``axis`` unfolding times its transpose."""
  others = [i for i in range(x.ndim) if i != axis]
  return jnp.tensordot(x, x, axes=(others, others))


def scale_by_shampoo(
    momentum: float = 0.0,
    matrix_eps: float = 1e-6,
    preconditioning_compute_steps: int = 1,
    graft: str = "none",
    diagonal_eps: float = 1e-10,
    max_preconditioner_dim: int = 4096,
) -> optax.GradientTransformation:
  """Scales each tensor by Shampoo's Kronecker-factored inverse roots.

  Args:
    momentum: ``μ``, interpolation of the gradient with the previous update
      (the reference's momentum; 0 disables it).
    matrix_eps: ``ε``, the initial value ``ε I`` of every statistic (> 0).
    preconditioning_compute_steps: the roots are recomputed every this many
      steps (on steps ``t % T == 0``, ``t`` counted from 1).
    graft: ``"none"`` (the reference), ``"sgd"`` or ``"adagrad"`` layer-wise
      grafting of the update norm.
    diagonal_eps: ``ε`` of the AdaGrad graft's denominator.
    max_preconditioner_dim: tensors with a larger dimension are not
      preconditioned.

  Returns:
    An ``optax.GradientTransformation``.
  """
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"shampoo: momentum must be in [0, 1), got {momentum}")
  if matrix_eps <= 0:
    raise ValueError(f"shampoo: matrix_eps must be > 0, got {matrix_eps}")
  if preconditioning_compute_steps < 1:
    raise ValueError("shampoo: preconditioning_compute_steps must be >= 1")
  if graft not in _GRAFTS:
    raise ValueError(f"shampoo: graft must be one of {_GRAFTS}, got {graft!r}")

  def init_tensor(p):
    if _is_preconditioned(p.shape, max_preconditioner_dim):
      dtype = _matrix_dtype(p.dtype)
      stats = tuple(matrix_eps * jnp.eye(d, dtype=dtype) for d in p.shape)
      roots = tuple(jnp.zeros((d, d), dtype) for d in p.shape)
    else:
      stats = roots = ()
    return ShampooTensorState(
        momentum=jnp.zeros_like(p) if momentum else None, stats=stats,
        roots=roots, graft=jnp.zeros_like(p) if graft == "adagrad" else None)

  def init_fn(params):
    return ScaleByShampooState(count=jnp.zeros([], jnp.int32),
                               tensors=jax.tree.map(init_tensor, params))

  def mix(g, buf, first):
    """The reference's momentum: ``torch.lerp(g, U_{t−1}, μ)``."""
    if not momentum:
      return g
    # torch.lerp's two-branch formula, so that the rounding agrees.
    if momentum < 0.5:
      mixed = g + momentum * (buf - g)
    else:
      mixed = buf - (buf - g) * (1.0 - momentum)
    return jnp.where(first, g, mixed)

  def precondition(g, stats, roots):
    if not stats:
      return g
    u = g.astype(stats[0].dtype)
    for i, root in enumerate(roots):
      u = _mode_product(u, root, i)
    return u.astype(g.dtype)

  def apply_graft(g, u, acc, preconditioned):
    if graft == "none":
      return u, acc
    if graft == "adagrad":
      acc = acc + jnp.square(g)
      direction = g / (jnp.sqrt(acc) + diagonal_eps)
    else:
      direction = g
    if not preconditioned:
      return direction, acc
    norm_u = optax.tree.norm(u)
    scale = optax.tree.norm(direction) / jnp.where(norm_u > 0, norm_u, 1)
    return jnp.where(norm_u > 0, u * scale.astype(u.dtype), direction), acc

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    tensors = treedef.flatten_up_to(state.tensors)
    first = state.count == 0
    mixed = [mix(g, t.momentum, first) for g, t in zip(leaves, tensors)]
    stats = [tuple(s + _unfolded_gram(g.astype(s.dtype), i)
                   for i, s in enumerate(t.stats))
             for g, t in zip(mixed, tensors)]

    def fresh(stats):
      return [tuple(_inverse_root(s, 2 * len(leaf_stats), matrix_eps)
                    for s in leaf_stats) for leaf_stats in stats]

    if preconditioning_compute_steps == 1:
      roots = fresh(stats)
    else:
      recompute = (state.count + 1) % preconditioning_compute_steps == 0
      roots = jax.lax.cond(any_run(recompute), fresh,
                           lambda _: [t.roots for t in tensors], stats)
    new_updates, new_tensors = [], []
    for g, t, s, r in zip(mixed, tensors, stats, roots):
      u, acc = apply_graft(g, precondition(g, s, r), t.graft, bool(s))
      new_updates.append(u)
      new_tensors.append(ShampooTensorState(
          momentum=u if momentum else None, stats=s, roots=r, graft=acc))
    return treedef.unflatten(new_updates), ScaleByShampooState(
        count=optax.safe_increment(state.count),
        tensors=treedef.unflatten(new_tensors))

  return optax.GradientTransformation(init_fn, update_fn)


def shampoo(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.0,
    matrix_eps: float = 1e-6,
    preconditioning_compute_steps: int = 1,
    graft: str = "none",
    max_preconditioner_dim: int = 4096,
) -> optax.GradientTransformation:
  """Shampoo: ``θ ← θ − η U_t`` with ``U_t`` from :func:`scale_by_shampoo`.

  Args:
    learning_rate: ``η``, a float or an optax schedule.
    momentum: the reference's momentum ``μ``.
    matrix_eps: ``ε``, the statistics' initial ``ε I``.
    preconditioning_compute_steps: steps between root recomputations.
    graft: ``"none"``, ``"sgd"`` or ``"adagrad"``.
    max_preconditioner_dim: larger tensors are not preconditioned.
  """
  return optax.chain(
      scale_by_shampoo(momentum, matrix_eps, preconditioning_compute_steps,
                       graft, max_preconditioner_dim=max_preconditioner_dim),
      optax.scale_by_learning_rate(learning_rate))


register(OptimizerSpec(
    name="shampoo", factory=shampoo, family="second_order", default_lr=1e-3,
    weight_decay="coupled",
    paper="Gupta, Koren & Singer 2018, Shampoo: Preconditioned Stochastic "
          "Tensor Optimization (ICML)",
    reference="pytorch_optimizer.Shampoo"))
