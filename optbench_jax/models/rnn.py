"""Recurrent text models: sentiment, NER taggers and extractive QA.

* ``lstm_sentiment`` (the source benchmark's): word embedding 128 → one LSTM
  layer of 128 → its last real step's hidden state → dropout 0.5 → dense to
  the classes.
* ``lstm_crf_ner`` (Huang et al. 2015): word embedding 100 → dropout 0.5 →
  BiLSTM 128 per direction → dropout 0.5 → dense emissions → linear-chain
  CRF (``nn/crf.py``; BIO constraints when decoding).
* ``bilstm_crf_charcnn_ner`` (Ma & Hovy 2016; Lample et al. 2016): the same,
  with each word's embedding concatenated with a character CNN's: character
  embedding 30 → convolution of width 3, 50 filters → ReLU → max over the
  word's characters.
* ``bilstm_attention_qa`` (the source benchmark's; attention as Seo et al.
  2017's context-to-question step): a shared word embedding 256, separate
  BiLSTMs (256 per direction) over the context ``h_c`` and the question
  ``h_q``, dot-product attention of each context position over the question,
  ``q̃ = softmax(h_c h_qᵀ) h_q``, the fusion ``tanh(W [h_c; q̃; h_c ⊙ q̃])``
  (256), dropout 0.1, and a dense start and end score per context position.

Dimensions the source does not state (NER, QA dropout) are the cited
papers' usual values. Inputs are right-padded id arrays with their masks;
recurrences are ``nn/recurrent.py``'s (one ``lax.scan`` per layer).
PyTorch twins (``torch_twin``: ``optbench_jax.reference.torch_text``) use
``nn.Embedding``, ``nn.LSTM`` over packed sequences, ``nn.Conv1d`` and
``nn.Linear``; ``conversion`` maps their state dicts onto these models.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.data import text
from optbench_jax.data.base import DatasetInfo
from optbench_jax.errors import OptBenchError
from optbench_jax.models.base import ModelSpec, Twin, register, vocabulary_of
from optbench_jax.nn import convert, crf
from optbench_jax.nn.layers import (NEG, Conv, Dense, Embed, at_least_float32,
                                    masked_logits)
from optbench_jax.nn.recurrent import LSTM, torch_rnn_rules

# ``nn.Conv1d`` (out, in, k) <-> a 1-D ``Conv`` (k, in, out).
_transpose = lambda w: np.transpose(w, (2, 1, 0))
CONV1D = {"weight": convert.Leaf("params", "kernel", _transpose, _transpose),
          "bias": convert.Leaf("params", "bias")}
# The twin's ``crf_transitions``/``crf_start``/``crf_end`` <-> ``CRF``'s.
CRF_PARAMETERS = {f"crf_{n}": convert.Leaf("params", n)
                  for n in ("transitions", "start", "end")}


# What ``--width`` scales (``ModelSpec.widths``): embedding and hidden sizes.
RNN_WIDTHS = {"embed": 1, "hidden": 1}
# Lower-cased words of the training split (``data/text.py``).
word_vocabulary = vocabulary_of(text.word_vocabulary, lowercase=True)


def _vocab_size(info: DatasetInfo) -> int:
  return int(info.stats["vocab_size"])


# -- sentiment -----------------------------------------------------------------
class LSTMClassifier(nn.Module):
  vocab_size: int
  num_classes: int = 2
  embed: int = 128
  hidden: int = 128
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, tokens, mask, train: bool = False):
    x = Embed(self.vocab_size, self.embed, init_scheme=self.init_scheme,
              name="embedding")(tokens).astype(self.dtype)
    _, (h, _) = LSTM(self.hidden, init_scheme=self.init_scheme,
                     dtype=self.dtype, name="lstm")(x, mask, train=train)
    h = nn.Dropout(self.dropout, deterministic=not train)(h[-1])
    return Dense(self.num_classes, dtype=self.dtype,
                 init_scheme=self.init_scheme, name="fc")(h)


def _lstm_sentiment(info, init_scheme):
  return LSTMClassifier(_vocab_size(info), info.num_classes,
                        init_scheme=init_scheme)


def _lstm_sentiment_rules(info):
  del info
  return ([convert.Rule("embedding", ("embedding",), convert.embedding())]
          + torch_rnn_rules("lstm", ("lstm",), 1, False, LSTM.gates)
          + [convert.Rule("fc", ("fc",), convert.dense())])


register(ModelSpec(
    name="lstm_sentiment", task="sentiment_analysis",
    factory=_lstm_sentiment,
    example_info=DatasetInfo(name="example", task="sentiment_analysis",
                             num_classes=2, input_shape=(128,),
                             stats={"vocab_size": 20_000}),
    description="embedding 128, LSTM 128, dropout 0.5, dense (the source "
    "benchmark's)",
    torch_twin=Twin("optbench_jax.reference.torch_text.lstm_sentiment"),
    conversion=_lstm_sentiment_rules,
    vocabulary=word_vocabulary, widths=RNN_WIDTHS))


# -- NER -------------------------------------------------------------------------
class CharCNN(nn.Module):
  """Max over a word's characters of ReLU(conv1d(char embeddings))."""
  vocab_size: int
  embed: int = 30
  filters: int = 50
  width: int = 3
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, chars):
    batch, steps, length = chars.shape
    x = Embed(self.vocab_size, self.embed, init_scheme=self.init_scheme,
              name="embedding")(chars).astype(self.dtype)
    x = Conv(self.filters, (self.width,), padding=self.width // 2,
             dtype=self.dtype, init_scheme=self.init_scheme, name="conv")(
                 x.reshape(batch * steps, length, self.embed))
    x = nn.relu(x).reshape(batch, steps, length, self.filters)
    real = (chars != text.PAD_ID)[..., None]
    pooled = jnp.max(jnp.where(real, x, NEG), axis=2)
    return jnp.where(real.any(axis=2), pooled, 0).astype(self.dtype)


class BiLSTMCRF(nn.Module):
  """BiLSTM tagger with a CRF output layer (and optionally a CharCNN)."""
  vocab_size: int
  tag_names: Sequence[str]
  char_vocab_size: int = 0      # 0: no character CNN
  embed: int = 100
  hidden: int = 128
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, tokens, chars, mask, train: bool = False):
    x = Embed(self.vocab_size, self.embed, init_scheme=self.init_scheme,
              name="embedding")(tokens).astype(self.dtype)
    if self.char_vocab_size:
      x = jnp.concatenate([x, CharCNN(
          self.char_vocab_size, dtype=self.dtype,
          init_scheme=self.init_scheme, name="chars")(chars)], axis=-1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    h, _ = LSTM(self.hidden, bidirectional=True, init_scheme=self.init_scheme,
                dtype=self.dtype, name="lstm")(x, mask, train=train)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    emissions = Dense(len(self.tag_names), dtype=self.dtype,
                      init_scheme=self.init_scheme, name="emissions")(h)
    layer = crf.CRF(len(self.tag_names), _constraints(self.tag_names),
                    name="crf")
    out = {"emissions": at_least_float32(emissions),
           "transitions": layer.transitions, "start": layer.start,
           "end": layer.end}
    if not train:
      out["predicted"] = layer.decode(out["emissions"], mask)[0]
    return out


def _constraints(tag_names):
  try:
    return crf.allowed_transitions(tuple(tag_names), "BIO")
  except OptBenchError:   # tags outside the BIO scheme: unconstrained
    return None


def _tagger(chars: bool):
  def factory(info, init_scheme):
    return BiLSTMCRF(_vocab_size(info), tuple(info.extra["tag_names"]),
                     int(info.stats["char_vocab_size"]) if chars else 0,
                     init_scheme=init_scheme)
  return factory


def _tagger_rules(chars: bool):
  def rules(info):
    del info
    out = [convert.Rule("embedding", ("embedding",), convert.embedding())]
    if chars:
      out += [convert.Rule("char_embedding", ("chars", "embedding"),
                           convert.embedding()),
              convert.Rule("char_conv", ("chars", "conv"), CONV1D)]
    out += torch_rnn_rules("lstm", ("lstm",), 1, True, LSTM.gates)
    out += [convert.Rule("emissions", ("emissions",), convert.dense()),
            convert.Rule("", ("crf",), CRF_PARAMETERS)]
    return out
  return rules


_NER_EXAMPLE = DatasetInfo(
    name="example", task="ner", num_classes=9, input_shape=(128,),
    stats={"vocab_size": 20_000, "char_vocab_size": 100},
    extra={"tag_names": ("O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG",
                         "I-ORG", "B-PER", "I-PER")})
register(ModelSpec(
    name="lstm_crf_ner", task="ner", factory=_tagger(False),
    example_info=_NER_EXAMPLE,
    description="word embedding 100, BiLSTM 128, CRF (Huang et al. 2015)",
    torch_twin=Twin("optbench_jax.reference.torch_text.lstm_crf_ner"),
    conversion=_tagger_rules(False),
    vocabulary=word_vocabulary, widths=RNN_WIDTHS))
register(ModelSpec(
    name="bilstm_crf_charcnn_ner", task="ner", factory=_tagger(True),
    example_info=_NER_EXAMPLE,
    description="word embedding 100 + character CNN 50, BiLSTM 128, CRF "
    "(Ma & Hovy 2016)",
    torch_twin=Twin(
        "optbench_jax.reference.torch_text.bilstm_crf_charcnn_ner"),
    conversion=_tagger_rules(True),
    vocabulary=word_vocabulary, widths=RNN_WIDTHS))


# -- question answering ----------------------------------------------------------
class BiLSTMAttentionQA(nn.Module):
  vocab_size: int
  embed: int = 256
  hidden: int = 256
  dropout: float = 0.1
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, context, context_mask, question, question_mask,
               train: bool = False):
    embed = Embed(self.vocab_size, self.embed, init_scheme=self.init_scheme,
                  name="embedding")
    lstm = lambda name: LSTM(self.hidden, bidirectional=True,
                             init_scheme=self.init_scheme, dtype=self.dtype,
                             name=name)
    hc, _ = lstm("context_lstm")(embed(context).astype(self.dtype),
                                 context_mask, train=train)
    hq, _ = lstm("question_lstm")(embed(question).astype(self.dtype),
                                  question_mask, train=train)
    scores = at_least_float32(jnp.einsum("bcd,bqd->bcq", hc, hq))
    scores = jnp.where(question_mask[:, None, :], scores, NEG)
    attended = jnp.einsum("bcq,bqd->bcd",
                          jax.nn.softmax(scores, axis=-1).astype(hq.dtype), hq)
    fused = jnp.tanh(Dense(self.hidden, dtype=self.dtype,
                           init_scheme=self.init_scheme, name="fusion")(
                               jnp.concatenate([hc, attended, hc * attended],
                                               axis=-1)))
    fused = nn.Dropout(self.dropout, deterministic=not train)(fused)
    start = Dense(1, dtype=self.dtype, init_scheme=self.init_scheme,
                  name="start")(fused)[..., 0]
    end = Dense(1, dtype=self.dtype, init_scheme=self.init_scheme,
                name="end")(fused)[..., 0]
    return masked_logits(start, context_mask), masked_logits(end, context_mask)


def _bilstm_qa_rules(info):
  del info
  return ([convert.Rule("embedding", ("embedding",), convert.embedding())]
          + torch_rnn_rules("context_lstm", ("context_lstm",), 1, True,
                            LSTM.gates)
          + torch_rnn_rules("question_lstm", ("question_lstm",), 1, True,
                            LSTM.gates)
          + [convert.Rule(n, (n,), convert.dense())
             for n in ("fusion", "start", "end")])


register(ModelSpec(
    name="bilstm_attention_qa", task="question_answering",
    factory=lambda info, init_scheme: BiLSTMAttentionQA(
        _vocab_size(info), init_scheme=init_scheme),
    example_info=DatasetInfo(name="example", task="question_answering",
                             input_shape=(384,),
                             stats={"vocab_size": 20_000}),
    description="shared embedding 256, context and question BiLSTMs 256, "
    "dot-product attention, fusion, start/end pointers (the source "
    "benchmark's)",
    torch_twin=Twin("optbench_jax.reference.torch_text.bilstm_attention_qa"),
    conversion=_bilstm_qa_rules,
    vocabulary=word_vocabulary, widths=RNN_WIDTHS))
