"""PyTorch twins of the generation models: the language models
(``gpt_small``, ``gru_lm``) and the sequence-to-sequence models
(``transformer_seq2seq``, ``lstm_seq2seq``, ``bart_small``,
``tiny_transformer_seq2seq``).

Each function named as a model builds, from the model's dataset info (and,
for the language models, its field overrides: a reduced model, its twin and
its conversion rules come from one set of fields), the ``torch.nn.Module``
computing the same function once given the same weights, with the module
names the model's conversion rules use; the registry entry's ``torch_twin``
points to it. :func:`seq2seq_twin` builds the twin of any built
sequence-to-sequence model (``twin(src, src_mask, tgt_in, tgt_mask)`` with
LongTensors and bool masks). Imports torch.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from optbench_jax import models
from optbench_jax.data.base import DatasetInfo
from optbench_jax.errors import OptBenchError
from optbench_jax.models import lm, seq2seq_lstm
from optbench_jax.nn import attention
from optbench_jax.reference.torch_models import run_packed


# -- language models -----------------------------------------------------------
class GPTSmall(nn.Module):
  """``torch.nn.TransformerEncoderLayer(norm_first=True, activation="gelu",
  batch_first=True)`` layers under a causal ``src_mask`` and the padding
  ``src_key_padding_mask``, a final ``LayerNorm`` and the tied output
  ``F.linear(h, embedding.weight)``; embeddings ``N(0, 0.02²)``."""

  def __init__(self, m: lm.GPTSmall):
    super().__init__()
    self.embedding = nn.Embedding(m.vocab_size, m.d_model)
    self.positions = nn.Embedding(m.max_length, m.d_model)
    self.dropout = nn.Dropout(m.dropout)
    self.layers = nn.ModuleList([nn.TransformerEncoderLayer(
        m.d_model, m.num_heads, m.dim_feedforward, m.dropout,
        activation="gelu", batch_first=True, norm_first=True)
                                 for _ in range(m.num_layers)])
    self.norm = nn.LayerNorm(m.d_model)
    for table in (self.embedding, self.positions):
      nn.init.normal_(table.weight, 0.0, lm.GPT_EMBEDDING_STD)

  def forward(self, tokens, mask=None):
    length = tokens.shape[1]
    x = self.embedding(tokens) + self.positions(
        torch.arange(length, device=tokens.device))[None]
    x = self.dropout(x)
    causal = torch.triu(torch.ones(length, length, dtype=torch.bool,
                                   device=tokens.device), 1)
    for layer in self.layers:
      x = layer(x, src_mask=causal,
                src_key_padding_mask=None if mask is None else ~mask)
    return nn.functional.linear(self.norm(x), self.embedding.weight)


def gpt_small(info: DatasetInfo, **fields) -> nn.Module:
  """The twin of ``lm.gpt_small(info, **fields)``."""
  return GPTSmall(lm.gpt_small(info, **fields))


class GRULanguageModel(nn.Module):
  """``word_language_model``'s ``RNNModel("GRU")`` (``batch_first``, packed
  sequences): ``nn.Embedding`` ``U(±0.1)``, dropout, ``nn.GRU`` with
  inter-layer dropout, dropout, and ``F.linear(h, embedding.weight,
  decoder_bias)`` when tied (else ``decoder``, an ``nn.Linear`` with weight
  ``U(±0.1)`` and bias 0)."""

  def __init__(self, m: lm.GRULanguageModel):
    super().__init__()
    if m.tie_weights and m.embed != m.hidden:
      raise OptBenchError(f"tie_weights needs embed == hidden, got "
                          f"{m.embed} and {m.hidden}")
    self.tie_weights = m.tie_weights
    self.embedding = nn.Embedding(m.vocab_size, m.embed)
    self.dropout = nn.Dropout(m.dropout)
    self.gru = nn.GRU(m.embed, m.hidden, m.num_layers, batch_first=True,
                      dropout=m.dropout if m.num_layers > 1 else 0.0)
    bound = lm.GRU_INIT_RANGE
    nn.init.uniform_(self.embedding.weight, -bound, bound)
    if m.tie_weights:
      self.decoder_bias = nn.Parameter(torch.zeros(m.vocab_size))
    else:
      self.decoder = nn.Linear(m.hidden, m.vocab_size)
      nn.init.uniform_(self.decoder.weight, -bound, bound)
      nn.init.zeros_(self.decoder.bias)

  def forward(self, tokens, mask=None):
    if mask is None:
      mask = torch.ones_like(tokens, dtype=torch.bool)
    h, _ = run_packed(self.gru, self.dropout(self.embedding(tokens)), mask)
    h = self.dropout(h)
    if self.tie_weights:
      return nn.functional.linear(h, self.embedding.weight,
                                  self.decoder_bias)
    return self.decoder(h)


def gru_lm(info: DatasetInfo, **fields) -> nn.Module:
  """The twin of ``lm.gru_lm(info, **fields)``."""
  return GRULanguageModel(lm.gru_lm(info, **fields))


# -- sequence-to-sequence ------------------------------------------------------
class TransformerSeq2Seq(nn.Module):
  """Embeddings + ``nn.Transformer`` + output, as ``model`` (one of
  ``models.seq2seq``'s transformers)."""

  def __init__(self, model):
    super().__init__()
    d = model.d_model
    self.d_model = d
    self.scale_embedding = model.scale_embedding
    self.learned_positions = model.learned_positions
    self.layernorm_embedding = model.layernorm_embedding
    self.tie_embeddings = model.tie_embeddings
    self.src_embedding = nn.Embedding(model.src_vocab_size, d)
    self.tgt_embedding = nn.Embedding(model.tgt_vocab_size, d)
    if model.learned_positions:
      self.src_positions = nn.Embedding(model.max_length, d)
      self.tgt_positions = nn.Embedding(model.max_length, d)
    else:
      self.register_buffer("sinusoids", torch.from_numpy(
          attention.sinusoidal_positions(model.max_length, d)),
                           persistent=False)
    if model.layernorm_embedding:
      self.src_embedding_norm = nn.LayerNorm(d)
      self.tgt_embedding_norm = nn.LayerNorm(d)
    self.dropout = nn.Dropout(model.dropout)
    self.transformer = nn.Transformer(
        d, model.num_heads, model.num_encoder_layers,
        model.num_decoder_layers, model.dim_feedforward, model.dropout,
        model.activation, batch_first=True, norm_first=model.norm_first)
    if not model.final_norms:
      self.transformer.encoder.norm = None
      self.transformer.decoder.norm = None
    if not model.tie_embeddings:
      self.output = nn.Linear(d, model.tgt_vocab_size)

  def embed(self, side, tokens):
    x = getattr(self, f"{side}_embedding")(tokens)
    if self.scale_embedding:
      x = x * math.sqrt(self.d_model)
    positions = torch.arange(tokens.shape[1])
    if self.learned_positions:
      x = x + getattr(self, f"{side}_positions")(positions)
    else:
      x = x + self.sinusoids[positions]
    if self.layernorm_embedding:
      x = getattr(self, f"{side}_embedding_norm")(x)
    return self.dropout(x)

  def forward(self, src, src_mask, tgt_in, tgt_mask):
    steps = tgt_in.shape[1]
    causal = torch.triu(torch.ones(steps, steps, dtype=torch.bool), 1)
    y = self.transformer(
        self.embed("src", src), self.embed("tgt", tgt_in), tgt_mask=causal,
        src_key_padding_mask=~src_mask, tgt_key_padding_mask=~tgt_mask,
        memory_key_padding_mask=~src_mask)
    if self.tie_embeddings:
      return y @ self.tgt_embedding.weight.T
    return self.output(y)


class LSTMSeq2Seq(nn.Module):
  """Packed BiLSTM encoder, step-by-step Luong decoder."""

  def __init__(self, model: seq2seq_lstm.LSTMSeq2Seq):
    super().__init__()
    e, h = model.embed, model.hidden
    self.hidden, self.input_feeding = h, model.input_feeding
    self.src_embedding = nn.Embedding(model.src_vocab_size, e)
    self.tgt_embedding = nn.Embedding(model.tgt_vocab_size, e)
    self.encoder = nn.LSTM(e, h, batch_first=True, bidirectional=True)
    self.bridge_h = nn.Linear(2 * h, h)
    self.bridge_c = nn.Linear(2 * h, h)
    self.attention_proj = nn.Linear(2 * h, h, bias=False)
    self.decoder = nn.LSTM(e + (h if model.input_feeding else 0), h,
                           batch_first=True)
    self.combine = nn.Linear(3 * h, h, bias=False)
    self.output = nn.Linear(h, model.tgt_vocab_size)
    self.dropout = nn.Dropout(model.dropout)

  def forward(self, src, src_mask, tgt_in, tgt_mask):
    del tgt_mask
    x = self.dropout(self.src_embedding(src))
    out, (hn, cn) = run_packed(self.encoder, x, src_mask)
    state = (torch.tanh(self.bridge_h(torch.cat([hn[0], hn[1]], -1)))[None],
             torch.tanh(self.bridge_c(torch.cat([cn[0], cn[1]], -1)))[None])
    keys = self.attention_proj(out)
    y = self.dropout(self.tgt_embedding(tgt_in))
    feed = torch.zeros(src.shape[0], self.hidden, dtype=y.dtype)
    attended = []
    for t in range(tgt_in.shape[1]):
      step = y[:, t:t + 1]
      if self.input_feeding:
        step = torch.cat([step, feed[:, None]], -1)
      o, state = self.decoder(step, state)
      scores = torch.einsum("bh,bsh->bs", o[:, 0], keys)
      weights = scores.masked_fill(~src_mask, float("-inf")).softmax(-1)
      context = torch.einsum("bs,bsd->bd", weights, out)
      feed = torch.tanh(self.combine(torch.cat([o[:, 0], context], -1)))
      attended.append(feed)
    return self.output(self.dropout(torch.stack(attended, 1)))


def seq2seq_twin(model) -> nn.Module:
  """The twin of a built sequence-to-sequence model (reduced ones too)."""
  if isinstance(model, seq2seq_lstm.LSTMSeq2Seq):
    return LSTMSeq2Seq(model)
  return TransformerSeq2Seq(model)


def _registered(name: str, info: DatasetInfo) -> nn.Module:
  return seq2seq_twin(models.MODELS.get(name).build(info, "torch"))


def transformer_seq2seq(info: DatasetInfo) -> nn.Module:
  return _registered("transformer_seq2seq", info)


def lstm_seq2seq(info: DatasetInfo) -> nn.Module:
  return _registered("lstm_seq2seq", info)


def bart_small(info: DatasetInfo) -> nn.Module:
  return _registered("bart_small", info)


def tiny_transformer_seq2seq(info: DatasetInfo) -> nn.Module:
  return _registered("tiny_transformer_seq2seq", info)
