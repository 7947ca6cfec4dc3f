"""Sentiment analysis: text classification of whole reviews or sentences.

Inputs: ``batch["tokens"]``, ``(N, L)`` int32 ids of the text in the
model's vocabulary (``fit`` builds it from the training split and encodes
every split; id 0 is padding), the model called as ``model(tokens, mask)``.
Loss: softmax cross-entropy with label smoothing 0.05 (the source
benchmark's), summed over valid examples. Metrics: accuracy (primary) and
macro precision / recall / F1 from a confusion matrix accumulated over the
whole evaluation split. Defaults as the source benchmark's NLP tasks:
reduce-on-plateau schedule, gradient clipping at global norm 1.0, texts cut
at 128 tokens, and (our choice, the source states none) a 20,000-entry
vocabulary cap.
"""
from __future__ import annotations

import numpy as np

from optbench_jax.tasks import _text
from optbench_jax.tasks._classification import Classification
from optbench_jax.tasks.base import random_integers, register, with_stats


class SentimentAnalysis(Classification):
  name = "sentiment_analysis"
  default_scheduler = "plateau"
  default_grad_clip = 1.0
  default_label_smoothing = 0.05
  default_max_length = 128
  default_vocab_size = 20_000
  reference_loss = "optbench_jax.reference.torch_losses.SentimentLoss"

  def model_inputs(self, batch):
    return batch["tokens"], _text.token_mask(batch["tokens"])

  def fit(self, splits, config=None, cache_dir=None, model=None):
    """Builds the model's vocabulary from the training texts and encodes
    every split to ``config.max_length`` tokens."""
    config = _text.require_config(config, model, self.name)
    vocabulary, pretrained = _text.fit_vocabulary(
        config, model, list(splits.train["text"]), cache_dir)
    truncated = []

    def encode(arrays):
      encoded = vocabulary.encode(list(arrays["text"]), config.max_length)
      truncated.append(float(np.mean(encoded.truncated)))
      return {"tokens": encoded.ids,
              "label": np.asarray(arrays["label"], np.int32)}

    return with_stats(
        _text.encode_splits(splits, encode), vocab_size=vocabulary.size,
        max_length=config.max_length, pretrained=pretrained,
        truncated_train=truncated[0], vocabulary=vocabulary)

  def encoded_info(self, info):
    return _text.encoded_info(info)

  def random_batch(self, info, n, rng):
    """Encoded texts of random lengths, uniform labels."""
    info = self.encoded_info(info)
    return {"tokens": _text.random_ids(rng, n, info.stats["max_length"],
                                       int(info.stats["vocab_size"])),
            "label": random_integers(rng, 0, info.num_classes, n
                                     ).astype(np.int32)}


register(SentimentAnalysis())
