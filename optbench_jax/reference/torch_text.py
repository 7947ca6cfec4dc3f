"""PyTorch twins of the text classifiers, taggers and QA models:
``lstm_sentiment``, ``lstm_crf_ner``, ``bilstm_crf_charcnn_ner``,
``bilstm_attention_qa``, ``transformer_qa``, ``distilbert_sentiment``.

Each function is named as the model and builds, from the model's dataset
info, the ``torch.nn.Module`` computing the same function once given the
same weights (``nn.Embedding``, ``nn.LSTM`` over packed sequences,
``nn.Conv1d``, ``nn.Linear``, ``nn.TransformerEncoderLayer``,
``nn.MultiheadAttention``; transformers' DistilBERT), with the module names
the model's conversion rules use; the registry entry's ``torch_twin`` points
to it. Models take ``(tokens, ..., masks)`` as LongTensors and bool masks.
Imports torch.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from optbench_jax.data.base import DatasetInfo
from optbench_jax.models import distilbert, transformer
from optbench_jax.reference.torch_models import run_packed


def _vocab_size(info: DatasetInfo) -> int:
  return int(info.stats["vocab_size"])


# -- rnn.py --------------------------------------------------------------------
class LSTMSentiment(nn.Module):
  """Embedding, LSTM, its last real step's hidden state, dropout, linear."""

  def __init__(self, info: DatasetInfo):
    super().__init__()
    self.embedding = nn.Embedding(_vocab_size(info), 128)
    self.lstm = nn.LSTM(128, 128, batch_first=True)
    self.dropout = nn.Dropout(0.5)
    self.fc = nn.Linear(128, info.num_classes)

  def forward(self, tokens, mask):
    _, (h, _) = run_packed(self.lstm, self.embedding(tokens), mask)
    return self.fc(self.dropout(h[-1]))


def lstm_sentiment(info: DatasetInfo) -> nn.Module:
  return LSTMSentiment(info)


class Tagger(nn.Module):
  """Emissions of the BiLSTM-CRF tagger (the CRF is checked on its own;
  its parameters are ``crf_transitions``, ``crf_start``, ``crf_end``)."""

  def __init__(self, info: DatasetInfo, chars: bool):
    super().__init__()
    k = len(info.extra["tag_names"])
    self.chars = chars
    self.embedding = nn.Embedding(_vocab_size(info), 100)
    width = 100
    if chars:
      self.char_embedding = nn.Embedding(
          int(info.stats["char_vocab_size"]), 30)
      self.char_conv = nn.Conv1d(30, 50, 3, padding=1)
      width += 50
    self.lstm = nn.LSTM(width, 128, batch_first=True, bidirectional=True)
    self.emissions = nn.Linear(256, k)
    self.crf_transitions = nn.Parameter(torch.empty(k, k).uniform_(-0.1, 0.1))
    self.crf_start = nn.Parameter(torch.empty(k).uniform_(-0.1, 0.1))
    self.crf_end = nn.Parameter(torch.empty(k).uniform_(-0.1, 0.1))

  def forward(self, tokens, chars_, mask):
    x = self.embedding(tokens)
    if self.chars:
      b, t, w = chars_.shape
      c = self.char_embedding(chars_).reshape(b * t, w, 30)
      c = torch.relu(self.char_conv(c.transpose(1, 2)))  # (bt, 50, w)
      real = (chars_ != 0).reshape(b * t, 1, w)
      c = c.masked_fill(~real, -1e9).max(dim=2).values
      c = torch.where(real.any(dim=2), c, torch.zeros_like(c))
      x = torch.cat([x, c.reshape(b, t, 50)], dim=-1)
    out, _ = run_packed(self.lstm, x, mask)
    return self.emissions(out)


def lstm_crf_ner(info: DatasetInfo) -> nn.Module:
  return Tagger(info, chars=False)


def bilstm_crf_charcnn_ner(info: DatasetInfo) -> nn.Module:
  return Tagger(info, chars=True)


class BiLSTMAttentionQA(nn.Module):
  """Shared embedding, context and question BiLSTMs, dot-product attention,
  fusion, start/end scores (padding −1e9)."""

  def __init__(self, info: DatasetInfo):
    super().__init__()
    self.embedding = nn.Embedding(_vocab_size(info), 256)
    self.context_lstm = nn.LSTM(256, 256, batch_first=True,
                                bidirectional=True)
    self.question_lstm = nn.LSTM(256, 256, batch_first=True,
                                 bidirectional=True)
    self.fusion = nn.Linear(3 * 512, 256)
    self.dropout = nn.Dropout(0.1)
    self.start = nn.Linear(256, 1)
    self.end = nn.Linear(256, 1)

  def encode(self, lstm, tokens, mask):
    return run_packed(lstm, self.embedding(tokens), mask)[0]

  def forward(self, context, context_mask, question, question_mask):
    hc = self.encode(self.context_lstm, context, context_mask)
    hq = self.encode(self.question_lstm, question, question_mask)
    scores = torch.einsum("bcd,bqd->bcq", hc, hq).masked_fill(
        ~question_mask[:, None, :], -1e9)
    attended = torch.einsum("bcq,bqd->bcd", scores.softmax(-1), hq)
    fused = self.dropout(torch.tanh(self.fusion(
        torch.cat([hc, attended, hc * attended], dim=-1))))
    start = self.start(fused)[..., 0].masked_fill(~context_mask, -1e9)
    end = self.end(fused)[..., 0].masked_fill(~context_mask, -1e9)
    return start, end


def bilstm_attention_qa(info: DatasetInfo) -> nn.Module:
  return BiLSTMAttentionQA(info)


# -- transformer.py ------------------------------------------------------------
class TransformerQA(nn.Module):
  """``nn.TransformerEncoderLayer`` encoders, ``nn.MultiheadAttention``
  cross-attention, the pooled question, start/end scores."""

  def __init__(self, info: DatasetInfo):
    super().__init__()
    t = transformer
    length = max(int(info.stats["max_length"]),
                 int(info.stats["question_length"]))

    def layer():
      return nn.TransformerEncoderLayer(t.D_MODEL, t.HEADS, t.FEEDFORWARD,
                                        t.DROPOUT, batch_first=True)

    self.embedding = nn.Embedding(_vocab_size(info), t.D_MODEL)
    self.positions = nn.Embedding(length, t.D_MODEL)
    self.context = nn.ModuleList([layer() for _ in range(t.LAYERS)])
    self.question = nn.ModuleList([layer() for _ in range(t.LAYERS)])
    self.cross = nn.MultiheadAttention(t.D_MODEL, t.HEADS, t.DROPOUT,
                                       batch_first=True)
    self.cross_norm = nn.LayerNorm(t.D_MODEL)
    self.dropout = nn.Dropout(t.DROPOUT)
    self.fusion = nn.Linear(3 * t.D_MODEL, t.D_MODEL)
    self.start = nn.Linear(t.D_MODEL, 1)
    self.end = nn.Linear(t.D_MODEL, 1)

  def encode(self, layers, tokens, mask):
    x = self.embedding(tokens) * math.sqrt(transformer.D_MODEL)
    x = self.dropout(x + self.positions(torch.arange(tokens.shape[1]))[None])
    for m in layers:
      x = m(x, src_key_padding_mask=~mask)
    return x

  def forward(self, context, context_mask, question, question_mask):
    c = self.encode(self.context, context, context_mask)
    q = self.encode(self.question, question, question_mask)
    x, _ = self.cross(c, q, q, key_padding_mask=~question_mask,
                      need_weights=False)
    x = self.cross_norm(c + self.dropout(x))
    w = question_mask[..., None].to(q.dtype)
    pooled = ((q * w).sum(1) / w.sum(1).clamp(min=1))[:, None].expand_as(c)
    f = self.dropout(torch.relu(self.fusion(torch.cat([c, x, pooled], -1))))
    start = self.start(f)[..., 0].masked_fill(~context_mask, -1e9)
    end = self.end(f)[..., 0].masked_fill(~context_mask, -1e9)
    return start, end


def transformer_qa(info: DatasetInfo) -> nn.Module:
  return TransformerQA(info)


# -- distilbert.py -------------------------------------------------------------
def distilbert_sentiment(info: DatasetInfo) -> nn.Module:
  """transformers' ``DistilBertForSequenceClassification`` of the model's
  configuration (the checkpoint's, or distilbert-base's)."""
  import transformers  # pylint: disable=import-outside-toplevel
  config = distilbert.config_for(info)
  return transformers.DistilBertForSequenceClassification(
      transformers.DistilBertConfig(num_labels=info.num_classes,
                                    **dataclasses.asdict(config)))
