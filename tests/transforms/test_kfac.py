"""K-FAC against kfac-jax, against a hand computation, and its contracts.

Reference settings (``kfac_jax.Optimizer``), aligned with ours:
``estimation_mode="fisher_empirical"`` (the gradients of the actual labels, as
our engine captures them), fixed damping / learning rate / momentum (no
adaptation of any of them), ``num_burnin_steps=0``, ``l2_reg=0``,
``curvature_ema = decay``, the same ``inverse_update_period``, and the
factored π damping (kfac-jax's default approximate inverse). Hyperparameter
mapping: kfac-jax's empirical estimator divides the per-example output
gradients by ``√n`` so that its output factor is ``Σ g gᵀ / n²`` (ours
``Σ g gᵀ / n``): its curvature is ``1/n`` times ours, hence kfac-jax with
``damping = λ / n`` and ``learning_rate = η / n`` takes our step with ``λ``
and ``η`` exactly (momentum ``μ`` is the same).

kfac-jax 0.0.8 predates jax 0.10, whose ``Primitive.get_bind_params`` returns
only the parameters; the ``kfac_jax_compat`` fixture patches the one helper of
kfac-jax's graph matcher that unpacks it (nothing else is changed).
"""
import functools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optbench_jax import transforms
from optbench_jax.errors import OptBenchError
from optbench_jax.nn import curvature, layers
from optbench_jax.transforms import kfac as kfac_lib
from optbench_jax.transforms import kfac_layers

STEPS = 20
BATCH = 8


class MLP(nn.Module):
  """5 → 4 (tanh) → 3, both layers with biases."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(layers.Dense(4)(x))
    return layers.Dense(3)(x)


class CNN(nn.Module):
  """The project's conv layouts: 3×3 padding 1, stride 1 and 2, no bias.

  kfac-jax finds convolutions by matching ``conv_general_dilated`` in the
  graph; on the CPU ``layers.Conv`` computes an im2col matrix product
  instead, so kfac-jax is given the same network built from ``nn.Conv``
  (same parameter tree, same function).
  """
  conv: Any = layers.Conv
  dense: Any = layers.Dense

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(self.conv(3, (3, 3), padding=1)(x))
    x = jnp.tanh(self.conv(4, (3, 3), strides=2, padding=1,
                           use_bias=False)(x))
    return self.dense(3)(x.reshape(x.shape[0], -1))


class Mixed(nn.Module):
  """A capturing layer, a plain flax Dense and a free scale parameter."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(layers.Dense(4)(x))
    x = nn.Dense(3, name="plain")(x)
    return x * self.param("scale", nn.initializers.ones, (3,))


def _masked_ce(logits, labels, mask):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(mask * ce) / jnp.sum(mask)


def _rel_err(a, b):
  errs = jax.tree_util.tree_map(
      lambda x, y: float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y))), a, b)
  return max(jax.tree_util.tree_leaves(errs))


def _batches(shape, n=STEPS, batch=BATCH, seed=0):
  rng = np.random.RandomState(seed)
  return [(jnp.asarray(rng.randn(batch, *shape)),
           jnp.asarray(rng.randint(0, 3, batch))) for _ in range(n)]


@functools.lru_cache(maxsize=None)
def _jitted_init(model_class):
  return jax.jit(model_class().init)


def _init(model, x, dtype=jnp.float64):
  params = _jitted_init(type(model))(jax.random.PRNGKey(0), x)["params"]
  return jax.tree_util.tree_map(lambda p: p.astype(dtype), params)


def _engine_step(model, tx):
  """One training step as the engine does it (extras via build_extras)."""
  needs = transforms.get("kfac").needs

  def step(params, state, x, y, mask):
    loss_fn = lambda p: (_masked_ce(model.apply({"params": p}, x), y, mask),
                         None)

    def kfac_stats_fn(p):
      apply_fn = lambda variables, mutable: model.apply(variables, x,
                                                        mutable=mutable)
      stats = curvature.layer_statistics(
          apply_fn, lambda out: _masked_ce(out, y, mask), p)
      return {**stats, "mask": mask}

    extras = transforms.build_extras(needs, loss_fn, params=params,
                                     kfac_stats_fn=kfac_stats_fn)
    grads = jax.grad(lambda p: loss_fn(p)[0])(params)
    updates, state = tx.update(grads, state, params, **extras)
    return optax.apply_updates(params, updates), state

  return step


@pytest.fixture
def kfac_jax_compat(monkeypatch):
  import jax.extend as jex
  from kfac_jax._src import tag_graph_matcher

  def eval_jaxpr_eqn(eqn, in_values):
    bind = eqn.primitive.get_bind_params(eqn.params)
    subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
    with jex.source_info_util.user_context(eqn.source_info.traceback):
      out = eqn.primitive.bind(*subfuns, *in_values, **params)
    return out if isinstance(out, list) else [out]

  monkeypatch.setattr(tag_graph_matcher, "eval_jaxpr_eqn", eval_jaxpr_eqn)


def _compare_with_kfac_jax(model, input_shape, *, lr, momentum, damping,
                           decay, period, reference_model=None):
  import kfac_jax

  batches = _batches(input_shape)
  params = _init(model, batches[0][0])
  reference_model = reference_model or model

  def loss(p, batch):
    x, y = batch
    logits = reference_model.apply({"params": p}, x)
    kfac_jax.register_softmax_cross_entropy_loss(logits, y)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  reference = kfac_jax.Optimizer(
      value_and_grad_func=jax.value_and_grad(loss), l2_reg=0.0,
      use_adaptive_learning_rate=False, use_adaptive_momentum=False,
      use_adaptive_damping=False, num_burnin_steps=0,
      estimation_mode="fisher_empirical", curvature_ema=decay,
      inverse_update_period=period, multi_device=False)
  # kfac-jax donates its parameter buffers: give it its own copy.
  ref_params = jax.tree_util.tree_map(jnp.copy, params)
  ref_state = reference.init(ref_params, jax.random.PRNGKey(1), batches[0])

  tx = transforms.make("kfac", learning_rate=lr, momentum=momentum,
                       damping=damping, decay=decay,
                       inverse_update_period=period)
  state = tx.init(params)
  step = jax.jit(_engine_step(model, tx))
  mask = jnp.ones(BATCH)
  worst = 0.0
  for batch in batches:
    ref_params, ref_state, _ = reference.step(
        ref_params, ref_state, jax.random.PRNGKey(2), batch=batch,
        learning_rate=jnp.asarray(lr / BATCH), momentum=jnp.asarray(momentum),
        damping=jnp.asarray(damping / BATCH))
    params, state = step(params, state, *batch, mask)
    err = _rel_err(params, ref_params)
    worst = max(worst, err)
    assert err <= 1e-10, err
  print(f"kfac vs kfac-jax max relative error over {STEPS} steps: {worst:.2e}")
  # The trajectory must have gone somewhere for the agreement to mean much.
  assert _rel_err(params, _init(model, batches[0][0])) > 0.05
  return worst


def test_matches_kfac_jax_mlp(x64, kfac_jax_compat):
  _compare_with_kfac_jax(MLP(), (5,), lr=0.1, momentum=0.5, damping=1e-2,
                         decay=0.9, period=3)


@pytest.mark.slow
def test_matches_kfac_jax_cnn(x64, kfac_jax_compat):
  # KFC: patches of a padding-1 stride-2 conv on a 5-wide input, a bias-free
  # conv, and kfac-jax's Conv2DTwoKroneckerFactored block.
  _compare_with_kfac_jax(CNN(), (6, 5, 2), lr=0.1, momentum=0.0,
                         damping=1e-2, decay=0.95, period=1,
                         reference_model=CNN(conv=nn.Conv, dense=nn.Dense))


def test_single_linear_layer_is_the_kronecker_natural_gradient_step(x64):
  """One update on a linear model = the damped K-factored step, by hand."""
  rng = np.random.RandomState(3)
  n, d_in, d_out = 6, 3, 2
  x, t = rng.randn(n, d_in), rng.randn(n, d_out)
  kernel, bias = rng.randn(d_in, d_out), rng.randn(d_out)
  lr, damping = 0.3, 0.05

  # By hand: ā = [x, 1], g_i = y_i − t_i (per-example gradient of ½‖y − t‖²).
  a_bar = np.concatenate([x, np.ones((n, 1))], axis=1)
  g = x @ kernel + bias - t
  a_fac, g_fac = a_bar.T @ a_bar / n, g.T @ g / n
  grad = a_bar.T @ g / n  # ∇ of the mean loss wrt [kernel; bias]
  pi = np.sqrt((np.trace(a_fac) / (d_in + 1)) / (np.trace(g_fac) / d_out))
  a_damped = a_fac + pi * np.sqrt(damping) * np.eye(d_in + 1)
  g_damped = g_fac + np.sqrt(damping) / pi * np.eye(d_out)
  # Solve the Kronecker system explicitly (row-major vec of a (d_in+1, d_out)
  # matrix: (A ⊗ G) vec(X) = vec(A X G)).
  step = np.linalg.solve(np.kron(a_damped, g_damped), grad.reshape(-1))
  expected = np.concatenate([kernel, bias[None]]) - lr * step.reshape(
      d_in + 1, d_out)

  model = layers.Dense(d_out)
  params = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}
  loss_of_outputs = lambda y: 0.5 * jnp.mean(jnp.sum((y - t) ** 2, axis=-1))
  apply_fn = lambda variables, mutable: model.apply(variables, x,
                                                    mutable=mutable)
  stats = curvature.layer_statistics(apply_fn, loss_of_outputs, params)
  stats["mask"] = jnp.ones(n)
  grads = jax.grad(lambda p: loss_of_outputs(model.apply({"params": p}, x)))(
      params)
  np.testing.assert_allclose(
      np.concatenate([grads["kernel"], grads["bias"][None]]), grad,
      rtol=1e-12)
  tx = kfac_lib.kfac(lr, momentum=0.0, damping=damping)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params,
                                  kfac_stats=stats)
  new = optax.apply_updates(params, updates)
  got = np.concatenate([new["kernel"], new["bias"][None]])
  np.testing.assert_allclose(got, expected, rtol=1e-11, atol=0)


@functools.lru_cache(maxsize=None)
def _mixed_model_step():
  """The Mixed model's jitted step (shared by two tests: one compilation)."""
  model = Mixed()
  tx = transforms.make("kfac", learning_rate=0.1, momentum=0.0,
                       inverse_update_period=1)
  return model, tx, jax.jit(_engine_step(model, tx))


def test_padding_rows_do_not_contribute(x64):
  """A batch with masked padding rows gives the steps of the valid rows."""
  model, tx, step = _mixed_model_step()
  batches = _batches((5,), n=3, batch=6, seed=5)
  params = _init(model, batches[0][0])
  mask = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
  padded, valid, full = params, params, params
  padded_state = valid_state = full_state = tx.init(params)
  for x, y in batches:
    padded, padded_state = step(padded, padded_state, x, y, mask)
    valid, valid_state = step(valid, valid_state, x[:4], y[:4], jnp.ones(4))
    full, full_state = step(full, full_state, x, y, jnp.ones(6))
    chex.assert_trees_all_close(padded, valid, rtol=1e-12, atol=1e-14)
  # Counting the padding rows would have changed the steps.
  assert _rel_err(full, valid) > 1e-3


def test_parameters_outside_capturing_layers_get_the_plain_gradient(x64):
  model, tx, step = _mixed_model_step()
  (x, y), = _batches((5,), n=1, batch=6)
  params = _init(model, x)
  new, _ = step(params, tx.init(params), x, y, jnp.ones(6))
  grads = jax.jit(jax.grad(lambda p: _masked_ce(
      model.apply({"params": p}, x), y, jnp.ones(6))))(params)
  lr = 0.1
  for name in ("plain", "scale"):
    expected = jax.tree_util.tree_map(lambda p, g: p - lr * g, params[name],
                                      grads[name])
    chex.assert_trees_all_close(new[name], expected, rtol=1e-13)
  preconditioned = params["Dense_0"]["kernel"] - lr * grads["Dense_0"]["kernel"]
  assert _rel_err(new["Dense_0"]["kernel"], preconditioned) > 1e-3


@pytest.mark.parametrize("window, strides, padding, dilation, size", [
    ((3, 3), 1, 1, 1, (7, 6)), ((3, 3), 2, 1, 1, (7, 6)),
    ((3, 3), 2, 1, 1, (8, 8)), ((1, 1), 2, "SAME", 1, (8, 7)),
    ((3, 3), 1, "VALID", 1, (7, 6)), ((4, 4), 1, "SAME", 1, (6, 6)),
    ((3, 3), 2, "VALID", 1, (9, 7)),
    # Shapes alone cannot tell these apart from other geometries: an odd
    # window with stride 2 and "SAME" padding pads (0, 1), which has the
    # shapes of symmetric padding 1; a dilated kernel those of a strided one.
    ((3, 3), 2, "SAME", 1, (8, 8)), ((3, 3), 1, 1, 2, (9, 8)),
    ((3, 3), 1, "SAME", 2, (7, 7)), ((3,), 2, "SAME", 1, (10,)),
])
def test_recorded_patches_reproduce_the_convolution(window, strides, padding,
                                                    dilation, size):
  """``layers.Conv``'s recorded inputs and geometry give patches that, times
  the flattened kernel, are its output.

  The cases are this project's layouts (flax ``padding=1``, i.e. symmetric,
  with stride 1 and 2 on odd and even sizes; 1×1 stride-2 shortcuts),
  ``"VALID"`` / ``"SAME"``, dilated kernels (recorded inputs, patches by
  ``lax``) and a 1-D convolution.
  """
  conv = layers.Conv(5, window, strides=strides, padding=padding,
                     kernel_dilation=dilation)
  x = np.random.RandomState(0).randn(2, *size, 3).astype(np.float32)
  variables = conv.init(jax.random.PRNGKey(0), x)
  y, captured = jax.jit(lambda v, x: conv.apply(
      {"params": v["params"]}, x,
      mutable=[curvature.KFAC_INPUTS]))(variables, x)
  (sown,), (geometry,) = (captured[curvature.KFAC_INPUTS][k]
                          for k in ("inputs", "geometry"))
  assert geometry.patches == (dilation == 1 and len(window) == 2)
  patches = kfac_layers.conv_inputs(sown, geometry, kfac_layers.Layer(
      (), (*window, 3, 5), True, jnp.float32), "conv", y.shape[1:-1])
  kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
  np.testing.assert_allclose(patches @ kernel.reshape(-1, 5) + bias, y,
                             rtol=1e-4, atol=1e-4)


def test_convolutions_without_a_usable_geometry_get_the_plain_gradient():
  """No recorded geometry, a grouped convolution: plain gradient, warned."""
  _, grads, stats = _conv_problem(jnp.float32, [1.0, 1.0])
  grouped = stats["inputs"]["conv"]["geometry"][0].replace(
      feature_group_count=2)
  tx = kfac_lib.scale_by_kfac()
  for geometry, match in ((None, "no geometry"), (grouped, "grouped")):
    stats["inputs"]["conv"].pop("geometry", None)
    if geometry is not None:
      stats["inputs"]["conv"]["geometry"] = (geometry,)
    with pytest.warns(UserWarning, match=match):
      updates, state = tx.update(grads, tx.init(grads), kfac_stats=stats)
    np.testing.assert_array_equal(updates["conv"]["kernel"],
                                  grads["conv"]["kernel"])
    assert float(jnp.abs(state.layers["conv"].a).max()) == 0


def test_missing_kfac_stats_is_a_clear_error():
  params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
  tx = transforms.make("kfac")
  with pytest.raises(OptBenchError, match="kfac_stats"):
    tx.update(params, tx.init(params), params)


def test_registry_entry():
  spec = transforms.get("kfac")
  assert spec.family == "second_order"
  assert spec.needs == frozenset({"kfac_stats"})
  with pytest.raises(ValueError, match="damping"):
    kfac_lib.scale_by_kfac(damping=0.0)


def _f32(tree):
  return jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), tree)


@functools.lru_cache(maxsize=None)
def _mlp_statistics():
  """float32 MLP parameters, gradients and kfac_stats on one batch."""
  model = MLP()
  (x, y), = _batches((5,), n=1, batch=4)
  params = _init(model, x, jnp.float32)
  x = x.astype(jnp.float32)
  apply_fn = lambda variables, mutable: model.apply(variables, x,
                                                    mutable=mutable)
  loss = lambda out: _masked_ce(out, y, jnp.ones(4))

  @jax.jit
  def statistics(p):
    stats = curvature.layer_statistics(apply_fn, loss, p)
    grads = jax.grad(lambda q: loss(model.apply({"params": q}, x)))(p)
    return {**stats, "mask": jnp.ones(4)}, grads

  return (params, *statistics(params))


class TestJitAndChain(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_update_in_a_chain(self):
    params, stats, grads = _mlp_statistics()
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     transforms.make("kfac", learning_rate=0.1,
                                     inverse_update_period=2))
    update = self.variant(tx.update)
    state = tx.init(params)
    for _ in range(2):  # the inverse cache is fresh, then reused
      updates, state = update(grads, state, params, kfac_stats=stats)
    chex.assert_tree_all_finite(updates)
    chex.assert_trees_all_equal_dtypes(updates, params)
    # Preconditioned (not the clipped gradient times -lr).
    clipped = optax.clip_by_global_norm(1.0).update(grads, None)[0]
    assert _rel_err(updates, jax.tree_util.tree_map(lambda g: -0.1 * g,
                                                    clipped)) > 1e-3


def _conv_problem(dtype, mask):
  """A conv layer (3×3, stride 2, padding 1) and a dense layer, with stats."""
  rng = np.random.RandomState(7)
  n = len(mask)
  arrays = {
      "x": rng.randn(n, 5, 4, 2), "dy": rng.randn(n, 3, 2, 4),
      "h": rng.randn(n, 6), "dz": rng.randn(n, 3),
      "conv_kernel": rng.randn(3, 3, 2, 4), "conv_bias": rng.randn(4),
      "dense_kernel": rng.randn(6, 3)}
  a = {k: jnp.asarray(v, dtype) for k, v in arrays.items()}
  grads = {"conv": {"kernel": a["conv_kernel"], "bias": a["conv_bias"]},
           "dense": {"kernel": a["dense_kernel"]}}
  geometry = curvature.ConvGeometry(
      kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
      input_dilation=(1, 1), kernel_dilation=(1, 1))
  stats = {"inputs": {"conv": {"inputs": (a["x"],), "geometry": (geometry,)},
                      "dense": {"inputs": (a["h"],)}},
           "output_grads": {"conv": {"outputs": a["dy"]},
                            "dense": {"outputs": a["dz"]}},
           "mask": jnp.asarray(mask, dtype)}
  return arrays, grads, stats


def test_conv_factors_are_kfc_by_hand(x64):
  """KFC factors of a padded, strided conv, from explicit numpy patches."""
  mask = [1.0, 1.0, 0.0]  # the last example is padding
  arrays, grads, stats = _conv_problem(jnp.float64, mask)
  damping = 1e-2
  tx = kfac_lib.scale_by_kfac(damping=damping)
  updates, state = jax.jit(tx.update)(grads, tx.init(grads), None,
                                      kfac_stats=stats)

  x = np.pad(arrays["x"], ((0, 0), (1, 1), (1, 1), (0, 0)))
  n_valid, locations = 2, 3 * 2
  a_hand = np.zeros((19, 19))
  g_hand = np.zeros((4, 4))
  for n in range(n_valid):
    for i in range(3):
      for j in range(2):
        patch = x[n, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :].reshape(-1)
        a_bar = np.append(patch, 1.0)
        a_hand += np.outer(a_bar, a_bar) / n_valid
        g = n_valid * arrays["dy"][n, i, j]
        g_hand += np.outer(g, g) / (n_valid * locations)
  conv = state.layers["conv"]
  np.testing.assert_allclose(conv.a, a_hand, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(conv.g, g_hand, rtol=1e-12, atol=1e-13)
  # The bias-free dense layer: no homogeneous coordinate.
  h, dz = arrays["h"][:n_valid], n_valid * arrays["dz"][:n_valid]
  np.testing.assert_allclose(state.layers["dense"].a, h.T @ h / n_valid,
                             rtol=1e-12)
  np.testing.assert_allclose(state.layers["dense"].g, dz.T @ dz / n_valid,
                             rtol=1e-12)
  pi = np.sqrt((np.trace(a_hand) / 19) / (np.trace(g_hand) / 4))
  grad = np.concatenate([arrays["conv_kernel"].reshape(18, 4),
                         arrays["conv_bias"][None]])
  expected = (np.linalg.inv(a_hand + pi * np.sqrt(damping) * np.eye(19))
              @ grad
              @ np.linalg.inv(g_hand + np.sqrt(damping) / pi * np.eye(4)))
  np.testing.assert_allclose(updates["conv"]["kernel"],
                             expected[:18].reshape(3, 3, 2, 4), rtol=1e-10)
  np.testing.assert_allclose(updates["conv"]["bias"], expected[18],
                             rtol=1e-10)


def test_bfloat16_keeps_dtypes_and_float32_factors():
  _, grads, stats = _conv_problem(jnp.bfloat16, [1.0, 1.0, 1.0])
  tx = transforms.make("kfac", learning_rate=0.1, weight_decay=1e-4)
  updates, state = jax.jit(tx.update)(grads, tx.init(grads), grads,
                                      kfac_stats=stats)
  chex.assert_tree_all_finite(updates)
  chex.assert_trees_all_equal_dtypes(updates, grads)
  (kfac_state,) = [
      x for x in jax.tree_util.tree_leaves(
          state, is_leaf=lambda x: isinstance(x, kfac_lib.ScaleByKfacState))
      if isinstance(x, kfac_lib.ScaleByKfacState)]
  assert set(kfac_state.layers) == {"conv", "dense"}
  factors = {leaf.dtype for leaf in jax.tree_util.tree_leaves(
      kfac_state.layers)}
  assert factors == {jnp.dtype(jnp.float32)}, factors
  assert float(optax.global_norm(_f32(updates))) > 0


def test_decompositions_run_per_run_under_the_engines_vmap():
  """KFAC's inverses under ``vmap`` over runs (what the engine does with
  ``--seeds``): eight batched inverses in one jit deadlocked XLA:CPU's
  thread pool (jax 0.10.2); ``sequential_on_cpu`` loops over the runs and
  gives each run's own inverse."""
  from optbench_jax.transforms.base import RUN_AXIS, sequential_on_cpu
  inv = sequential_on_cpu(lambda m: jnp.linalg.inv(m))
  eye = jnp.eye(64)
  mats = [jnp.stack([eye * (2.0 + i), eye * (3.0 + i)]) for i in range(8)]
  out = jax.jit(jax.vmap(lambda ms: [inv(m) for m in ms],
                         axis_name=RUN_AXIS))(mats)
  for i, o in enumerate(out):
    np.testing.assert_allclose(o[0], eye / (2.0 + i), rtol=1e-6)
    np.testing.assert_allclose(o[1], eye / (3.0 + i), rtol=1e-6)


def test_periodic_cond_stays_a_branch_under_the_engines_vmap():
  """``any_run`` makes a step-count predicate common to the vmapped runs, so
  ``lax.cond`` is not turned into a ``select`` running both branches."""
  from optbench_jax.transforms.base import RUN_AXIS, any_run

  def periodic(count, x):
    return jax.lax.cond(any_run(count % 10 == 0), jnp.linalg.inv,
                        lambda m: m, x)

  jaxpr = jax.make_jaxpr(jax.vmap(periodic, axis_name=RUN_AXIS))(
      jnp.zeros(2, jnp.int32), jnp.ones((2, 3, 3)))
  assert "cond" in [e.primitive.name for e in jaxpr.eqns]
  assert any_run(jnp.bool_(True))  # outside the engine: unchanged
  np.testing.assert_allclose(periodic(jnp.int32(10), 2 * jnp.eye(3)),
                             0.5 * jnp.eye(3))
