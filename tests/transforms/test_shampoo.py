"""Shampoo against ``pytorch_optimizer.Shampoo`` and its own contracts.

Hyperparameter mapping (same names, same meaning): ``lr``→``learning_rate``,
``momentum``, ``matrix_eps``, ``preconditioning_compute_steps``; grafting off
(``graft="none"``, the reference has none); ``max_preconditioner_dim`` above
every dimension. The reference computes the inverse roots with an SVD, we use
``eigh``: both are exact up to round-off, which the ``ε I`` directions of the
statistics amplify (a bias's first statistic is ``ε I + g gᵀ``, so
``H^{-1/2}`` multiplies round-off by ``ε^{-1/2} = 1e3``). When the roots are
recomputed only every 3 steps, the stale roots meet new gradients with
components along their ``ε`` directions, and no algorithm computes an
eigenvalue ``ε = 1e-6`` of a statistic of norm ~10 better than ``1e-16 · 10``
absolute, i.e. ~1e-9 relative: that test is asserted at 1e-9 (measured
≈1.1e-10), the others at 1e-10.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from optbench_jax import transforms
from optbench_jax.transforms import shampoo as shampoo_lib
from tests.transforms.torch_reference import relative_error

SHAPES = {"matrix": (3, 4), "bias": (4,), "tensor": (2, 3, 3), "scalar": ()}
STEPS = 20


def _params(seed=0):
  rng = np.random.RandomState(seed)
  return {k: np.asarray(rng.randn(*s), np.float64) for k, s in SHAPES.items()}


def _grads(seed=1, steps=STEPS):
  rng = np.random.RandomState(seed)
  return [{k: np.asarray(rng.randn(*s), np.float64) for k, s in SHAPES.items()}
          for _ in range(steps)]


@pytest.mark.parametrize("momentum, period, tol", [
    (0.0, 1, 1e-10),   # the reference's defaults
    (0.0, 3, 1e-9),    # roots every 3 steps (zero before step 3)
    (0.3, 1, 1e-10),   # torch.lerp's first branch (weight < 0.5)
    (0.9, 1, 1e-10),   # torch.lerp's second branch
])
def test_matches_pytorch_optimizer(x64, momentum, period, tol):
  from pytorch_optimizer import Shampoo

  lr = 0.1
  start = _params()
  torch_params = {k: torch.tensor(v, requires_grad=True)
                  for k, v in start.items()}
  reference = Shampoo(list(torch_params.values()), lr=lr, momentum=momentum,
                      preconditioning_compute_steps=period, matrix_eps=1e-6)
  tx = transforms.make("shampoo", learning_rate=lr, momentum=momentum,
                       preconditioning_compute_steps=period, matrix_eps=1e-6,
                       max_preconditioner_dim=10_000)
  params = {k: jnp.asarray(v) for k, v in start.items()}
  state = tx.init(params)
  update = jax.jit(tx.update)
  worst = 0.0
  for grads in _grads():
    for k, p in torch_params.items():
      p.grad = torch.tensor(grads[k])
    reference.step()
    updates, state = update({k: jnp.asarray(v) for k, v in grads.items()},
                            state, params)
    params = optax.apply_updates(params, updates)
    ref = {k: p.detach().numpy() for k, p in torch_params.items()}
    err = relative_error(params, ref)
    worst = max(worst, err)
    assert err <= tol, err
  print(f"shampoo momentum={momentum} period={period}: max relative error "
        f"{worst:.2e}")
  assert relative_error(params, start) > 0.1


def test_matrix_update_is_l_quarter_g_r_quarter(x64):
  """One step on a matrix is L^{-1/4} G R^{-1/4}, computed independently."""
  rng = np.random.RandomState(4)
  g = rng.randn(3, 5)
  eps = 1e-3

  def inv_root(m, p):
    w, v = np.linalg.eigh(m)
    return v @ np.diag(w ** (-1.0 / p)) @ v.T

  left = inv_root(eps * np.eye(3) + g @ g.T, 4)
  right = inv_root(eps * np.eye(5) + g.T @ g, 4)
  tx = shampoo_lib.scale_by_shampoo(matrix_eps=eps)
  update, _ = jax.jit(tx.update)(jnp.asarray(g), tx.init(jnp.zeros((3, 5))))
  np.testing.assert_allclose(update, left @ g @ right, rtol=1e-12)
  # Order 3: one root per mode with exponent -1/6.
  t = rng.randn(2, 3, 4)
  roots = [inv_root(eps * np.eye(d) + np.tensordot(
      t, t, axes=([j for j in range(3) if j != i],) * 2), 6)
           for i, d in enumerate(t.shape)]
  expected = np.einsum("ai,bj,ck,ijk->abc", *roots, t)
  update, _ = jax.jit(tx.update)(jnp.asarray(t), tx.init(jnp.zeros_like(t)))
  np.testing.assert_allclose(update, expected, rtol=1e-12)


def test_period_gives_zero_updates_until_the_first_root_and_graft_fills_them():
  g = {"w": jnp.ones((3, 2)), "b": jnp.arange(1.0, 3.0)}
  tx = shampoo_lib.scale_by_shampoo(preconditioning_compute_steps=3)
  state = tx.init(g)
  update = jax.jit(tx.update)
  for step in range(3):
    u, state = update(g, state)
    norm = optax.global_norm(u)
    assert (norm == 0) if step < 2 else (norm > 0)
  grafted = shampoo_lib.scale_by_shampoo(preconditioning_compute_steps=3,
                                         graft="sgd")
  u, _ = jax.jit(grafted.update)(g, grafted.init(g))
  chex.assert_trees_all_close(u, g)


@pytest.mark.parametrize("graft", ["sgd", "adagrad"])
def test_grafting_takes_the_graft_norm(x64, graft):
  grads = _grads(steps=4)
  tx = shampoo_lib.scale_by_shampoo(graft=graft, diagonal_eps=1e-10)
  plain = shampoo_lib.scale_by_shampoo()
  state, plain_state = tx.init(grads[0]), plain.init(grads[0])
  update, plain_update = jax.jit(tx.update), jax.jit(plain.update)
  acc = {k: np.zeros(s) for k, s in SHAPES.items()}
  for g in grads:
    g = {k: jnp.asarray(v) for k, v in g.items()}
    u, state = update(g, state)
    u_plain, plain_state = plain_update(g, plain_state)
    for k in SHAPES:
      acc[k] = acc[k] + np.asarray(g[k]) ** 2
      direction = (np.asarray(g[k]) if graft == "sgd" else
                   np.asarray(g[k]) / (np.sqrt(acc[k]) + 1e-10))
      np.testing.assert_allclose(np.linalg.norm(u[k]),
                                 np.linalg.norm(direction), rtol=1e-12)
      if SHAPES[k]:  # the direction is Shampoo's
        np.testing.assert_allclose(
            np.asarray(u[k]) / np.linalg.norm(u[k]),
            np.asarray(u_plain[k]) / np.linalg.norm(u_plain[k]), rtol=1e-10,
            atol=1e-14)


def test_large_dimensions_are_not_preconditioned():
  g = {"embedding": jnp.ones((50, 4)), "kernel": jnp.ones((4, 3))}
  tx = shampoo_lib.scale_by_shampoo(max_preconditioner_dim=16)
  state = tx.init(g)
  assert state.tensors["embedding"].stats == ()
  assert len(state.tensors["kernel"].stats) == 2
  u, _ = jax.jit(tx.update)(g, state)
  chex.assert_trees_all_close(u["embedding"], g["embedding"])
  assert not np.allclose(u["kernel"], g["kernel"])


def test_bad_hyperparameters():
  with pytest.raises(ValueError, match="matrix_eps"):
    shampoo_lib.scale_by_shampoo(matrix_eps=0.0)
  with pytest.raises(ValueError, match="graft"):
    shampoo_lib.scale_by_shampoo(graft="adam")
  spec = transforms.get("shampoo")
  assert spec.family == "second_order" and not spec.needs


def _find_shampoo_state(state):
  (found,) = [x for x in jax.tree_util.tree_leaves(
      state, is_leaf=lambda x: isinstance(x, shampoo_lib.ScaleByShampooState))
              if isinstance(x, shampoo_lib.ScaleByShampooState)]
  return found


def _run_chain(update, tx, dtype, steps=2):
  params = {"w": jnp.ones((3, 4), dtype), "b": jnp.zeros((4,), dtype),
            "s": jnp.ones((), dtype)}
  state = tx.init(params)
  p = params
  for g in _grads(steps=steps):
    g = {"w": jnp.asarray(g["matrix"], dtype),
         "b": jnp.asarray(g["bias"], dtype),
         "s": jnp.asarray(g["scalar"], dtype)}
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
  chex.assert_tree_all_finite(p)
  chex.assert_trees_all_equal_dtypes(p, params)
  assert float(optax.global_norm(jax.tree_util.tree_map(
      lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32),
      p, params))) > 0
  return state


def _chain():
  return optax.chain(optax.clip_by_global_norm(1.0),
                     transforms.make("shampoo", momentum=0.9,
                                     weight_decay=1e-2))


class TestJitAndChain(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_in_a_chain(self):
    tx = _chain()
    _run_chain(self.variant(tx.update), tx, jnp.float32)


def test_bfloat16_keeps_dtypes_and_float32_statistics():
  tx = _chain()
  state = _run_chain(jax.jit(tx.update), tx, jnp.bfloat16)
  tensors = jax.tree_util.tree_leaves(
      _find_shampoo_state(state).tensors,
      is_leaf=lambda x: isinstance(x, shampoo_lib.ShampooTensorState))
  stats_dtypes = {m.dtype for t in tensors for m in t.stats + t.roots}
  assert stats_dtypes == {jnp.dtype(jnp.float32)}, stats_dtypes


@pytest.mark.parametrize("momentum,graft", [(0.0, "none"), (0.9, "adagrad"),
                                            (0.0, "sgd")])
def test_state_is_one_pytree_per_parameter_without_placeholders(momentum,
                                                                graft):
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4), "s": jnp.ones(())}
  tx = shampoo_lib.scale_by_shampoo(momentum=momentum, graft=graft)
  state = tx.init(params)
  is_tensor = lambda x: isinstance(x, shampoo_lib.ShampooTensorState)
  # The params' tree, one ShampooTensorState per parameter.
  assert (jax.tree.structure(state.tensors, is_leaf=is_tensor)
          == jax.tree.structure(params))
  for name, p in params.items():
    t = state.tensors[name]
    assert len(t.stats) == len(t.roots) == p.ndim
    assert (t.momentum is None) == (momentum == 0.0)
    assert (t.graft is None) == (graft != "adagrad")
  # No zero-size placeholder anywhere, and updates keep the structure.
  assert all(leaf.size for leaf in jax.tree.leaves(state))
  grads = jax.tree.map(lambda p: 0.5 * p, params)
  _, new_state = jax.jit(tx.update)(grads, state)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
