"""2-D max pooling from strided slices, differentiated into selects.

``y[n, i, j, c] = max_{a, b} x̄[n, i·s_h + a, j·s_w + b, c]`` with ``x̄``
padded by −∞. :func:`max_pool_2d` builds it from the ``kh·kw`` strided
slices of ``x̄`` (:func:`~optbench_jax.kernels.convolution.window_slices`):
the output is their running maximum, and each slice contributes where it is
the first to attain it (masks under ``stop_gradient``), so JAX
differentiates it, in both modes, into element-wise selects. Its gradient
sends ``∂L/∂y`` to the *first* maximum of each window in row-major order, as
XLA's ``select_and_scatter`` (and PyTorch's ``max_pool2d``) do, and a NaN in
a window propagates to its output: results and gradients are those of
``flax.linen.max_pool``. XLA:CPU runs ``select_and_scatter`` several times
slower than these selects (measurements: ``benchmarks/README.md``, "CPU
kernels: why and measurements").
"""
import jax
import jax.numpy as jnp

from optbench_jax.kernels.convolution import window_slices


def max_pool_2d(x: jax.Array, window: tuple, strides: tuple,
                padding: tuple) -> jax.Array:
  """Max pooling of NHWC ``x`` with explicit ``((lo, hi), (lo, hi))``
  padding (module docstring)."""
  if any(lo or hi for lo, hi in padding):
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  parts = window_slices(x, window, strides)
  top = parts[0]
  for part in parts[1:]:
    top = jnp.maximum(top, part)
  top = jax.lax.stop_gradient(top)
  outputs = jnp.zeros_like(top)
  taken = jnp.zeros(top.shape, bool)
  for part in parts:
    first = (part == top) & ~taken
    outputs = outputs + jnp.where(first, part, 0)
    taken = taken | first
  return jnp.where(taken, outputs, top)   # NaN windows: no part equals top
