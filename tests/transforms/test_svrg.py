"""SVRG against the hand-computed variance-reduced gradient, in float64.

No PyTorch reference ships SVRG (neither torch.optim nor pytorch_optimizer),
so the reference is the paper's update written out in NumPy on a
least-squares problem with closed-form gradients::

  every epoch:  θ̃ = θ,  μ = Aᵀ(A θ̃ − y) / n
  every batch:  v = A_Bᵀ(A_B θ − y_B)/|B| − A_Bᵀ(A_B θ̃ − y_B)/|B| + μ
                m = β m + v (+ λ θ),  θ ← θ − η m        (base SGD / momentum)

Ours gets μ through the spec's ``epoch_start`` hook and ∇f_B(θ̃) through the
engine's ``grad_fn`` (``build_extras``), exactly as the engine supplies them.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optbench_jax import transforms
from optbench_jax.errors import OptBenchError
from optbench_jax.transforms import svrg as svrg_lib
from tests.transforms.torch_reference import (assert_same_with_and_without_jit,
                                              relative_error)

SHAPES = {"w": (3, 4), "b": (4,), "t": (2, 3, 3)}
N, BATCH, EPOCHS = 20, 4, 5
NEEDS = frozenset({"grad_fn"})
SPEC = transforms.get("svrg")


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  dim = sum(int(np.prod(s)) for s in SHAPES.values())
  a = rng.normal(size=(N, dim))
  y = rng.normal(size=N)
  params0 = {k: 0.3 * rng.normal(size=s) for k, s in SHAPES.items()}
  order = [rng.permutation(N) for _ in range(EPOCHS)]
  return a, y, params0, order


def _flat(p):
  return np.concatenate([np.asarray(p[k]).reshape(-1) for k in SHAPES])


def _unflat(v):
  out, i = {}, 0
  for k, s in SHAPES.items():
    n = int(np.prod(s))
    out[k] = v[i:i + n].reshape(s)
    i += n
  return out


def _jax_loss(a, y):
  def loss(p, idx):
    th = jnp.concatenate([p[k].reshape(-1) for k in SHAPES])
    r = jnp.asarray(a)[idx] @ th - jnp.asarray(y)[idx]
    return 0.5 * jnp.mean(r ** 2)
  return loss


def _reference(a, y, params0, order, lr, momentum, wd):
  grad = lambda th, idx: a[idx].T @ (a[idx] @ th - y[idx]) / len(idx)
  th, m, out = _flat(params0), 0.0, []
  for perm in order:
    snap, mu = th.copy(), grad(th, np.arange(N))
    for idx in perm.reshape(-1, BATCH):
      v = grad(th, idx) - grad(snap, idx) + mu + wd * th
      m = momentum * m + v
      th = th - lr * m
      out.append(th)
  return out


@pytest.mark.parametrize("base,momentum,wd", [("sgd", 0.0, 0.0),
                                              ("sgd", 0.0, 0.01),
                                              ("sgd_momentum", 0.9, 0.0)])
def test_svrg_matches_hand_computed_variance_reduction(x64, base, momentum,
                                                       wd):
  a, y, params0, order = _problem()
  lr = 0.02
  expected = _reference(a, y, params0, order, lr, momentum, wd)
  tx = transforms.make("svrg", lr, weight_decay=wd, base=base)
  loss = _jax_loss(a, y)

  @jax.jit
  def step(params, state, idx):
    loss_fn = lambda p: (loss(p, idx), None)
    grads = jax.grad(lambda p: loss_fn(p)[0])(params)
    extras = transforms.build_extras(NEEDS, loss_fn)
    updates, state = tx.update(grads, state, params, **extras)
    return optax.apply_updates(params, updates), state

  epoch_start = jax.jit(SPEC.epoch_start)
  full_grad = jax.jit(jax.grad(lambda p: loss(p, jnp.arange(N))))
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(params)
  worst, t = 0.0, 0
  for perm in order:
    state = epoch_start(state, params, full_grad(params))
    for idx in perm.reshape(-1, BATCH):
      params, state = step(params, state, jnp.asarray(idx))
      ref = expected[t]
      err = relative_error(_flat(params), ref)
      assert err <= 1e-10, f"step {t + 1}: relative error {err:.3g}"
      worst, t = max(worst, err), t + 1
  assert t == 25
  print(f"MAXERR svrg(base={base}, wd={wd}) {worst:.3g}")


def test_at_the_snapshot_the_direction_is_the_full_gradient(x64):
  a, y, params0, _ = _problem()
  loss = _jax_loss(a, y)
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  tx = transforms.make("svrg", 1.0)

  @jax.jit
  def first_update(params):
    mu = jax.grad(lambda p: loss(p, jnp.arange(N)))(params)
    state = SPEC.epoch_start(tx.init(params), params, mu)
    loss_fn = lambda p: (loss(p, jnp.array([0, 5, 7])), None)
    grads = jax.grad(lambda p: loss_fn(p)[0])(params)
    updates, _ = tx.update(grads, state, params,
                           **transforms.build_extras(NEEDS, loss_fn))
    return updates, grads, mu

  updates, grads, mu = first_update(params)
  chex.assert_trees_all_close(updates, jax.tree.map(lambda m: -m, mu),
                              rtol=1e-12)
  # ... whereas the mini-batch gradient itself is far from it.
  assert float(optax.tree.norm(optax.tree.sub(grads, mu))) > 0.1


def test_before_epoch_start_it_is_the_base_optimizer(x64):
  """Documented behaviour: no snapshot yet -> plain base step on g_t."""
  a, y, params0, order = _problem()
  loss = _jax_loss(a, y)
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  svrg_tx, sgd_tx = transforms.make("svrg", 0.05), transforms.make("sgd", 0.05)
  s1, s2 = svrg_tx.init(params), sgd_tx.init(params)
  p1 = p2 = params

  @jax.jit
  def step(p1, s1, p2, s2, idx):
    loss_fn = lambda p: (loss(p, idx), None)
    extras = transforms.build_extras(NEEDS, loss_fn)
    g1 = jax.grad(lambda p: loss_fn(p)[0])(p1)
    g2 = jax.grad(lambda p: loss_fn(p)[0])(p2)
    u1, s1 = svrg_tx.update(g1, s1, p1, **extras)
    u2, s2 = sgd_tx.update(g2, s2, p2)
    return optax.apply_updates(p1, u1), s1, optax.apply_updates(p2, u2), s2

  for idx in order[0].reshape(-1, BATCH)[:3]:
    p1, s1, p2, s2 = step(p1, s1, p2, s2, jnp.asarray(idx))
  chex.assert_trees_all_close(p1, p2, rtol=1e-14)
  assert not bool(s1.has_snapshot)


def test_epoch_start_finds_the_state_inside_a_chain_under_jit():
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   transforms.make("svrg", weight_decay=1e-3))
  state = tx.init(params)
  mu = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  new_state = jax.jit(SPEC.epoch_start)(state, params, mu)
  svrg_state = [s for s in jax.tree.leaves(
      new_state, is_leaf=lambda x: isinstance(x, svrg_lib.SVRGState))
                if isinstance(s, svrg_lib.SVRGState)][0]
  assert bool(svrg_state.has_snapshot)
  chex.assert_trees_all_close(svrg_state.full_grad, mu)
  chex.assert_trees_all_close(svrg_state.snapshot, params)
  chex.assert_trees_all_equal_structs(new_state, state)


def test_missing_grad_fn_is_a_clear_error():
  params = {"x": jnp.ones(2)}
  tx = transforms.make("svrg")
  with pytest.raises(OptBenchError, match="svrg.*grad_fn"):
    tx.update(params, tx.init(params), params)


def test_without_jit(x64):
  def prepare(state, params, loss_fn):
    return SPEC.epoch_start(state, params,
                            jax.grad(lambda p: loss_fn(p)[0])(params))
  assert_same_with_and_without_jit(transforms.make("svrg", 0.05), NEEDS,
                                   prepare=prepare)


@pytest.mark.parametrize(
    "dtype", [pytest.param(jnp.float32, marks=pytest.mark.slow),
              jnp.bfloat16])
def test_dtypes(dtype):
  params = {"w": jnp.ones((3, 4), dtype), "b": jnp.zeros(4, dtype)}
  loss_fn = lambda p: (sum(jnp.sum(jnp.sin(x.astype(jnp.float32)) ** 2)
                           for x in jax.tree.leaves(p)), None)
  tx = transforms.make("svrg", 0.1, base="sgd_momentum")
  grad = lambda p: jax.grad(lambda q: loss_fn(q)[0])(p)
  state = SPEC.epoch_start(tx.init(params), params, grad(params))

  @jax.jit
  def step(params, state):
    updates, state = tx.update(grad(params), state, params,
                               **transforms.build_extras(NEEDS, loss_fn))
    return optax.apply_updates(params, updates), state

  for _ in range(3):
    params, state = step(params, state)
  for leaf in jax.tree.leaves((params, state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == dtype
  chex.assert_tree_all_finite(params)
  assert float(loss_fn(params)[0]) < float(loss_fn(
      {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)})[0])
