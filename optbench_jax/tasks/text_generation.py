"""Language modelling (the source's "text generation"): next-token
prediction on blocks of a token stream.

``fit`` trains the model's subword vocabulary (byte-level BPE) on the
training split, joins each split's texts into one stream (``[EOS]`` after
each text) and cuts it into non-overlapping blocks of ``max_length + 1``
tokens (the last one right-padded): ``batch["tokens"]`` ``(N, L + 1)``. The
model reads ``tokens[:, :-1]`` (``model(tokens, mask)``, causal) and
predicts ``tokens[:, 1:]``.

Loss: next-token cross-entropy summed over real target tokens, divided by
their number (a per-token mean, padding masked out). Metrics, on the
validation split: perplexity = exp(mean token NLL) (primary, lower is
better; honest, unlike the source benchmark's proxy), bits per token =
mean NLL / ln 2, and token accuracy (the argmax next token). Defaults:
plateau schedule, clipping at 1.0, blocks of 64 tokens, a 30,000-entry vocabulary (our
choice for BPE; the source's word vocabularies were uncapped).
"""
from __future__ import annotations

import math

import numpy as np

from optbench_jax.data import text
from optbench_jax.tasks import _generation_metrics, _text
from optbench_jax.tasks.base import (Task, random_integers, register,
                                     with_stats)


def blocks(ids: list[int], length: int) -> np.ndarray:
  """Non-overlapping ``(N, length + 1)`` blocks of a token stream; block i
  predicts tokens ``i·length + 1 … (i+1)·length`` (right-padded with 0)."""
  n = max(1, math.ceil((len(ids) - 1) / length))
  out = np.zeros((n, length + 1), np.int32)
  for i in range(n):
    piece = ids[i * length:i * length + length + 1]
    out[i, :len(piece)] = piece
  return out


class LanguageModelling(Task):
  name = "text_generation"
  primary_metric = "perplexity"
  higher_is_better = False
  default_scheduler = "plateau"
  default_grad_clip = 1.0
  default_label_smoothing = 0.0
  default_max_length = 64
  default_vocab_size = 30_000
  default_eval_batch_size = 64   # logits are batch × length × vocabulary
  sample_unit = "documents"      # --max-samples caps documents, not sequences
  reference_loss = "optbench_jax.reference.torch_losses.LanguageModelLoss"

  def model_inputs(self, batch):
    tokens = batch["tokens"][:, :-1]
    return tokens, _text.token_mask(tokens)

  def fit(self, splits, config=None, cache_dir=None, model=None):
    config = _text.require_config(config, model, self.name)
    vocabulary, _ = _text.fit_vocabulary(
        config, model, [str(t) for t in splits.train["text"]], cache_dir)
    eos = vocabulary.id(text.EOS)
    counts = []

    def encode(arrays):
      texts = [str(t) for t in arrays["text"] if str(t).strip()]
      encoded = vocabulary.tokenizer.encode_batch(texts)
      stream = [i for e in encoded for i in (*e.ids, eos)]
      counts.append(len(stream))
      return {"tokens": blocks(stream, config.max_length)}

    out = _text.encode_splits(splits, encode)
    return with_stats(out, vocab_size=vocabulary.size,
                      max_length=config.max_length, vocabulary=vocabulary,
                      stream_tokens=dict(zip(("train", "val", "test"),
                                             counts)))

  def encoded_info(self, info):
    return _text.encoded_info(info)

  def random_batch(self, info, n, rng):
    """Full blocks of ``max_length + 1`` random ordinary ids, as ``fit``
    cuts a stream (only its last block is padded): every target is
    real."""
    info = self.encoded_info(info)
    return {"tokens": random_integers(
        rng, _text.FIRST_GENERATION_ID, int(info.stats["vocab_size"]),
        (n, info.stats["max_length"] + 1)).astype(np.int32)}

  def target_tokens(self, arrays):
    return _text.token_mask(np.asarray(arrays["tokens"])[:, 1:]).sum(1)

  def loss(self, outputs, batch, label_smoothing):
    return _text.token_statistics(outputs, batch["tokens"][:, 1:],
                                  batch["mask"], label_smoothing)[:2]

  def eval_stats(self, outputs, batch, info):
    loss_sum, count, correct = _text.token_statistics(
        outputs, batch["tokens"][:, 1:], batch["mask"], 0.0)
    return {"loss_sum": loss_sum, "count": count, "correct": correct}

  def finalize(self, stats, info):
    count = float(stats["count"])
    if not count:
      return {"loss": math.nan, "perplexity": math.nan,
              "bits_per_token": math.nan, "token_accuracy": math.nan}
    return {"loss": float(stats["loss_sum"]) / count,
            **_generation_metrics.perplexity(float(stats["loss_sum"]), count),
            "token_accuracy": float(stats["correct"]) / count}


register(LanguageModelling())
