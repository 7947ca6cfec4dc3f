"""AdaHessian, Sophia-H and L-BFGS against their PyTorch references, in float64.

Hutchinson methods (AdaHessian, Sophia-H): the reference draws its own
probes, so both sides are fed the *same* probes: at every Hessian step the
test draws ``z`` with ``adahessian.hutchinson_probes`` from the PRNG key ours
received, computes ``z ⊙ (H z)`` in PyTorch by double backward on the same
loss and batch (independently of our forward-over-reverse ``hvp_fn``),
applies the paper's spatial averaging on PyTorch's ``(out, in, kh, kw)``
layout for AdaHessian, and passes it as ``step(hessian=...)``. Everything
else (moments, bias correction, clipping, weight decay) is the reference's.

Mappings:
  AdaHessian(lr=η, betas, eps, hessian_power=1, update_period=p,
             weight_decay=λ)   [decoupled]
      == make("adahessian", η, weight_decay=λ, eps=eps, update_period=p)
  SophiaH(lr=L, betas, p=P, eps=E, update_period=k, weight_decay=λ)
      == make("sophia", L·P, rho=P, eps=P·E, update_period=k,
              weight_decay=λ/P)
  torch.optim.LBFGS(lr=η, max_iter=1, history_size=m, line_search_fn=None)
      == make("lbfgs", η, memory_size=m, linesearch="none",
              first_step_norm=1)       (while every pair has sᵀy > 1e-10)
  torch.optim.LBFGS(lr=1, max_iter=1, max_eval=26, history_size=m,
                    line_search_fn="strong_wolfe")
      ~  make("lbfgs", 1.0, memory_size=m, first_step_norm=1)  (zoom)
      identical while both line searches accept their first trial step
      (see test_lbfgs_strong_wolfe_matches_while_first_trials_are_accepted).
      ``max_eval`` must be given: PyTorch's default ``max_iter * 5 // 4`` = 1
      leaves its line search no evaluation when ``max_iter=1``.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from pytorch_optimizer import AdaHessian, SophiaH

from optbench_jax import transforms
from optbench_jax.errors import OptBenchError
from optbench_jax.transforms import adahessian as adahessian_lib
from tests.transforms.torch_reference import (
    LOSS_SHAPES, assert_same_with_and_without_jit, extras_step,
    initial_params, relative_error, run_against_torch, to_torch_layout)

NEEDS = frozenset({"hvp_fn", "key"})
TOL = 1e-10


def torch_hutchinson(side, batch, key, distribution, spatial_average=False):
  """z ⊙ (H z) in PyTorch, with our probes, in PyTorch layout."""
  shapes = {k: jnp.zeros(s, jnp.float64) for k, s in LOSS_SHAPES.items()}
  probes = adahessian_lib.hutchinson_probes(key, shapes, distribution)
  z = [torch.tensor(to_torch_layout(np.asarray(probes[k])))
       for k in side.names]
  with torch.enable_grad():
    value = side.loss(batch)
    grads = torch.autograd.grad(value, side.tensors, create_graph=True)
    hz = torch.autograd.grad(grads, side.tensors, grad_outputs=z)
  diag = [zi * hzi for zi, hzi in zip(z, hz)]
  if spatial_average:  # the paper's code, on (out, in, kh, kw)
    diag = [d.abs().mean(dim=[2, 3], keepdim=True).expand_as(d).clone()
            if d.dim() == 4 else d for d in diag]
  return diag


def hessian_torch_step(update_period, distribution, spatial_average):
  def step(opt, side, batch, t, key):
    side.backward(batch)
    hessian = None
    if t % update_period == 0:
      hessian = torch_hutchinson(side, batch, key, distribution,
                                 spatial_average)
    opt.step(hessian=hessian)
  return step


# --------------------------------------------------------------------------
# AdaHessian.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("update_period", [1, 3])
def test_adahessian_matches_pytorch_optimizer(x64, update_period):
  lr, wd, eps = 0.05, 0.01, 1e-4
  tx = transforms.make("adahessian", lr, weight_decay=wd,
                       eps=eps,
                       update_period=update_period)
  worst = run_against_torch(
      tx, lambda ps: AdaHessian(ps, lr=lr, betas=(0.9, 0.999), eps=eps,
                                weight_decay=wd, hessian_power=1.0,
                                update_period=update_period),
      needs=NEEDS,
      torch_step=hessian_torch_step(update_period, "rademacher", True))
  print(f"MAXERR adahessian(update_period={update_period}) {worst:.3g}")


def test_hutchinson_is_exact_for_a_diagonal_hessian(x64):
  d = {"v": jnp.array([1.0, -2.0, 3.0]),
       "k": jnp.arange(1.0, 25.0).reshape(2, 2, 3, 2)}
  loss = lambda p: sum(0.5 * jnp.sum(d[k] * p[k] ** 2) for k in d)
  hvp_fn = transforms.build_extras({"hvp_fn"}, lambda p: (loss(p), None)
                                   )["hvp_fn"]
  params = jax.tree.map(jnp.ones_like, d)
  estimate = jax.jit(adahessian_lib.hutchinson_diagonal,
                     static_argnums=(0, 3, 4))
  for seed in range(3):  # any Rademacher probe: z² = 1
    diag = estimate(hvp_fn, params, jax.random.key(seed), "rademacher", False)
    chex.assert_trees_all_close(diag, d, rtol=1e-14)
  averaged = estimate(hvp_fn, params, jax.random.key(0), "rademacher", True)
  np.testing.assert_allclose(averaged["v"], d["v"])  # 1-D: untouched
  expected = jnp.broadcast_to(d["k"].mean((0, 1), keepdims=True), (2, 2, 3, 2))
  np.testing.assert_allclose(averaged["k"], expected, rtol=1e-14)
  assert float(jnp.abs(averaged["k"] - d["k"]).max()) > 1.0


# --------------------------------------------------------------------------
# Sophia-H.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("clip_p,update_period", [
    (0.05, 10), pytest.param(1.0, 3, marks=pytest.mark.slow)])
def test_sophia_matches_pytorch_optimizer(x64, clip_p, update_period):
  lr_torch, eps_torch, wd_torch = 0.5, 1e-12, 0.01
  tx = transforms.make("sophia", lr_torch * clip_p,
                       weight_decay=wd_torch / clip_p, rho=clip_p,
                       eps=clip_p * eps_torch,
                       update_period=update_period)
  ratios = []

  def record(t, params, state, side, opt):
    del t, params, side, opt
    sophia_state = state[0]
    ratios.append(jax.tree.map(
        lambda m, h: m / jnp.maximum(clip_p * h, clip_p * eps_torch),
        sophia_state.mu, sophia_state.hessian))

  worst = run_against_torch(
      tx, lambda ps: SophiaH(ps, lr=lr_torch, betas=(0.96, 0.99), p=clip_p,
                             eps=eps_torch, weight_decay=wd_torch,
                             update_period=update_period),
      needs=NEEDS, on_step=record,
      torch_step=hessian_torch_step(update_period, "gaussian", False))
  # Both regimes of the clip were exercised.
  r = np.concatenate([np.abs(np.asarray(x)).ravel()
                      for x in jax.tree.leaves(ratios)])
  assert (r > 1).any() and (r < 1).any()
  print(f"MAXERR sophia(p={clip_p}, k={update_period}) {worst:.3g}")


@pytest.mark.parametrize("name", ["adahessian", "sophia"])
def test_missing_hessian_extras_are_clear_errors(name):
  params = {"x": jnp.ones(3)}
  tx = transforms.make(name)
  state = tx.init(params)
  hvp_fn = lambda p, v: v
  with pytest.raises(OptBenchError, match=f"{name}.*hvp_fn"):
    tx.update(params, state, params, key=jax.random.key(0))
  with pytest.raises(OptBenchError, match=f"{name}.*key"):
    tx.update(params, state, params, hvp_fn=hvp_fn)


# --------------------------------------------------------------------------
# L-BFGS (its own convex problem: PyTorch skips pairs with sᵀy ≤ 1e-10).
# --------------------------------------------------------------------------

LB_SHAPES = {"w": (3, 4), "b": (4,), "t": (2, 3, 3)}


def _lbfgs_problem(seed, ill_conditioned):
  rng = np.random.default_rng(seed)
  dim = sum(int(np.prod(s)) for s in LB_SHAPES.values())
  if ill_conditioned:
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    hess = (q * np.logspace(-2, 1, dim)) @ q.T
    lin = 0.02 * rng.normal(size=dim)
    scale, quartic = 0.1, 0.01
  else:
    a = rng.normal(size=(40, dim)) / np.sqrt(dim)
    hess = a.T @ a / 40 + 0.1 * np.eye(dim)
    lin = a.T @ rng.normal(size=40) / 40
    scale, quartic = 1.0, 0.1

  def loss(p, xp):
    cat = jnp.concatenate if xp is jnp else torch.cat
    to = jnp.asarray if xp is jnp else torch.tensor
    th = cat([p[k].reshape(-1) for k in LB_SHAPES])
    return (0.5 * th @ (to(hess) @ th) - to(lin) @ th
            + quartic * xp.log(xp.cosh(th)).sum())

  params0 = {k: scale * rng.normal(size=s) for k, s in LB_SHAPES.items()}
  return loss, params0


def _run_lbfgs(tx, torch_kwargs, loss, params0, steps):
  """Yields (step, ours, reference, torch state) after every step."""
  tensors = [torch.tensor(params0[k], requires_grad=True) for k in LB_SHAPES]
  opt = torch.optim.LBFGS(tensors, max_iter=1, **torch_kwargs)

  def closure():
    opt.zero_grad()
    value = loss(dict(zip(LB_SHAPES, tensors)), torch)
    value.backward()
    return value

  value_fn = lambda p: loss(p, jnp)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(value_fn)(params)
    extras = transforms.build_extras({"value", "value_fn"},
                                     lambda p: (value_fn(p), None),
                                     value=value, params=params)
    updates, state = tx.update(grads, state, params, **extras)
    return optax.apply_updates(params, updates), state, value

  params = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(params)
  for t in range(steps):
    params, state, _ = step(params, state)
    opt.step(closure)
    ref = {k: x.detach().numpy() for k, x in zip(LB_SHAPES, tensors)}
    yield t, params, ref, opt.state[tensors[0]]


def test_lbfgs_fixed_step_matches_torch(x64):
  loss, params0 = _lbfgs_problem(0, ill_conditioned=False)
  memory, lr = 5, 0.3
  tx = transforms.make("lbfgs", lr, memory_size=memory, linesearch="none",
                       first_step_norm=1)
  worst = 0.0
  for t, ours, ref, torch_state in _run_lbfgs(
      tx, dict(lr=lr, history_size=memory), loss, params0, 25):
    # PyTorch kept every curvature pair (sᵀy > 1e-10): same memory as optax.
    assert len(torch_state["old_dirs"]) == min(t, memory)
    err = relative_error(ours, ref)
    assert err <= TOL, f"step {t + 1}: relative error {err:.3g}"
    worst = max(worst, err)
  print(f"MAXERR lbfgs(fixed step) {worst:.3g}")


def test_lbfgs_strong_wolfe_matches_while_first_trials_are_accepted(x64):
  """Exact for 21 steps; at step 22 both zoom, with different trial steps.

  PyTorch extrapolates by cubic interpolation in [t, 10 t] and optax doubles
  the step, so once the first trial is rejected the accepted steps differ
  (both satisfy the strong Wolfe conditions); both then keep converging.
  """
  loss, params0 = _lbfgs_problem(0, ill_conditioned=True)
  tx = transforms.make("lbfgs", 1.0, memory_size=5, first_step_norm=1)
  torch_kwargs = dict(lr=1.0, history_size=5, max_eval=26,
                      line_search_fn="strong_wolfe")
  worst = 0.0
  final = None
  for t, ours, ref, torch_state in _run_lbfgs(tx, torch_kwargs, loss, params0,
                                              24):
    err = relative_error(ours, ref)
    if t < 21:
      assert err <= TOL, f"step {t + 1}: relative error {err:.3g}"
      worst = max(worst, err)
    final = ours, ref
  assert relative_error(*final) > 1e-8  # the line searches did part ways
  ours_value = float(loss(final[0], jnp))
  ref_value = float(loss({k: torch.tensor(v) for k, v in final[1].items()},
                         torch))
  np.testing.assert_allclose(ours_value, ref_value, rtol=1e-4)
  print(f"MAXERR lbfgs(strong wolfe, 21 steps) {worst:.3g}")


@pytest.mark.slow
def test_lbfgs_weight_decay_is_an_l2_term_of_the_objective(x64):
  loss, params0 = _lbfgs_problem(1, ill_conditioned=False)
  lam = 0.05
  decayed = transforms.make("lbfgs", weight_decay=lam)
  plain = transforms.make("lbfgs")
  l2 = lambda p: 0.5 * lam * sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))
  value_fns = (lambda p: loss(p, jnp), lambda p: loss(p, jnp) + l2(p))

  runs = []
  for tx, value_fn in zip((decayed, plain), value_fns):

    @jax.jit
    def step(p, state, tx=tx, value_fn=value_fn):
      value, grads = jax.value_and_grad(value_fn)(p)
      updates, state = tx.update(grads, state, p, value=value,
                                 value_fn=value_fn)
      return optax.apply_updates(p, updates), state

    p = {k: jnp.asarray(v) for k, v in params0.items()}
    state = tx.init(p)
    for _ in range(6):
      p, state = step(p, state)
    runs.append(p)
  chex.assert_trees_all_close(runs[0], runs[1], rtol=1e-12)
  assert relative_error(runs[0], params0) > 1e-2


def test_lbfgs_needs_value_and_value_fn_only_with_a_line_search():
  params = {"x": jnp.ones(3)}
  tx = transforms.make("lbfgs")
  with pytest.raises(OptBenchError, match="lbfgs.*value"):
    tx.update(params, tx.init(params), params)
  fixed = transforms.make("lbfgs", 0.1, linesearch="none")
  updates, _ = jax.jit(fixed.update)(params, fixed.init(params), params)
  chex.assert_tree_all_finite(updates)


# --------------------------------------------------------------------------
# Without jit, dtypes and composition.
# --------------------------------------------------------------------------

@pytest.mark.slow  # eager lax.cond/scan/hvp compile at every call
@pytest.mark.parametrize("name,hp", [("adahessian", {}),
                                     ("sophia", {"update_period": 2}),
                                     ("lbfgs", {"linesearch": "none"})])
def test_without_jit(x64, name, hp):
  """Eager mode (each eager ``lax.cond``/``scan`` compiles: few steps)."""
  needs = transforms.get(name).needs
  assert_same_with_and_without_jit(transforms.make(name, 0.05, **hp), needs,
                                   steps=2)


@pytest.mark.parametrize("name,dtype", [
    ("adahessian", jnp.bfloat16), ("sophia", jnp.bfloat16),
    pytest.param("adahessian", jnp.float32, marks=pytest.mark.slow),
    pytest.param("sophia", jnp.float32, marks=pytest.mark.slow),
    pytest.param("lbfgs", jnp.float32, marks=pytest.mark.slow)])
def test_dtypes_and_chain(name, dtype):
  params = {k: jnp.asarray(v, dtype) for k, v in initial_params().items()}
  loss_fn = lambda p: (sum(jnp.sum(jnp.sin(x.astype(jnp.float32)) ** 2
                                   + 0.1 * x.astype(jnp.float32) ** 4)
                           for x in jax.tree.leaves(p)), None)
  needs = transforms.get(name).needs
  tx = transforms.make(name, 0.05, weight_decay=1e-4)
  if name != "lbfgs":  # the line search must see the raw gradient
    tx = optax.chain(optax.clip_by_global_norm(10.0), tx)

  step = jax.jit(extras_step(tx, needs, loss_fn))

  state = tx.init(params)
  start = loss_fn(params)[0]
  for t in range(3):
    params, state = step(params, state, jax.random.key(t))
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == dtype
  opt_leaves = [x for x in jax.tree.leaves(state)
                if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim > 1]
  assert opt_leaves and all(x.dtype == dtype for x in opt_leaves)
  chex.assert_tree_all_finite(params)
  assert float(loss_fn(params)[0]) < float(start)
