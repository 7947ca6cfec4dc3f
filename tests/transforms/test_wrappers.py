"""Lookahead and Ranger against pytorch_optimizer, step by step in float64.

Both sides start from the same parameters, see the same mini-batches and take
their gradients of the same loss (JAX autodiff vs torch autograd); parameters
are compared after every step. Tensors are held in Flax layout here
(``(in, out)``, ``(w, in, out)``, ``(kh, kw, in, out)``) and in PyTorch's
layout there (``(out, in, ...)``), so gradient centralisation is checked on
the axes each framework's layers use.

Mappings (see ``optbench_jax/transforms/lookahead.py``):
  Lookahead(torch.optim.Adam(lr=η), k=5, alpha=0.5)
      == make("lookahead", η)                         (base "adam")
  Lookahead(torch.optim.SGD(lr=η, momentum=0.9), k, alpha)
      == make("lookahead", η, base="sgd_momentum", sync_period=k,
              slow_step_size=alpha)
  Ranger(lr=η, weight_decay=λ, degenerated_to_sgd=True)
      == make("ranger", η, weight_decay=λ)
  (degenerated_to_sgd=True because the reference's default steps *up* the
  gradient while ρ_t < 5; test_reference_ranger_default_ascends shows it).
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from pytorch_optimizer import Lookahead, Ranger

from optbench_jax import transforms
from optbench_jax.errors import OptBenchError
from optbench_jax.transforms import lookahead as lookahead_lib
from tests.transforms.torch_reference import (assert_same_with_and_without_jit,
                                              initial_params, relative_error,
                                              run_against_torch)

TOL = 1e-10


# --------------------------------------------------------------------------
# Lookahead.
# --------------------------------------------------------------------------

def test_lookahead_adam_matches_pytorch_optimizer(x64):
  lr = 0.05

  def check_slow(t, params, state, side, opt):
    ours_slow = transforms.get("lookahead").prepare_for_eval(params, state)
    ref_slow = side.params([opt.state[p]["slow_params"] for p in side.tensors])
    assert relative_error(ours_slow, ref_slow) <= TOL
    if (t + 1) % 5:
      assert relative_error(ours_slow, side.params()) > 1e-6  # slow != fast
    else:
      chex.assert_trees_all_close(ours_slow, params, rtol=1e-14)

  worst = run_against_torch(
      transforms.make("lookahead", lr),
      lambda ps: Lookahead(torch.optim.Adam(ps, lr=lr), k=5, alpha=0.5),
      on_step=check_slow)
  print(f"MAXERR lookahead(adam) {worst:.3g}")


def test_lookahead_sgd_momentum_weight_decay_matches(x64):
  lr, wd = 0.05, 0.01
  tx = transforms.make("lookahead", lr, weight_decay=wd,
                       base="sgd_momentum",
                       sync_period=3, slow_step_size=0.7)
  worst = run_against_torch(
      tx, lambda ps: Lookahead(
          torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=wd), k=3,
          alpha=0.7))
  print(f"MAXERR lookahead(sgd_momentum, wd) {worst:.3g}")


def test_lookahead_eval_weights_found_inside_a_chain():
  params = {k: jnp.asarray(v, jnp.float32) for k, v in
            initial_params().items()}
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   transforms.make("lookahead", 0.1))
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(2):
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
  slow = transforms.get("lookahead").prepare_for_eval(params, state)
  # No synchronisation yet: the slow weights are still the initial ones.
  chex.assert_trees_all_close(slow, initial_params(), rtol=1e-6)
  with pytest.raises(OptBenchError, match="LookaheadState"):
    transforms.get("lookahead").prepare_for_eval(params,
                                                 optax.sgd(0.1).init(params))


def test_wrappers_refuse_bases_they_cannot_feed():
  with pytest.raises(OptBenchError, match="needs the extra"):
    transforms.make("lookahead", base="sam")
  with pytest.raises(OptBenchError, match="evaluation or epoch hooks"):
    transforms.make("lookahead", base="ranger")
  with pytest.raises(OptBenchError, match="unknown optimizer"):
    transforms.make("lookahead", base="adamm")


# --------------------------------------------------------------------------
# Ranger.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("gc_conv_only", [False, True])
def test_ranger_matches_pytorch_optimizer(x64, gc_conv_only):
  lr, wd = 0.03, 0.02
  tx = transforms.make("ranger", lr, weight_decay=wd, gc_conv_only=gc_conv_only)
  worst = run_against_torch(
      tx, lambda ps: Ranger(ps, lr=lr, weight_decay=wd,
                            degenerated_to_sgd=True,
                            gc_conv_only=gc_conv_only))
  print(f"MAXERR ranger(gc_conv_only={gc_conv_only}) {worst:.3g}")


def test_ranger_without_gradient_centralisation_matches(x64):
  lr = 0.03
  worst = run_against_torch(
      transforms.make("ranger", lr, use_gc=False),
      lambda ps: Ranger(ps, lr=lr, use_gc=False, degenerated_to_sgd=True))
  print(f"MAXERR ranger(use_gc=False) {worst:.3g}")


def test_reference_ranger_default_ascends(x64):
  """Why the tests use degenerated_to_sgd=True: the default climbs."""
  start = np.array([1.0, 2.0])
  p = torch.tensor(start, requires_grad=True)
  opt = Ranger([p], lr=0.1, use_gc=False)  # degenerated_to_sgd=False
  (p ** 2).sum().backward()
  opt.step()
  assert float((p.detach() ** 2).sum()) > float((start ** 2).sum())
  ours = jnp.asarray(start)
  tx = transforms.make("ranger", 0.1, use_gc=False)
  updates, _ = jax.jit(tx.update)(2 * ours, tx.init(ours), ours)
  assert float(jnp.sum((ours + updates) ** 2)) < float(np.sum(start ** 2))


def test_centralize_fan_in_hand_computed():
  g = {"dense": jnp.arange(12.0).reshape(3, 4),   # (in, out)
       "bias": jnp.arange(4.0),
       "conv": jnp.arange(24.0).reshape(1, 2, 3, 4)}  # (kh, kw, in, out)
  out, _ = lookahead_lib.centralize_fan_in().update(g, optax.EmptyState())
  # Each output unit (last axis) loses the mean of its fan-in.
  np.testing.assert_allclose(out["dense"],
                             g["dense"] - g["dense"].mean(0, keepdims=True))
  np.testing.assert_allclose(out["dense"].sum(0), 0.0, atol=1e-6)
  np.testing.assert_allclose(out["bias"], g["bias"])
  np.testing.assert_allclose(out["conv"].sum((0, 1, 2)), 0.0, atol=1e-5)
  assert float(jnp.abs(out["conv"]).max()) > 1.0
  conv_only, _ = lookahead_lib.centralize_fan_in(True).update(
      g, optax.EmptyState())
  np.testing.assert_allclose(conv_only["dense"], g["dense"])
  np.testing.assert_allclose(conv_only["conv"], out["conv"])


# --------------------------------------------------------------------------
# Without jit, dtypes and composition.
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name", ["lookahead", pytest.param("ranger", marks=pytest.mark.slow)])
def test_without_jit(x64, name):
  assert_same_with_and_without_jit(transforms.make(name, 0.05),
                                   steps=7)  # past a synchronisation


@pytest.mark.parametrize("name", ["lookahead", "ranger"])
@pytest.mark.parametrize(
    "dtype", [pytest.param(jnp.float32, marks=pytest.mark.slow),
              jnp.bfloat16])
def test_dtypes_and_chain(name, dtype):
  params = {k: jnp.asarray(v, dtype) for k, v in initial_params().items()}
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   transforms.make(name, weight_decay=1e-4))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: sum(jnp.sum(jnp.sin(x) ** 2)
                                   for x in jax.tree.leaves(p)))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(6):  # past a synchronisation (k = 5 and 6)
    params, state = step(params, state)
  for leaf in jax.tree.leaves((params, state)):
    if leaf.ndim:
      assert leaf.dtype == dtype
  la_state = lookahead_lib.find_state(state, lookahead_lib.LookaheadState)
  assert int(la_state.count) == 6
  chex.assert_tree_all_finite(params)


@pytest.mark.parametrize("name", ["sam", "gsam", "lookahead", "ranger",
                                  "lbfgs", "adahessian", "sophia", "svrg"])
def test_update_returns_the_state_types_init_gave(name):
  """Same avals before and after an update, else a jitted step recompiles."""
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  tx = transforms.make(name)
  loss_fn = lambda p: (jnp.sum(jnp.sin(p["w"]) ** 2) + jnp.sum(p["b"] ** 2),
                       None)

  def update(state, key):
    value, grads = jax.value_and_grad(lambda p: loss_fn(p)[0])(params)
    extras = transforms.build_extras(transforms.get(name).needs, loss_fn,
                                     value=value, key=key, params=params)
    return tx.update(grads, state, params, **extras)[1]

  state = tx.init(params)
  after = jax.eval_shape(update, state, jax.random.key(0))
  assert jax.tree.structure(after) == jax.tree.structure(state)
  for before_leaf, after_leaf in zip(jax.tree.leaves(state),
                                     jax.tree.leaves(after)):
    assert jax.typeof(before_leaf) == jax.typeof(after_leaf)
