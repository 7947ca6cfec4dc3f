"""Shared layers: initialisation schemes, curvature capture, kernel choice.

Initialisation. Every layer takes ``init_scheme`` (one of :data:`INITS`) and
leaves ``kernel_init``/``bias_init``/``embedding_init`` as None unless a model
overrides them; None means "the scheme's":

* ``"torch"`` (the default, as the source benchmark's PyTorch modules):
  dense and convolution kernels *and* biases uniform in ``±1/√fan_in``, with
  ``fan_in`` the kernel's input size (``in_features``, or ``kh·kw·C_in/groups``
  for a convolution), i.e. PyTorch's Kaiming-uniform with ``a=√5`` and its
  bias rule; embeddings ``N(0, 1)``;
* ``"flax"``: Flax's defaults (LeCun-normal kernels, zero biases,
  ``variance_scaling(1, "fan_in", "normal", out_axis=0)`` embeddings).

Batch norm (scale 1, shift 0) is the same under both.

Curvature statistics. ``Dense`` and ``Conv`` record their inputs and expose
their output-gradients for curvature methods (K-FAC), without changing their
outputs: :mod:`optbench_jax.nn.curvature`.

Kernels. ``Conv``, ``ConvTranspose`` and :func:`max_pool` compute Flax's
functions with the library's operations (``nn.Conv``, ``nn.ConvTranspose``,
``nn.max_pool``; cuDNN on a GPU) or with the project's own kernels
(:mod:`optbench_jax.kernels`), whose gradients XLA:CPU runs fast inside
``lax.scan``; :func:`optbench_jax.kernels.select.use_own_kernels` decides at
trace time (the CPU backend by default; ``OPTBENCH_KERNELS`` overrides).
Parameters and results are the same on both paths.
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.errors import OptBenchError
from optbench_jax.kernels import convolution, pooling
from optbench_jax.kernels.select import use_own_kernels
from optbench_jax.nn.curvature import KFAC_INPUTS, ConvGeometry

INITS = ("torch", "flax")
Initializer = Any


def at_least_float32(x):
  """``x`` in float32, or in its own dtype if wider (float64 stays float64):
  logits and attention scores of a bfloat16 model, never lowered."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


NEG = -1e9   # the logit of a position that cannot be chosen (padding)


def masked_logits(logits, mask):
  """``logits`` (at least float32) with :data:`NEG` where ``mask`` is False,
  e.g. pointer scores over right-padded positions."""
  return jnp.where(mask, at_least_float32(logits), NEG)


# -- initialisation schemes --------------------------------------------------
def check_init(init_scheme: str) -> str:
  if init_scheme not in INITS:
    raise OptBenchError(f"unknown initialisation {init_scheme!r}. "
                        f"Valid choices: {', '.join(INITS)}.")
  return init_scheme


def fan_in_uniform(fan_in: Optional[int] = None) -> Initializer:
  """Uniform in ``±1/√fan_in``; ``fan_in`` defaults to ``prod(shape[:-1])``."""

  def init(key, shape, dtype=jnp.float32):
    n = fan_in if fan_in is not None else math.prod(shape[:-1])
    bound = 1.0 / math.sqrt(n) if n > 0 else 0.0
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def scheme_initializer(init_scheme: str, name: str,
                       fan_in: Optional[int] = None) -> Initializer:
  """The scheme's initialiser of a ``kernel``, ``bias`` or ``embedding``.

  Args:
    init_scheme: one of :data:`INITS`.
    name: the parameter's name.
    fan_in: the layer's input size (for ``"torch"`` biases).

  Returns:
    A ``(key, shape, dtype) -> array`` initialiser.
  """
  torch = check_init(init_scheme) == "torch"
  if name == "kernel":
    return fan_in_uniform() if torch else nn.initializers.lecun_normal()
  if name == "bias":
    return fan_in_uniform(fan_in) if torch else nn.initializers.zeros_init()
  if name == "embedding":
    return (nn.initializers.normal(1.0) if torch else
            nn.initializers.variance_scaling(1.0, "fan_in", "normal",
                                             out_axis=0))
  raise ValueError(f"no {init_scheme!r} initialiser for parameter {name!r}")


class _SchemeParams:
  """Mixin: parameters whose initialiser is None follow ``init_scheme``.

  The bias's ``fan_in`` is read from the kernel created just before it (Flax's
  ``Dense`` and ``Conv`` create the kernel first), so grouped convolutions
  get ``kh·kw·C_in/groups`` as in PyTorch.
  """

  @nn.nowrap
  def param(self, name, init_fn, *init_args, **init_kwargs):
    if init_fn is None:
      if name == "bias":
        def init_fn(key, shape, dtype=jnp.float32):
          kernel = nn.unbox(self.get_variable("params", "kernel"))
          fan_in = math.prod(np.shape(kernel)[:-1])
          return scheme_initializer(self.init_scheme, name, fan_in)(
              key, shape, dtype)
      else:
        init_fn = scheme_initializer(self.init_scheme, name)
    return super().param(name, init_fn, *init_args, **init_kwargs)


class Dense(_SchemeParams, nn.Dense):
  """``flax.linen.Dense`` that exposes its input and output-gradient."""
  kernel_init: Optional[Initializer] = None
  bias_init: Optional[Initializer] = None
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, inputs):
    self.sow(KFAC_INPUTS, "inputs", inputs)
    return self.perturb("outputs", super().__call__(inputs))


class Embed(_SchemeParams, nn.Embed):
  """``flax.linen.Embed`` with the scheme's initialiser (torch: N(0, 1))."""
  embedding_init: Optional[Initializer] = None
  init_scheme: str = "torch"


class Conv(_SchemeParams, nn.Conv):
  """``flax.linen.Conv`` that exposes its input and output-gradient.

  With the own kernels (module docstring), plain 2-D convolutions (dilated
  ones included) are :func:`optbench_jax.kernels.convolution.conv2d`, whose
  gradients are written in the layout XLA:CPU runs fast inside
  ``lax.scan``; otherwise ``nn.Conv``'s library convolution. Parameters
  (``kernel`` HWIO, ``bias``) and results are the same as ``nn.Conv``'s.
  """
  kernel_init: Optional[Initializer] = None
  bias_init: Optional[Initializer] = None
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, inputs):
    if self.is_mutable_collection(KFAC_INPUTS):
      # KFC (Grosse & Martens 2016) needs the patches the kernel multiplies:
      # plain 2-D convolutions record them (N, H_out, W_out, kh·kw·C), the
      # others their input; both with the geometry that relates them.
      plain = _plain_2d(self, inputs)
      self.sow(KFAC_INPUTS, "inputs",
               self._patches(inputs) if plain else inputs)
      self.sow(KFAC_INPUTS, "geometry", self.geometry(inputs, plain))
    if use_own_kernels() and _plain_2d(self, inputs, kernel_dilation=True):
      outputs = self._own_call(inputs)
    else:
      outputs = super().__call__(inputs)
    return self.perturb("outputs", outputs)

  @nn.nowrap
  def geometry(self, inputs, patches: bool = False) -> ConvGeometry:
    """This layer's :class:`ConvGeometry` for (batched, NHWC) ``inputs``."""
    window = _tuple(self.kernel_size, 1)
    n = len(window)
    strides = _tuple(self.strides, n)
    input_dilation = _tuple(self.input_dilation, n)
    kernel_dilation = _tuple(self.kernel_dilation, n)
    padding = self.padding
    if isinstance(padding, str) and padding.upper() in ("SAME", "VALID"):
      spatial = [(s - 1) * d + 1 for s, d in zip(inputs.shape[-n - 1:-1],
                                                 input_dilation)]
      dilated = [(k - 1) * d + 1 for k, d in zip(window, kernel_dilation)]
      padding = tuple(tuple(p) for p in jax.lax.padtype_to_pads(
          spatial, dilated, strides, padding.upper()))
    elif not isinstance(padding, str):
      padding = _explicit_padding(padding, n)
    return ConvGeometry(window, strides, padding, input_dilation,
                        kernel_dilation, self.feature_group_count, patches)

  def _own_call(self, inputs):
    kh, kw = self.kernel_size
    in_features = inputs.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, in_features, self.features), self.param_dtype)
    inputs, kernel = nn.dtypes.promote_dtype(inputs, kernel, dtype=self.dtype)
    geometry = self.geometry(inputs)
    outputs = convolution.conv2d(inputs, kernel, geometry.strides,
                                 geometry.padding, geometry.kernel_dilation,
                                 self.precision)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,),
                        self.param_dtype)
      outputs = outputs + jnp.asarray(bias, outputs.dtype)
    return outputs

  def _patches(self, inputs):
    geometry = self.geometry(inputs)
    return convolution.im2col(inputs, geometry.kernel_size, geometry.strides,
                              geometry.padding)


def _tuple(value, n: int) -> tuple:
  if value is None:
    return (1,) * n
  return (value,) * n if isinstance(value, int) else tuple(value)


def _explicit_padding(padding, n: int) -> tuple:
  """``((low, high),) * n`` from an int or a sequence of ints / pairs."""
  if isinstance(padding, int):
    return ((padding, padding),) * n
  return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _plain_2d(conv, inputs, kernel_dilation: bool = False) -> bool:
  """An ungrouped, undilated, unmasked 2-D convolution on NHWC inputs
  (``kernel_dilation``: its kernel may be dilated)."""
  if inputs.ndim != 4 or conv.feature_group_count != 1 or conv.mask is not None:
    return False
  if len(_tuple(conv.kernel_size, 1)) != 2:
    return False
  if isinstance(conv.padding, str) and conv.padding.upper() not in ("SAME",
                                                                   "VALID"):
    return False
  dilations = [conv.input_dilation] + ([] if kernel_dilation
                                       else [conv.kernel_dilation])
  return all(_tuple(d, 2) == (1, 1) for d in dilations)


def max_pool(x, window: tuple, strides: Optional[tuple] = None,
             padding: Any = "VALID"):
  """``flax.linen.max_pool``; on NHWC inputs with the own kernels (module
  docstring) :func:`optbench_jax.kernels.pooling.max_pool_2d`, the same
  results and gradients (the first maximum of each window gets ``∂L/∂y``,
  as in XLA and PyTorch) built from element-wise selects, which XLA:CPU
  differentiates fast."""
  strides = window if strides is None else strides
  if x.ndim != 4 or not use_own_kernels():
    return nn.max_pool(x, window, strides=strides, padding=padding)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x.shape[1:3], window, strides,
                                      padding.upper())
  return pooling.max_pool_2d(x, window, strides,
                             _explicit_padding(padding, 2))


class BatchNorm(nn.Module):
  """Batch normalisation with PyTorch's running-statistics update.

  Training normalises with the batch mean and the biased batch variance and
  updates ``mean ← m·mean + (1−m)·μ_B``, ``var ← m·var + (1−m)·σ²_B·n/(n−1)``
  (the *unbiased* batch variance, as ``torch.nn.BatchNorm2d``; Flax's
  ``BatchNorm`` uses the biased one); evaluation uses the running statistics.
  ``momentum`` is Flax's (0.9 ⇔ PyTorch's 0.1). Variables are named as Flax's
  (``scale``, ``bias``; ``batch_stats``: ``mean``, ``var``).

  The output is ``y = (x − μ)·(γ/√(σ² + ε)) + β`` (Ioffe & Szegedy 2015,
  Algorithm 1, with the per-channel factor ``γ/√(σ² + ε)`` formed first).
  """
  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    running_mean = self.variable("batch_stats", "mean", jnp.zeros,
                                 (features,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,),
                                jnp.float32)
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    # Statistics in at least float32 (bfloat16 inputs), float64 if given.
    compute = jnp.result_type(x.dtype, self.dtype, jnp.float32)
    xc = x.astype(compute)
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xc, axes)
      var = jnp.mean(jnp.square(xc - mean), axes)
      if not self.is_initializing():
        n = x.size // features
        m = self.momentum
        running_mean.value = m * running_mean.value + (1 - m) * mean
        running_var.value = m * running_var.value + (1 - m) * var * (
            n / max(n - 1, 1))
    # One multiplier per channel, (x − μ)·(γ/√(σ² + ε)) + β: the same
    # function as ((x − μ)/√(σ² + ε))·γ + β up to float32 rounding, with one
    # full-size multiplication fewer (forward and backward).
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    return ((xc - mean) * multiplier + bias).astype(self.dtype)


class ConvTranspose(_SchemeParams, nn.ConvTranspose):
  """``flax.linen.ConvTranspose`` with the scheme's initialisers.

  ``transpose_kernel`` defaults to True: the layer is then the gradient of a
  convolution, as ``torch.nn.ConvTranspose2d``, and its kernel is
  ``(*window, features, in_features)``, so ``prod(shape[:-1])`` is
  ``kh·kw·C_out``, the fan-in PyTorch uses to initialise a transposed
  convolution (it reads ``weight.size(1)``, the output channels). The
  ``"torch"`` scheme hence gives PyTorch's bounds and ``"flax"`` LeCun-normal
  with the same fan-in. Curvature statistics are not recorded (optimizers
  that use them give this layer the plain gradient).
  """
  kernel_init: Optional[Initializer] = None
  bias_init: Optional[Initializer] = None
  init_scheme: str = "torch"
  transpose_kernel: bool = True

  @nn.compact
  def __call__(self, inputs):
    if not (use_own_kernels() and _tiles_output(self, inputs)):
      return super().__call__(inputs)
    kh, kw = self.kernel_size
    in_features = inputs.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, self.features, in_features), self.param_dtype)
    inputs, kernel = nn.dtypes.promote_dtype(inputs, kernel, dtype=self.dtype)
    outputs = convolution.tiled_conv_transpose(inputs, kernel, self.precision)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,),
                        self.param_dtype)
      outputs = outputs + jnp.asarray(bias, outputs.dtype)
    return outputs


def _tiles_output(conv, inputs) -> bool:
  """A transposed 2-D convolution whose windows tile its output (kernel =
  strides, no padding): :func:`optbench_jax.kernels.convolution.
  tiled_conv_transpose`."""
  window = _tuple(conv.kernel_size, 1)
  return (inputs.ndim == 4 and len(window) == 2 and conv.transpose_kernel
          and conv.mask is None and _tuple(conv.strides, 2) == window
          and _tuple(conv.kernel_dilation, 2) == (1, 1)
          and isinstance(conv.padding, str)
          and conv.padding.upper() == "VALID")
