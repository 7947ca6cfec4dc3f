"""Hessian-vector products, top eigenvalues, trace and spectral density.

Checks, with the tolerances used and the values measured on this machine's
CPU (float64 unless stated):

* Quadratic ``½xᵀAx``, ``A = Q diag(λ) Qᵀ`` with 100 known eigenvalues: 5 in
  [−3, −2], 60 in [−0.1, 0.1], 30 in [4, 5] and the outliers 10, 15, 20, 35,
  50; parameters a dict of a vector (40) and a matrix (6×10):
  - top-5 eigenvalues after 40 Lanczos steps: relative error ≤ 1e-10
    (measured 5.7e-16), the 2 most negative (of ``−loss``) ≤ 1e-10 (measured
    2.1e-15); float32 parameters give float32 results, top-3
    ≤ 1e-5 (measured 4.6e-7).
  - exactly repeated eigenvalues (−2, 0, 1, 3, 7 with multiplicities 5, 50,
    30, 10, 5) and as many steps as parameters: the restarts after each
    breakdown recover all 100 eigenvalues with their multiplicities,
    ≤ 1e-10 of ``max|λ|`` (measured 1.4e-15).
  - Hutchinson's trace, 400 Rademacher probes: within 4 theoretical
    standard errors ``√(2(‖A‖_F² − Σ A_ii²)/400)`` of ``Σλ`` (measured 0.05
    of one); the returned standard error within 30 % of the theoretical one
    (measured ratio 1.02). 400 Gaussian probes: within 4 standard errors
    ``√(2‖A‖_F²/400)`` (measured 0.64).
  - SLQ, 20 Gaussian probes × 30 steps: weights sum to 1 per probe
    (1e-12); the density integrates to 1 (1e-12); each cluster's and
    outlier's mass (the density integrated over it ± 0.4) is within
    ``4 sd + 0.01`` of its share ``m/100``, ``sd`` the standard deviation of
    a random unit vector's mass (Beta law) over 20 probes, 0.01 for
    quadrature nodes falling in gaps (measured at most 2.0 sd, the outlier
    15); the density's mean equals the probes' mean Rayleigh quotient
    ``vᵀAv/vᵀv`` (the quadrature is exact for degree 1) to 1e-6 relative
    (measured 3.6e-16), and that is within 4 standard errors of mean(λ)
    (measured 0.14).
* Small tanh MLP (8-20-4, 264 parameters, 16 examples, softmax
  cross-entropy): HVP vs central finite differences of the gradient
  (h = 1e-5): ≤ 1e-8 relative max-norm (measured 2.0e-9; 2.0e-7 at
  h = 1e-4, the O(h²) truncation); vs ``jax.hessian`` of the raveled loss
  times ``v``: ≤ 1e-12 (measured 5.6e-16); top-3 eigenvalues (default 40
  steps) vs ``numpy.linalg.eigvalsh``: ≤ 1e-10 (measured 1.0e-15); Ritz
  vectors' residuals ``‖Hy − θy‖/|θ|`` ≤ 1e-6 (measured 1.8e-9).
* ``cnn_scratch``, the registered model at its example input 28×28×1
  (421,642 parameters), PyTorch-initialised weights shared with its twin
  through ``convert.torch_to_flax``, 8 random images and labels, mean
  cross-entropy; top-3 from :func:`top_eigenvalues` (40 steps: 20.659,
  15.885, 14.989):
  - default suite, three ``torch.func`` HVPs of the twin: each Ritz pair's
    residual ``‖H_torch y − θy‖/|θ|`` ≤ 1e-6 (measured 2.1e-9) and
    ``yᵀH_torch y = θ`` to 1e-10 (measured 3.6e-16).
  - ``-m slow`` (about 50 twin HVPs, ~25 s on 2 CPU cores):
    ``scipy.sparse.linalg.eigsh(which="LA", tol=1e-8)`` on the twin's
    HVPs, relative error ≤ 1e-4 (measured 1.7e-16).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from optbench_jax.analysis import figures, hessian
from optbench_jax.errors import OptBenchError

N = 100
CLUSTERS = ((-3.0, -2.0, 5), (-0.1, 0.1, 60), (4.0, 5.0, 30))
OUTLIERS = (10.0, 15.0, 20.0, 35.0, 50.0)


def rel_error(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def clustered_spectrum():
  rng = np.random.RandomState(0)
  parts = [rng.uniform(low, high, count) for low, high, count in CLUSTERS]
  return np.concatenate(parts + [np.asarray(OUTLIERS)])


def quadratic(eigenvalues, dtype=np.float64):
  """``(loss_fn, params, A)``: ``½xᵀAx`` over ``{"a": (40,), "b": (6, 10)}``."""
  n = len(eigenvalues)
  q, _ = np.linalg.qr(np.random.RandomState(1).randn(n, n))
  matrix = (q * eigenvalues) @ q.T
  a = jnp.asarray(matrix, dtype)
  params = {"a": jnp.ones(40, dtype), "b": jnp.ones((6, (n - 40) // 6),
                                                    dtype)}

  def loss_fn(p):
    x = ravel_pytree(p)[0]
    return 0.5 * x @ a @ x

  return loss_fn, params, matrix


# ---------------------------------------------------------------------------
# Quadratic with a known spectrum.


def test_top_eigenvalues_of_a_quadratic(x64):
  lam = clustered_spectrum()
  loss_fn, params, _ = quadratic(lam)
  values = hessian.top_eigenvalues(loss_fn, params, 5, jax.random.key(0),
                                   iterations=40)
  assert values.dtype == jnp.float64
  assert rel_error(values, np.sort(lam)[::-1][:5]) <= 1e-10
  # the most negative ones, as the module docstring says
  lowest = -hessian.top_eigenvalues(lambda p: -loss_fn(p), params, 2,
                                    jax.random.key(0), iterations=40)
  assert rel_error(lowest, np.sort(lam)[:2]) <= 1e-10


def test_float32_parameters_give_float32_results():
  lam = clustered_spectrum()
  loss_fn, params, _ = quadratic(lam, np.float32)
  values = hessian.top_eigenvalues(loss_fn, params, 3, jax.random.key(0),
                                   iterations=40)
  assert values.dtype == jnp.float32
  assert rel_error(values, np.sort(lam)[::-1][:3]) <= 1e-5


def test_repeated_eigenvalues_are_all_found(x64):
  lam = np.repeat([-2.0, 0.0, 1.0, 3.0, 7.0], [5, 50, 30, 10, 5])
  loss_fn, params, _ = quadratic(lam)
  values = hessian.top_eigenvalues(loss_fn, params, N, jax.random.key(3),
                                   iterations=N)
  assert rel_error(values, np.sort(lam)[::-1]) <= 1e-10


def test_hutchinson_trace_of_a_quadratic(x64):
  lam = clustered_spectrum()
  loss_fn, params, matrix = quadratic(lam)
  probes = 400
  estimate, stderr = hessian.trace(loss_fn, params, jax.random.key(1),
                                   probes=probes, return_stderr=True)
  variance = 2 * (np.sum(matrix ** 2) - np.sum(np.diag(matrix) ** 2))
  theory = math.sqrt(variance / probes)
  assert abs(float(estimate) - lam.sum()) <= 4 * theory
  assert abs(float(stderr) / theory - 1) <= 0.3
  # Gaussian probes: variance 2‖A‖_F²
  gaussian = hessian.trace(loss_fn, params, jax.random.key(10),
                           probes=probes, probe="gaussian")
  theory = math.sqrt(2 * np.sum(matrix ** 2) / probes)
  assert abs(float(gaussian) - lam.sum()) <= 4 * theory


def test_spectral_density_of_a_quadratic(x64):
  lam = clustered_spectrum()
  loss_fn, params, matrix = quadratic(lam)
  probes, key = 20, jax.random.key(2)
  nodes, weights = hessian.lanczos_quadrature(loss_fn, params, key,
                                              iterations=30, probes=probes)
  assert nodes.shape == weights.shape == (probes, 30)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
  grid, density = hessian.spectral_density(loss_fn, params, key,
                                           iterations=30, probes=probes)
  assert grid.shape == density.shape == (hessian.DENSITY_POINTS,)
  assert np.all(density >= 0)
  assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-12)
  assert grid[0] < lam.min() and grid[-1] > lam.max()

  def mass(low, high):
    inside = (grid >= low) & (grid <= high)
    return np.trapezoid(density[inside], grid[inside])

  windows = [(low, high, count) for low, high, count in CLUSTERS]
  windows += [(x, x, 1) for x in OUTLIERS]
  for low, high, count in windows:
    share = count / N
    # the mass of ``count`` coordinates of a random unit vector: Beta law
    sd = math.sqrt(share * (1 - share) * 2 / (N + 2) / probes)
    assert abs(mass(low - 0.4, high + 0.4) - share) <= 4 * sd + 0.01, (
        low, high)

  # mean of the density = mean over probes of the Rayleigh quotient
  rayleigh = float(np.mean(np.sum(np.asarray(nodes) * np.asarray(weights),
                                  axis=1)))
  mean = np.trapezoid(grid * density, grid)
  assert mean == pytest.approx(rayleigh, rel=1e-6)
  spread = math.sqrt(2 * np.var(lam) / (N + 2) / probes)
  assert abs(rayleigh - lam.mean()) <= 4 * spread


def test_density_from_quadrature_resmooths():
  nodes = np.array([[0.0, 1.0, 10.0]])
  weights = np.array([[0.5, 0.25, 0.25]])
  grid, density = hessian.density_from_quadrature(nodes, weights, sigma=0.01,
                                                  points=4001)
  assert np.trapezoid(density, grid) == pytest.approx(1.0)
  # peaks of height τ²/(σ_abs √2π) at the nodes, σ_abs = 0.01 × range 10
  peak = 0.5 / (0.1 * math.sqrt(2 * math.pi))
  assert density.max() == pytest.approx(peak, rel=1e-3)
  assert grid[np.argmax(density)] == pytest.approx(0.0, abs=0.01)
  wide_grid, wide = hessian.density_from_quadrature(nodes, weights, sigma=0.1)
  assert wide.max() < density.max() / 5


# ---------------------------------------------------------------------------
# A small MLP against finite differences and the explicit Hessian.


def mlp_problem():
  """``(loss_fn, params)``: tanh MLP 8-20-4, softmax cross-entropy."""
  rng = np.random.RandomState(4)
  x = jnp.asarray(rng.randn(16, 8))
  labels = jnp.asarray(rng.randint(0, 4, 16))
  params = {"hidden": {"w": jnp.asarray(rng.randn(8, 20) / math.sqrt(8)),
                       "b": jnp.asarray(0.1 * rng.randn(20))},
            "out": {"w": jnp.asarray(rng.randn(20, 4) / math.sqrt(20)),
                    "b": jnp.asarray(0.1 * rng.randn(4))}}

  def loss_fn(p):
    h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
    logits = h @ p["out"]["w"] + p["out"]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  return loss_fn, params


@functools.cache
def mlp_explicit_hessian() -> np.ndarray:
  """``jax.hessian`` of the MLP's loss over its raveled parameters."""
  with jax.enable_x64(True):
    loss_fn, params = mlp_problem()
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f))))(
        flat))


def test_mlp_hvp_matches_finite_differences_and_explicit_hessian(x64):
  loss_fn, params = mlp_problem()
  flat, unravel = ravel_pytree(params)
  assert flat.size == 264
  v = unravel(jnp.asarray(np.random.RandomState(5).randn(flat.size)))
  ours = ravel_pytree(jax.jit(hessian.hvp, static_argnums=0)(
      loss_fn, params, v))[0]

  grad = jax.jit(lambda f: ravel_pytree(jax.grad(loss_fn)(unravel(f)))[0])
  step, direction = 1e-5, ravel_pytree(v)[0]
  finite = (grad(flat + step * direction)
            - grad(flat - step * direction)) / (2 * step)
  assert rel_error(ours, finite) <= 1e-8
  assert rel_error(ours, mlp_explicit_hessian() @ direction) <= 1e-12


def test_mlp_top_eigenvalues_match_the_explicit_hessian(x64):
  loss_fn, params = mlp_problem()
  explicit = mlp_explicit_hessian()
  reference = np.linalg.eigvalsh(explicit)[::-1][:3]
  values, vectors = hessian.top_eigenvalues(
      loss_fn, params, 3, jax.random.key(6), return_eigenvectors=True)
  assert rel_error(values, reference) <= 1e-10
  ritz = np.stack([np.asarray(ravel_pytree(jax.tree.map(lambda l: l[i],
                                                        vectors))[0])
                   for i in range(3)])
  np.testing.assert_allclose(np.linalg.norm(ritz, axis=1), 1.0, rtol=1e-12)
  residuals = np.linalg.norm(ritz @ explicit - values[:, None] * ritz,
                             axis=1) / np.abs(values)
  assert residuals.max() <= 1e-6


# ---------------------------------------------------------------------------
# cnn_scratch against its PyTorch twin.


class CnnTwins:
  """``cnn_scratch`` and its PyTorch twin with the same float64 weights and
  batch (8 random images of the registered example shape, random labels).

  Holds numpy and torch objects only; :meth:`loss_fn` builds the JAX side
  (call it with float64 enabled). ``torch_hvp`` maps a flat vector in the
  twin's ``named_parameters`` order to ``H v`` by ``torch.func``
  forward-over-reverse.
  """

  def __init__(self):
    torch = pytest.importorskip("torch")
    from optbench_jax import models
    from optbench_jax.nn import convert
    from optbench_jax.reference import torch_models

    self.convert = convert
    self.spec = models.get("image_classification", "cnn_scratch")
    self.info = self.spec.example_info
    self.rules = self.spec.conversion(self.info)
    rng = np.random.RandomState(7)
    self.x = rng.randn(8, *self.info.input_shape)
    self.labels = rng.randint(0, self.info.num_classes, 8)
    torch.manual_seed(0)
    self.twin = self.spec.torch_twin(self.info).double().eval()
    self.state_dict = torch_models.state_dict_numpy(self.twin)
    self.names = [name for name, _ in self.twin.named_parameters()]
    self.shapes = [self.state_dict[name].shape for name in self.names]
    self.sizes = [math.prod(shape) for shape in self.shapes]
    self.start = rng.randn(sum(self.sizes))   # eigsh's start vector
    batch = torch.from_numpy(self.x.transpose(0, 3, 1, 2).copy())
    target = torch.from_numpy(self.labels)
    point = {name: torch.from_numpy(self.state_dict[name])
             for name in self.names}

    def torch_loss(p):
      logits = torch.func.functional_call(self.twin, p, (batch,))
      return torch.nn.functional.cross_entropy(logits, target)

    def torch_hvp(vector):
      pieces = torch.from_numpy(np.asarray(vector).ravel()).split(self.sizes)
      tangent = {name: piece.reshape(shape) for name, piece, shape in
                 zip(self.names, pieces, self.shapes)}
      _, out = torch.func.jvp(torch.func.grad(torch_loss), (point,),
                              (tangent,))
      return torch.cat([out[name].reshape(-1) for name in self.names]).numpy()

    self.torch_hvp = torch_hvp

  def loss_fn(self):
    """``(loss_fn, params)`` of the Flax model (float64)."""
    model = self.spec.build(self.info).clone(dtype=jnp.float64)
    template = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                 self.x[:1]))
    variables = self.convert.torch_to_flax(self.state_dict, self.rules,
                                           template=template)
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64),
                          variables["params"])
    images, labels = jnp.asarray(self.x), jnp.asarray(self.labels)

    def loss_fn(p):
      logits = model.apply({"params": p}, images, train=False)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()

    return loss_fn, params

  def to_torch_vector(self, tree):
    """A Flax parameter pytree as a flat vector in the twin's order."""
    state = self.convert.flax_to_torch({"params": tree}, self.rules)
    return np.concatenate([np.asarray(state[name]).ravel()
                           for name in self.names])


@pytest.fixture(scope="module")
def cnn_twins():
  return CnnTwins()


CNN_ITERATIONS = 40


def test_cnn_scratch_ritz_pairs_are_eigenpairs_of_torch_hessian(cnn_twins,
                                                                x64):
  """Three of the twin's HVPs: JAX's top Ritz pairs ``(θ, y)`` satisfy
  ``‖H_torch y − θ y‖ ≤ 1e-6 |θ|`` and ``yᵀ H_torch y = θ`` to 1e-10, so
  each ``θ`` is within 1e-6 relative of an eigenvalue of PyTorch's Hessian
  (that they are the *largest* three is the slow test's eigsh check)."""
  loss_fn, params = cnn_twins.loss_fn()
  assert ravel_pytree(params)[0].size == sum(cnn_twins.sizes) == 421642
  values, vectors = hessian.top_eigenvalues(
      loss_fn, params, 3, jax.random.key(8), iterations=CNN_ITERATIONS,
      return_eigenvectors=True)
  for i, value in enumerate(np.asarray(values)):
    y = cnn_twins.to_torch_vector(jax.tree.map(lambda l: l[i], vectors))
    hy = cnn_twins.torch_hvp(y)
    assert np.linalg.norm(hy - value * y) <= 1e-6 * abs(value), i
    assert y @ hy == pytest.approx(value, rel=1e-10)


@pytest.mark.slow
def test_cnn_scratch_top_eigenvalues_match_torch_eigsh(cnn_twins, x64):
  """``scipy.sparse.linalg.eigsh(which="LA")`` on the twin's HVPs from a
  random start (about 50 HVPs)."""
  from scipy.sparse import linalg as sparse_linalg

  loss_fn, params = cnn_twins.loss_fn()
  ours = hessian.top_eigenvalues(loss_fn, params, 3, jax.random.key(8),
                                 iterations=CNN_ITERATIONS)
  n = sum(cnn_twins.sizes)
  operator = sparse_linalg.LinearOperator((n, n), matvec=cnn_twins.torch_hvp,
                                          dtype=np.float64)
  reference = sparse_linalg.eigsh(operator, k=3, which="LA", tol=1e-8,
                                  v0=cnn_twins.start,
                                  return_eigenvectors=False)
  assert rel_error(ours, np.sort(reference)[::-1]) <= 1e-4


# ---------------------------------------------------------------------------
# Keys, plots and bad inputs.


def test_same_key_same_result_other_key_other_probes():
  loss_fn, params, _ = quadratic(clustered_spectrum(), np.float32)
  key, other = jax.random.split(jax.random.key(9))
  first = hessian.trace(loss_fn, params, key, probes=5)
  assert hessian.trace(loss_fn, params, key, probes=5) == first
  assert hessian.trace(loss_fn, params, other, probes=5) != first
  # the runs of one call start from different probes
  nodes, _ = hessian.lanczos_quadrature(loss_fn, params, key, iterations=5,
                                        probes=2)
  assert not np.allclose(nodes[0], nodes[1])


def test_plot_densities_writes_a_png(tmp_path):
  nodes = np.array([[-1.0, 0.0, 0.1, 8.0], [-0.5, 0.0, 0.2, 9.0]])
  weights = np.array([[0.1, 0.6, 0.2, 0.1], [0.2, 0.5, 0.2, 0.1]])
  densities = {
      "sgd": hessian.density_from_quadrature(nodes, weights),
      "adam": hessian.density_from_quadrature(2 * nodes, weights)}
  path = figures.plot_densities(densities, str(tmp_path / "density.png"),
                                title="Hessian eigenvalue density")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  overlay = figures.plot_densities(densities, str(tmp_path / "overlay.png"),
                                   overlay=True)
  assert (tmp_path / "overlay.png").stat().st_size > 1000
  assert overlay.endswith("overlay.png")
  grid = np.linspace(0, 1, 5)
  with pytest.raises(OptBenchError, match="finite and positive"):
    figures.plot_densities({"sgd": (grid, np.zeros(5))},
                           str(tmp_path / "zero.png"))
  with pytest.raises(OptBenchError, match="same length"):
    figures.plot_densities({"sgd": (grid, np.ones(4))},
                           str(tmp_path / "short.png"))


@pytest.mark.parametrize("call, message", [
    (lambda f, p, k: hessian.top_eigenvalues(f, p, 101, k), "exceeds"),
    (lambda f, p, k: hessian.top_eigenvalues(f, p, 0, k), "positive"),
    (lambda f, p, k: hessian.top_eigenvalues(f, p, 5, k, iterations=3),
     "smaller than k"),
    (lambda f, p, k: hessian.top_eigenvalues(f, p, 2, k, iterations=0),
     "positive"),
    (lambda f, p, k: hessian.trace(f, p, k, probes=0), "positive"),
    (lambda f, p, k: hessian.trace(f, p, k, probes=1, return_stderr=True),
     "probes >= 2"),
    (lambda f, p, k: hessian.trace(f, p, k, probe="uniform"), "unknown"),
    (lambda f, p, k: hessian.spectral_density(f, p, k, probes=-1),
     "positive"),
    (lambda f, p, k: hessian.spectral_density(f, p, k, iterations=0),
     "positive"),
    (lambda f, p, k: hessian.spectral_density(f, p, k, sigma=0.0),
     "sigma"),
    (lambda f, p, k: hessian.top_eigenvalues(f, {"i": jnp.arange(3)}, 1, k),
     "floating"),
    (lambda f, p, k: figures.plot_densities({}, "x.png"), "at least one"),
])
def test_bad_inputs_raise_one_line_errors(call, message):
  loss_fn, params, _ = quadratic(clustered_spectrum(), np.float32)
  with pytest.raises(OptBenchError, match=message) as info:
    call(loss_fn, params, jax.random.key(0))
  assert "\n" not in str(info.value)
