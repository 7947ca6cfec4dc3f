"""Loss landscapes (``optbench_jax.analysis.landscape``).

The model is a small ``flax.linen`` CNN (Conv → BatchNorm → ReLU → mean pool
→ Dense) evaluated in eval mode with fixed running statistics, as the
benchmark evaluates trained runs; the closed-form checks use a quadratic
``½ (θ − m)ᵀ H (θ − m)`` with a dense symmetric positive-definite ``H``.

Tolerances and the errors measured (CPU, jax 0.10.2), relative errors as
:func:`tests.transforms.torch_reference.relative_error`:

* anchors (α = 0, α = 1, the surface's (0, 0)): ``==``, with the grid
  evaluated in vmapped chunks that do not divide the number of points; the
  parameters at the anchors are the endpoints bit for bit, also where
  ``θ₀ + (θ₁ − θ₀)`` is not ``θ₁``;
* interpolation and surface of the quadratic against the closed form, float64:
  tolerance 1e-12, measured 2.7e-16 and 9.9e-17;
* vmapped chunks against a Python loop of ``loss_fn`` calls, float32:
  tolerance 1e-6, measured 7.1e-8 (interpolation) and 1.1e-7 (surface);
* per-filter norms of a filter-normalised direction against the parameters',
  float32: rtol 1e-6, measured ≤ 1.3e-7; whole-tensor norms of kept biases
  and BatchNorm parameters: rtol 1e-6, measured ≤ 9.7e-8;
* trajectory coordinates of points built in the plane (float64): tolerance
  1e-12, measured 4.4e-16, residual ≤ 1e-12 (measured 3.7e-16); an
  out-of-plane point's residual within rel 1e-10 of ‖e‖/‖δ‖.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import store
from optbench_jax.analysis import directions, figures, landscape
from optbench_jax.errors import OptBenchError
from tests.transforms.torch_reference import relative_error


class SmallCNN(nn.Module):
  """Conv (HWIO kernel 3×3×2×4) → BatchNorm → ReLU → mean → Dense(4 → 3)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    return nn.Dense(3)(x)


@pytest.fixture(scope="module")
def cnn():
  """``(params, other_params, loss_fn)``: ``loss_fn`` (jitted, as a caller
  would pass it) is the cross-entropy on a fixed batch of 8 in eval mode with
  the running statistics of one train-mode pass held fixed."""
  model = SmallCNN()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 6, 6, 2)), jnp.float32)
  labels = jnp.arange(8) % 3
  variables = jax.jit(model.init)(jax.random.key(1), x)
  _, updated = jax.jit(functools.partial(model.apply, train=True,
                                         mutable=["batch_stats"]))(variables, x)
  batch_stats = updated["batch_stats"]
  params = variables["params"]
  other = jax.tree.map(
      lambda p: p + jnp.asarray(0.5 * rng.normal(size=p.shape), p.dtype),
      params)

  @jax.jit
  def loss_fn(p):
    logits = model.apply({"params": p, "batch_stats": batch_stats}, x)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])

  return params, other, loss_fn


def _filter_norms(x, axis):
  x = np.asarray(x, np.float64)
  axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
  return np.sqrt(np.sum(x**2, axis=axes))


# ---------------------------------------------------------------------------
# 1. Anchors are exact.

@pytest.mark.parametrize("span,points,batch_points",
                         [(landscape.INTERPOLATION_SPAN, 41, 7),
                          ((-0.3, 1.7), 9, 4)])  # 0 and 1 not on the grid
def test_interpolation_endpoints_are_exact(cnn, span, points, batch_points):
  start, end, loss_fn = cnn
  alphas, losses = landscape.interpolate(loss_fn, start, end, span=span,
                                         points=points,
                                         batch_points=batch_points)
  assert np.sum(alphas == 0.0) == 1 and np.sum(alphas == 1.0) == 1
  assert alphas[0] == span[0] and alphas[-1] == span[1]
  assert np.all(np.diff(alphas) > 0)
  assert losses[alphas == 0.0][0] == loss_fn(start)
  assert losses[alphas == 1.0][0] == loss_fn(end)
  assert losses[alphas == 0.0][0] != losses[alphas == 1.0][0]


def test_anchor_points_are_the_parameters_bit_for_bit(cnn):
  start, end, _ = cnn

  def same(a, b):
    return all(np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

  line = jax.jit(landscape.point_on_line)
  assert same(line(start, end, 0.0), start)
  assert same(line(start, end, 1.0), end)
  assert not same(line(start, end, 0.5), start)
  # Where θ₀ + 1·(θ₁ − θ₀) is not θ₁ (float32: 1 + (1e-8 − 1) = 0):
  tiny_start = {"w": jnp.array([1.0, -3.0], jnp.float32)}
  tiny_end = {"w": jnp.array([1e-8, 2e-9], jnp.float32)}
  naive = {"w": tiny_start["w"] + (tiny_end["w"] - tiny_start["w"])}
  assert not same(naive, tiny_end)
  assert same(line(tiny_start, tiny_end, 1.0), tiny_end)
  assert same(jax.jit(landscape.point_on_plane)(start, end, end, 0.0, 0.0),
              start)


def test_surface_center_is_exact(cnn):
  center, _, loss_fn = cnn
  d1, d2 = directions.random_directions(jax.random.key(4), center)
  xs, ys, losses = landscape.surface(loss_fn, center, d1, d2, points=5,
                                     span=(-0.4, 0.6), batch_points=5)
  assert losses.shape == (len(ys), len(xs)) == (6, 6)  # 0 inserted
  i, j = int(np.flatnonzero(ys == 0)[0]), int(np.flatnonzero(xs == 0)[0])
  assert losses[i, j] == loss_fn(center)


# ---------------------------------------------------------------------------
# 2. Closed form on a quadratic.

def _quadratic():
  rng = np.random.default_rng(0)
  shapes = {"b": (4,), "w": (3, 4)}
  n = 16
  a = rng.normal(size=(n, n))
  hessian = a @ a.T / n + np.eye(n)
  minimum = rng.normal(size=n)

  def tree(v):
    return {"b": jnp.asarray(v[:4]).reshape(shapes["b"]),
            "w": jnp.asarray(v[4:]).reshape(shapes["w"])}

  def flat(t):
    return np.concatenate([np.asarray(t["b"]).ravel(),
                           np.asarray(t["w"]).ravel()]).astype(np.float64)

  def loss_fn(p):
    v = jnp.concatenate([p["b"].ravel(), p["w"].ravel()]) - minimum
    return 0.5 * v @ jnp.asarray(hessian) @ v

  def exact(v):
    r = v - minimum
    return 0.5 * r @ hessian @ r

  return rng, tree, flat, loss_fn, exact, hessian, minimum


def test_interpolation_and_surface_match_closed_form(x64):
  rng, tree, flat, loss_fn, exact, hessian, minimum = _quadratic()
  t0, t1 = rng.normal(size=16), rng.normal(size=16)
  alphas, losses = landscape.interpolate(loss_fn, tree(t0), tree(t1),
                                         batch_points=6)
  delta = t1 - t0
  g = hessian @ (t0 - minimum)
  closed = exact(t0) + alphas * (g @ delta) + 0.5 * alphas**2 * (
      delta @ hessian @ delta)
  assert losses.dtype == np.float64
  assert relative_error(losses, closed) <= 1e-12

  center = rng.normal(size=16)
  u, v = rng.normal(size=16), rng.normal(size=16)
  xs, ys, grid = landscape.surface(loss_fn, tree(center), tree(u), tree(v),
                                   points=5, span=2.0, batch_points=7)
  g = hessian @ (center - minimum)
  x, y = np.meshgrid(xs, ys)
  closed = (exact(center) + x * (g @ u) + y * (g @ v) + 0.5 * (
      x**2 * (u @ hessian @ u) + 2 * x * y * (u @ hessian @ v)
      + y**2 * (v @ hessian @ v)))
  assert relative_error(grid, closed) <= 1e-12
  # The grid itself (losses[i, j] at (xs[j], ys[i])), spot-checked directly.
  assert grid[0, 4] == pytest.approx(exact(center + xs[4] * u + ys[0] * v),
                                     rel=1e-12)


# ---------------------------------------------------------------------------
# 3. Filter normalisation.

def test_filter_norms_equal_parameter_norms(cnn):
  _, params, _ = cnn  # the perturbed parameters: no zero biases
  d = directions.filter_normalized_direction(jax.random.key(5), params)
  conv, dense = params["Conv_0"]["kernel"], params["Dense_0"]["kernel"]
  assert conv.shape == (3, 3, 2, 4) and dense.shape == (4, 3)
  for p, q in ((conv, d["Conv_0"]["kernel"]), (dense, d["Dense_0"]["kernel"])):
    assert q.dtype == p.dtype == jnp.float32
    np.testing.assert_allclose(_filter_norms(q, -1), _filter_norms(p, -1),
                               rtol=1e-6)
    # a Gaussian rescaled, not the parameters themselves
    assert not np.allclose(q, p)
  for layer, name in (("Conv_0", "bias"), ("Dense_0", "bias"),
                      ("BatchNorm_0", "scale"), ("BatchNorm_0", "bias")):
    assert np.all(np.asarray(params[layer][name]) != 0)
    assert np.all(np.asarray(d[layer][name]) == 0)


def test_bias_and_norm_parameters_kept_when_asked(cnn):
  _, params, _ = cnn  # the perturbed parameters: no zero biases
  d = directions.filter_normalized_direction(jax.random.key(5), params,
                                            ignore=None)
  default = directions.filter_normalized_direction(jax.random.key(5), params)
  np.testing.assert_array_equal(d["Conv_0"]["kernel"],
                                default["Conv_0"]["kernel"])
  for path in (("BatchNorm_0", "scale"), ("Dense_0", "bias"),
               ("BatchNorm_0", "bias")):
    p = np.asarray(params[path[0]][path[1]], np.float64)
    q = np.asarray(d[path[0]][path[1]], np.float64)
    assert np.all(p != 0)
    np.testing.assert_allclose(np.linalg.norm(q), np.linalg.norm(p),
                               rtol=1e-6)
    assert not np.allclose(q, p)
  with pytest.raises(OptBenchError, match="ignore"):
    directions.filter_normalized_direction(jax.random.key(5), params,
                                          ignore="bn")


def test_embedding_filters_are_rows_and_zero_filters_stay_zero():
  params = {"embedding": jnp.asarray(
                np.random.default_rng(6).normal(size=(5, 3)), jnp.float32),
            "kernel": jnp.zeros((3, 2)).at[:, 1].set(jnp.array([1., 2., 2.]))}
  d = directions.filter_normalized_direction(jax.random.key(7), params)
  np.testing.assert_allclose(_filter_norms(d["embedding"], 0),
                             _filter_norms(params["embedding"], 0), rtol=1e-6)
  np.testing.assert_array_equal(d["kernel"][:, 0], 0.0)
  np.testing.assert_allclose(np.linalg.norm(d["kernel"][:, 1]), 3.0, rtol=1e-6)


# ---------------------------------------------------------------------------
# 4. Vmapped chunks equal a loop.

def test_chunked_vmap_equals_loop(cnn):
  start, end, loss_fn = cnn
  alphas, losses = landscape.interpolate(loss_fn, start, end, points=41,
                                         batch_points=6)  # 41 = 6·6 + 5
  loop = np.array([loss_fn(landscape.point_on_line(start, end, a))
                   for a in np.float32(alphas)])
  assert losses.dtype == np.float32
  assert relative_error(losses, loop) <= 1e-6

  d1, d2 = directions.random_directions(jax.random.key(8), start)
  xs, ys, grid = landscape.surface(loss_fn, start, d1, d2, points=5,
                                   batch_points=7)  # 25 = 3·7 + 4
  loop = np.array([[loss_fn(landscape.point_on_plane(start, d1, d2, x, y))
                    for x in np.float32(xs)] for y in np.float32(ys)])
  assert relative_error(grid, loop) <= 1e-6
  assert np.ptp(grid) > 0.01  # the surface is not flat


def test_bad_input_raises_one_line_errors(cnn):
  start, end, loss_fn = cnn
  with pytest.raises(OptBenchError, match="scalar"):
    landscape.interpolate(lambda p: jnp.stack([loss_fn(p)] * 2), start, end)
  with pytest.raises(OptBenchError, match="structure"):
    landscape.interpolate(loss_fn, start, {"Conv_0": start["Conv_0"]})
  with pytest.raises(OptBenchError, match="contain"):
    landscape.interpolate(loss_fn, start, end, span=(0.2, 1.5))
  with pytest.raises(OptBenchError, match="batch_points"):
    landscape.interpolate(loss_fn, start, end, points=3, batch_points=0)
  with pytest.raises(OptBenchError, match="alphas"):
    landscape.interpolate(loss_fn, start, end, alphas=[0.0, float("nan")])


# ---------------------------------------------------------------------------
# 5. Trajectory projection.

def test_pca_directions_span_a_planar_path():
  """A path in a plane through θ*: the two principal directions are
  orthonormal, span that plane (the path projects with residual ≤ 1e-12
  and its plane coordinates reproduce every point), and explain all of its
  squared length; the larger share goes first. A path on a line has no
  second direction (one-line error)."""
  rng = np.random.default_rng(3)
  shapes = {"a": (4, 3), "b": (6,)}
  draw = lambda: {k: rng.normal(size=s) for k, s in shapes.items()}
  center, u, v = draw(), draw(), draw()
  steps = [(3.0, 1.0), (2.0, 0.5), (1.0, 0.4), (0.0, 0.0)]
  path = [{k: center[k] + a * u[k] + b * v[k] for k in shapes}
          for a, b in steps]
  pca = directions.pca_directions(path, center)
  flat = lambda t: np.concatenate([np.ravel(t["a"]), t["b"]])
  d1, d2 = flat(pca.d1), flat(pca.d2)
  np.testing.assert_allclose([d1 @ d1, d2 @ d2, d1 @ d2], [1, 1, 0],
                             atol=1e-12)
  projection = landscape.project_trajectory(path, center, pca.d1, pca.d2)
  assert np.all(projection.residual <= 1e-12)
  rebuilt = [flat(center) + x * d1 + y * d2 for x, y in projection.coords]
  assert max(relative_error(r, flat(p)) for r, p in zip(rebuilt, path)
             ) <= 1e-12
  assert pca.explained.sum() == pytest.approx(1.0, abs=1e-12)
  assert pca.explained[0] >= pca.explained[1] > 0
  line = [{k: center[k] + a * u[k] for k in shapes} for a, _ in steps]
  with pytest.raises(OptBenchError, match="fewer than two directions"):
    directions.pca_directions(line, center)


def test_project_trajectory_recovers_plane_coordinates():
  rng = np.random.default_rng(1)
  shapes = {"a": (3, 4), "b": (5,)}

  def draw():
    return {k: rng.normal(size=s) for k, s in shapes.items()}

  center, d1 = draw(), draw()
  d2 = {k: rng.normal(size=s) + 0.6 * d1[k] for k, s in shapes.items()}
  known = np.array([[1.5, -0.5], [0.0, 0.0], [-2.0, 3.0], [0.25, 0.125]])
  points = [{k: center[k] + a * d1[k] + b * d2[k] for k in shapes}
            for a, b in known]
  projection = landscape.project_trajectory(points, center, d1, d2)
  assert projection.coords.shape == (4, 2)
  assert relative_error(projection.coords, known) <= 1e-12
  assert np.all(projection.residual <= 1e-12)

  # Out of the plane: add e ⟂ d1, d2 (Gram-Schmidt in the flattened space).
  flat = lambda t: np.concatenate([t["a"].ravel(), t["b"]])
  basis, _ = np.linalg.qr(np.stack([flat(d1), flat(d2)], axis=1))
  e = rng.normal(size=17)
  e -= basis @ (basis.T @ e)
  e_tree = {"a": e[:12].reshape(3, 4), "b": e[12:]}
  off = {k: center[k] + 2.0 * d1[k] + e_tree[k] for k in shapes}
  projection = landscape.project_trajectory([off], center, d1, d2)
  np.testing.assert_allclose(projection.coords[0], [2.0, 0.0], atol=1e-12)
  expected = np.linalg.norm(e) / np.linalg.norm(2.0 * flat(d1) + e)
  assert projection.residual[0] == pytest.approx(expected, rel=1e-10)
  assert 0.1 < expected < 0.99

  with pytest.raises(OptBenchError, match="linearly independent"):
    landscape.project_trajectory(points, center, d1,
                                 {k: 2 * v for k, v in d1.items()})


# ---------------------------------------------------------------------------
# 6. Keys.

def test_keys_determine_directions(cnn):
  params, _, _ = cnn
  first = directions.random_directions(jax.random.key(9), params)
  again = directions.random_directions(jax.random.key(9), params)
  other = directions.random_directions(jax.random.key(10), params)
  kernel = lambda d: np.asarray(d["Conv_0"]["kernel"])
  assert len(first) == 2
  np.testing.assert_array_equal(kernel(first[0]), kernel(again[0]))
  np.testing.assert_array_equal(kernel(first[1]), kernel(again[1]))
  assert not np.allclose(kernel(first[0]), kernel(first[1]))
  assert not np.allclose(kernel(first[0]), kernel(other[0]))
  # Each leaf has its own subkey: same-shaped leaves differ.
  d = directions.filter_normalized_direction(
      jax.random.key(11), {"u": jnp.ones((3, 3)), "v": jnp.ones((3, 3))})
  assert not np.allclose(d["u"], d["v"])


# ---------------------------------------------------------------------------
# 7. Plots (and JSON) with non-finite values.

def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs_with_non_finite_values(cnn, tmp_path):
  start, end, loss_fn = cnn
  alphas, losses = landscape.interpolate(loss_fn, start, end, points=21,
                                         batch_points=8)
  diverging = losses * np.exp(8 * np.abs(alphas - 0.5))
  diverging[-2:] = [np.inf, np.nan]
  path = figures.plot_interpolation(
      {"init → final": (alphas, losses), "diverging": (alphas, diverging)},
      str(tmp_path / "interpolation.png"), title="two curves",
      endpoints=("init", "final"))
  assert _is_png(path)

  d1, d2 = directions.random_directions(jax.random.key(12), start)
  xs, ys, grid = landscape.surface(loss_fn, start, d1, d2, points=15,
                                   span=1.5, batch_points=64)
  grid = grid * np.exp(2 * np.hypot(*np.meshgrid(xs, ys)))
  grid[-3:, -3:] = np.inf
  grid[0, 0] = np.nan
  steps = np.array([1.2, 0.8, 0.5, 0.2, 0.0])
  projection = landscape.project_trajectory(
      [landscape.point_on_plane(start, d1, d2, s, -0.5 * s) for s in steps],
      start, d1, d2)
  np.testing.assert_allclose(projection.coords,
                             np.stack([steps, -0.5 * steps], axis=1),
                             atol=1e-6)
  path = figures.plot_surface(xs, ys, grid, str(tmp_path / "surface.png"),
                                trajectory=projection.coords,
                                title="surface")
  assert _is_png(path)
  # All non-finite, or a flat surface: still a PNG.
  for name, values in (("nan.png", np.full_like(grid, np.nan)),
                       ("flat.png", np.ones_like(grid))):
    assert _is_png(figures.plot_surface(xs, ys, values,
                                          str(tmp_path / name)))
  with pytest.raises(OptBenchError, match="shape"):
    figures.plot_surface(xs, ys, grid.T[:, :-1], str(tmp_path / "bad.png"))
  # The JSON the caller writes: non-finite values become null.
  record = store.as_json({"losses": grid.tolist()})
  assert record["losses"][0][0] is None and record["losses"][-1][-1] is None
  assert record["losses"][1][1] == pytest.approx(grid[1, 1])
