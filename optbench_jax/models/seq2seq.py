"""Sequence-to-sequence models (translation, summarisation).

Every model maps a right-padded source ``src`` ``(B, S)`` (``src_mask``
True at real tokens) and a teacher-forced target input ``tgt_in``
``(B, T)`` (starting with BOS; ``tgt_mask`` True at real tokens) to
next-token logits ``(B, T, V_tgt)`` (float32, or float64 under x64):

* ``model(src, src_mask, tgt_in, tgt_mask, train=...)``: teacher forcing;
* ``model.apply(v, src, src_mask, method="encode")``: the encoder memory
  (an array ``(B, S, d)`` or a dict of arrays, batch on axis 0);
* incremental decoding, one target token per call::

    cache = model.apply({"params": p}, batch, max_length,
                        method="init_cache", mutable=["cache"])[1]["cache"]
    logits, mutated = model.apply({"params": p, "cache": cache}, memory,
                                  src_mask, tokens, position,
                                  method="decode_step", mutable=["cache"])
    cache = mutated["cache"]

  ``tokens`` ``(B,)`` are the target inputs at ``position`` (0, 1, ...,
  called in order; the first is BOS) and ``logits`` ``(B, V_tgt)`` equal
  ``model(...)[:, position]`` at the real target positions. The transformers
  cache their decoder self-attention keys and values
  (:mod:`~optbench_jax.models.attention`, ``decode=True``: arrays
  ``(B, max_length, heads, d_h)`` and a scalar ``cache_index``); the LSTM
  caches its state ``h``, ``c`` (and the fed-back attentional vector)
  ``(B, H)``. The memory is passed to every step.

The transformers (Vaswani et al. 2017) follow ``torch.nn.Transformer``
(``batch_first=True``): token embeddings (separate source and target
tables) plus positions, a stack of encoder layers and one of decoder layers
(:class:`~optbench_jax.models.attention.TransformerEncoderLayer`,
``TransformerDecoderLayer``: the decoder's self-attention is causal and
ignores padded target keys, its cross-attention padded source keys), a
final layer norm after each stack, and a projection to the target
vocabulary:

* ``transformer_seq2seq`` (:class:`TransformerSeq2Seq`): d_model 256, 4
  heads, 2 + 2 post-LN layers, feed-forward 1024 (not stated by the source
  benchmark), ReLU, dropout 0.1, sinusoidal positions, embeddings scaled by
  √d, a dense output layer with bias; exactly ``nn.Transformer``.
* ``bart_small`` (:class:`BartSmall`): ``transformer_seq2seq`` changed as
  BART's architecture (Lewis et al. 2020, arXiv:1910.13461) differs from
  it: GELU feed-forward activation; learned position embeddings (one table
  per side) instead of sinusoids; embeddings not scaled by √d (BART's
  ``scale_embedding=False``); a layer norm on the embeddings
  (``layernorm_embedding``, after adding the positions, before dropout);
  no final layer norm after either stack; output logits ``h Eᵀ`` with the
  target embedding ``E`` (tied, no bias). Not a pretrained BART; sizes,
  dropout and post-LN are ``transformer_seq2seq``'s.
* ``tiny_transformer_seq2seq`` (:class:`TinyTransformerSeq2Seq`): d_model
  256, 4 heads, 3 + 3 pre-LN layers (``norm_first``), feed-forward 1024,
  dropout 0.1, sinusoidal positions, embeddings scaled by √d, output tied
  to the target embedding (``tie_embeddings``; no bias).

A tied target embedding is initialised ``N(0, 1/d)`` (fairseq's
convention, so that the initial logits are ``O(1)``) under ``"torch"``,
Flax's default under ``"flax"``.

``lstm_seq2seq`` (:class:`LSTMSeq2Seq`; Luong et al. 2015,
arXiv:1508.04025, "general" attention): a bidirectional LSTM encoder
(embedding 256, hidden 256, one layer) over the real source tokens; the
decoder's initial state is ``h₀ = tanh(W_h [h→; h←])``,
``c₀ = tanh(W_c [c→; c←])`` from the encoder's final forward/backward
states; a unidirectional LSTM decoder (256) whose state ``h_t`` attends
over the encoder outputs ``ē_s`` (512)::

  a_t = softmax_s(h_tᵀ W_a ē_s)   (padded s excluded),  c_t = Σ_s a_ts ē_s
  h̃_t = tanh(W_o [h_t; c_t]),     logits_t = W_v Drop(h̃_t) + b_v

(``W_a`` 512 → 256 projects the encoder outputs once, in ``encode``;
``W_a``, ``W_o`` have no bias). With ``input_feeding`` (off by default)
the decoder's input at step t is ``[y_t; h̃_{t−1}]`` (``h̃_{−1} = 0``).
Dropout 0.1 on the source and target embeddings and on ``h̃``. The decoder
is one ``lax.scan`` over the target steps (``flax.linen.scan``); a step of
``decode_step`` is one iteration of the same module.

PyTorch. Every model's :meth:`torch_twin` builds the PyTorch module
computing the same function (the transformers from ``nn.Transformer``, the
LSTM from ``nn.LSTM``/``nn.Linear``), called as ``twin(src, src_mask,
tgt_in, tgt_mask)`` with LongTensors and bool masks; :meth:`conversion`
gives the :mod:`~optbench_jax.models.convert` rules between its state dict
and our variables.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from optbench_jax.data import text
from optbench_jax.data.base import DatasetInfo
from optbench_jax.models import attention, convert
from optbench_jax.models.base import ModelSpec, register
from optbench_jax.models.layers import (KFAC_INPUTS, PERTURBATIONS, Dense,
                                        at_least_float32,
                                        Embed, check_init)
from optbench_jax.models.recurrent import LSTM, torch_rnn_rules

__all__ = ["TransformerSeq2Seq", "BartSmall", "TinyTransformerSeq2Seq",
           "LSTMSeq2Seq"]


# -- transformers ----------------------------------------------------------------
class _TransformerSeq2Seq(nn.Module):
  """The encoder-decoder transformer; subclasses set the variant's defaults.

  Attributes:
    src_vocab_size, tgt_vocab_size: vocabulary sizes.
    max_length: the longest source or target sequence (positions).
    d_model, num_heads, num_encoder_layers, num_decoder_layers,
      dim_feedforward, dropout: as ``torch.nn.Transformer``'s.
    activation: the feed-forward activation (``"relu"``, ``"gelu"``).
    norm_first: pre-LN layers.
    learned_positions: learned position tables instead of sinusoids.
    scale_embedding: multiply token embeddings by √d.
    layernorm_embedding: a layer norm on the embeddings plus positions.
    final_norms: a layer norm after each stack (``nn.Transformer``'s).
    tie_embeddings: logits ``h Eᵀ`` with the target embedding ``E``
      instead of a dense layer.
    dtype: the compute dtype.
    init_scheme: ``"torch"`` or ``"flax"``.
  """
  src_vocab_size: int
  tgt_vocab_size: int
  max_length: int
  d_model: int = 256
  num_heads: int = 4
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  dim_feedforward: int = 1024
  dropout: float = 0.1
  activation: str = "relu"
  norm_first: bool = False
  learned_positions: bool = False
  scale_embedding: bool = True
  layernorm_embedding: bool = False
  final_norms: bool = True
  tie_embeddings: bool = False
  dtype: Any = jnp.float32
  init_scheme: str = "torch"

  def setup(self):
    d = self.d_model
    tied_init = (nn.initializers.normal(d ** -0.5)
                 if self.tie_embeddings and
                 check_init(self.init_scheme) == "torch" else None)
    self.src_embedding = Embed(self.src_vocab_size, d, dtype=self.dtype,
                               init_scheme=self.init_scheme)
    self.tgt_embedding = Embed(self.tgt_vocab_size, d, dtype=self.dtype,
                               embedding_init=tied_init,
                               init_scheme=self.init_scheme)
    if self.learned_positions:
      self.src_positions = attention.PositionEmbedding(
          self.max_length, d, self.init_scheme, dtype=self.dtype)
      self.tgt_positions = attention.PositionEmbedding(
          self.max_length, d, self.init_scheme, dtype=self.dtype)
    norm = functools.partial(nn.LayerNorm, 1e-5, dtype=self.dtype,
                             use_fast_variance=False)
    if self.layernorm_embedding:
      self.src_embedding_norm = norm()
      self.tgt_embedding_norm = norm()
    layer = dict(d_model=d, num_heads=self.num_heads,
                 dim_feedforward=self.dim_feedforward, dropout=self.dropout,
                 activation=self.activation, norm_first=self.norm_first,
                 init_scheme=self.init_scheme, dtype=self.dtype)
    self.encoder_layers = [attention.TransformerEncoderLayer(
        **layer, name=f"encoder_{i}") for i in range(self.num_encoder_layers)]
    self.decoder_layers = [attention.TransformerDecoderLayer(
        **layer, name=f"decoder_{i}") for i in range(self.num_decoder_layers)]
    if self.final_norms:
      self.encoder_norm = norm()
      self.decoder_norm = norm()
    if not self.tie_embeddings:
      self.output = Dense(self.tgt_vocab_size, dtype=self.dtype,
                          init_scheme=self.init_scheme)
    self.drop = nn.Dropout(self.dropout)

  def _embed(self, side: str, tokens, positions, train: bool):
    x = getattr(self, f"{side}_embedding")(tokens)
    if self.scale_embedding:
      x = x * jnp.asarray(math.sqrt(self.d_model), x.dtype)
    if self.learned_positions:
      x = x + getattr(self, f"{side}_positions")(positions)
    else:
      table = attention.sinusoidal_positions(self.max_length, self.d_model)
      x = x + jnp.take(jnp.asarray(table, self.dtype), positions, axis=0)
    if self.layernorm_embedding:
      x = getattr(self, f"{side}_embedding_norm")(x)
    return self.drop(x, deterministic=not train)

  def encode(self, src, src_mask, *, train: bool = False):
    """``(B, S)`` tokens -> the memory ``(B, S, d)``."""
    x = self._embed("src", src, jnp.arange(src.shape[1]), train)
    mask = attention.padding_mask(src_mask)
    for layer in self.encoder_layers:
      x = layer(x, mask, train=train)
    return self.encoder_norm(x) if self.final_norms else x

  def _decode(self, memory, src_mask, x, tgt_mask, *, train: bool,
              decode: bool):
    memory_mask = attention.padding_mask(src_mask)
    for layer in self.decoder_layers:
      x = layer(x, memory, tgt_mask, memory_mask, train=train, decode=decode)
    return self.decoder_norm(x) if self.final_norms else x

  def _project(self, x):
    if self.tie_embeddings:
      return at_least_float32(self.tgt_embedding.attend(x))
    return at_least_float32(self.output(x))

  def __call__(self, src, src_mask, tgt_in, tgt_mask, *, train: bool):
    memory = self.encode(src, src_mask, train=train)
    x = self._embed("tgt", tgt_in, jnp.arange(tgt_in.shape[1]), train)
    x = self._decode(memory, src_mask, x, attention.padding_mask(tgt_mask),
                     train=train, decode=False)
    return self._project(x)

  def init_cache(self, batch_size: int, max_length: int):
    """Creates the zero key/value caches of ``max_length`` target steps."""
    x = jnp.zeros((batch_size, max_length, self.d_model), self.dtype)
    memory = jnp.zeros((batch_size, 1, self.d_model), self.dtype)
    self._decode(memory, jnp.ones((batch_size, 1), bool), x, None,
                 train=False, decode=True)

  def decode_step(self, memory, src_mask, tokens, position):
    """Logits ``(B, V_tgt)`` of the next token after ``tokens`` ``(B,)``."""
    x = self._embed("tgt", tokens[:, None], jnp.reshape(position, (1,)),
                    False)
    x = self._decode(memory, src_mask, x, None, train=False, decode=True)
    return self._project(x[:, 0])

  # -- PyTorch -------------------------------------------------------------------
  @nn.nowrap
  def torch_twin(self):
    """The PyTorch module of the same function (``nn.Transformer`` inside)."""
    return _torch_transformer_twin(self)

  @nn.nowrap
  def conversion(self) -> list[convert.Rule]:
    """The twin's state dict <-> our variables."""
    rules = [convert.Rule(f"{side}_embedding", (f"{side}_embedding",),
                          convert.embedding()) for side in ("src", "tgt")]
    if self.learned_positions:
      rules += [convert.Rule(f"{side}_positions", (f"{side}_positions",),
                             convert.embedding()) for side in ("src", "tgt")]
    if self.layernorm_embedding:
      rules += [convert.Rule(f"{side}_embedding_norm",
                             (f"{side}_embedding_norm",),
                             convert.layer_norm()) for side in ("src", "tgt")]
    for i in range(self.num_encoder_layers):
      rules += attention.torch_encoder_layer_rules(
          f"transformer.encoder.layers.{i}", (f"encoder_{i}",))
    for i in range(self.num_decoder_layers):
      rules += attention.torch_decoder_layer_rules(
          f"transformer.decoder.layers.{i}", (f"decoder_{i}",))
    if self.final_norms:
      rules += [convert.Rule(f"transformer.{stack}.norm", (f"{stack}_norm",),
                             convert.layer_norm())
                for stack in ("encoder", "decoder")]
    if not self.tie_embeddings:
      rules.append(convert.Rule("output", ("output",), convert.dense()))
    return rules


class TransformerSeq2Seq(_TransformerSeq2Seq):
  """``transformer_seq2seq``: ``nn.Transformer``, post-LN, sinusoids."""


class BartSmall(_TransformerSeq2Seq):
  """``bart_small``: BART's architecture at ``transformer_seq2seq``'s size."""
  activation: str = "gelu"
  learned_positions: bool = True
  scale_embedding: bool = False
  layernorm_embedding: bool = True
  final_norms: bool = False
  tie_embeddings: bool = True


class TinyTransformerSeq2Seq(_TransformerSeq2Seq):
  """``tiny_transformer_seq2seq``: 3 + 3 pre-LN layers, tied output."""
  num_encoder_layers: int = 3
  num_decoder_layers: int = 3
  norm_first: bool = True
  tie_embeddings: bool = True


def _torch_transformer_twin(model: _TransformerSeq2Seq):
  import torch
  from torch import nn as tnn
  d = model.d_model

  class Twin(tnn.Module):
    """Embeddings + ``nn.Transformer`` + output, as ``model``."""

    def __init__(self):
      super().__init__()
      self.src_embedding = tnn.Embedding(model.src_vocab_size, d)
      self.tgt_embedding = tnn.Embedding(model.tgt_vocab_size, d)
      if model.learned_positions:
        self.src_positions = tnn.Embedding(model.max_length, d)
        self.tgt_positions = tnn.Embedding(model.max_length, d)
      else:
        self.register_buffer("sinusoids", torch.from_numpy(
            attention.sinusoidal_positions(model.max_length, d)),
                             persistent=False)
      if model.layernorm_embedding:
        self.src_embedding_norm = tnn.LayerNorm(d)
        self.tgt_embedding_norm = tnn.LayerNorm(d)
      self.dropout = tnn.Dropout(model.dropout)
      self.transformer = tnn.Transformer(
          d, model.num_heads, model.num_encoder_layers,
          model.num_decoder_layers, model.dim_feedforward, model.dropout,
          model.activation, batch_first=True, norm_first=model.norm_first)
      if not model.final_norms:
        self.transformer.encoder.norm = None
        self.transformer.decoder.norm = None
      if not model.tie_embeddings:
        self.output = tnn.Linear(d, model.tgt_vocab_size)

    def embed(self, side, tokens):
      x = getattr(self, f"{side}_embedding")(tokens)
      if model.scale_embedding:
        x = x * math.sqrt(d)
      positions = torch.arange(tokens.shape[1])
      if model.learned_positions:
        x = x + getattr(self, f"{side}_positions")(positions)
      else:
        x = x + self.sinusoids[positions]
      if model.layernorm_embedding:
        x = getattr(self, f"{side}_embedding_norm")(x)
      return self.dropout(x)

    def forward(self, src, src_mask, tgt_in, tgt_mask):
      steps = tgt_in.shape[1]
      causal = torch.triu(torch.ones(steps, steps, dtype=torch.bool), 1)
      y = self.transformer(
          self.embed("src", src), self.embed("tgt", tgt_in), tgt_mask=causal,
          src_key_padding_mask=~src_mask, tgt_key_padding_mask=~tgt_mask,
          memory_key_padding_mask=~src_mask)
      if model.tie_embeddings:
        return y @ self.tgt_embedding.weight.T
      return self.output(y)

  return Twin()


# -- LSTM with attention ---------------------------------------------------------
class _LuongStep(nn.Module):
  """One decoder step: LSTM, attention over the encoder, ``h̃``."""
  hidden: int
  dtype: Any = jnp.float32
  init_scheme: str = "torch"

  def setup(self):
    self.lstm = LSTM(self.hidden, init_scheme=self.init_scheme,
                     dtype=self.dtype)
    self.combine = Dense(self.hidden, use_bias=False, dtype=self.dtype,
                         init_scheme=self.init_scheme)

  def __call__(self, carry: dict, x, memory: dict, src_mask):
    """``carry`` ``{h, c, feed}`` ``(B, H)``, ``x`` ``(B, E)`` -> (carry, h̃)."""
    if "feed" in carry:
      x = jnp.concatenate([x, carry["feed"].astype(x.dtype)], axis=-1)
    state = (carry["h"][None], carry["c"][None])
    _, (h, c) = self.lstm(x[:, None], initial_state=state, train=False)
    h, c = h[0], c[0]
    scores = at_least_float32(jnp.einsum("bh,bsh->bs", h, memory["keys"]))
    scores = jnp.where(src_mask, scores, attention.BIG_NEG)
    weights = jnp.where(src_mask, jax.nn.softmax(scores, axis=-1), 0.0)
    context = jnp.einsum("bs,bsd->bd", weights.astype(h.dtype),
                         memory["outputs"])
    attended = jnp.tanh(self.combine(jnp.concatenate([h, context], axis=-1)))
    new = {"h": h, "c": c}
    if "feed" in carry:
      new["feed"] = attended
    return new, attended


class LSTMSeq2Seq(nn.Module):
  """``lstm_seq2seq``: BiLSTM encoder, Luong-attention LSTM decoder.

  Attributes:
    src_vocab_size, tgt_vocab_size: vocabulary sizes.
    max_length: the longest sequence (kept for the common interface; the
      model has no positions).
    embed: embedding width (both sides).
    hidden: ``H``, the encoder's per-direction and the decoder's width.
    dropout: rate on the embeddings and on ``h̃``.
    input_feeding: feed ``h̃_{t−1}`` into the decoder's input.
    dtype: the compute dtype.
    init_scheme: ``"torch"`` or ``"flax"``.
  """
  src_vocab_size: int
  tgt_vocab_size: int
  max_length: int
  embed: int = 256
  hidden: int = 256
  dropout: float = 0.1
  input_feeding: bool = False
  dtype: Any = jnp.float32
  init_scheme: str = "torch"

  def setup(self):
    dense = functools.partial(Dense, dtype=self.dtype,
                              init_scheme=self.init_scheme)
    embed = functools.partial(Embed, features=self.embed, dtype=self.dtype,
                              init_scheme=self.init_scheme)
    self.src_embedding = embed(self.src_vocab_size)
    self.tgt_embedding = embed(self.tgt_vocab_size)
    self.encoder = LSTM(self.hidden, bidirectional=True,
                        init_scheme=self.init_scheme, dtype=self.dtype)
    self.bridge_h = dense(self.hidden)
    self.bridge_c = dense(self.hidden)
    self.attention_proj = dense(self.hidden, use_bias=False)
    self.decoder = _LuongStep(self.hidden, self.dtype, self.init_scheme)
    self.output = dense(self.tgt_vocab_size)
    self.drop = nn.Dropout(self.dropout)

  def encode(self, src, src_mask, *, train: bool = False) -> dict:
    """Memory: ``outputs`` ``(B, S, 2H)``, ``keys`` ``(B, S, H)`` (``W_a ē``)
    and the decoder's initial ``h``, ``c`` ``(B, H)``."""
    x = self.drop(self.src_embedding(src), deterministic=not train)
    outputs, (h, c) = self.encoder(x, src_mask, train=train)
    both = lambda s: jnp.concatenate([s[0], s[1]], axis=-1)
    return {"outputs": outputs, "keys": self.attention_proj(outputs),
            "h": jnp.tanh(self.bridge_h(both(h))),
            "c": jnp.tanh(self.bridge_c(both(c)))}

  def _initial_carry(self, memory: dict) -> dict:
    carry = {"h": memory["h"], "c": memory["c"]}
    if self.input_feeding:
      carry["feed"] = jnp.zeros_like(memory["h"])
    return carry

  def _output(self, attended, train: bool):
    return at_least_float32(self.output(self.drop(attended, deterministic=not train)))

  def __call__(self, src, src_mask, tgt_in, tgt_mask, *, train: bool):
    del tgt_mask   # a unidirectional decoder: padding never reaches real steps
    memory = self.encode(src, src_mask, train=train)
    y = self.drop(self.tgt_embedding(tgt_in), deterministic=not train)
    scan = nn.scan(lambda step, carry, x, mem, mask: step(carry, x, mem, mask),
                   variable_broadcast="params",
                   variable_axes={KFAC_INPUTS: 0, PERTURBATIONS: 0},
                   split_rngs={"params": False},
                   in_axes=(0, nn.broadcast, nn.broadcast), out_axes=0)
    _, attended = scan(self.decoder, self._initial_carry(memory),
                       jnp.swapaxes(y, 0, 1), memory, src_mask)
    return self._output(jnp.swapaxes(attended, 0, 1), train)

  def init_cache(self, batch_size: int, max_length: int):
    """Creates the zero decoder state (``max_length`` is not needed)."""
    del max_length
    zeros = jnp.zeros((batch_size, self.hidden), self.dtype)
    for name in ("h", "c") + (("feed",) if self.input_feeding else ()):
      self.put_variable("cache", name, zeros)

  def decode_step(self, memory, src_mask, tokens, position):
    """Logits ``(B, V_tgt)`` of the next token after ``tokens`` ``(B,)``.

    At ``position == 0`` the state is the bridge's (from ``memory``),
    afterwards the cached one.
    """
    initial = self._initial_carry(memory)
    carry = {k: jnp.where(position == 0, v,
                          self.get_variable("cache", k)).astype(v.dtype)
             for k, v in initial.items()}
    carry, attended = self.decoder(carry, self.tgt_embedding(tokens), memory,
                                   src_mask)
    for name, value in carry.items():
      self.put_variable("cache", name, value)
    return self._output(attended, False)

  # -- PyTorch -------------------------------------------------------------------
  @nn.nowrap
  def torch_twin(self):
    """The PyTorch module of the same function."""
    return _torch_lstm_twin(self)

  @nn.nowrap
  def conversion(self) -> list[convert.Rule]:
    """The twin's state dict <-> our variables."""
    return ([convert.Rule(f"{side}_embedding", (f"{side}_embedding",),
                          convert.embedding()) for side in ("src", "tgt")]
            + torch_rnn_rules("encoder", ("encoder",), 1, True, LSTM.gates)
            + [convert.Rule(n, (n,), convert.dense())
               for n in ("bridge_h", "bridge_c")]
            + [convert.Rule("attention_proj", ("attention_proj",),
                            convert.dense(False))]
            + torch_rnn_rules("decoder", ("decoder", "lstm"), 1, False,
                              LSTM.gates)
            + [convert.Rule("combine", ("decoder", "combine"),
                            convert.dense(False)),
               convert.Rule("output", ("output",), convert.dense())])


def _torch_lstm_twin(model: LSTMSeq2Seq):
  import torch
  from torch import nn as tnn
  from optbench_jax.reference.torch_models import run_packed
  e, h = model.embed, model.hidden

  class Twin(tnn.Module):
    """Packed BiLSTM encoder, step-by-step Luong decoder."""

    def __init__(self):
      super().__init__()
      self.src_embedding = tnn.Embedding(model.src_vocab_size, e)
      self.tgt_embedding = tnn.Embedding(model.tgt_vocab_size, e)
      self.encoder = tnn.LSTM(e, h, batch_first=True, bidirectional=True)
      self.bridge_h = tnn.Linear(2 * h, h)
      self.bridge_c = tnn.Linear(2 * h, h)
      self.attention_proj = tnn.Linear(2 * h, h, bias=False)
      self.decoder = tnn.LSTM(e + (h if model.input_feeding else 0), h,
                              batch_first=True)
      self.combine = tnn.Linear(3 * h, h, bias=False)
      self.output = tnn.Linear(h, model.tgt_vocab_size)
      self.dropout = tnn.Dropout(model.dropout)

    def forward(self, src, src_mask, tgt_in, tgt_mask):
      del tgt_mask
      x = self.dropout(self.src_embedding(src))
      out, (hn, cn) = run_packed(self.encoder, x, src_mask)
      state = (torch.tanh(self.bridge_h(torch.cat([hn[0], hn[1]], -1)))[None],
               torch.tanh(self.bridge_c(torch.cat([cn[0], cn[1]], -1)))[None])
      keys = self.attention_proj(out)
      y = self.dropout(self.tgt_embedding(tgt_in))
      feed = torch.zeros(src.shape[0], h, dtype=y.dtype)
      attended = []
      for t in range(tgt_in.shape[1]):
        step = y[:, t:t + 1]
        if model.input_feeding:
          step = torch.cat([step, feed[:, None]], -1)
        o, state = self.decoder(step, state)
        scores = torch.einsum("bh,bsh->bs", o[:, 0], keys)
        weights = scores.masked_fill(~src_mask, float("-inf")).softmax(-1)
        context = torch.einsum("bs,bsd->bd", weights, out)
        feed = torch.tanh(self.combine(torch.cat([o[:, 0], context], -1)))
        attended.append(feed)
      return self.output(self.dropout(torch.stack(attended, 1)))

  return Twin()


MODELS = {"transformer_seq2seq": TransformerSeq2Seq,
          "bart_small": BartSmall,
          "tiny_transformer_seq2seq": TinyTransformerSeq2Seq,
          "lstm_seq2seq": LSTMSeq2Seq}


# -- registry --------------------------------------------------------------------
def bpe_vocabulary(corpus, max_size: int, pretrained: Optional[str]):
  """One lower-cased byte-level BPE vocabulary over sources and targets."""
  del pretrained
  return text.bpe_vocabulary(corpus, max_size, lowercase=True)


def _register(name: str, task: str, description: str) -> None:
  cls = MODELS[name]

  def factory(info, init_scheme):
    vocab = int(info.stats["vocab_size"])
    return cls(src_vocab_size=vocab, tgt_vocab_size=vocab,
               max_length=max(int(info.stats["max_length"]),
                              int(info.stats["target_length"]) + 1),
               init_scheme=init_scheme)

  register(ModelSpec(
      name=name, task=task, factory=factory,
      example_info=DatasetInfo(
          name="example", task=task, input_shape=(64,),
          stats={"vocab_size": 30_000, "max_length": 64,
                 "target_length": 64}),
      description=description,
      torch_twin=lambda info: factory(info, "torch").torch_twin(),
      conversion=lambda info: factory(info, "torch").conversion(),
      vocabulary=bpe_vocabulary))


_register("transformer_seq2seq", "machine_translation",
          "nn.Transformer: d_model 256, 4 heads, 2+2 post-LN layers, "
          "sinusoidal positions")
_register("lstm_seq2seq", "machine_translation",
          "BiLSTM encoder 256, bridge, LSTM decoder with Luong attention")
_register("bart_small", "text_summarization",
          "BART-style (not pretrained): d_model 256, 4 heads, 2+2 layers, "
          "GELU, learned positions, embedding norm, tied output")
_register("tiny_transformer_seq2seq", "text_summarization",
          "d_model 256, 4 heads, 3+3 pre-LN layers, FF 1024, tied bias-free "
          "output")
