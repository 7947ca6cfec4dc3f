"""Shared layers: initialisation schemes and what curvature methods need.

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

Curvature statistics. ``Dense`` and ``Conv`` record their input with
``sow("kfac_inputs", "inputs", x)`` and pass their pre-activation output
through ``perturb("outputs", y)``, so that the gradient of the loss with
respect to the zero "perturbations" collection is the gradient with respect to
the layer's output. Both are no-ops unless the caller makes ``kfac_inputs``
mutable or passes ``perturbations``: the model's outputs and cost are
unchanged for every other optimizer (as in kfac-jax, curvature estimation
never changes the model). The collections mirror the parameter tree:
``params[path] = {"kernel", "bias"}`` pairs with
``kfac_inputs[path]["inputs"] = (x,)`` and ``perturbations[path]["outputs"]``.
A ``Conv`` also records ``kfac_inputs[path]["geometry"] = (ConvGeometry,)``,
how its inputs map to its kernel; a plain 2-D ``Conv`` records its im2col
patches ``(N, H_out, W_out, kh·kw·C_in)`` (ordered like the flattened HWIO
kernel, ``geometry.patches`` true) instead of ``x``.
"""
import math
from typing import Any, Optional

import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.errors import OptBenchError
from optbench_jax.models import convolution

KFAC_INPUTS = "kfac_inputs"
PERTURBATIONS = "perturbations"
INITS = ("torch", "flax")
Initializer = Any


def at_least_float32(x):
  """``x`` in float32, or in its own dtype if wider (float64 stays float64):
  logits and attention scores of a bfloat16 model, never lowered."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


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


@struct.dataclass
class ConvGeometry:
  """How a convolution's recorded inputs map to its kernel (static only).

  A pytree without leaves (every field is static), so it passes through
  ``jit``, ``vmap`` and tree maps of the statistics unchanged.

  Attributes:
    kernel_size: the window, one entry per spatial axis.
    strides: per spatial axis.
    padding: ``((low, high), ...)`` per spatial axis, or Flax's padding
      string when it is not ``"SAME"``/``"VALID"`` (``"CIRCULAR"``, ...).
    input_dilation: per spatial axis (``lhs_dilation``).
    kernel_dilation: per spatial axis (``rhs_dilation``).
    feature_group_count: groups of input channels.
    patches: whether the recorded inputs already are the patches
      ``(N, *out_spatial, prod(kernel_size)·C_in)`` in kernel order.
  """
  kernel_size: tuple = struct.field(pytree_node=False)
  strides: tuple = struct.field(pytree_node=False)
  padding: Any = struct.field(pytree_node=False)
  input_dilation: tuple = struct.field(pytree_node=False)
  kernel_dilation: tuple = struct.field(pytree_node=False)
  feature_group_count: int = struct.field(pytree_node=False, default=1)
  patches: bool = struct.field(pytree_node=False, default=False)


class Conv(_SchemeParams, nn.Conv):
  """``flax.linen.Conv`` that exposes its input and output-gradient.

  On the CPU backend, plain 2-D convolutions are
  :func:`convolution.conv2d`, whose gradients are written in the layout
  XLA:CPU runs fast (JAX's own are up to 100× slower inside ``lax.scan``;
  see :mod:`optbench_jax.models.convolution`). Parameters (``kernel`` HWIO,
  ``bias``) and results are the same as ``nn.Conv``'s; on GPU/TPU the
  library convolution (cuDNN) is used.
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
    if _cpu_plain_2d(self, inputs):
      outputs = self._cpu_call(inputs)
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

  def _cpu_call(self, inputs):
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


def _cpu_plain_2d(conv, inputs) -> bool:
  return (jax.default_backend() == "cpu"
          and _plain_2d(conv, inputs, kernel_dilation=True))


def max_pool(x, window: tuple, strides: Optional[tuple] = None,
             padding: Any = "VALID"):
  """``flax.linen.max_pool`` on NHWC inputs, differentiated fast on the CPU.

  ``y[n, i, j, c] = max_{a, b} x̄[n, i·s_h + a, j·s_w + b, c]`` with ``x̄``
  padded by −∞. Its gradient sends ``∂L/∂y`` to the *first* maximum of each
  window in row-major order, as XLA's ``select_and_scatter`` (and PyTorch's
  ``max_pool2d``) do, and a NaN in a window propagates to its output. On the
  CPU backend it is built from the ``kh·kw`` strided slices of ``x̄``: the
  output is their running maximum, and each slice contributes where it is
  the first to attain it (masks under ``stop_gradient``), so JAX
  differentiates it (in both modes) into element-wise selects. XLA:CPU's
  ``select_and_scatter`` is 5–10× slower than that (2-core CPU, jaxlib
  0.10.2: 24.5 against 4.0 ms for ReLU + 2 × 2 pooling of a 128 × 28 × 28 × 32
  batch, forward and backward); results and gradients are identical.
  """
  strides = window if strides is None else strides
  if jax.default_backend() != "cpu" or x.ndim != 4:
    return nn.max_pool(x, window, strides=strides, padding=padding)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x.shape[1:3], window, strides,
                                      padding.upper())
  padding = _explicit_padding(padding, 2)
  if any(lo or hi for lo, hi in padding):
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  parts = convolution.window_slices(x, window, strides)
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


def layer_statistics(apply_fn, loss_of_outputs, params):
  """Per-layer inputs and output-gradients for Kronecker-factored curvature.

  Args:
    apply_fn: ``apply_fn(variables, mutable) -> (outputs, mutated)``, the model
      on the current mini-batch; ``variables`` holds ``"params"`` and possibly
      ``"perturbations"``, the caller adds any other collections (batch
      statistics) itself.
    loss_of_outputs: ``outputs -> scalar`` mini-batch loss (mean over the
      valid examples).
    params: the parameters.

  Returns:
    ``{"inputs": tree, "output_grads": tree}`` where, for each capturing layer
    at path ``P`` (the same path as its parameters), ``inputs[P]["inputs"]``
    is a one-element tuple holding the layer input ``x`` (a plain 2-D
    convolution's patches), ``inputs[P]["geometry"]`` a one-element tuple
    holding a convolution's :class:`ConvGeometry`, and
    ``output_grads[P]["outputs"]`` is ``∂ loss / ∂ y`` for the layer output
    ``y`` (the gradient of the *mean* loss: multiply by the batch size for
    per-example gradients).
  """
  _, captured = apply_fn({"params": params}, [KFAC_INPUTS, PERTURBATIONS])
  zeros = captured[PERTURBATIONS]

  def loss_of_perturbations(perturbations):
    outputs, _ = apply_fn({"params": params, PERTURBATIONS: perturbations}, [])
    return loss_of_outputs(outputs)

  return {"inputs": captured[KFAC_INPUTS],
          "output_grads": jax.grad(loss_of_perturbations)(zeros)}


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
    if not _cpu_depth_to_space(self, inputs):
      return super().__call__(inputs)
    # Windows that tile the output (kernel = strides, no padding): each input
    # pixel writes its own kh×kw block, y[n, i·kh + a, j·kw + b, o] =
    # Σ_c x[n, i, j, c] · K[a, b, o, c]; one matrix product and a
    # depth-to-space reshape, which XLA:CPU differentiates fast (its
    # transposed-convolution gradients run as naive loops inside lax.scan).
    kh, kw = self.kernel_size
    in_features = inputs.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, self.features, in_features), self.param_dtype)
    inputs, kernel = nn.dtypes.promote_dtype(inputs, kernel, dtype=self.dtype)
    n, h, w, _ = inputs.shape
    matrix = kernel.transpose(3, 0, 1, 2).reshape(in_features, -1)
    blocks = jnp.dot(inputs, matrix, precision=self.precision)
    outputs = blocks.reshape(n, h, w, kh, kw, self.features).transpose(
        0, 1, 3, 2, 4, 5).reshape(n, h * kh, w * kw, self.features)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,),
                        self.param_dtype)
      outputs = outputs + jnp.asarray(bias, outputs.dtype)
    return outputs


def _cpu_depth_to_space(conv, inputs) -> bool:
  """A transposed 2-D convolution whose windows tile its output."""
  window = _tuple(conv.kernel_size, 1)
  return (jax.default_backend() == "cpu" and inputs.ndim == 4
          and len(window) == 2 and conv.transpose_kernel
          and conv.mask is None and _tuple(conv.strides, 2) == window
          and _tuple(conv.kernel_dilation, 2) == (1, 1)
          and isinstance(conv.padding, str)
          and conv.padding.upper() == "VALID")
