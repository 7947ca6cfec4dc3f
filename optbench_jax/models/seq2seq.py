"""Sequence-to-sequence transformers (translation, summarisation).

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
  (:mod:`~optbench_jax.nn.attention`, ``decode=True``: arrays
  ``(B, max_length, heads, d_h)`` and a scalar ``cache_index``); the LSTM
  caches its state ``h``, ``c`` (and the fed-back attentional vector)
  ``(B, H)``. The memory is passed to every step.

The transformers (Vaswani et al. 2017) follow ``torch.nn.Transformer``
(``batch_first=True``): token embeddings (separate source and target
tables) plus positions, a stack of encoder layers and one of decoder layers
(:class:`~optbench_jax.nn.attention.TransformerEncoderLayer`,
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

``lstm_seq2seq`` (``seq2seq_lstm.py``) follows the same interface.

PyTorch. ``optbench_jax.reference.torch_generation.seq2seq_twin(model)``
builds the PyTorch module computing the same function as a built model (the
transformers from ``nn.Transformer``, the LSTM from ``nn.LSTM``/
``nn.Linear``), called as ``twin(src, src_mask, tgt_in, tgt_mask)`` with
LongTensors and bool masks; every model's :meth:`conversion` gives the
:mod:`~optbench_jax.nn.convert` rules between its state dict and our
variables.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from optbench_jax.data import text
from optbench_jax.data.base import DatasetInfo
from optbench_jax.models.base import ModelSpec, Twin, register, vocabulary_of
from optbench_jax.nn import attention, convert
from optbench_jax.nn.layers import Dense, Embed, at_least_float32, check_init

__all__ = ["TransformerSeq2Seq", "BartSmall", "TinyTransformerSeq2Seq",
           "register_seq2seq"]


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

  # -- PyTorch conversion --------------------------------------------------------
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


# -- registry --------------------------------------------------------------------
# One lower-cased byte-level BPE vocabulary over sources and targets.
bpe_vocabulary = vocabulary_of(text.bpe_vocabulary, lowercase=True)


def register_seq2seq(cls: type, name: str, task: str, description: str,
                     widths: Optional[dict] = None) -> None:
  """Registers ``cls`` (a model of the interface above) as ``name``: one
  vocabulary for both sides, positions for the longer of the source and
  the target (with BOS), the twin in
  ``optbench_jax.reference.torch_generation``, the model's conversion;
  ``widths`` what ``--width`` scales (``ModelSpec.widths``; default: the
  transformers' ``d_model``, a multiple of the heads, and feed-forward)."""

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
      torch_twin=Twin(f"optbench_jax.reference.torch_generation.{name}"),
      conversion=lambda info: factory(info, "torch").conversion(),
      vocabulary=bpe_vocabulary,
      widths=widths or {"d_model": cls.num_heads, "dim_feedforward": 1}))


register_seq2seq(TransformerSeq2Seq, "transformer_seq2seq",
                 "machine_translation",
                 "nn.Transformer: d_model 256, 4 heads, 2+2 post-LN layers, "
                 "sinusoidal positions")
register_seq2seq(BartSmall, "bart_small", "text_summarization",
                 "BART-style (not pretrained): d_model 256, 4 heads, 2+2 "
                 "layers, GELU, learned positions, embedding norm, tied "
                 "output")
register_seq2seq(TinyTransformerSeq2Seq, "tiny_transformer_seq2seq",
                 "text_summarization",
                 "d_model 256, 4 heads, 3+3 pre-LN layers, FF 1024, tied "
                 "bias-free output")
