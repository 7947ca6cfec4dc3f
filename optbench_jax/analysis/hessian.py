"""Hessian spectra: HVPs, top eigenvalues, trace and eigenvalue density.

Every function works on any ``loss_fn(params) -> scalar`` over a pytree of
floating parameters ``θ ∈ ℝⁿ`` and never forms ``H = ∇²L(θ)``; it only applies
it to vectors. The vectors follow the parameters' dtype (float32 by default,
float64 when ``jax.enable_x64`` is on and the parameters are float64).

* **Hessian-vector product** (Pearlmutter 1994), forward-over-reverse:
  ``Hv = d/dε ∇L(θ + εv)|ε=0``, i.e. ``jax.jvp(jax.grad(L), (θ,), (v,))``,
  at the cost of about two gradients.
* **Lanczos** with full reorthogonalisation (``nn/lanczos.py``):
  ``Qᵀ H Q = T`` tridiagonal, one HVP per step.
* **Top eigenvalues**: the Ritz values ``θ_i`` (eigenvalues of ``T``),
  largest first; Ritz vectors ``Q s_i`` on request.
* **Trace** (Hutchinson 1990, "A stochastic estimator of the trace of the
  influence matrix for Laplacian smoothing splines", Commun. Stat. Simul.
  Comput. 19): ``E[zᵀHz] = tr H`` for ``E[zzᵀ] = I``; with Rademacher ``z``
  (±1) the variance ``2(‖H‖_F² − Σ H_ii²)`` is the smallest among such
  probes. The estimate is the mean over ``probes`` draws, its standard
  error ``std(zᵀHz)/√probes``.
* **Spectral density by stochastic Lanczos quadrature** (Ghorbani, Krishnan &
  Xiao 2019, "An Investigation into Neural Net Optimization via Hessian
  Eigenvalue Density", ICML; Yao, Gholami, Keutzer & Mahoney 2020,
  "PyHessian: Neural Networks Through the Lens of the Hessian", IEEE Big
  Data): the density ``φ(t) = (1/n) Σᵢ δ(t − λᵢ)`` is ``E_v[Σᵢ (uᵢᵀv)² δ(t −
  λᵢ)]`` for a unit random ``v``; ``m`` Lanczos steps from ``v`` give the
  Gauss quadrature ``∫ f dμ_v ≈ Σ_k τ_k² f(θ_k)``, with nodes ``θ_k`` the
  eigenvalues of ``T`` and weights ``τ_k²`` the squared first components of
  its eigenvectors (exact for polynomials of degree < 2m). Averaging over
  ``probes`` starts and smoothing each node with a Gaussian kernel
  ``g_σ(t) = exp(−t²/2σ²)/(σ√2π)`` gives
  ``φ_σ(t) ≈ (1/probes) Σ_probes Σ_k τ_k² g_σ(t − θ_k)``.

Parameters of mixed float dtypes are raveled to their common dtype
(``jax.flatten_util.ravel_pytree``). Floating arrays that ``loss_fn`` closes
over (a data batch) are passed to the compiled loops as arguments
(``jax.closure_convert``), not compiled in as constants. Each call compiles
its loop once (the HVP, all iterations and probes inside one ``jax.jit``).

Negative eigenvalues (non-convex losses) are handled like any other:
"top" means the largest algebraic values. Lanczos converges at both ends of
the spectrum, so the most negative eigenvalues are those of
``top_eigenvalues(lambda p: -loss_fn(p), ...)``, negated.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optbench_jax.nn import lanczos
from optbench_jax.errors import OptBenchError
from optbench_jax.kernels.convolution import forward_mode_autodiff
from optbench_jax.transforms.extras import hvp as transforms_hvp

LossFn = Callable[[Any], jax.Array]

# Defaults for a model of a few million parameters (see the module
# docstring for the memory of the Lanczos basis).
TOP_ITERATIONS = 40        # Lanczos steps for top_eigenvalues (≥ 2k used)
TRACE_PROBES = 100         # Hutchinson probes (PyHessian's maxIter)
SLQ_ITERATIONS = 90        # Lanczos steps per SLQ run (PyHessian: 100)
SLQ_PROBES = 1             # SLQ runs (PyHessian's n_v; large n concentrates)
DENSITY_POINTS = 5000      # grid points: spacing ≈ 0.2 kernel widths
DENSITY_SIGMA = 1e-3       # kernel std, relative to the spectral range
DENSITY_MARGIN = 0.05      # grid margin, relative to the spectral range
PROBES = ("rademacher", "gaussian")


def hvp(loss_fn: LossFn, params: Any, v: Any) -> Any:
  """``H v`` with ``H = ∇²loss_fn(params)``, by forward-over-reverse.

  ``jax.jvp(jax.grad(loss_fn), (params,), (v,))``: the directional
  derivative of the gradient along ``v`` (:func:`transforms.hvp`, the one
  the optimizers use). ``v`` has the structure and dtypes of ``params``; so
  has the result. Traceable: call it inside ``jax.jit`` (the other
  functions here compile their whole loop around it).
  """
  return transforms_hvp(loss_fn, params, v)


def top_eigenvalues(loss_fn: LossFn, params: Any, k: int, key: jax.Array, *,
                    iterations: Optional[int] = None,
                    return_eigenvectors: bool = False):
  """The ``k`` largest (algebraic) eigenvalues of the Hessian, largest first.

  Ritz values of ``iterations`` Lanczos steps with full reorthogonalisation
  from a Gaussian start drawn from ``key`` (module docstring). Outlying
  eigenvalues converge first, typically to many digits within a few tens of
  steps; eigenvalues inside a dense bulk need many more.

  Args:
    loss_fn: ``params -> scalar``.
    params: the pytree at which the Hessian is taken.
    k: how many eigenvalues (1 ≤ k ≤ number of parameters).
    key: a PRNG key (the start vector and any restart after breakdown).
    iterations: Lanczos steps (≥ k); default ``max(TOP_ITERATIONS, 2k)``,
      capped at the number of parameters. The basis stores that many
      parameter-sized vectors.
    return_eigenvectors: also return the unit Ritz vectors.

  Returns:
    ``eigenvalues`` of shape ``(k,)``, largest first, in the parameters'
    dtype; with ``return_eigenvectors``, ``(eigenvalues, eigenvectors)``
    where ``eigenvectors`` has the structure of ``params`` and every leaf a
    leading axis of size ``k`` (``eigenvectors[..][i]`` belongs to
    ``eigenvalues[i]``).
  """
  flat, unravel = _flatten(params)
  n = flat.size
  k = _positive_int("k", k)
  if k > n:
    raise OptBenchError(f"k={k} exceeds the number of parameters ({n}).")
  if iterations is None:
    iterations = max(TOP_ITERATIONS, 2 * k)
  iterations = min(_positive_int("iterations", iterations), n)
  if iterations < k:
    raise OptBenchError(f"iterations={iterations} is smaller than k={k}: "
                        "Lanczos gives at most one eigenvalue per step.")

  loss, consts = _hoist(loss_fn, params)

  def run(params, key, consts):
    alphas, betas, basis = lanczos.lanczos(
        _flat_hvp(loss(consts), params), n, flat.dtype, iterations, key)
    values, vectors = jnp.linalg.eigh(lanczos.tridiagonal(alphas, betas))
    values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
    if not return_eigenvectors:
      return values, None
    ritz = vectors.T @ basis
    ritz = ritz / jnp.linalg.norm(ritz, axis=1, keepdims=True)
    return values, jax.vmap(unravel)(ritz)

  values, vectors = jax.jit(run)(params, key, consts)
  return (values, vectors) if return_eigenvectors else values


def trace(loss_fn: LossFn, params: Any, key: jax.Array, *,
          probes: int = TRACE_PROBES, probe: str = "rademacher",
          return_stderr: bool = False):
  """Hutchinson's estimate ``(1/P) Σ_p z_pᵀ H z_p`` of ``tr H``.

  Args:
    loss_fn: ``params -> scalar``.
    params: the pytree at which the Hessian is taken.
    key: a PRNG key, split into one key per probe.
    probes: ``P``, the number of probe vectors (one HVP each).
    probe: ``"rademacher"`` (±1 entries, the default) or ``"gaussian"``.
    return_stderr: also return the standard error ``s/√P`` (``s`` the
      sample standard deviation of ``zᵀHz``; needs ``P ≥ 2``).

  Returns:
    The estimate (a scalar in the parameters' dtype), or
    ``(estimate, stderr)``.
  """
  flat, _ = _flatten(params)
  probes = _positive_int("probes", probes)
  _check_probe(probe)
  if return_stderr and probes < 2:
    raise OptBenchError("a standard error needs probes >= 2.")

  loss, consts = _hoist(loss_fn, params)

  def run(params, key, consts):
    matvec = _flat_hvp(loss(consts), params)

    def quadratic_form(probe_key):
      z = _draw(probe, probe_key, flat.size, flat.dtype)
      return z @ matvec(z)

    return jax.lax.map(quadratic_form, jax.random.split(key, probes))

  values = jax.jit(run)(params, key, consts)
  estimate = values.mean()
  if not return_stderr:
    return estimate
  return estimate, values.std(ddof=1) / math.sqrt(probes)


def lanczos_quadrature(loss_fn: LossFn, params: Any, key: jax.Array, *,
                       iterations: int = SLQ_ITERATIONS,
                       probes: int = SLQ_PROBES,
                       probe: str = "gaussian") -> Tuple[jax.Array, jax.Array]:
  """Nodes and weights of stochastic Lanczos quadrature (Ghorbani et al.
  2019, Yao et al. 2020).

  For each of ``probes`` unit start vectors ``v`` (drawn from ``key``),
  ``iterations`` Lanczos steps give ``T = S diag(θ) Sᵀ``; the nodes are
  ``θ_k`` and the weights ``τ_k² = S_{1k}²`` (they sum to 1 per probe), so
  that ``vᵀ f(H) v ≈ Σ_k τ_k² f(θ_k)``. Runs are sequential: memory is one
  Lanczos basis (``iterations`` parameter-sized vectors).

  Args:
    loss_fn: ``params -> scalar``.
    params: the pytree at which the Hessian is taken.
    key: a PRNG key, split into one key per run.
    iterations: Lanczos steps per run (capped at the number of parameters).
    probes: number of runs.
    probe: distribution of the start vectors, ``"gaussian"`` (Ghorbani et
      al.) or ``"rademacher"`` (PyHessian), normalised to unit length.

  Returns:
    ``(nodes, weights)``, each of shape ``(probes, iterations)``; re-smooth
    them with :func:`density_from_quadrature`.
  """
  flat, _ = _flatten(params)
  n = flat.size
  iterations = min(_positive_int("iterations", iterations), n)
  probes = _positive_int("probes", probes)
  _check_probe(probe)

  loss, consts = _hoist(loss_fn, params)

  def run(params, key, consts):
    start_key, lanczos_key = jax.random.split(key)
    start = _draw(probe, start_key, n, flat.dtype)
    alphas, betas, _ = lanczos.lanczos(
        _flat_hvp(loss(consts), params), n, flat.dtype, iterations,
        lanczos_key, start=start)
    nodes, vectors = jnp.linalg.eigh(lanczos.tridiagonal(alphas, betas))
    return nodes, vectors[0] ** 2

  compiled = jax.jit(run)
  runs = [compiled(params, probe_key, consts)
          for probe_key in jax.random.split(key, probes)]
  return (jnp.stack([nodes for nodes, _ in runs]),
          jnp.stack([weights for _, weights in runs]))


def density_from_quadrature(nodes: jax.Array, weights: jax.Array, *,
                            sigma: float = DENSITY_SIGMA,
                            points: int = DENSITY_POINTS,
                            margin: float = DENSITY_MARGIN
                            ) -> Tuple[np.ndarray, np.ndarray]:
  """The Gaussian-smoothed density of quadrature nodes on a grid.

  ``φ_σ(t) = (1/P) Σ_p Σ_k τ_{pk}² g_s(t − θ_{pk})``, ``g_s`` a Gaussian of
  standard deviation ``s = sigma · r`` where ``r = max θ − min θ`` is the
  spectral range of the nodes (``r = max(|θ|)``, or 1, if all nodes are
  equal). PyHessian scales the kernel's *variance* instead
  (``s² = 1e-5 · max(1, r)``, i.e. ``s ≈ 3e-4 r`` for ``r = 100``). The grid
  has ``points`` equally spaced values from ``min θ − w`` to ``max θ + w``,
  ``w = max(margin, 5 sigma) · r``; the density is renormalised so that its
  trapezoid integral over the grid is 1 (it is already close when the
  kernel is resolved, i.e. the grid spacing is well below ``s``).

  Args:
    nodes, weights: arrays of the same shape ``(probes, iterations)`` (or
      ``(iterations,)``), as :func:`lanczos_quadrature` returns them.
    sigma: kernel width relative to the spectral range (> 0).
    points: grid size (≥ 2).
    margin: grid margin beyond the extreme nodes, relative to the range.

  Returns:
    ``(grid, density)``, two float64 numpy arrays of shape ``(points,)``.
  """
  nodes = np.atleast_2d(np.asarray(nodes, np.float64))
  weights = np.atleast_2d(np.asarray(weights, np.float64))
  if nodes.shape != weights.shape:
    raise OptBenchError(f"nodes {nodes.shape} and weights {weights.shape} "
                        "differ in shape.")
  if not np.all(np.isfinite(nodes)) or not np.all(np.isfinite(weights)):
    raise OptBenchError("nodes or weights are not finite (a NaN loss?).")
  points = _check_smoothing(sigma, points, margin)
  low, high = nodes.min(), nodes.max()
  scale = high - low
  if scale == 0:
    scale = max(abs(high), 1.0)
  width = sigma * scale
  pad = max(margin, 5 * sigma) * scale
  grid = np.linspace(low - pad, high + pad, points)
  density = np.zeros(points)
  for run_nodes, run_weights in zip(nodes, weights):   # memory: one run
    kernel = np.exp(-0.5 * ((grid[:, None] - run_nodes[None, :]) / width)
                    ** 2) / (width * math.sqrt(2 * math.pi))
    density += kernel @ run_weights / nodes.shape[0]
  return grid, density / np.trapezoid(density, grid)


def spectral_density(loss_fn: LossFn, params: Any, key: jax.Array, *,
                     iterations: int = SLQ_ITERATIONS,
                     probes: int = SLQ_PROBES, probe: str = "gaussian",
                     sigma: float = DENSITY_SIGMA,
                     points: int = DENSITY_POINTS,
                     margin: float = DENSITY_MARGIN
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """The Hessian's eigenvalue density by stochastic Lanczos quadrature.

  :func:`lanczos_quadrature` (``iterations``, ``probes``, ``probe``)
  followed by :func:`density_from_quadrature` (``sigma``, ``points``,
  ``margin``); see those for the math and options. Ghorbani et al. (2019)
  and PyHessian (Yao et al. 2020) draw the density on a log scale
  (``figures.plot_densities``).

  Returns:
    ``(grid, density)``: float64 numpy arrays, the density integrating to 1
    on the grid (trapezoid rule).
  """
  _check_smoothing(sigma, points, margin)
  nodes, weights = lanczos_quadrature(loss_fn, params, key,
                                      iterations=iterations, probes=probes,
                                      probe=probe)
  return density_from_quadrature(nodes, weights, sigma=sigma, points=points,
                                 margin=margin)


# ---------------------------------------------------------------------------
# Internals: flat vectors in ℝⁿ.


def _flatten(params):
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise OptBenchError("params is an empty pytree.")
  for leaf in leaves:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise OptBenchError("every parameter must be a floating-point array, "
                          f"got dtype {jnp.result_type(leaf)}.")
  flat, unravel = ravel_pytree(params)
  if flat.size == 0:
    raise OptBenchError("params has no entries.")
  return flat, unravel


def _hoist(loss_fn: LossFn, params):
  """``(loss, consts)``: ``loss(consts)`` is ``loss_fn`` with the floating
  arrays it closes over (a data batch) passed in as ``consts``, so that a
  jitted caller takes them as arguments instead of compiling them in as
  constants (which XLA would try to constant-fold through the first
  layers)."""
  # Traced here, once: its convolutions must be the forward-differentiable
  # ones (the Hessian-vector products differentiate it in forward mode).
  with forward_mode_autodiff():
    converted, consts = jax.closure_convert(loss_fn, params)
  return (lambda c: lambda p: converted(p, *c)), consts


def _positive_int(name: str, value) -> int:
  try:
    number = operator.index(value)
  except TypeError:
    raise OptBenchError(f"{name} must be an integer, got {value!r}.") from None
  if number < 1:
    raise OptBenchError(f"{name} must be positive, got {number}.")
  return number


def _check_smoothing(sigma: float, points: int, margin: float) -> int:
  if not sigma > 0:
    raise OptBenchError(f"sigma must be positive, got {sigma}.")
  if not margin >= 0:
    raise OptBenchError(f"margin must be non-negative, got {margin}.")
  points = _positive_int("points", points)
  if points < 2:
    raise OptBenchError(f"points must be at least 2, got {points}.")
  return points


def _check_probe(probe: str) -> None:
  if probe not in PROBES:
    raise OptBenchError(f"unknown probe {probe!r}; valid choices: "
                        f"{', '.join(PROBES)}.")


def _draw(probe: str, key, n: int, dtype):
  if probe == "rademacher":
    return jax.random.rademacher(key, (n,), dtype)
  return jax.random.normal(key, (n,), dtype)


def _flat_hvp(loss_fn: LossFn, params):
  """``x ↦ H x`` on raveled vectors (dtype of ``ravel_pytree(params)``)."""
  flat, unravel = ravel_pytree(params)
  return lambda x: ravel_pytree(hvp(loss_fn, params, unravel(x)))[0].astype(
      flat.dtype)
