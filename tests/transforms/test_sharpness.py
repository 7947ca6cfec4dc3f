"""SAM and GSAM against pytorch_optimizer, step by step in float64.

Ours calls the engine's ``grad_fn`` (built by ``build_extras``) at the
perturbed point; the reference re-evaluates the same loss on the same batch in
its closure. Parameters are compared after every step (same harness as
test_wrappers: Flax layout here, PyTorch layout there).

Reference precision: pytorch_optimizer's ``get_global_gradient_norm`` (used
by SAM's and GSAM's ``‖g‖``) returns the norm in float32 (``.float()``) even
for float64 tensors, which alone puts ~1e-10 relative differences into the
parameters after one step. The ``float64_reference`` fixture patches that one
helper to keep float64 (same formula); ``test_sam_unpatched_reference`` runs
the reference as shipped with the looser bound that its float32 norm allows.

Mappings (see ``optbench_jax/transforms/sam.py``):
  SAM(ps, torch.optim.SGD, rho=ρ, adaptive=a, lr=η, momentum=0.9,
      weight_decay=λ)
      == make("sam", η, weight_decay=λ, rho=ρ,
              adaptive=a)                                (base sgd_momentum)
  GSAM(ps, SGD(ps, lr=η, momentum=0.9, weight_decay=λ), model,
       ProportionScheduler(sched, max_lr=η, min_lr=η, max_value=ρ,
                           min_value=ρ), alpha=α)     (constant ρ_t = ρ)
      == make("gsam", η, weight_decay=λ, rho=ρ,
              alpha=α)
"""
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from pytorch_optimizer import GSAM, SAM
from pytorch_optimizer.optimizer import sam as reference_sam_module
from pytorch_optimizer.lr_scheduler.proportion import ProportionScheduler

from optbench_jax import transforms
from optbench_jax.errors import OptBenchError
from optbench_jax.transforms import sam as sam_lib
from tests.transforms.torch_reference import (assert_same_with_and_without_jit,
                                              initial_params, run_against_torch)

NEEDS = frozenset({"grad_fn"})


def _float64_global_norm_sq(param_groups, device=None, *,
                            weight_adaptive=False):
  """pytorch_optimizer's get_global_gradient_norm without its ``.float()``."""
  del device
  total = torch.zeros(1, dtype=torch.float64)
  for group in param_groups or []:
    adaptive = weight_adaptive and group.get("adaptive", False)
    for p in group["params"]:
      if p.grad is not None:
        g = p.grad * p.abs() if adaptive else p.grad
        total += g.norm() ** 2
  return total


@pytest.fixture
def float64_reference(monkeypatch):
  monkeypatch.setattr(reference_sam_module, "get_global_gradient_norm",
                      _float64_global_norm_sq)


def sam_torch_step(opt, side, batch, t, key):
  del t, key
  side.backward(batch)
  opt.step(lambda: side.backward(batch))


def gsam_torch_step(opt, side, batch, t, key):
  """GSAM.step runs under no_grad; its closure must enable grad itself."""
  del t, key

  def closure():
    with torch.enable_grad():
      return None, side.backward(batch).detach()

  opt.step(closure)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_pytorch_optimizer(x64, float64_reference, adaptive):
  lr, rho, wd = 0.05, (0.5 if adaptive else 0.05), 0.01
  tx = transforms.make("sam", lr, weight_decay=wd, rho=rho, adaptive=adaptive)
  worst = run_against_torch(
      tx, lambda ps: SAM(ps, torch.optim.SGD, rho=rho, adaptive=adaptive,
                         lr=lr, momentum=0.9, weight_decay=wd),
      needs=NEEDS, torch_step=sam_torch_step)
  print(f"MAXERR sam(adaptive={adaptive}) {worst:.3g}")


def test_sam_unpatched_reference(x64):
  """As shipped (float32 ‖g‖), the reference agrees to float32 rounding."""
  lr, rho = 0.05, 0.05
  worst = run_against_torch(
      transforms.make("sam", lr, rho=rho),
      lambda ps: SAM(ps, torch.optim.SGD, rho=rho, lr=lr, momentum=0.9),
      needs=NEEDS, torch_step=sam_torch_step, tol=1e-7)
  print(f"MAXERR sam(unpatched float32-norm reference) {worst:.3g}")


def test_sam_with_adam_base_matches(x64, float64_reference):
  lr, rho = 0.01, 0.1
  tx = transforms.make("sam", lr, rho=rho, base="adam")
  worst = run_against_torch(
      tx, lambda ps: SAM(ps, torch.optim.Adam, rho=rho, lr=lr),
      needs=NEEDS, torch_step=sam_torch_step)
  print(f"MAXERR sam(base=adam) {worst:.3g}")


@pytest.mark.parametrize("alpha", [0.1, 0.4])
def test_gsam_matches_pytorch_optimizer(x64, float64_reference, alpha):
  lr, rho, wd = 0.05, 0.05, 0.01
  tx = transforms.make("gsam", lr, weight_decay=wd, rho=rho, alpha=alpha)

  def reference(ps):
    base = torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=wd)
    constant = ProportionScheduler(types.SimpleNamespace(last_lr=[lr]),
                                   max_lr=lr, min_lr=lr, max_value=rho,
                                   min_value=rho)
    return GSAM(ps, base, torch.nn.Module(), constant, alpha=alpha)

  worst = run_against_torch(tx, reference, needs=NEEDS,
                            torch_step=gsam_torch_step)
  print(f"MAXERR gsam(alpha={alpha}) {worst:.3g}")


# --------------------------------------------------------------------------
# Exact small cases.
# --------------------------------------------------------------------------

def _quadratic():
  a = jnp.array([[2.0, 0.5], [0.5, 1.0]])
  loss = lambda p: 0.5 * p["x"] @ a @ p["x"] + jnp.sum(jnp.sin(p["x"]))
  grad = lambda x: a @ x + jnp.cos(x)
  return loss, grad


def test_sam_descends_with_the_gradient_at_rho_g_over_norm_g(x64):
  loss, grad = _quadratic()
  params = {"x": jnp.array([1.0, -2.0])}
  g = grad(params["x"])
  rho, lr = 0.3, 0.1
  tx = transforms.make("sam", lr, rho=rho, base="sgd")
  extras = transforms.build_extras(NEEDS, lambda p: (loss(p), None))
  updates, _ = tx.update({"x": g}, tx.init(params), params, **extras)
  ascent_point = params["x"] + rho * g / jnp.linalg.norm(g)
  np.testing.assert_allclose(updates["x"], -lr * grad(ascent_point),
                             rtol=1e-12)
  # ... and not with the clean gradient.
  assert float(jnp.max(jnp.abs(updates["x"] + lr * g))) > 1e-3


def test_gsam_decomposition_matches_the_paper():
  g = {"a": jnp.array([1.0, 0.0])}
  g_sam = {"a": jnp.array([1.0, 1.0])}
  alpha = 0.3
  out = sam_lib.gsam_decompose(g, g_sam, alpha, eps=0.0)
  # g_∥ = (g·g_sam / |g_sam|²) g_sam = (0.5, 0.5); g_⊥ = (0.5, −0.5).
  np.testing.assert_allclose(out["a"], np.array([1.0, 1.0])
                             - alpha * np.array([0.5, -0.5]), rtol=1e-6)
  # The removed component is orthogonal to g_SAM.
  removed = (g_sam["a"] - out["a"]) / alpha
  np.testing.assert_allclose(jnp.dot(removed, g_sam["a"]), 0.0, atol=1e-6)


def test_gsam_with_alpha_zero_is_sam(x64):
  loss, grad = _quadratic()
  params = {"x": jnp.array([0.5, 1.5])}
  extras = transforms.build_extras(NEEDS, lambda p: (loss(p), None))
  g = {"x": grad(params["x"])}
  out = []
  for name, hp in (("sam", {}), ("gsam", {"alpha": 0.0})):
    tx = transforms.make(name, 0.1, **hp)
    out.append(tx.update(g, tx.init(params), params, **extras)[0])
  chex.assert_trees_all_close(out[0], out[1], rtol=1e-14)


def test_rho_schedule(x64):
  loss, grad = _quadratic()
  params = {"x": jnp.array([0.5, 1.5])}
  extras = transforms.build_extras(NEEDS, lambda p: (loss(p), None))
  g = {"x": grad(params["x"])}
  constant = transforms.make("gsam", 0.1, rho=0.2)
  scheduled = transforms.make("gsam", 0.1, rho=optax.constant_schedule(0.2))
  other = transforms.make("gsam", 0.1, rho=optax.constant_schedule(0.4))
  u = [tx.update(g, tx.init(params), params, **extras)[0]
       for tx in (constant, scheduled, other)]
  chex.assert_trees_all_close(u[0], u[1], rtol=1e-14)
  assert float(jnp.max(jnp.abs(u[0]["x"] - u[2]["x"]))) > 1e-4


@pytest.mark.parametrize("name", ["sam", "gsam"])
def test_missing_grad_fn_is_a_clear_error(name):
  params = {"x": jnp.ones(2)}
  tx = optax.chain(optax.clip_by_global_norm(1.0), transforms.make(name))
  with pytest.raises(OptBenchError, match=f"{name}.*grad_fn"):
    tx.update(params, tx.init(params), params)


def test_base_needing_other_extras_is_refused():
  with pytest.raises(OptBenchError, match="needs the extra"):
    transforms.make("sam", base="adahessian")


# --------------------------------------------------------------------------
# Without jit, dtypes and composition.
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name", [pytest.param("sam", marks=pytest.mark.slow), "gsam"])
def test_without_jit(x64, name):
  assert_same_with_and_without_jit(transforms.make(name, 0.05), NEEDS)


@pytest.mark.parametrize("name", ["sam", "gsam"])
@pytest.mark.parametrize(
    "dtype", [pytest.param(jnp.float32, marks=pytest.mark.slow),
              jnp.bfloat16])
def test_dtypes_and_chain(name, dtype):
  params = {k: jnp.asarray(v, dtype) for k, v in initial_params().items()}
  loss_fn = lambda p: (sum(jnp.sum(jnp.sin(x.astype(jnp.float32)) ** 2)
                           for x in jax.tree.leaves(p)), None)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   transforms.make(name, 0.1, weight_decay=1e-4))

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: loss_fn(p)[0])(params)
    extras = transforms.build_extras(NEEDS, loss_fn)
    updates, state = tx.update(grads, state, params, **extras)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  start = loss_fn(params)[0]
  for _ in range(3):
    params, state = step(params, state)
  for leaf in jax.tree.leaves((params, state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == dtype
  chex.assert_tree_all_finite(params)
  assert float(loss_fn(params)[0]) < float(start)
