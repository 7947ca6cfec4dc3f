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
* :func:`point_on_line`, :func:`point_on_plane`: the parameters at one grid
  point (e.g. to evaluate other metrics there).
* :func:`plot_interpolation`, :func:`plot_surface`: the PNGs.

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
the plots mask them, and ``optbench_jax.train.outputs.write_json`` writes them
as null (pass ``losses.tolist()``).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, \
    Union

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colors, patches, ticker  # noqa: E402

from optbench_jax.errors import OptBenchError  # noqa: E402
from optbench_jax.train import outputs  # noqa: E402

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
IGNORE_CHOICES = ("biasbn", None)


# ---------------------------------------------------------------------------
# Grids and batched evaluation.

def _check_same_tree(name: str, tree: Params, reference: Params) -> None:
  """``tree`` has ``reference``'s structure and leaf shapes, else an error."""
  if jax.tree.structure(tree) != jax.tree.structure(reference):
    raise OptBenchError(
        f"{name} does not have the structure of the parameters "
        f"({jax.tree.structure(tree)} vs {jax.tree.structure(reference)})")
  for (path, leaf), ref in zip(jax.tree_util.tree_leaves_with_path(tree),
                               jax.tree.leaves(reference)):
    if np.shape(leaf) != np.shape(ref):
      raise OptBenchError(
          f"{name}{jax.tree_util.keystr(path)} has shape {np.shape(leaf)}, "
          f"the parameters {np.shape(ref)}")


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
  _check_same_tree("end", end, start)
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


# ---------------------------------------------------------------------------
# Filter-normalised directions.

def filter_axis(path: Sequence[Any], leaf: Any) -> int:
  """The axis that indexes the filters of a parameter with ndim ≥ 2.

  A filter is the slice of the tensor at one index of this axis (Li et al.
  2018 §4: one output channel of a convolution, one output unit of a fully
  connected layer). Flax stores a ``Conv`` kernel as HWIO and a ``Dense``
  kernel as ``(in, out)``: the output is the *last* axis (PyTorch's first),
  so a conv filter is ``kernel[..., o]`` and a dense unit ``kernel[:, o]``.
  Every other ≥2-D parameter is cut along its last axis as well, except a
  table named ``embedding`` (Flax's ``nn.Embed``, shape ``(vocab,
  features)``), cut along axis 0: one filter per token vector, as Li et al.'s
  code does for ``nn.Embedding`` (its first axis). Pass another function as
  ``filter_axis=`` for other layouts.

  Args:
    path: the leaf's key path in the parameter tree.
    leaf: the parameter.

  Returns:
    The filter axis (non-negative).
  """
  last = path[-1] if path else None
  name = getattr(last, "key", getattr(last, "name", None))
  return 0 if name == "embedding" else np.ndim(leaf) - 1


def filter_normalized_direction(
    key: jax.Array, params: Params, *, ignore: Optional[str] = "biasbn",
    filter_axis: Callable[[Sequence[Any], Any], int] = filter_axis) -> Params:
  """A random direction scaled filter by filter to the parameters.

  Li et al. 2018, §4: draw ``d ~ N(0, I)`` with the parameters' shapes, then
  for every filter ``j`` of every ≥2-D parameter ``i``

      d_{i,j} ← d_{i,j} · ‖θ_{i,j}‖ / ‖d_{i,j}‖    (Frobenius norms)

  so a step of size 1 along ``d`` moves each filter by as much as its own
  norm, and the scale invariance of ReLU networks with normalisation does not
  distort the picture. Filters are cut by :func:`filter_axis` (Flax's output
  axis, the last). Parameters with ndim ≤ 1 (biases, BatchNorm and LayerNorm
  scales and offsets) get ``d = 0`` with ``ignore="biasbn"`` (the default,
  Li et al.'s ``--xignore biasbn``); with ``ignore=None`` they are kept and
  normalised as a whole, ``d_i ← d_i ‖θ_i‖ / ‖d_i‖`` (Li et al.'s code puts
  ``d_i = θ_i`` there instead). A filter whose parameters are all zero gets a
  zero direction. The Gaussian and the norms are computed in at least
  float32; the direction has the parameters' dtypes.

  Args:
    key: a PRNG key; each parameter gets its own subkey.
    params: the parameters θ (the center of the plot).
    ignore: ``"biasbn"`` or None.
    filter_axis: ``(path, leaf) -> axis`` for ≥2-D parameters.

  Returns:
    The direction, with ``params``' structure.
  """
  if ignore not in IGNORE_CHOICES:
    raise OptBenchError(
        f"ignore must be one of {IGNORE_CHOICES}, got {ignore!r}")
  return _direction_fn(ignore, filter_axis)(key, params)


@functools.lru_cache(maxsize=None)
def _direction_fn(ignore: Optional[str], filter_axis: Callable[..., int]):
  """:func:`filter_normalized_direction` as one jitted program (compiled once
  per parameter structure, instead of one random-number program per leaf
  shape)."""

  def direction(k, path, theta):
    dtype = jnp.promote_types(theta.dtype, jnp.float32)
    if theta.ndim <= 1 and ignore == "biasbn":
      return jnp.zeros_like(theta)
    d = jax.random.normal(k, theta.shape, dtype)
    w = theta.astype(dtype)
    if theta.ndim <= 1:
      axes = None
    else:
      axis = filter_axis(path, theta) % theta.ndim
      axes = tuple(a for a in range(theta.ndim) if a != axis)
    d_norm = jnp.sqrt(jnp.sum(d * d, axis=axes, keepdims=True))
    w_norm = jnp.sqrt(jnp.sum(w * w, axis=axes, keepdims=True))
    ratio = jnp.where(d_norm > 0, w_norm / jnp.where(d_norm > 0, d_norm, 1), 0)
    return (d * ratio).astype(theta.dtype)

  @jax.jit
  def fn(key, params):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(
        treedef, [direction(k, path, leaf)
                  for k, (path, leaf) in zip(keys, leaves)])

  return fn


def random_directions(key: jax.Array, params: Params, n: int = 2,
                      **kwargs) -> tuple[Params, ...]:
  """``n`` filter-normalised directions from independent subkeys of ``key``.

  ``kwargs`` go to :func:`filter_normalized_direction` (``ignore``,
  ``filter_axis``). Two Gaussian directions in a space of millions of
  dimensions are nearly orthogonal, as Li et al. 2018 rely on.
  """
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise OptBenchError(f"n must be a positive integer, got {n!r}")
  return tuple(filter_normalized_direction(k, params, **kwargs)
               for k in jax.random.split(key, n))


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
  _check_same_tree("d1", d1, center)
  _check_same_tree("d2", d2, center)
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
  _check_same_tree("d1", d1, center)
  _check_same_tree("d2", d2, center)
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
    _check_same_tree(f"points[{t}]", theta, center)
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


class Principal(NamedTuple):
  """:func:`pca_directions`'s result."""
  d1: Params          # first principal direction (unit norm)
  d2: Params          # second principal direction (unit norm)
  explained: np.ndarray   # [2]: share of Σ‖θ_t − θ*‖² along d₁ and d₂


def pca_directions(points: Sequence[Params], center: Params) -> Principal:
  """The two principal directions of a path around ``center`` (Li et al.
  2018, §7).

  A random direction in a space of millions of dimensions is almost
  orthogonal to any optimisation path, so the path projects to a dot near
  the center of a random plane (:func:`project_trajectory`'s residual says
  how much is lost). Li et al. therefore draw paths on the plane of the
  first two principal components of ``M = [θ₀ − θ*; …; θ_T − θ*]`` (rows:
  checkpoints). They are computed from the small Gram matrix ``G = M Mᵀ``
  (``T+1`` squared, float64 on the host): ``G u = σ² u`` gives the
  direction ``d = Mᵀ u / σ``, of unit norm. ``explained`` is
  ``σ_i² / Σ‖θ_t − θ*‖²`` (uncentred: the plane passes through θ*, where
  the surface is drawn). No filter normalisation: the axes are in parameter
  units, so the plot shows real distances.
  """
  if len(points) < 2:
    raise OptBenchError("a path needs at least two points for two "
                        "principal directions")
  c_leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(center)]
  rows = []
  for t, theta in enumerate(points):
    _check_same_tree(f"points[{t}]", theta, center)
    rows.append([np.asarray(x, np.float64) - c
                 for x, c in zip(jax.tree.leaves(theta), c_leaves)])
  gram = np.array([[sum(np.vdot(a, b) for a, b in zip(r, q)) for q in rows]
                   for r in rows])
  values, vectors = np.linalg.eigh(gram)
  order = np.argsort(values)[::-1][:2]
  total = float(np.trace(gram))
  if total <= 0 or values[order[1]] <= 1e-12 * total:
    raise OptBenchError("the path spans fewer than two directions (it needs "
                        "at least two distinct points besides θ*)")
  treedef = jax.tree.structure(center)
  directions = []
  for i in order:
    sigma = math.sqrt(values[i])
    leaves = [sum(vectors[t, i] * rows[t][j] for t in range(len(rows)))
              / sigma for j in range(len(c_leaves))]
    directions.append(jax.tree.unflatten(treedef, [
        np.asarray(d, np.asarray(x).dtype)
        for d, x in zip(leaves, jax.tree.leaves(center))]))
  return Principal(directions[0], directions[1],
                   np.asarray(values[order] / total, np.float64))


# ---------------------------------------------------------------------------
# Plots.

def _save(fig, path: str) -> None:
  """Saves atomically (a kill leaves no truncated image), then closes."""
  with outputs.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
  plt.close(fig)


def _log_scale(values: np.ndarray, decades: float = 2.0) -> bool:
  """True when the finite values are all positive and span ≥ ``decades``."""
  finite = values[np.isfinite(values)]
  return bool(finite.size and finite.min() > 0
              and finite.max() / finite.min() >= 10**decades)


def plot_interpolation(curves: Mapping[str, tuple[Any, Any]], path: str,
                       title: Optional[str] = None, *,
                       endpoints: tuple[str, str] = ("α = 0", "α = 1"),
                       ylabel: str = "loss") -> str:
  """Draws 1-D interpolation curves (:func:`interpolate`) into one PNG.

  Args:
    curves: ``{label: (alphas, losses)}``, e.g. one curve per optimizer from
      its initial to its final parameters, or one between two optimizers.
    path: the PNG file.
    title: the figure's title.
    endpoints: names of the dashed lines at α = 0 and α = 1 (e.g.
      ``("init", "final")`` or two optimizers' names).
    ylabel: the y-axis label.

  Non-finite losses are left out (gaps in the curve); the y-axis is
  logarithmic when the finite losses are positive and span two decades or
  more.

  Returns:
    ``path``.
  """
  if not curves:
    raise OptBenchError("plot_interpolation needs at least one curve")
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  every = []
  for label, (alphas, losses) in curves.items():
    alphas = np.asarray(alphas, np.float64)
    losses = np.asarray(losses, np.float64)
    if alphas.shape != losses.shape or alphas.ndim != 1:
      raise OptBenchError(f"curve {label!r}: alphas {alphas.shape} and "
                          f"losses {losses.shape} must be equal 1-D shapes")
    every.append(losses)
    ax.plot(alphas, np.ma.masked_invalid(losses), marker=".", markersize=4,
            label=label)
  every = np.concatenate(every)
  if _log_scale(every):
    ax.set_yscale("log")
  for alpha, name in zip((0.0, 1.0), endpoints):
    ax.axvline(alpha, color="grey", linestyle="--", linewidth=0.8)
    ax.annotate(name, (alpha, 1.0), xycoords=("data", "axes fraction"),
                xytext=(3, -12), textcoords="offset points", fontsize="small",
                color="dimgrey")
  ax.set_xlabel("α   (θ = (1 − α) θ₀ + α θ₁)")
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small", ncol=2 if len(curves) > 6 else 1)
  fig.tight_layout()
  _save(fig, path)
  return path


def plot_surface(xs: Any, ys: Any, losses: Any, path: str, *,
                 trajectory: Optional[Any] = None,
                 title: Optional[str] = None, log: Optional[bool] = None,
                 levels: int = 30) -> str:
  """Draws a :func:`surface` as filled contours with contour lines.

  Args:
    xs, ys: the grid coordinates ``[nx]``, ``[ny]``.
    losses: ``[ny, nx]``.
    path: the PNG file.
    trajectory: optional ``[n, 2]`` plane coordinates of checkpoints
      (:func:`project_trajectory`'s ``coords``), drawn in order with a marker
      per checkpoint; the first is ringed. The axes show the grid only:
      choose the surface's ``span`` to cover the trajectory.
    title: the figure's title.
    log: colour by ``log10(loss)``; default when the finite losses are
      positive and span two decades or more.
    levels: the number of filled contour levels.

  Non-finite losses (a diverging region) are masked and left grey. The
  center (0, 0) is marked with a star.

  Returns:
    ``path``.
  """
  xs = np.asarray(xs, np.float64)
  ys = np.asarray(ys, np.float64)
  z = np.asarray(losses, np.float64)
  if xs.ndim != 1 or ys.ndim != 1 or z.shape != (len(ys), len(xs)):
    raise OptBenchError(f"losses must have shape (len(ys), len(xs)) = "
                        f"({len(np.atleast_1d(ys))}, {len(np.atleast_1d(xs))})"
                        f", got {z.shape}")
  if log is None:
    log = _log_scale(z)
  finite = np.isfinite(z) & ((z > 0) if log else True)
  fig, ax = plt.subplots(figsize=(6.4, 5.6))
  ax.set_facecolor("lightgrey")
  if finite.sum() >= 2 and np.ptp(z[finite]) > 0:
    shown = np.log10(np.where(finite, z, 1.0)) if log else z
    shown = np.ma.masked_array(shown, ~finite)
    bounds = ticker.MaxNLocator(nbins=levels).tick_values(shown.min(),
                                                          shown.max())
    filled = ax.contourf(xs, ys, shown, levels=bounds, cmap="viridis")
    lines = ax.contour(xs, ys, shown, levels=bounds[::3], colors="white",
                       linewidths=0.6, alpha=0.8,
                       negative_linestyles="solid")
    ax.clabel(lines, lines.levels[::2], fontsize=7, fmt="%.3g")
    bar = fig.colorbar(filled, ax=ax)
    bar.set_label("log₁₀ loss" if log else "loss")
  elif finite.any():
    ax.pcolormesh(xs, ys, np.ma.masked_array(z, ~finite), shading="nearest",
                  norm=colors.Normalize(), cmap="viridis")
  ax.plot([0.0], [0.0], marker="*", markersize=14, color="red",
          markeredgecolor="black", linestyle="none", label="θ*")
  if trajectory is not None:
    t = np.asarray(trajectory, np.float64)
    if t.ndim != 2 or t.shape[1] != 2:
      raise OptBenchError(f"trajectory must have shape (n, 2), got {t.shape}")
    ax.plot(t[:, 0], t[:, 1], marker="o", markersize=4, color="orangered",
            markeredgecolor="black", linewidth=1.2, label="checkpoints")
    ax.plot(t[:1, 0], t[:1, 1], marker="o", markersize=10,
            markerfacecolor="none", markeredgecolor="orangered",
            linestyle="none", label="first checkpoint")
  handles, _ = ax.get_legend_handles_labels()
  if not finite.all():
    label = ("non-finite loss" if np.all(finite | ~np.isfinite(z))
             else "non-finite or ≤ 0 loss")
    handles.append(patches.Patch(color="lightgrey", label=label))
  ax.set_xlim(xs.min(), xs.max())
  ax.set_ylim(ys.min(), ys.max())
  ax.set_xlabel("x  (along d₁)")
  ax.set_ylabel("y  (along d₂)")
  if title:
    ax.set_title(title)
  ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13),
            ncol=len(handles), fontsize="small", frameon=False)
  fig.tight_layout()
  _save(fig, path)
  return path
