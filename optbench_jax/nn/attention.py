"""Attention blocks of the text models (Vaswani et al. 2017).

Scaled dot-product attention with ``h`` heads of width ``d_h = d / h``::

  Q = x_q W_Q + b_Q,  K = x_kv W_K + b_K,  V = x_kv W_V + b_V
  A_j = softmax(Q_j K_jᵀ / √d_h + M)          (per head j, in float32)
  MHA(x_q, x_kv) = concat_j(A_j V_j) W_O + b_O

"Attention is all you need" (Vaswani et al. 2017, arXiv:1706.03762).

Masks are boolean, broadcastable to ``(batch, heads, T_q, T_k)``, True where
a query may attend to a key (the opposite of PyTorch's ``key_padding_mask``):
:func:`padding_mask`, :func:`causal_mask`, :func:`combine_masks`. Masked
logits are set to the most negative finite float32, so nothing is NaN; a
query row with every key masked attends to nothing: its weights are all 0
and its output is ``b_O`` (PyTorch returns NaN there, transformers a uniform
average).

Incremental decoding (``decode=True``) keeps the projected keys and values
in the ``"cache"`` collection (``cached_key``, ``cached_value`` of shape
``(batch, max_length, heads, d_h)``, ``cache_index``), as
``flax.linen.MultiHeadDotProductAttention``: ``init`` with a
``max_length``-long input and ``decode=True`` creates the cache; every later
call with ``mutable=["cache"]`` writes its ``T`` new keys and values at
``cache_index``, advances it by ``T`` and lets query ``i`` of the chunk
attend to the cached keys ``0 .. cache_index + i`` (causal), combined with
the caller's mask (broadcastable to ``(batch, heads, T, max_length)``).
Writing past ``max_length`` is not detected (``jit``-safe).

Layers. :class:`TransformerEncoderLayer` and :class:`TransformerDecoderLayer`
compute ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``
with ``batch_first=True``: post-LN (``norm_first=False``)::

  x = LN₁(x + Drop(SA(x)));  x = LN₂(x + Drop(FF(x)))          (encoder)
  x = LN₁(x + Drop(SA(x)));  x = LN₂(x + Drop(CA(x, m)));
  x = LN₃(x + Drop(FF(x)))                                      (decoder)

with ``FF(x) = W₂ Drop(act(W₁ x + b₁)) + b₂``, and pre-LN
(``norm_first=True``) ``x = x + Drop(SA(LN₁(x)))`` and so on. The decoder's
self-attention is always causal.

Initialisation (``init_scheme``, see :mod:`optbench_jax.nn.layers`):

* ``"torch"``, as ``torch.nn.MultiheadAttention``: ``W_Q, W_K, W_V`` are
  the blocks of one Xavier-uniform ``(3d, d)`` matrix, i.e. uniform in
  ``±√(6 / 4d)``; ``b_Q, b_K, b_V, b_O`` zero; ``W_O`` uniform in
  ``±1/√d``; feed-forward layers as ``nn.Linear`` (weight and bias uniform
  in ``±1/√fan_in``); layer norms scale 1, bias 0;
* ``"flax"``: Flax's defaults (LeCun-normal kernels, zero biases).

Parameter names follow PyTorch's modules (``self_attn``, ``multihead_attn``,
``linear1``, ``linear2``, ``norm1``..``norm3``; an attention's projections
are ``query``, ``key``, ``value``, ``out``), and :func:`torch_attention_rules`,
:func:`torch_encoder_layer_rules`, :func:`torch_decoder_layer_rules` give the
:mod:`~optbench_jax.nn.convert` rules (PyTorch's packed ``in_proj`` is
split into the three projections).
"""
import functools
import math
from typing import Any, Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.errors import OptBenchError
from optbench_jax.nn import convert
from optbench_jax.nn.layers import (Dense, at_least_float32, check_init,
                                        scheme_initializer)

Array = jax.Array
# The most negative finite float32: exp(BIG_NEG - max) is exactly 0.
BIG_NEG = float(np.finfo(np.float32).min)
ACTIVATIONS = {"relu": nn.relu,
               "gelu": functools.partial(nn.gelu, approximate=False)}


# -- masks -------------------------------------------------------------------
def padding_mask(key_mask: Array) -> Array:
  """``(B, T_k)`` True-for-real-tokens -> ``(B, 1, 1, T_k)`` attention mask."""
  return jnp.asarray(key_mask, bool)[..., None, None, :]


def causal_mask(length: int) -> Array:
  """``(1, 1, T, T)``: query ``i`` attends to keys ``0..i``."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


def combine_masks(*masks: Optional[Array]) -> Optional[Array]:
  """Logical AND of the masks that are not None (None if all are None)."""
  masks = [jnp.asarray(m, bool) for m in masks if m is not None]
  if not masks:
    return None
  return functools.reduce(jnp.logical_and, masks)


# -- positions ---------------------------------------------------------------
def sinusoidal_positions(length: int, d_model: int) -> np.ndarray:
  """``(length, d_model)`` float32 sinusoids of Vaswani et al. (2017).

  ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/d))``
  (computed in float64, as transformers' DistilBERT does).
  """
  pos = np.arange(length, dtype=np.float64)[:, None]
  j = np.arange(d_model)
  angles = pos / np.power(10000.0, 2 * (j // 2) / d_model)
  return np.where(j % 2 == 0, np.sin(angles), np.cos(angles)).astype(
      np.float32)


class PositionEmbedding(nn.Module):
  """A learned table of ``max_length`` position vectors (``embedding``).

  Called with integer positions (any shape) it returns their rows. Under
  ``"torch"`` the table is ``N(0, 1)`` (``nn.Embedding``), under ``"flax"``
  Flax's embedding default; ``embedding_init`` overrides both.
  """
  max_length: int
  d_model: int
  init_scheme: str = "torch"
  embedding_init: Optional[Callable] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, positions: Array) -> Array:
    init = self.embedding_init or scheme_initializer(
        self.init_scheme, "embedding")
    table = self.param("embedding", init, (self.max_length, self.d_model))
    return jnp.take(table, positions, axis=0).astype(self.dtype)


# -- attention ---------------------------------------------------------------
def _packed_xavier(d_model: int) -> Callable:
  """One ``d×d`` block of PyTorch's Xavier-uniform ``(3d, d)`` in_proj."""
  bound = math.sqrt(6.0 / (d_model + 3 * d_model))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class MultiHeadAttention(nn.Module):
  """Multi-head attention with separate ``query/key/value/out`` projections.

  Attributes:
    num_heads: ``h``; must divide ``d_model``.
    d_model: ``d``, the width of inputs, projections and output.
    dropout: dropout rate on the attention weights (train mode).
    use_bias: whether the four projections have biases.
    init_scheme: ``"torch"`` or ``"flax"`` (module docstring).
    kernel_init, bias_init: if set, the initialisers of all four
      projections, instead of the scheme's (e.g. BERT's ``N(0, 0.02²)``).
    dtype: the computation dtype (softmax always in float32).
  """
  num_heads: int
  d_model: int
  dropout: float = 0.0
  use_bias: bool = True
  init_scheme: str = "torch"
  kernel_init: Optional[Callable] = None
  bias_init: Optional[Callable] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q_in: Array, kv_in: Array, mask: Optional[Array] = None,
               *, train: bool, decode: bool = False) -> Array:
    """``(..., T_q, d)``, ``(..., T_k, d)`` -> ``(..., T_q, d)``.

    Args:
      q_in: the queries' inputs.
      kv_in: the keys' and values' inputs (``q_in`` for self-attention).
      mask: boolean, broadcastable to ``(..., heads, T_q, T_k)``; True =
        attend.
      train: dropout on (needs a ``"dropout"`` rng when ``dropout > 0``).
      decode: incremental self-attention with the key/value cache.
    """
    d, h = self.d_model, self.num_heads
    if d % h:
      raise OptBenchError(f"num_heads {h} does not divide d_model {d}")
    torch = check_init(self.init_scheme) == "torch"
    zeros = self.bias_init or (nn.initializers.zeros_init() if torch else None)
    in_init = self.kernel_init or (_packed_xavier(d) if torch else None)
    dense = functools.partial(Dense, d, use_bias=self.use_bias,
                              init_scheme=self.init_scheme, dtype=self.dtype)
    heads = lambda x: x.reshape(*x.shape[:-1], h, d // h)
    q = heads(dense(kernel_init=in_init, bias_init=zeros, name="query")(q_in))
    k = heads(dense(kernel_init=in_init, bias_init=zeros, name="key")(kv_in))
    v = heads(dense(kernel_init=in_init, bias_init=zeros, name="value")(kv_in))
    if decode:
      k, v, mask = self._cache(k, v, mask)
    q = q * jnp.asarray((d // h) ** -0.5, q.dtype)
    logits = at_least_float32(jnp.einsum("...qhc,...khc->...hqk", q, k))
    if mask is not None:
      logits = jnp.where(mask, logits, BIG_NEG)
    weights = jax.nn.softmax(logits, axis=-1)
    if mask is not None:   # fully masked rows: 0 instead of uniform
      weights = jnp.where(mask, weights, 0.0)
    weights = weights.astype(self.dtype)
    if self.dropout > 0:
      weights = nn.Dropout(self.dropout)(weights, deterministic=not train)
    out = jnp.einsum("...hqk,...khc->...qhc", weights, v)
    out = out.reshape(*out.shape[:-2], d)
    return dense(kernel_init=self.kernel_init, bias_init=zeros,
                 name="out")(out)

  def _cache(self, k: Array, v: Array, mask: Optional[Array]):
    """Writes ``k, v`` into the cache; returns the cache and its mask."""
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape,
                             k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape,
                             v.dtype)
    index = self.variable("cache", "cache_index",
                          lambda: jnp.zeros((), jnp.int32))
    if not initialized:   # ``init``: the input's length is the capacity
      return k, v, mask
    steps, max_length = k.shape[-3], cached_k.value.shape[-3]
    start = index.value
    at = (0,) * (k.ndim - 3) + (start, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, at)
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, at)
    index.value = start + steps
    visible = (jnp.arange(max_length)[None, :]
               <= start + jnp.arange(steps)[:, None])
    return cached_k.value, cached_v.value, combine_masks(mask, visible)


# -- transformer layers ------------------------------------------------------
def _activation(activation: Union[str, Callable]) -> Callable:
  if callable(activation):
    return activation
  if activation not in ACTIVATIONS:
    raise OptBenchError(f"unknown activation {activation!r}. Valid choices: "
                        f"{', '.join(ACTIVATIONS)}.")
  return ACTIVATIONS[activation]


class _Layer(nn.Module):
  """Fields and parts shared by the encoder and decoder layers."""
  d_model: int
  num_heads: int
  dim_feedforward: int = 2048
  dropout: float = 0.1
  activation: Union[str, Callable] = "relu"
  norm_first: bool = False
  layer_norm_eps: float = 1e-5
  init_scheme: str = "torch"
  dtype: Any = jnp.float32

  def _attention(self, name: str) -> MultiHeadAttention:
    return MultiHeadAttention(self.num_heads, self.d_model, self.dropout,
                              init_scheme=self.init_scheme, dtype=self.dtype,
                              name=name)

  def _norm(self, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype,
                        use_fast_variance=False, name=name)

  def _drop(self, x: Array, train: bool) -> Array:
    return nn.Dropout(self.dropout)(x, deterministic=not train)

  def _feedforward(self, x: Array, train: bool) -> Array:
    dense = functools.partial(Dense, init_scheme=self.init_scheme,
                              dtype=self.dtype)
    x = _activation(self.activation)(dense(self.dim_feedforward,
                                           name="linear1")(x))
    return dense(self.d_model, name="linear2")(self._drop(x, train))

  def _residual(self, x: Array, norm: str, block: Callable,
                train: bool) -> Array:
    """Post-LN ``LN(x + Drop(f(x)))`` or pre-LN ``x + Drop(f(LN(x)))``."""
    ln = self._norm(norm)
    if self.norm_first:
      return x + self._drop(block(ln(x)), train)
    return ln(x + self._drop(block(x), train))


class TransformerEncoderLayer(_Layer):
  """``torch.nn.TransformerEncoderLayer(batch_first=True)`` (module docstring).

  Called as ``(x, mask=None, *, train)``: ``x`` ``(B, T, d)``, ``mask``
  broadcastable to ``(B, heads, T, T)`` (e.g. :func:`padding_mask`).
  """

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array] = None, *,
               train: bool) -> Array:
    attention = self._attention("self_attn")
    x = self._residual(x, "norm1",
                       lambda y: attention(y, y, mask, train=train), train)
    return self._residual(x, "norm2",
                          lambda y: self._feedforward(y, train), train)


class TransformerDecoderLayer(_Layer):
  """``torch.nn.TransformerDecoderLayer(batch_first=True)``, causal.

  Called as ``(x, memory, tgt_mask=None, memory_mask=None, *, train,
  decode=False)``: ``x`` ``(B, T, d)``; ``memory`` ``(B, S, d)``;
  ``tgt_mask`` combined with the causal mask of the self-attention
  (broadcastable to ``(B, heads, T, T)``, or to ``(B, heads, T,
  max_length)`` when decoding); ``memory_mask`` broadcastable to ``(B,
  heads, T, S)``. With ``decode=True`` the self-attention uses its cache
  (module docstring) and ``x`` holds the new positions only.
  """

  @nn.compact
  def __call__(self, x: Array, memory: Array,
               tgt_mask: Optional[Array] = None,
               memory_mask: Optional[Array] = None, *, train: bool,
               decode: bool = False) -> Array:
    self_attention = self._attention("self_attn")
    cross_attention = self._attention("multihead_attn")
    if not decode:
      tgt_mask = combine_masks(causal_mask(x.shape[-2]), tgt_mask)
    x = self._residual(
        x, "norm1",
        lambda y: self_attention(y, y, tgt_mask, train=train, decode=decode),
        train)
    x = self._residual(
        x, "norm2",
        lambda y: cross_attention(y, memory, memory_mask, train=train), train)
    return self._residual(x, "norm3",
                          lambda y: self._feedforward(y, train), train)


# -- PyTorch conversion ------------------------------------------------------
def _join(prefix: str, name: str) -> str:
  return f"{prefix}.{name}" if prefix else name


def torch_attention_rules(torch_prefix: str, flax_path: tuple,
                          use_bias: bool = True) -> list[convert.Rule]:
  """``torch.nn.MultiheadAttention`` (packed in_proj) <-> ours."""
  flax_path = tuple(flax_path)
  packed = convert.packed_dense(3, bias="in_proj_bias" if use_bias else None)
  rules = [convert.Rule(torch_prefix, flax_path + (name,), kind)
           for name, kind in zip(("query", "key", "value"), packed)]
  rules.append(convert.Rule(_join(torch_prefix, "out_proj"),
                            flax_path + ("out",), convert.dense(use_bias)))
  return rules


def _layer_rules(torch_prefix: str, flax_path: tuple, attentions: tuple,
                 norms: int) -> list[convert.Rule]:
  flax_path = tuple(flax_path)
  rules = []
  for name in attentions:
    rules += torch_attention_rules(_join(torch_prefix, name),
                                   flax_path + (name,))
  for name in ("linear1", "linear2"):
    rules.append(convert.Rule(_join(torch_prefix, name), flax_path + (name,),
                              convert.dense()))
  for i in range(1, norms + 1):
    rules.append(convert.Rule(_join(torch_prefix, f"norm{i}"),
                              flax_path + (f"norm{i}",),
                              convert.layer_norm()))
  return rules


def torch_encoder_layer_rules(torch_prefix: str,
                              flax_path: tuple) -> list[convert.Rule]:
  """``torch.nn.TransformerEncoderLayer`` <-> :class:`TransformerEncoderLayer`.

  Args:
    torch_prefix: the layer's PyTorch module name (``"encoder.layers.0"``;
      ``""`` for a bare layer's state dict).
    flax_path: the layer's Flax module path (``("encoder", "layers_0")``;
      ``()`` for a bare layer).
  """
  return _layer_rules(torch_prefix, flax_path, ("self_attn",), 2)


def torch_decoder_layer_rules(torch_prefix: str,
                              flax_path: tuple) -> list[convert.Rule]:
  """``torch.nn.TransformerDecoderLayer`` <-> ours (as the encoder's)."""
  return _layer_rules(torch_prefix, flax_path,
                      ("self_attn", "multihead_attn"), 3)
