"""Lanczos iteration with full reorthogonalisation, on any ``matvec``.

**Lanczos** (Lanczos 1950, "An iteration method for the solution of the
eigenvalue problem of linear differential and integral operators", J. Res.
Nat. Bur. Standards 45): from ``q₁ = v/‖v‖``,
``β_j q_{j+1} = H q_j − α_j q_j − β_{j−1} q_{j−1}``, ``α_j = q_jᵀ H q_j``,
so that ``Qᵀ H Q = T`` is tridiagonal (``α`` on the diagonal, ``β`` beside
it). Here, after the three-term recurrence, every new vector is
orthogonalised against all previous ones (full reorthogonalisation by
classical Gram-Schmidt, a second pass when the first removed much of it),
which keeps ``Q`` orthonormal to rounding and prevents the spurious copies
of converged eigenvalues ("ghosts") of the plain recurrence. When ``β_j``
falls to rounding level (``≤ 100 ε · max(|α|, β)``: the Krylov space is
invariant, e.g. fewer distinct eigenvalues than iterations) the iteration
continues from a fresh random vector orthogonal to ``Q`` with ``β_j = 0``,
so repeated eigenvalues are found once the iterations reach their
multiplicity. Memory: the basis ``Q`` holds ``iterations`` vectors of the
parameter size (``iterations · n`` numbers: 40 × 5 M float32 = 0.8 GB,
90 × 5 M = 1.8 GB), besides one HVP's activations; each step costs one HVP
and about ``4 · iterations · n`` flops of reorthogonalisation.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def tridiagonal(alphas, betas):
  """The tridiagonal ``T`` of :func:`lanczos`'s ``(alphas, betas)``."""
  return (jnp.diag(alphas) + jnp.diag(betas[:-1], 1)
          + jnp.diag(betas[:-1], -1))


def _project_out(basis, w):
  return w - basis.T @ (basis @ w)


def _orthogonalise(basis, w):
  """``w`` minus its projection on the rows of ``basis`` (classical
  Gram-Schmidt), repeated once when the first pass removed more than
  ``1 − 1/√2`` of its norm ("twice is enough": Daniel, Gragg, Kaufman &
  Stewart 1976)."""
  projected = _project_out(basis, w)
  return jax.lax.cond(
      jnp.linalg.norm(projected) < jnp.linalg.norm(w) / math.sqrt(2),
      _project_out, lambda _, v: v, basis, projected)


def lanczos(matvec, n: int, dtype, iterations: int, key, start=None):
  """``iterations`` Lanczos steps with full reorthogonalisation.

  Returns ``(alphas, betas, basis)``: ``T``'s diagonal, its off-diagonal
  (``betas[j]`` couples steps ``j`` and ``j + 1``; the last is unused) and
  the orthonormal basis, one row per step. Rows not yet filled are zero, so
  projecting on the whole ``basis`` projects on the filled rows.
  """
  start_key, restart_key = jax.random.split(key)
  if start is None:
    start = jax.random.normal(start_key, (n,), dtype)
  eps = jnp.finfo(dtype).eps
  # A residual this small (relative to ‖T‖ so far) is rounding noise: the
  # Krylov space is invariant and the iteration restarts. Dropping a true
  # coupling this small moves eigenvalues by at most as much (Weyl).
  breakdown = 100 * eps

  def step(j, carry):
    basis, alphas, betas, q, norm = carry
    previous = betas[j - 1] * basis[j - 1]   # zero at j = 0 (row unfilled)
    basis = basis.at[j].set(q)
    w = matvec(q)
    alpha = q @ w
    w = _orthogonalise(basis, w - alpha * q - previous)
    beta = jnp.linalg.norm(w)
    norm = jnp.maximum(norm, jnp.maximum(jnp.abs(alpha), beta))

    def restart(_):
      z = jax.random.normal(jax.random.fold_in(restart_key, j), (n,), dtype)
      z = _project_out(basis, _project_out(basis, z))
      return z / jnp.maximum(jnp.linalg.norm(z), jnp.finfo(dtype).tiny), \
          jnp.zeros((), dtype)

    def proceed(_):
      return w / beta, beta

    q, beta = jax.lax.cond(beta <= breakdown * norm, restart, proceed, None)
    return (basis, alphas.at[j].set(alpha), betas.at[j].set(beta), q, norm)

  carry = (jnp.zeros((iterations, n), dtype), jnp.zeros(iterations, dtype),
           jnp.zeros(iterations, dtype), start / jnp.linalg.norm(start),
           jnp.zeros((), dtype))
  basis, alphas, betas, _, _ = jax.lax.fori_loop(0, iterations, step, carry)
  return alphas, betas, basis
