"""Language models: next-token logits ``(B, T, V)`` from token ids ``(B, T)``.

Both are called as ``model(tokens, mask=None, *, train)``: ``tokens`` int
``(B, T)``, ``mask`` bool ``(B, T)`` True at real tokens (right padding;
None: all real), logits in float32 (float64 if the compute dtype is). The
logits at position ``t`` depend on tokens ``0..t`` only; those at padded
positions are computed but meaningless (the loss masks them).

* ``gpt_small`` (:class:`GPTSmall`), a decoder-only Transformer in the style
  of GPT-2 (Radford et al. 2019, "Language models are unsupervised multitask
  learners"; blocks of Vaswani et al. 2017) with pre-LN layers::

    x⁰ = Drop(E[w_t] + P[t])
    xˡ⁺¹ = y + Drop(FF(LN₂(y))),   y = xˡ + Drop(SA(LN₁(xˡ)))
    logits = LN_f(x^L) Eᵀ           (tied input/output embedding, no bias)

  with ``SA`` causal multi-head self-attention (padding keys masked too),
  ``FF(x) = W₂ Drop(GELU(W₁ x + b₁)) + b₂`` (exact GELU), ``E`` the
  ``(V, d)`` token embedding and ``P`` a learned ``(max_length, d)`` position
  table. Sizes: ``d`` 256, 4 heads, feed-forward 1024, dropout 0.1 (on the
  embeddings, the attention weights, both residual branches and inside the
  feed-forward); the layer count is not stated by the source: 4.
  :meth:`GPTSmall.decode_step` feeds new tokens through the layers' key/value
  caches (``nn/attention.py``), for generation.
* ``gru_lm`` (:class:`GRULanguageModel`), the recurrent language model of
  PyTorch's ``word_language_model`` example with GRU cells (Cho et al. 2014,
  arXiv:1406.1078)::

    x_t = Drop(E[w_t]);   h_t = GRU²(x_t, h_{t−1});   logits_t = W Drop(h_t) + b

  embedding 256, two GRU layers of 256 with dropout 0.2 between them, on the
  embeddings and on the outputs; with ``tie_weights`` (the default; needs
  ``embed == hidden``) the output matrix is the embedding, ``W = E`` (Press &
  Wolf 2017, "Using the output embedding to improve language models",
  EACL; Inan et al. 2017).

Initialisation (``init_scheme``): ``"torch"`` is the twins' initialisation:
GPT token and position embeddings ``N(0, 0.02²)`` (GPT-2's; PyTorch's
``nn.Embedding`` default ``N(0, 1)`` would give tied logits of standard
deviation ``√d``), its layers PyTorch's ``TransformerEncoderLayer`` defaults;
the GRU model's embedding and output matrix ``U(±0.1)`` and output bias 0
(``word_language_model``'s ``init_weights``), its GRU PyTorch's
``U(±1/√H)``. ``"flax"`` is Flax's defaults throughout (output bias 0).

PyTorch twins (``optbench_jax.reference.torch_generation.gpt_small``,
``gru_lm``) and conversion rules (:func:`gpt_small_rules`,
:func:`gru_lm_rules`) take the dataset info and the model's field
overrides, so that a reduced model, its twin and its rules come from one set
of fields. The twins share the tied matrix by computing the output with the
embedding's weight, so a state dict holds each tensor once
(``decoder_bias`` is the GRU model's tied output bias).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from optbench_jax.data import text
from optbench_jax.data.base import DatasetInfo
from optbench_jax.errors import OptBenchError
from optbench_jax.models.base import ModelSpec, Twin, register, vocabulary_of
from optbench_jax.nn import attention, convert
from optbench_jax.nn.layers import Dense, Embed, at_least_float32, check_init
from optbench_jax.nn.recurrent import GRU, torch_rnn_rules

__all__ = ["GPTSmall", "GRULanguageModel", "CausalLayer", "init_cache",
           "gpt_small", "gru_lm", "gpt_small_rules", "gru_lm_rules", "SPECS"]

GPT_EMBEDDING_STD = 0.02   # GPT-2's initialiser of both embedding tables
GRU_INIT_RANGE = 0.1       # word_language_model's init_weights


def _symmetric_uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


# -- GPT ---------------------------------------------------------------------
class CausalLayer(attention.TransformerEncoderLayer):
  """A ``TransformerEncoderLayer`` whose self-attention can use its cache.

  The encoder layer with a ``decode`` flag passed on to the self-attention
  (same parameters and PyTorch mapping): with ``decode=True`` ``x`` holds
  the new positions only and the cache supplies the causal mask.
  """

  @nn.compact
  def __call__(self, x, mask=None, *, train: bool, decode: bool = False):
    attend = self._attention("self_attn")
    x = self._residual(
        x, "norm1",
        lambda y: attend(y, y, mask, train=train, decode=decode), train)
    return self._residual(x, "norm2",
                          lambda y: self._feedforward(y, train), train)


class GPTSmall(nn.Module):
  """Decoder-only pre-LN Transformer with tied embeddings (module docstring).

  Attributes:
    vocab_size: ``V``.
    max_length: positions of the learned table (and of the decoding cache).
    d_model, num_heads, num_layers, dim_feedforward, dropout: the sizes.
    dtype: the compute dtype (parameters float32; logits at least float32).
    init_scheme: ``"torch"`` or ``"flax"`` (module docstring).
  """
  vocab_size: int
  max_length: int
  d_model: int = 256
  num_heads: int = 4
  num_layers: int = 4
  dim_feedforward: int = 1024
  dropout: float = 0.1
  dtype: Any = jnp.float32
  init_scheme: str = "torch"

  def setup(self):
    torch = check_init(self.init_scheme) == "torch"
    table_init = (nn.initializers.normal(GPT_EMBEDDING_STD) if torch
                  else None)
    self.embedding = Embed(self.vocab_size, self.d_model,
                           embedding_init=table_init, dtype=self.dtype,
                           init_scheme=self.init_scheme)
    self.positions = attention.PositionEmbedding(
        self.max_length, self.d_model, self.init_scheme,
        embedding_init=table_init, dtype=self.dtype)
    self.layers = [CausalLayer(
        self.d_model, self.num_heads, self.dim_feedforward, self.dropout,
        activation="gelu", norm_first=True, init_scheme=self.init_scheme,
        dtype=self.dtype) for _ in range(self.num_layers)]
    self.norm = nn.LayerNorm(1e-5, dtype=self.dtype, use_fast_variance=False)
    self.drop = nn.Dropout(self.dropout)

  def _run(self, tokens, positions, mask, train, decode):
    x = self.embedding(tokens) + self.positions(positions)
    x = self.drop(x, deterministic=not train)
    for layer in self.layers:
      x = layer(x, mask, train=train, decode=decode)
    return at_least_float32(self.embedding.attend(self.norm(x)))

  def __call__(self, tokens, mask=None, *, train: bool):
    """``(B, T)`` ids (``T ≤ max_length``), ``(B, T)`` mask -> ``(B, T, V)``."""
    length = tokens.shape[-1]
    if length > self.max_length:
      raise OptBenchError(f"{length} tokens, more than max_length "
                          f"{self.max_length}")
    keys = None if mask is None else attention.padding_mask(mask)
    return self._run(tokens, jnp.arange(length),
                     attention.combine_masks(attention.causal_mask(length),
                                             keys), train, False)

  def decode_step(self, tokens, position):
    """Logits of ``S`` new tokens ``(B, S)`` at ``position .. position+S−1``.

    Needs the ``"cache"`` collection (:func:`init_cache`) and
    ``mutable=["cache"]``; ``position`` (an int, may be traced) must be the
    number of tokens fed before, which the caches count themselves
    (``cache_index``). Evaluation mode (no dropout). Fed in any chunks, the
    logits equal those of :meth:`__call__` on the whole sequence.
    """
    return self._run(tokens, position + jnp.arange(tokens.shape[-1]), None,
                     False, True)


def init_cache(model: GPTSmall, batch_size: int):
  """The empty key/value caches of ``model`` for ``batch_size`` sequences.

  Zeros of the shapes ``model.init(..., method="decode_step")`` creates with
  a ``max_length``-long input (computed abstractly, no parameters drawn).
  """
  tokens = jnp.zeros((batch_size, model.max_length), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), tokens, 0, method=GPTSmall.decode_step))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


# -- GRU ---------------------------------------------------------------------
class GRULanguageModel(nn.Module):
  """Embedding, stacked GRU, (tied) output layer (module docstring).

  Attributes:
    vocab_size: ``V``.
    max_length: the longest input the task feeds (the recurrence has no
      limit; kept for the language models' common interface).
    embed, hidden, num_layers, dropout: the sizes.
    tie_weights: the output matrix is the embedding (``embed == hidden``).
    dtype, init_scheme: as :class:`GPTSmall`'s.
  """
  vocab_size: int
  max_length: int
  embed: int = 256
  hidden: int = 256
  num_layers: int = 2
  dropout: float = 0.2
  tie_weights: bool = True
  dtype: Any = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, tokens, mask=None, *, train: bool):
    """``(B, T)`` ids, ``(B, T)`` mask -> ``(B, T, V)`` logits."""
    if self.tie_weights and self.embed != self.hidden:
      raise OptBenchError(f"tie_weights needs embed == hidden, got "
                          f"{self.embed} and {self.hidden}")
    torch = check_init(self.init_scheme) == "torch"
    uniform = _symmetric_uniform(GRU_INIT_RANGE) if torch else None
    zeros = nn.initializers.zeros_init()
    drop = nn.Dropout(self.dropout, deterministic=not train)
    embedding = Embed(self.vocab_size, self.embed, embedding_init=uniform,
                      dtype=self.dtype, init_scheme=self.init_scheme,
                      name="embedding")
    h, _ = GRU(self.hidden, self.num_layers, dropout=self.dropout,
               init_scheme=self.init_scheme, dtype=self.dtype, name="gru")(
                   drop(embedding(tokens)), mask, train=train)
    h = drop(h)
    if self.tie_weights:
      bias = self.param("decoder_bias", zeros, (self.vocab_size,))
      logits = embedding.attend(h) + bias.astype(h.dtype)
    else:
      logits = Dense(self.vocab_size, kernel_init=uniform,
                     bias_init=zeros if torch else None, dtype=self.dtype,
                     init_scheme=self.init_scheme, name="decoder")(h)
    return at_least_float32(logits)


# -- factories and conversion --------------------------------------------------
def _sizes(info: DatasetInfo, fields: dict) -> dict:
  """``vocab_size`` and ``max_length`` from ``info.stats``, then ``fields``."""
  return {"vocab_size": int(info.stats["vocab_size"]),
          "max_length": int(info.stats["max_length"]), **fields}


def gpt_small(info: DatasetInfo, init_scheme: str = "torch",
              **fields) -> GPTSmall:
  """:class:`GPTSmall` for ``info``; ``fields`` override its defaults."""
  return GPTSmall(init_scheme=init_scheme, **_sizes(info, fields))


def gru_lm(info: DatasetInfo, init_scheme: str = "torch",
           **fields) -> GRULanguageModel:
  """:class:`GRULanguageModel` for ``info``; ``fields`` as ``gpt_small``'s."""
  return GRULanguageModel(init_scheme=init_scheme, **_sizes(info, fields))


def gpt_small_rules(info: DatasetInfo, **fields) -> list[convert.Rule]:
  """Twin state dict <-> ``gpt_small(info, **fields)`` variables."""
  m = gpt_small(info, **fields)
  rules = [convert.Rule("embedding", ("embedding",), convert.embedding()),
           convert.Rule("positions", ("positions",), convert.embedding())]
  for i in range(m.num_layers):
    rules += attention.torch_encoder_layer_rules(f"layers.{i}",
                                                 (f"layers_{i}",))
  return rules + [convert.Rule("norm", ("norm",), convert.layer_norm())]


def gru_lm_rules(info: DatasetInfo, **fields) -> list[convert.Rule]:
  """Twin state dict <-> ``gru_lm(info, **fields)`` variables."""
  m = gru_lm(info, **fields)
  rules = [convert.Rule("embedding", ("embedding",), convert.embedding())]
  rules += torch_rnn_rules("gru", ("gru",), m.num_layers, False, GRU.gates)
  if m.tie_weights:
    rules.append(convert.Rule(
        "", (), {"decoder_bias": convert.Leaf("params", "decoder_bias")}))
  else:
    rules.append(convert.Rule("decoder", ("decoder",), convert.dense()))
  return rules


# -- registry entries ----------------------------------------------------------
# A byte-level BPE vocabulary of the training texts, case kept (GPT-2's).
bpe_vocabulary = vocabulary_of(text.bpe_vocabulary, lowercase=False)

_EXAMPLE = DatasetInfo(name="example", task="text_generation",
                       input_shape=(64,),
                       stats={"vocab_size": 30_000, "max_length": 64})
SPECS = (
    ModelSpec(
        name="gpt_small", task="text_generation", factory=gpt_small,
        example_info=_EXAMPLE,
        description=f"GPT-2-style pre-LN decoder (d_model "
        f"{GPTSmall.d_model}, {GPTSmall.num_heads} heads, "
        f"{GPTSmall.num_layers} layers, FF {GPTSmall.dim_feedforward}), "
        "learned positions, tied embeddings",
        torch_twin=Twin("optbench_jax.reference.torch_generation.gpt_small"),
        conversion=gpt_small_rules,
        vocabulary=bpe_vocabulary,
        widths={"d_model": GPTSmall.num_heads, "dim_feedforward": 1}),
    ModelSpec(
        name="gru_lm", task="text_generation", factory=gru_lm,
        example_info=_EXAMPLE,
        description=f"embedding {GRULanguageModel.embed}, "
        f"{GRULanguageModel.num_layers}-layer GRU {GRULanguageModel.hidden}, "
        f"dropout {GRULanguageModel.dropout}, tied output (Press & Wolf "
        "2017)",
        torch_twin=Twin("optbench_jax.reference.torch_generation.gru_lm"),
        conversion=gru_lm_rules,
        vocabulary=bpe_vocabulary, widths={"embed": 1, "hidden": 1}),
)
for _spec in SPECS:
  register(_spec)
