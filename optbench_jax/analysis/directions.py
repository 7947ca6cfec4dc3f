"""Directions of a loss-landscape plane (``landscape.surface``).

* :func:`filter_normalized_direction`, :func:`random_directions`: random
  Gaussian directions normalised filter by filter to the parameters (Li,
  Xu, Taylor, Studer & Goldstein 2018, "Visualizing the Loss Landscape of
  Neural Nets", NeurIPS, §4), cut by :func:`filter_axis`.
* :func:`pca_directions`: the two principal directions of an optimizer's
  trajectory around its final parameters (Li et al. 2018, §7), in which the
  trajectory's projection is largest.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.errors import OptBenchError

Params = Any
IGNORE_CHOICES = ("biasbn", None)


def check_same_tree(name: str, tree: Params, reference: Params) -> None:
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
    check_same_tree(f"points[{t}]", theta, center)
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
