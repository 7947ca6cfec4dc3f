"""K-FAC's view of a model: its layers and their per-example statistics.

:func:`find_layers` finds the Dense and Conv layers in the ``kfac_inputs``
statistics the model sowed (see :mod:`optbench_jax.nn.curvature`);
:func:`layer_samples` turns one layer's recorded inputs (and, for
convolutions, its recorded geometry) and output gradients into the rows
``ā_i`` and ``g_i`` of its Kronecker factors; :func:`new_factors` forms
``A`` and ``G`` from them. Used by :mod:`optbench_jax.transforms.kfac`.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp

_NAME = "kfac"


class Layer(NamedTuple):
  path: tuple[str, ...]
  kernel_shape: tuple[int, ...]
  has_bias: bool
  dtype: Any

  @property
  def d_in(self) -> int:
    return math.prod(self.kernel_shape[:-1]) + int(self.has_bias)

  @property
  def d_out(self) -> int:
    return self.kernel_shape[-1]


def dict_path(path) -> Optional[tuple[str, ...]]:
  """The dictionary keys of a tree path, or None if it is not all dict keys."""
  keys = []
  for entry in path:
    if not isinstance(entry, jax.tree_util.DictKey):
      return None
    keys.append(str(entry.key))
  return tuple(keys)


def leaves_by_keys(tree: Any) -> dict[tuple[str, ...], Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {}
  for path, leaf in leaves:
    keys = dict_path(path)
    if keys is not None:
      out[keys] = leaf
  return out


def find_layers(tree: Any) -> dict[str, Layer]:
  """Candidate layers: dict nodes holding a ``kernel`` of rank >= 2."""
  leaves = leaves_by_keys(tree)
  layers = {}
  for keys, kernel in leaves.items():
    if not keys or keys[-1] != "kernel" or getattr(kernel, "ndim", 0) < 2:
      continue
    prefix = keys[:-1]
    bias = leaves.get(prefix + ("bias",))
    has_bias = bias is not None and tuple(bias.shape) == kernel.shape[-1:]
    dtype = jnp.promote_types(kernel.dtype, jnp.float32)
    layers["/".join(prefix)] = Layer(prefix, tuple(kernel.shape), has_bias,
                                      dtype)
  return layers


def lookup(tree: Any, keys: tuple[str, ...]) -> Any:
  for key in keys:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def spatial_specs(n: int) -> tuple[str, str, str]:
  letters = "DHW"[-n:] if n <= 3 else None
  if letters is None:
    raise ValueError(f"{_NAME}: convolutions with {n} spatial axes are not "
                     "supported")
  return "N" + letters + "C", letters + "IO", "N" + letters + "C"


def conv_patches(x: jax.Array, geometry) -> jax.Array:
  """Input patches ``(N, *out_spatial, prod(window) * C)`` in kernel order."""
  window = tuple(geometry.kernel_size)
  patches = jax.lax.conv_general_dilated_patches(
      x, window, tuple(geometry.strides), tuple(geometry.padding),
      lhs_dilation=tuple(geometry.input_dilation),
      rhs_dilation=tuple(geometry.kernel_dilation),
      dimension_numbers=spatial_specs(len(window)))
  # lax orders the patch features (C, *window); flax kernels are (*window, C).
  c = x.shape[-1]
  lead = patches.shape[:-1]
  patches = patches.reshape(lead + (c,) + window)
  patches = jnp.moveaxis(patches, len(lead), -1)
  return patches.reshape(lead + (-1,))


def single(value, name: str, what: str):
  """The one element of a sown tuple, or None (with a warning) if several."""
  if not isinstance(value, (tuple, list)):
    return value
  if not value:
    return None
  if len(value) != 1:
    warnings.warn(f"{_NAME}: layer {name!r} recorded {len(value)} {what} in "
                  "one step (called more than once); its statistics are "
                  "ambiguous, so it gets the plain gradient")
    return None
  return value[0]


def conv_inputs(x, geometry, layer: Layer, name: str, out_spatial):
  """The patches of a convolution's recorded inputs, or None (plain grad)."""
  window = layer.kernel_shape[:-2]
  if geometry is None:
    warnings.warn(f"{_NAME}: convolution {name!r} recorded no geometry (not "
                  "a layers.Conv?); it gets the plain gradient")
    return None
  if geometry.feature_group_count != 1:
    warnings.warn(f"{_NAME}: convolution {name!r} is grouped "
                  f"({geometry.feature_group_count} groups); it gets the "
                  "plain gradient")
    return None
  if isinstance(geometry.padding, str):
    warnings.warn(f"{_NAME}: convolution {name!r} pads with "
                  f"{geometry.padding!r}; it gets the plain gradient")
    return None
  if x.ndim != len(window) + 2:
    warnings.warn(f"{_NAME}: convolution {name!r} has inputs of rank "
                  f"{x.ndim}; expected one batch axis, {len(window)} spatial "
                  "axes and channels, so it gets the plain gradient")
    return None
  if tuple(geometry.kernel_size) != tuple(window):
    raise ValueError(
        f"{_NAME}: convolution {name!r} recorded the geometry {geometry} and "
        f"inputs of shape {x.shape} for a kernel of shape {layer.kernel_shape}")
  patches = x if geometry.patches else conv_patches(x, geometry)
  if tuple(patches.shape[1:-1]) != tuple(out_spatial):
    raise ValueError(
        f"{_NAME}: the recorded geometry {geometry} of convolution {name!r} "
        f"gives patches of spatial shape {patches.shape[1:-1]}, its output "
        f"has {tuple(out_spatial)}")
  return patches


def layer_samples(layer: Layer, name: str, stats: Mapping[str, Any]):
  """Per-location inputs ``(N, T, d_in)`` and output grads ``(N, T, d_out)``.

  Returns None when the layer has no usable statistics (plain gradient).
  """
  recorded = lookup(stats["inputs"], layer.path) or {}
  inputs = recorded.get("inputs") if isinstance(recorded, Mapping) else None
  out_grads = lookup(stats["output_grads"], layer.path + ("outputs",))
  if inputs is None or out_grads is None:
    return None
  x = single(inputs, name, "inputs")
  if x is None:
    return None
  dy = out_grads
  if x.ndim < 2 or dy.ndim < 2:
    warnings.warn(f"{_NAME}: layer {name!r} has inputs of shape {x.shape} "
                  "without a batch axis; it gets the plain gradient")
    return None
  window = layer.kernel_shape[:-2]
  d_kernel_in = math.prod(layer.kernel_shape[:-1])
  if window:  # a convolution
    geometry = single(recorded.get("geometry"), name, "geometries")
    x = conv_inputs(x, geometry, layer, name, dy.shape[1:-1])
    if x is None:
      return None
  elif dy.ndim != x.ndim:
    warnings.warn(f"{_NAME}: layer {name!r} has inputs of shape {x.shape} "
                  f"and outputs of shape {dy.shape}; it gets the plain "
                  "gradient")
    return None
  if x.shape[-1] != d_kernel_in or dy.shape[-1] != layer.d_out:
    warnings.warn(f"{_NAME}: statistics of {name!r} do not match its kernel "
                  f"{layer.kernel_shape}; it gets the plain gradient")
    return None
  batch = x.shape[0]
  a = x.reshape(batch, -1, d_kernel_in).astype(layer.dtype)
  g = dy.reshape(batch, -1, layer.d_out).astype(layer.dtype)
  return a, g


def new_factors(layer: Layer, a: jax.Array, g: jax.Array, mask: jax.Array):
  """This mini-batch's ``(A, G)`` for one layer (see the module docstring)."""
  mask = mask.astype(layer.dtype)
  n = jnp.sum(mask)
  n_safe = jnp.maximum(n, 1)
  locations = a.shape[1]
  if layer.has_bias:
    a = jnp.concatenate([a, jnp.ones(a.shape[:-1] + (1,), a.dtype)], axis=-1)
  g = g * n  # per-example gradients of the mean loss
  a_new = jnp.einsum("nti,ntj,n->ij", a, a, mask) / n_safe
  g_new = jnp.einsum("nto,ntp,n->op", g, g, mask) / (n_safe * locations)
  return a_new, g_new
