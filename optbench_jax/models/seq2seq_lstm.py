"""``lstm_seq2seq``: a BiLSTM encoder and a Luong-attention LSTM decoder.

The sequence-to-sequence interface of ``seq2seq.py`` (teacher forcing,
``encode``, ``init_cache`` and ``decode_step``); the decoder's cache is its
state ``h``, ``c`` (and the fed-back attentional vector) ``(B, H)``. One
family in two modules: this one registers its model with
:func:`optbench_jax.models.seq2seq.register_seq2seq`, as the transformers
are registered, and imports nothing else of that module.

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

The PyTorch twin (``optbench_jax.reference.torch_generation.lstm_seq2seq``)
is built from ``nn.LSTM`` and ``nn.Linear``; :meth:`LSTMSeq2Seq.conversion`
maps its state dict onto this model.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from optbench_jax.models.seq2seq import register_seq2seq
from optbench_jax.nn import attention, convert
from optbench_jax.nn.curvature import KFAC_INPUTS, PERTURBATIONS
from optbench_jax.nn.layers import Dense, Embed, at_least_float32
from optbench_jax.nn.recurrent import LSTM, torch_rnn_rules

__all__ = ["LSTMSeq2Seq"]


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

  # -- PyTorch conversion --------------------------------------------------------
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


register_seq2seq(LSTMSeq2Seq, "lstm_seq2seq", "machine_translation",
                 "BiLSTM encoder 256, bridge, LSTM decoder with Luong "
                 "attention", widths={"embed": 1, "hidden": 1})
