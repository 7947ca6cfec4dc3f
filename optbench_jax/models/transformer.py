"""Transformer text models built from ``nn/attention.py``'s blocks.

* ``transformer_qa`` (the source benchmark's QA Transformer): a shared word
  embedding (``d_model`` 256, scaled by √d) plus learned position
  embeddings; separate context and question encoders (2 post-LN
  ``TransformerEncoderLayer`` each, 4 heads, feed-forward 1024, dropout
  0.1); each context position attends over the question (cross-attention,
  residual and layer norm); the question's masked mean is concatenated with
  every context position, ``f = ReLU(W [c; x; q̄])`` (256), and dense start
  and end scores per context position (padding positions −1e9).

The source states d_model, heads, separate encoders, learned positions and
the mean-pooled question; layer count, feed-forward size and dropout are
not stated (ours as above). Its PyTorch twin
(``optbench_jax.reference.torch_text.transformer_qa``) is built from
``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention``.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from optbench_jax.data import text
from optbench_jax.data.base import DatasetInfo
from optbench_jax.models.base import ModelSpec, Twin, register, vocabulary_of
from optbench_jax.nn import attention, convert
from optbench_jax.nn.layers import Dense, Embed, masked_logits

D_MODEL, HEADS, LAYERS, FEEDFORWARD, DROPOUT = 256, 4, 2, 1024, 0.1


class TransformerQA(nn.Module):
  vocab_size: int
  max_length: int
  d_model: int = D_MODEL
  num_heads: int = HEADS
  num_layers: int = LAYERS
  dim_feedforward: int = FEEDFORWARD
  dropout: float = DROPOUT
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  def setup(self):
    dense = lambda n, name: Dense(n, dtype=self.dtype,
                                  init_scheme=self.init_scheme, name=name)
    self.embedding = Embed(self.vocab_size, self.d_model,
                           init_scheme=self.init_scheme, name="embedding")
    self.positions = attention.PositionEmbedding(
        self.max_length, self.d_model, self.init_scheme, dtype=self.dtype,
        name="positions")
    self.encoders = {side: [attention.TransformerEncoderLayer(
        self.d_model, self.num_heads, self.dim_feedforward, self.dropout,
        init_scheme=self.init_scheme, dtype=self.dtype, name=f"{side}_{i}")
                            for i in range(self.num_layers)]
                     for side in ("context", "question")}
    self.cross = attention.MultiHeadAttention(
        self.num_heads, self.d_model, self.dropout,
        init_scheme=self.init_scheme, dtype=self.dtype, name="cross")
    self.cross_norm = nn.LayerNorm(1e-5, dtype=self.dtype,
                                   use_fast_variance=False, name="cross_norm")
    self.fusion = dense(self.d_model, "fusion")
    self.start = dense(1, "start")
    self.end = dense(1, "end")
    self.drop = nn.Dropout(self.dropout)

  def _encode(self, tokens, mask, side, train):
    x = self.embedding(tokens) * math.sqrt(self.d_model)
    x = x + self.positions(jnp.arange(tokens.shape[1]))[None]
    x = self.drop(x.astype(self.dtype), deterministic=not train)
    for layer in self.encoders[side]:
      x = layer(x, attention.padding_mask(mask), train=train)
    return x

  def __call__(self, context, context_mask, question, question_mask,
               train: bool = False):
    c = self._encode(context, context_mask, "context", train)
    q = self._encode(question, question_mask, "question", train)
    x = self.cross(c, q, attention.padding_mask(question_mask), train=train)
    x = self.cross_norm(c + self.drop(x, deterministic=not train))
    weights = question_mask[..., None].astype(q.dtype)
    pooled = jnp.sum(q * weights, 1) / jnp.maximum(jnp.sum(weights, 1), 1)
    pooled = jnp.broadcast_to(pooled[:, None], c.shape)
    f = nn.relu(self.fusion(jnp.concatenate([c, x, pooled], axis=-1)))
    f = self.drop(f, deterministic=not train)
    return (masked_logits(self.start(f)[..., 0], context_mask),
            masked_logits(self.end(f)[..., 0], context_mask))


def _factory(info, init_scheme):
  return TransformerQA(int(info.stats["vocab_size"]),
                       max(int(info.stats["max_length"]),
                           int(info.stats["question_length"])),
                       init_scheme=init_scheme)


def _rules(info):
  del info
  rules = [convert.Rule("embedding", ("embedding",), convert.embedding()),
           convert.Rule("positions", ("positions",), convert.embedding())]
  for side in ("context", "question"):
    for i in range(LAYERS):
      rules += attention.torch_encoder_layer_rules(f"{side}.{i}",
                                                   (f"{side}_{i}",))
  rules += attention.torch_attention_rules("cross", ("cross",))
  rules += [convert.Rule("cross_norm", ("cross_norm",), convert.layer_norm())]
  rules += [convert.Rule(n, (n,), convert.dense())
            for n in ("fusion", "start", "end")]
  return rules


register(ModelSpec(
    name="transformer_qa", task="question_answering", factory=_factory,
    example_info=DatasetInfo(
        name="example", task="question_answering", input_shape=(384,),
        stats={"vocab_size": 20_000, "max_length": 384,
               "question_length": 64}),
    description="context and question Transformer encoders (d_model 256, 4 "
    "heads, 2 layers each), cross-attention, pooled question, start/end "
    "pointers",
    torch_twin=Twin("optbench_jax.reference.torch_text.transformer_qa"),
    conversion=_rules,
    vocabulary=vocabulary_of(text.word_vocabulary, lowercase=True),
    widths={"d_model": HEADS, "dim_feedforward": 1}))
