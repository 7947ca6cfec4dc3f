"""Plain 2-D convolutions whose gradients XLA:CPU runs fast.

``y = conv(x, W)`` with ``x`` NHWC, ``W`` HWIO (``kh × kw × C_in × C_out``),
strides ``s`` and explicit padding ``((p_lo, p_hi), ...)``:
``y[n, i, j, o] = Σ_{a, b, c} x̄[n, i·s_h + a, j·s_w + b, c] · W[a, b, c, o]``
with ``x̄`` the zero-padded input. Its two gradients, for ``g = ∂L/∂y``:

* input:  ``∂L/∂x = conv(dilate_s(g), flip(W)ᵀ)`` with padding
  ``(kh − 1 − p_lo, H − 1 + p_lo − (H_out − 1)·s)`` per axis, ``flip`` reversing
  both window axes and ``ᵀ`` swapping ``I`` and ``O``;
* kernel: ``∂L/∂W[a, b, c, o] = Σ_{n, i, j} x̄[n, i·s + a, j·s + b, c] · g[n, i, j, o]``.

A dilated (atrous) kernel reads ``x̄[n, i·s + a·d, j·s + b·d, c]`` instead;
every form below takes the dilation ``d`` (DeepLab's convolutions).

JAX differentiates a convolution into convolutions whose *batch and feature
dimensions are swapped* (``lhs = "CHWN"`` for the kernel gradient). XLA:CPU
rewrites those into its runtime's layout only in some computations: inside
``lax.scan`` (the engine's scanned epoch) they compile to a naive loop, many
times slower than the forward convolution (measurements:
``benchmarks/README.md``, "CPU kernels: why and measurements").
:func:`conv2d` instead states its gradients explicitly (``jax.custom_vjp``),
every convolution in the standard layout with the transposes written out,
and picks per layer the form that was fastest there:

* forward, and the input gradient at stride 1: one standard convolution;
* the input gradient at stride > 1: ``g·Wᵀ`` scattered back by the
  transpose of im2col (a convolution over the dilated ``g`` would multiply
  mostly zeros);
* the kernel gradient: one matrix product ``patchesᵀ·g`` (im2col) for
  1 × 1 kernels, strides > 1 and narrow inputs (``C_in < 16``, the stem),
  else one standard convolution with ``C_in`` as the batch axis and the
  batch as the feature axis (one rule for every map size: where im2col is
  faster, the difference did not show in a whole model's step).

A transposed convolution whose windows tile its output (kernel size =
strides, no padding; U-Net's 2 × 2, stride 2) is :func:`tiled_conv_transpose`,
one matrix product and a depth-to-space reshape, which XLA:CPU
differentiates into matrix products (its transposed-convolution gradients
are the naive loops above).

A ``custom_vjp`` function cannot be differentiated in forward mode
(``jax.jvp``), which Hessian-vector products use (forward-over-reverse:
``transforms.hvp``, ``analysis.hessian.hvp``). Inside
:func:`forward_mode_autodiff` the same convolution is computed as im2col
plus one matrix product instead, which JAX differentiates in both modes
into matrix products; those callers enter it. Gradients are equal to
``jax.grad`` of ``lax.conv_general_dilated`` up to float32 rounding
(tests/kernels/test_convolution.py).
"""
import contextlib
import functools
from typing import Optional, Sequence

import jax
from jax import lax
from jax._src import config as _jax_config
import jax.numpy as jnp

NHWC = ("NHWC", "HWIO", "NHWC")
NARROW_INPUT = 16  # C_in below which the kernel gradient uses im2col

# A JAX configuration state rather than a Python flag: its value is part of
# the keys of JAX's jit and tracing caches, so a function jitted (or traced)
# outside forward_mode_autodiff() is traced again inside it. (jax._src.config
# is JAX's own module for such states; there is no public constructor.)
_FORWARD_MODE = _jax_config.bool_state(
    "optbench_conv_forward_mode", False,
    help="optbench_jax: build CPU convolutions from im2col so that they "
    "support forward-mode autodiff (set by forward_mode_autodiff()).",
    include_in_jit_key=True, include_in_trace_context=True)

Padding = Sequence[Sequence[int]]


@contextlib.contextmanager
def forward_mode_autodiff():
  """While tracing inside it, :func:`conv2d` supports ``jax.jvp``.

  Wrap the *tracing* of forward-mode derivatives of a model (e.g.
  ``jax.jvp(jax.grad(loss), ...)``): convolutions are then built from im2col
  and matrix products, which JAX differentiates in every mode.
  """
  with _FORWARD_MODE(True):
    yield


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: Padding, dilation: tuple[int, int] = (1, 1),
           precision: Optional[lax.Precision] = None) -> jax.Array:
  """NHWC × HWIO → NHWC convolution with explicit ``((lo, hi), (lo, hi))``
  padding and kernel ``dilation`` (atrous; ``rhs_dilation`` in XLA).

  Outside :func:`forward_mode_autodiff` its gradient is the hand-written
  one of the module docstring; inside, it is im2col plus a matrix product.
  """
  strides = tuple(int(s) for s in strides)
  dilation = tuple(int(d) for d in dilation)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if _FORWARD_MODE.value:
    return im2col_conv2d(x, kernel, strides, padding, dilation, precision)
  return _conv2d(x, kernel, strides, padding, dilation, precision)


def window_slices(x, kernel_size, strides, dilation=(1, 1)) -> list:
  """The ``kh·kw`` strided slices ``x[:, a·d_h + i·s_h, b·d_w + j·s_w]`` of an
  (already padded) NHWC ``x``, one ``(N, H_out, W_out, C)`` array per window
  position ``(a, b)`` in row-major order (im2col's and max pooling's)."""
  kh, kw = kernel_size
  sh, sw = strides
  dh, dw = dilation
  h_out = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
  w_out = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
  return [x[:, a * dh:a * dh + (h_out - 1) * sh + 1:sh,
            b * dw:b * dw + (w_out - 1) * sw + 1:sw]
          for a in range(kh) for b in range(kw)]


def im2col(x, kernel_size, strides, padding, dilation=(1, 1)):
  """NHWC patches ``(N, H_out, W_out, kh·kw·C)`` ordered like an HWIO kernel."""
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  slices = window_slices(x, kernel_size, strides, dilation)
  return slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)


def im2col_conv2d(x, kernel, strides, padding, dilation=(1, 1),
                  precision=None):
  """The convolution as im2col patches times the ``(kh·kw·C_in, C_out)`` kernel."""
  patches = im2col(x, kernel.shape[:2], strides, padding, dilation)
  return jnp.dot(patches, kernel.reshape(-1, kernel.shape[-1]),
                 precision=precision)


@functools.lru_cache(maxsize=None)
def _library_conv(strides, padding, dilation, precision):
  """``(lhs, rhs) ↦ lax.conv_general_dilated`` (NHWC, HWIO), batched per run.

  Under ``vmap`` with a batched kernel (the engine's runs, each with its own
  weights) JAX would compute one grouped convolution, which XLA:CPU runs
  slower than the same convolutions one by one; so a batched kernel is a
  ``lax.map`` loop, and a batch of inputs only is folded into the batch
  axis.
  """
  @jax.custom_batching.custom_vmap
  def conv(lhs, rhs):
    return lax.conv_general_dilated(lhs, rhs, strides, padding,
                                    rhs_dilation=dilation,
                                    dimension_numbers=NHWC,
                                    precision=precision)

  @conv.def_vmap
  def conv_vmap(axis_size, in_batched, lhs, rhs):
    lhs_batched, rhs_batched = in_batched
    if not rhs_batched:
      folded = lhs.reshape(-1, *lhs.shape[2:])
      out = conv(folded, rhs)
      return out.reshape(axis_size, -1, *out.shape[1:]), True
    if lhs_batched:
      return lax.map(lambda pair: conv(*pair), (lhs, rhs)), True
    return lax.map(lambda one: conv(lhs, one), rhs), True

  return conv


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv2d(x, kernel, strides, padding, dilation, precision):
  return _library_conv(strides, padding, dilation, precision)(x, kernel)


def _conv2d_fwd(x, kernel, strides, padding, dilation, precision):
  return (_conv2d(x, kernel, strides, padding, dilation, precision),
          (x, kernel))


def _conv2d_bwd(strides, padding, dilation, precision, residuals, g):
  x, kernel = residuals
  dx = input_gradient(g, kernel, x.shape, strides, padding, dilation,
                      precision)
  dk = kernel_gradient(x, g, kernel.shape, strides, padding, dilation,
                       precision)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def input_gradient(g, kernel, x_shape, strides, padding, dilation=(1, 1),
                   precision=None):
  """``∂L/∂x`` for ``g = ∂L/∂y`` (module docstring), standard layout only."""
  kh, kw, _, c_out = kernel.shape
  if strides == (1, 1):
    pads = tuple(((k - 1) * d - lo, size - 1 + lo - (out - 1))
                 for k, d, (lo, _), size, out in zip(
                     (kh, kw), dilation, padding, x_shape[1:3], g.shape[1:3]))
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    return _library_conv((1, 1), pads, dilation, precision)(g, flipped)
  patch_grads = jnp.dot(g, kernel.reshape(-1, c_out).T, precision=precision)
  to_patches = functools.partial(im2col, kernel_size=(kh, kw),
                                 strides=strides, padding=padding,
                                 dilation=dilation)
  transpose = jax.linear_transpose(
      to_patches, jax.ShapeDtypeStruct(x_shape, patch_grads.dtype))
  return transpose(patch_grads)[0]


def kernel_gradient(x, g, kernel_shape, strides, padding, dilation=(1, 1),
                    precision=None):
  """``∂L/∂W`` for ``g = ∂L/∂y`` (module docstring), standard layout only."""
  kh, kw, c_in, c_out = kernel_shape
  if (kh, kw) == (1, 1) or strides != (1, 1) or c_in < NARROW_INPUT:
    patches = im2col(x, (kh, kw), strides, padding, dilation)
    grad = jnp.tensordot(patches, g, axes=((0, 1, 2), (0, 1, 2)),
                         precision=precision)
    return grad.reshape(kernel_shape)
  # Batch ↔ feature: x as (C_in, H, W, N) images, g as an (H_out, W_out, N,
  # C_out) kernel, window positions d apart (the dilation becomes the
  # stride); the output (C_in, kh, kw, C_out) is the kernel transposed.
  pads = tuple((lo, out + (k - 1) * d - size - lo)
               for k, d, (lo, _), size, out in zip(
                   (kh, kw), dilation, padding, x.shape[1:3], g.shape[1:3]))
  conv = _library_conv(dilation, pads, (1, 1), precision)
  grad = conv(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3))
  return grad.transpose(1, 2, 0, 3)


def tiled_conv_transpose(x: jax.Array, kernel: jax.Array,
                         precision: Optional[lax.Precision] = None
                         ) -> jax.Array:
  """The transposed convolution (NHWC, a ``(kh, kw, C_out, C_in)`` kernel,
  as ``flax.linen.ConvTranspose(transpose_kernel=True)`` stores it) with
  strides equal to the window and no padding: each input pixel writes its
  own ``kh × kw`` block,
  ``y[n, i·kh + a, j·kw + b, o] = Σ_c x[n, i, j, c] · K[a, b, o, c]``,
  one matrix product and a depth-to-space reshape."""
  kh, kw, c_out, c_in = kernel.shape
  n, h, w, _ = x.shape
  matrix = kernel.transpose(3, 0, 1, 2).reshape(c_in, -1)
  blocks = jnp.dot(x, matrix, precision=precision)
  return blocks.reshape(n, h, w, kh, kw, c_out).transpose(
      0, 1, 3, 2, 4, 5).reshape(n, h * kh, w * kw, c_out)
