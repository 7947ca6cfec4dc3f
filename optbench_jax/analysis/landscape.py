"""Loss landscapes: 1-D interpolations and 2-D surfaces around a solution.

Everything works on pytrees and a function ``loss_fn(params) -> scalar``:

* :func:`interpolate`: the loss along the line ``θ(α) = (1−α) θ₀ + α θ₁``
  between two parameter vectors, for α beyond [0, 1] (−0.5 … 1.5 by default)
  as Goodfellow, Vinyals & Saxe 2015 ("Qualitatively characterizing neural
  network optimization problems", ICLR) draw it. With ``θ₀`` the initial and
  ``θ₁`` the final parameters of a run it shows the path an optimizer could
  have taken straight; with the final parameters of two optimizers it shows
  whether a barrier separates their solutions.
* :func:`surface`: ``L(θ* + x d₁ + y d₂)`` on a grid around the final
  parameters ``θ*`` along two random directions normalised filter by filter
  (:func:`filter_normalized_direction`, :func:`random_directions`; Li, Xu,
  Taylor, Studer & Goldstein 2018, "Visualizing the Loss Landscape of Neural
  Nets", NeurIPS), and :func:`project_trajectory`, the least-squares
  coordinates of saved checkpoints in that plane.
* :func:`barrier`: the barrier on an interpolated path, ``max_{0≤α≤1} L(α)
  − max(L(0), L(1))`` (0 when the path is monotone).
* :func:`point_on_line`, :func:`point_on_plane`: the parameters at one grid
  point (e.g. to evaluate other metrics there).
* the PNGs are drawn by :mod:`optbench_jax.analysis.figures`.

The caller builds ``loss_fn``: it closes over a fixed evaluation subset (the
same examples at every grid point) and over the model's non-parameter state.
For BatchNorm the benchmark evaluates every grid point in eval mode with the
*final run's running statistics held fixed*, so the landscape shows the
parameters' effect alone; a caller may instead pass a ``loss_fn`` that
recomputes the statistics at each point (train-mode batch statistics on the
evaluation subset). Nothing here knows which: the functions only call
``loss_fn``.

Grid points are evaluated with ``jax.vmap(loss_fn)`` over stacked copies of
the parameters, ``batch_points`` copies at a time (one compiled chunk; the last
chunk is padded). The anchor points (α = 0 and α = 1, the surface's (0, 0))
are exactly the given parameter vectors, and their losses are the values of
``loss_fn`` called on those vectors directly, so they equal ``loss_fn(θ₀)``,
``loss_fn(θ₁)`` and ``loss_fn(θ*)`` bit for bit (a batched evaluation of the
same point may round its reductions differently in the last bits).

Losses of diverging regions may be inf or NaN. They are returned as they are;
the plots mask them, and ``optbench_jax.store.write_json`` writes them
as null (pass ``losses.tolist()``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.analysis.directions import check_same_tree
from optbench_jax.errors import OptBenchError

Params = Any
LossFn = Callable[[Params], Any]
Span = Union[float, Sequence[float]]

# Stacked parameter copies a chunk may hold by default (activations of the
# caller's evaluation subset come on top, ``batch_points`` times).
CHUNK_BYTES = 256 * 2**20
MAX_BATCH_POINTS = 64
INTERPOLATION_SPAN = (-0.5, 1.5)
INTERPOLATION_POINTS = 41
SURFACE_SPAN = 1.0
SURFACE_POINTS = 51


# ---------------------------------------------------------------------------
# Grids and batched evaluation.

def _span(span: Span, name: str) -> tuple[float, float]:
  """``s`` → ``(−s, s)``; a pair ``(lo, hi)`` as it is."""
  if np.ndim(span) == 0:
    lo, hi = -float(span), float(span)
  elif np.shape(span) == (2,):
    lo, hi = (float(v) for v in span)
  else:
    raise OptBenchError(f"{name} must be a number s (for −s…s) or a pair "
                        f"(lo, hi), got {span!r}")
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
    raise OptBenchError(f"{name} must give finite lo < hi, got {span!r}")
  return lo, hi


def grid(span: Span, points: int, anchors: Sequence[float],
          name: str) -> np.ndarray:
  """``points`` evenly spaced values over ``span`` that contain each anchor
  exactly: a grid value within 1e-6 steps of an anchor becomes the anchor,
  and an anchor between grid values is inserted (the grid grows by one)."""
  lo, hi = _span(span, name)
  if not all(lo <= a <= hi for a in anchors):
    raise OptBenchError(f"{name} {span!r} must contain {list(anchors)}")
  if not isinstance(points, (int, np.integer)) or points < 2:
    raise OptBenchError(f"points must be an integer ≥ 2, got {points!r}")
  grid = np.linspace(lo, hi, int(points))
  step = (hi - lo) / (points - 1)
  for a in anchors:
    i = int(np.argmin(np.abs(grid - a)))
    if abs(grid[i] - a) <= 1e-6 * step:
      grid[i] = a
  return np.unique(np.concatenate([grid, np.asarray(anchors, np.float64)]))


def _values(values: Any, name: str) -> np.ndarray:
  """User-given grid values as a 1-D float64 array (in the given order)."""
  array = np.asarray(values, np.float64)
  if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
    raise OptBenchError(f"{name} must be a non-empty 1-D sequence of finite "
                        f"numbers, got shape {array.shape}")
  return array


def _loss_dtype(loss_fn: LossFn, params: Params) -> np.dtype:
  """The dtype of ``loss_fn(params)``, which must be a scalar."""
  out = jax.eval_shape(loss_fn, params)
  if not hasattr(out, "shape") or out.shape != ():
    raise OptBenchError(
        f"loss_fn must return a scalar, got {jax.tree.map(np.shape, out)}")
  return np.dtype(out.dtype)


def default_batch_points(params: Params) -> int:
  """Grid points per vmapped chunk so that the stacked parameter copies take
  at most :data:`CHUNK_BYTES` (256 MiB), between 1 and
  :data:`MAX_BATCH_POINTS`: 64 points of a 1M-parameter float32 model, 12 of
  a 5M-parameter one."""
  nbytes = sum(np.size(x) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(params))
  return int(max(1, min(MAX_BATCH_POINTS, CHUNK_BYTES // max(nbytes, 1))))


def _evaluate(loss_fn: LossFn, point: Callable[[Any, Any], Params],
              operands: Any, coords: np.ndarray, batch_points: Optional[int],
              dtype: np.dtype, params: Params) -> np.ndarray:
  """``loss_fn(point(operands, c))`` for each row ``c`` of ``coords``.

  ``jax.vmap`` over ``batch_points`` rows at a time (default from one point's
  ``params``), in one jitted function compiled once (the last chunk is padded
  with copies of its last row and the padding's losses dropped).
  """
  if batch_points is None:
    batch_points = default_batch_points(params)
  if not isinstance(batch_points, (int, np.integer)) or batch_points < 1:
    raise OptBenchError(
        f"batch_points must be a positive integer, got {batch_points!r}")
  n = len(coords)
  size = int(min(batch_points, n))

  @jax.jit
  def chunk(operands, c):
    return jax.vmap(lambda ci: loss_fn(point(operands, ci)))(c)

  losses = np.empty(n, dtype)
  for start in range(0, n, size):
    c = coords[start:start + size]
    valid = len(c)
    if valid < size:
      c = np.concatenate([c, np.repeat(c[-1:], size - valid, axis=0)])
    losses[start:start + valid] = np.asarray(chunk(operands, jnp.asarray(c))
                                             )[:valid]
  return losses


def _scale(value, leaf):
  """A grid coordinate in the leaf's dtype."""
  return jnp.asarray(value).astype(leaf.dtype)


# ---------------------------------------------------------------------------
# 1-D interpolation.

def point_on_line(start: Params, end: Params, alpha: Any) -> Params:
  """``θ(α) = (1−α) θ₀ + α θ₁`` leaf by leaf in the parameters' dtypes, with
  ``θ(0) = θ₀`` and ``θ(1) = θ₁`` exactly (selected, not computed). Traceable
  in ``alpha``."""

  def mix(x0, x1):
    a = _scale(alpha, x0)
    line = (1 - a) * x0 + a * x1
    return jnp.where(alpha == 0, x0, jnp.where(alpha == 1, x1, line))

  return jax.tree.map(mix, start, end)


def interpolate(loss_fn: LossFn, start: Params, end: Params,
                alphas: Optional[Sequence[float]] = None, *,
                span: Span = INTERPOLATION_SPAN,
                points: int = INTERPOLATION_POINTS,
                batch_points: Optional[int] = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """The loss along the line through ``start`` and ``end``.

  ``L(θ(α))`` with ``θ(α) = (1−α) θ₀ + α θ₁`` (Goodfellow, Vinyals & Saxe
  2015), computed leaf by leaf in the parameters' dtype. At α = 0 and α = 1
  the point is ``θ₀`` and ``θ₁`` themselves (selected, not computed: ``θ₀ +
  1·(θ₁ − θ₀)`` is not ``θ₁`` in floating point) and the loss is
  ``loss_fn(start)``, ``loss_fn(end)`` called directly, bit for bit.

  Args:
    loss_fn: ``params -> scalar`` on a fixed evaluation subset.
    start: θ₀ (the initial parameters, or one optimizer's final ones).
    end: θ₁, with ``start``'s structure and shapes.
    alphas: the α values; default ``points`` values evenly spaced over
      ``span`` that contain 0.0 and 1.0 exactly.
    span: ``(lo, hi)`` of the default grid; it must contain [0, 1].
    points: the size of the default grid.
    batch_points: grid points per vmapped chunk (each one a full copy of the
      parameters); default :func:`default_batch_points`.

  Returns:
    ``(alphas, losses)``: float64 α values and the losses in ``loss_fn``'s
    dtype, both of shape ``[n]``.
  """
  check_same_tree("end", end, start)
  alphas = (grid(span, points, (0.0, 1.0), "span") if alphas is None
            else _values(alphas, "alphas"))
  dtype = _loss_dtype(loss_fn, start)

  def point(operands, alpha):
    return point_on_line(*operands, alpha[0])

  losses = _evaluate(loss_fn, point, (start, end), alphas[:, None],
                     batch_points, dtype, start)
  for anchor, params in ((0.0, start), (1.0, end)):
    if np.any(alphas == anchor):
      losses[alphas == anchor] = np.asarray(loss_fn(params), dtype)
  return alphas, losses


# The label of a run's 1-D path from its initial to its final parameters
# (``analyze``'s landscape1d curves, the report's analysis table).
INITIAL_TO_FINAL = "initial → final"


def barrier(alphas: Sequence[float], losses: Sequence[Optional[float]]
            ) -> Optional[float]:
  """The loss barrier of a path from :func:`interpolate`:
  ``max_{0≤α≤1} L(α) − max(L(0), L(1))`` (Goodfellow et al. 2015: 0 when
  the loss rises nowhere above its ends). A non-finite loss (None, NaN,
  inf: a diverging region) between the ends is an infinite barrier; None
  when the path lacks α = 0 or α = 1 or their losses are not finite."""
  points = [(float(a), math.inf if l is None or not math.isfinite(float(l))
             else float(l)) for a, l in zip(alphas, losses)]
  ends = [l for a, l in points if a in (0.0, 1.0)]
  if len(ends) != 2 or not all(math.isfinite(l) for l in ends):
    return None
  return max(l for a, l in points if 0.0 <= a <= 1.0) - max(ends)


# ---------------------------------------------------------------------------
# 2-D surface.

def point_on_plane(center: Params, d1: Params, d2: Params, x: Any,
                   y: Any) -> Params:
  """``θ* + x d₁ + y d₂`` leaf by leaf in the parameters' dtypes, exactly
  ``θ*`` at (0, 0). Traceable in ``x`` and ``y``."""

  def move(c, u, v):
    moved = c + _scale(x, c) * u + _scale(y, c) * v
    return jnp.where((x == 0) & (y == 0), c, moved)

  return jax.tree.map(move, center, d1, d2)


def surface(loss_fn: LossFn, center: Params, d1: Params, d2: Params,
            xs: Optional[Sequence[float]] = None,
            ys: Optional[Sequence[float]] = None, *,
            span: Span = SURFACE_SPAN, points: int = SURFACE_POINTS,
            batch_points: Optional[int] = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The loss on a plane through ``center``: ``L(θ* + x d₁ + y d₂)``.

  Li et al. 2018 (Figure 1 etc.: 51 × 51 points over [−1, 1]², the default
  here) with ``d₁, d₂`` from :func:`random_directions`. The point at
  (0, 0) is ``θ*`` itself and its loss is ``loss_fn(center)`` called
  directly, bit for bit.

  Args:
    loss_fn: ``params -> scalar`` on a fixed evaluation subset.
    center: θ* (the final parameters).
    d1, d2: directions with ``center``'s structure and shapes.
    xs, ys: the coordinates along ``d1`` and ``d2``; default ``points``
      values evenly spaced over ``span`` (``s`` for −s…s, or ``(lo, hi)``)
      that contain 0.0 exactly; ``ys`` defaults to the same grid as ``xs``.
    span, points: the default grid.
    batch_points: grid points per vmapped chunk; default
      :func:`default_batch_points`.

  Returns:
    ``(xs, ys, losses)``: float64 coordinates ``[nx]``, ``[ny]`` and losses
    ``[ny, nx]`` (``losses[i, j]`` at ``(xs[j], ys[i])``, as
    ``matplotlib.contourf(xs, ys, losses)`` reads them).
  """
  check_same_tree("d1", d1, center)
  check_same_tree("d2", d2, center)
  xs = (grid(span, points, (0.0,), "span") if xs is None
        else _values(xs, "xs"))
  ys = xs if ys is None else _values(ys, "ys")
  dtype = _loss_dtype(loss_fn, center)
  gx, gy = np.meshgrid(xs, ys)
  coords = np.stack([gx.ravel(), gy.ravel()], axis=1)

  def point(operands, xy):
    return point_on_plane(*operands, xy[0], xy[1])

  losses = _evaluate(loss_fn, point, (center, d1, d2), coords, batch_points,
                     dtype, center)
  at_center = (coords[:, 0] == 0) & (coords[:, 1] == 0)
  if np.any(at_center):
    losses[at_center] = np.asarray(loss_fn(center), dtype)
  return xs, ys, losses.reshape(len(ys), len(xs))


class Projection(NamedTuple):
  """Checkpoints in the plane of :func:`surface`.

  coords: ``[n, 2]``, the coefficients ``(a_t, b_t)`` of the least-squares
    fit ``θ_t − θ* ≈ a_t d₁ + b_t d₂``.
  residual: ``[n]``, ``‖θ_t − θ* − a_t d₁ − b_t d₂‖ / ‖θ_t − θ*‖``: the
    fraction of each displacement outside the plane (0 where ``θ_t = θ*``).
  """
  coords: np.ndarray
  residual: np.ndarray


def _dot(a: Params, b: Params) -> float:
  return float(sum(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def project_trajectory(points: Sequence[Params], center: Params, d1: Params,
                       d2: Params) -> Projection:
  """Projects parameter vectors onto the plane ``θ* + span(d₁, d₂)``.

  For each ``δ_t = θ_t − θ*`` the coefficients solve the normal equations

      [d₁·d₁  d₁·d₂] [a_t]   [d₁·δ_t]
      [d₂·d₁  d₂·d₂] [b_t] = [d₂·δ_t]

  in float64 on the host (``d₁, d₂`` need not be orthogonal; Li et al. 2018
  §7 project onto PCA directions, which are). The residual is computed
  directly, leaf by leaf, not as ``‖δ‖² − ‖projection‖²``.

  Args:
    points: the checkpoints' parameters θ_t (a sequence of pytrees).
    center: θ*.
    d1, d2: the plane's directions, linearly independent.

  Returns:
    A :class:`Projection`.
  """
  check_same_tree("d1", d1, center)
  check_same_tree("d2", d2, center)
  gram = np.array([[_dot(d1, d1), _dot(d1, d2)],
                   [_dot(d2, d1), _dot(d2, d2)]])
  if not np.all(np.isfinite(gram)) or np.linalg.cond(gram) > 1e12:
    raise OptBenchError("d1 and d2 must be finite and linearly independent "
                        "(the plane is not defined)")
  c_leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(center)]
  u_leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(d1)]
  v_leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(d2)]
  coords, residual = [], []
  for t, theta in enumerate(points):
    check_same_tree(f"points[{t}]", theta, center)
    deltas = [np.asarray(x, np.float64) - c
              for x, c in zip(jax.tree.leaves(theta), c_leaves)]
    rhs = np.array([sum(np.vdot(u, d) for u, d in zip(u_leaves, deltas)),
                    sum(np.vdot(v, d) for v, d in zip(v_leaves, deltas))])
    a, b = np.linalg.solve(gram, rhs)
    out = sum(np.sum((d - a * u - b * v)**2)
              for d, u, v in zip(deltas, u_leaves, v_leaves))
    norm = sum(np.sum(d**2) for d in deltas)
    coords.append((a, b))
    residual.append(math.sqrt(out / norm) if norm > 0 else 0.0)
  return Projection(np.asarray(coords, np.float64).reshape(-1, 2),
                    np.asarray(residual, np.float64))
