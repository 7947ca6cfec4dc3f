"""The CPU convolution and max-pooling: same values and gradients as JAX's.

``convolution.conv2d`` states its gradients by hand (standard-layout
convolutions, im2col products); ``layers.max_pool`` builds pooling from
strided slices (``pooling.max_pool_2d``; the layer tests here select the own
kernels with ``select.use("cpu")``, whatever ``OPTBENCH_KERNELS`` says).
Both must equal ``lax.conv_general_dilated`` / ``nn.max_pool`` and their
JAX derivatives: in float64 to 1e-13 relative (the forms sum in different
orders), pooling exactly (it only selects). Geometries
cover every branch: the stem (narrow input), 3×3 stride 1, stride 2 with
even and odd sizes, 1×1 stride 2, a rectangular kernel without
padding, a 7×7 stride-2 stem, asymmetric padding and dilated (atrous)
kernels, as DeepLab's.
"""
import os
import re
import subprocess
import sys
import types
import warnings

import chex
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import xla_cpu
from optbench_jax.kernels import convolution, select
from optbench_jax.nn import layers


@pytest.fixture
def own_kernels():
  """The layers use the project's kernels (the CPU default) in the test."""
  with select.use("cpu"):
    yield

GEOMETRIES = {
    # name: (x shape, kernel shape, strides, padding)
    "stem": ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1))),
    "3x3": ((2, 16, 16, 20), (3, 3, 20, 4), (1, 1), ((1, 1), (1, 1))),
    "3x3_stride2_odd": ((2, 9, 9, 20), (3, 3, 20, 4), (2, 2), ((1, 1), (1, 1))),
    "3x3_stride2_even": ((2, 10, 10, 20), (3, 3, 20, 4), (2, 2),
                         ((1, 1), (1, 1))),
    "1x1_stride2": ((2, 9, 8, 20), (1, 1, 20, 4), (2, 2), ((0, 0), (0, 0))),
    "3x2_valid": ((2, 18, 17, 20), (3, 2, 20, 4), (1, 1), ((0, 0), (0, 0))),
    "7x7_stride2": ((2, 11, 11, 17), (7, 7, 17, 5), (2, 2), ((3, 3), (3, 3))),
    "asymmetric": ((2, 16, 17, 20), (3, 3, 20, 4), (1, 1), ((2, 0), (0, 1))),
    "asymmetric_stride": ((2, 9, 9, 20), (3, 3, 20, 4), (1, 2),
                          ((2, 0), (0, 1))),
    "dilated": ((2, 16, 16, 20), (3, 3, 20, 4), (1, 1), ((2, 2), (2, 2)),
                (2, 2)),
    "dilated_stride2": ((2, 15, 16, 20), (3, 3, 20, 4), (2, 2),
                        ((3, 3), (3, 3)), (3, 3)),
    "dilated_asymmetric": ((2, 16, 17, 20), (3, 2, 20, 4), (1, 1),
                           ((3, 1), (0, 2)), (2, 3)),
}


def _reference(x, kernel, strides, padding, dilation=(1, 1)):
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  rhs_dilation=dilation,
                                  dimension_numbers=convolution.NHWC)


def _problem(name, seed=0):
  """``x, kernel, ours, reference`` for a geometry: the losses
  ``Σ sin(conv(x, kernel))·weights`` with ``conv2d`` and with XLA's
  convolution (fixed random weights)."""
  x_shape, k_shape, strides, padding, *dilation = GEOMETRIES[name]
  dilation = tuple(dilation[0]) if dilation else (1, 1)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(x_shape))
  kernel = jnp.asarray(rng.standard_normal(k_shape))
  weights = jnp.asarray(rng.standard_normal(
      _reference(x, kernel, strides, padding, dilation).shape))

  def ours(x, kernel):
    return jnp.sum(jnp.sin(convolution.conv2d(x, kernel, strides, padding,
                                              dilation)) * weights)

  def reference(x, kernel):
    return jnp.sum(jnp.sin(_reference(x, kernel, strides, padding, dilation))
                   * weights)

  return x, kernel, ours, reference


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_values_and_gradients_equal_jax(x64, name, jit):
  x, kernel, ours, reference = _problem(name)
  value_and_grad = jax.value_and_grad(ours, (0, 1))
  value, grads = (jax.jit(value_and_grad) if jit else value_and_grad)(
      x, kernel)
  value_ref, grads_ref = jax.value_and_grad(reference, (0, 1))(x, kernel)
  chex.assert_trees_all_close(value, value_ref, rtol=1e-13, atol=1e-11)
  chex.assert_trees_all_close(grads, grads_ref, rtol=1e-13, atol=1e-11)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, grads_ref)


@pytest.mark.parametrize("name", ["3x3", "3x3_stride2_odd", "1x1_stride2",
                                  "dilated"])
def test_forward_mode_inside_the_switch_equals_jax(x64, name):
  """``jax.jvp(jax.grad(·))`` (Hessian-vector products) works inside
  ``forward_mode_autodiff()`` and equals the reference; outside it JAX
  refuses, since the fast form is a ``custom_vjp``."""
  x, kernel, ours, reference = _problem(name)
  tangents = (jnp.cos(x), jnp.cos(kernel))

  def hvp(loss):
    return jax.jvp(jax.grad(loss, (0, 1)), (x, kernel), tangents)[1]

  with convolution.forward_mode_autodiff():
    ours_hvp = hvp(ours)
  chex.assert_trees_all_close(ours_hvp, hvp(reference), rtol=1e-13,
                              atol=1e-11)
  with pytest.raises(TypeError, match="custom_vjp"):
    hvp(ours)


def test_a_function_jitted_outside_the_switch_is_retraced_inside(x64):
  """The switch is part of JAX's jit key: a loss jitted and called before
  (as ``analysis.restore``'s) still gets forward-mode convolutions."""
  x, kernel, ours, reference = _problem("3x3")
  jitted = jax.jit(ours)
  jitted(x, kernel)
  with convolution.forward_mode_autodiff():
    hv = jax.jvp(jax.grad(jitted, 1), (x, kernel), (x, kernel))[1]
  expected = jax.jvp(jax.grad(reference, 1), (x, kernel), (x, kernel))[1]
  chex.assert_trees_all_close(hv, expected, rtol=1e-13, atol=1e-11)


@pytest.mark.parametrize("axes", [(0, 0), (0, None), (None, 0)],
                         ids=["both", "inputs", "kernels"])
@pytest.mark.parametrize("name", ["3x3", "3x3_stride2_odd", "dilated"])
def test_vmap_equals_jax(x64, name, axes):
  """Runs vmapped with their own kernels (a loop), inputs only (folded into
  the batch), kernels only (a loop): per-run gradients as JAX's."""
  x, kernel, ours, reference = _problem(name)
  xs = jnp.stack([x, 2 * x, -x]) if axes[0] == 0 else x
  kernels = jnp.stack([kernel, -kernel, kernel ** 2]) if axes[1] == 0 else kernel
  got = jax.jit(jax.vmap(jax.value_and_grad(ours, (0, 1)), axes))(xs, kernels)
  expected = jax.vmap(jax.value_and_grad(reference, (0, 1)), axes)(xs,
                                                                     kernels)
  chex.assert_trees_all_close(got, expected, rtol=1e-13, atol=1e-11)


def test_scanned_gradient_uses_standard_layout_convolutions_only():
  """The point of the module: inside ``lax.scan`` every convolution of the
  forward and backward pass is NHWC × HWIO → NHWC (JAX's own kernel
  gradient swaps the batch and feature dimensions, which XLA:CPU runs as a
  naive loop there)."""
  x, kernel, ours, reference = _problem("3x3")

  def scanned(loss):
    def body(carry, _):
      grads = jax.grad(loss, (0, 1))(*carry)
      return jax.tree.map(lambda p, g: p - 1e-3 * g, carry, grads), None
    return jax.jit(lambda *carry: lax.scan(body, carry, None, length=2)[0])

  def layouts(loss):
    text = scanned(loss).lower(x, kernel).as_text()
    return re.findall(r"dim_numbers = (\[[^\]]*\]x\[[^\]]*\]->\[[^\]]*\])",
                      text)

  standard = "[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]"
  ours_layouts = layouts(ours)
  assert len(ours_layouts) == 3          # forward, input and kernel gradient
  assert set(ours_layouts) == {standard}
  assert set(layouts(reference)) != {standard}   # what the module avoids


# ---------------------------------------------------------------- max pool

POOLS = [((2, 7, 9, 3), (2, 2), (2, 2), "VALID"),
         ((2, 9, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
         ((2, 8, 8, 3), (3, 3), (1, 1), "SAME"),
         ((2, 8, 8, 3), (2, 2), (2, 2), "SAME")]


@pytest.mark.parametrize("shape, window, strides, padding", POOLS)
def test_max_pool_equals_flax_with_ties(own_kernels, shape, window, strides,
                                        padding):
  """Integer-valued inputs (many ties): values and gradients exactly equal
  to ``nn.max_pool``'s (``select_and_scatter``: the first maximum in
  row-major window order gets the gradient)."""
  x = jnp.asarray(np.random.default_rng(1).integers(0, 3, shape), jnp.float32)
  expected = nn.max_pool(x, window, strides, padding)
  cotangent = jnp.arange(expected.size, dtype=jnp.float32).reshape(
      expected.shape)

  def grad(pool):
    return jax.grad(lambda v: jnp.sum(pool(v, window, strides, padding)
                                      * cotangent))(x)

  np.testing.assert_array_equal(layers.max_pool(x, window, strides, padding),
                                expected)
  np.testing.assert_array_equal(jax.jit(grad, static_argnums=0)(
      layers.max_pool), grad(nn.max_pool))


def test_max_pool_propagates_nan_in_a_large_array(own_kernels):
  """XLA:CPU's fused reductions drop a NaN from ``nn.max_pool`` over this
  array (tests/train/test_nan_detection.py); the slice form keeps it."""
  x = np.ones((32, 32, 32, 16), np.float32)
  x[5, 6, 7, 8] = np.nan
  out = jax.jit(lambda v: layers.max_pool(v, (2, 2), (2, 2)))(jnp.asarray(x))
  assert np.isnan(out).sum() == 1 and np.isnan(out[5, 3, 3, 8])


# ------------------------------------------------------------- XLA flags

def _flags_after_import(environment):
  code = ("import os, optbench_jax, optbench_jax.xla_cpu as x; "
          "print(x.applied()); print(os.environ.get('XLA_FLAGS', ''))")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(environment)
  lines = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout.splitlines()
  return lines[0], lines[1]


def test_import_sets_eigen_convolutions_and_keeps_user_flags():
  flag = f"--{xla_cpu.FLAG}={xla_cpu.VALUE}"
  unrolling = f"--{xla_cpu.EXTRA_OPTIONS}={xla_cpu.NO_UNROLLING}"
  outcome, flags = _flags_after_import({"JAX_PLATFORMS": "cpu"})
  assert outcome == f"applied {flag}; applied {unrolling}"
  assert flags == f"{flag} {unrolling}"
  user = "--xla_force_host_platform_device_count=1"
  outcome, flags = _flags_after_import({"JAX_PLATFORMS": "cpu",
                                        "XLA_FLAGS": user})
  assert flags == f"{user} {flag} {unrolling}"
  mine = f"--{xla_cpu.FLAG}=-reduce --{xla_cpu.EXTRA_OPTIONS}=x"
  outcome, flags = _flags_after_import({"JAX_PLATFORMS": "cpu",
                                        "XLA_FLAGS": mine})
  assert outcome == (f"kept the user's XLA_FLAGS setting of {xla_cpu.FLAG}; "
                     f"kept the user's XLA_FLAGS setting of "
                     f"{xla_cpu.EXTRA_OPTIONS}") and flags == mine


def test_several_cpu_devices_keep_ynnpack_convolutions(monkeypatch):
  """With several CPU devices Eigen convolutions can deadlock XLA:CPU's
  collectives (xla_cpu docstring): the flag is left off, and a warning is
  given when such devices appear after it was applied."""
  outcome, flags = _flags_after_import({
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert outcome.startswith("not applied: 4 CPU devices")
  assert xla_cpu.FLAG not in flags
  assert outcome.endswith(f"; applied --{xla_cpu.EXTRA_OPTIONS}="
                          f"{xla_cpu.NO_UNROLLING}")
  cpu = types.SimpleNamespace(platform="cpu")
  monkeypatch.setattr(xla_cpu, "_outcome", "applied --" + xla_cpu.FLAG)
  with pytest.warns(UserWarning, match="2 CPU devices"):
    xla_cpu.check_devices([cpu, cpu])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    xla_cpu.check_devices([cpu])
    monkeypatch.setattr(xla_cpu, "_outcome", "kept the user's setting")
    xla_cpu.check_devices([cpu, cpu])


def test_flag_lookup_in_jaxlib():
  assert xla_cpu._jaxlib_knows(xla_cpu.FLAG)
  assert not xla_cpu._jaxlib_knows("xla_cpu_no_such_flag_in_any_jaxlib")


# ------------------------------------------------------ transposed conv

@pytest.mark.parametrize("window", [(2, 2), (3, 2)])
def test_tiling_conv_transpose_equals_flax(x64, own_kernels, window):
  """``layers.ConvTranspose`` with windows that tile the output (U-Net's
  2×2, stride 2) is one matrix product and a depth-to-space reshape on the
  CPU: outputs and gradients equal ``nn.ConvTranspose``'s with the same
  parameters."""
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 4, 6)))
  ours = layers.ConvTranspose(3, window, strides=window, padding="VALID",
                              param_dtype=jnp.float64)
  flax_layer = nn.ConvTranspose(3, window, strides=window, padding="VALID",
                                transpose_kernel=True,
                                param_dtype=jnp.float64)
  params = ours.init(jax.random.key(0), x)
  chex.assert_trees_all_equal_shapes(params,
                                     flax_layer.init(jax.random.key(0), x))

  def loss(layer):
    return lambda p, v: jnp.sum(jnp.sin(layer.apply(p, v)))

  got = jax.jit(jax.value_and_grad(loss(ours), (0, 1)))(params, x)
  expected = jax.value_and_grad(loss(flax_layer), (0, 1))(params, x)
  chex.assert_trees_all_close(got, expected, rtol=1e-13, atol=1e-12)
