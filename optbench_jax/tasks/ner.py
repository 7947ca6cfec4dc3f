"""Named-entity recognition: one tag per word, a linear-chain CRF on top.

Inputs (``fit`` builds them from the training split and encodes every
split): ``batch["tokens"]`` ``(N, L)`` word ids (lower-cased words; id 0 is
padding), ``batch["chars"]`` ``(N, L, W)`` character ids of each word (case
kept, ``W`` = 16 characters), ``batch["tags"]`` ``(N, L)`` gold tag ids; the
model is called as ``model(tokens, chars, mask)`` and returns the CRF's
inputs ``{"emissions", "transitions", "start", "end"}`` and, when not
training, its Viterbi decoding ``"predicted"`` (``nn/crf.py``).

Loss: the CRF negative log-likelihood of the gold tag sequence, per
sentence (summed over tokens), averaged over sentences. Metrics, from the
decoded tags of the whole evaluation split: entity-level F1 (primary),
precision and recall by ``seqeval`` (CoNLL's exact-span matching), and the
source benchmark's token-level micro scores over entity tags excluding
``O`` and padding (``token_f1_excl_o``, ...), labelled as such
(``tasks/_tagging.py`` defines both). Defaults: plateau schedule, clipping
at 1.0, 128 words per sentence, a 20,000-word vocabulary (our choice; the
source states none).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from optbench_jax.data.text import CharVocabulary
from optbench_jax.nn import crf
from optbench_jax.tasks import _tagging, _text
from optbench_jax.tasks.base import (Task, random_integers, register,
                                     with_stats)

MAX_WORD_LENGTH = 16


class NamedEntityRecognition(Task):
  name = "ner"
  primary_metric = "f1"
  higher_is_better = True
  default_scheduler = "plateau"
  default_grad_clip = 1.0
  default_label_smoothing = 0.0
  default_max_length = 128
  default_vocab_size = 20_000
  gathered_stats = ("predicted", "tags", "token_mask")
  reference_loss = "optbench_jax.reference.torch_losses.CRFLoss"

  def model_inputs(self, batch):
    return batch["tokens"], batch["chars"], _text.token_mask(batch["tokens"])

  def fit(self, splits, config=None, cache_dir=None, model=None):
    """Word and character vocabularies of the training sentences; every
    split encoded to ``config.max_length`` words."""
    config = _text.require_config(config, model, self.name)
    words = list(splits.train["tokens"])
    vocabulary, _ = _text.fit_vocabulary(config, model, words, cache_dir)
    chars = CharVocabulary.build(words)
    length = config.max_length
    truncated = []

    def encode(arrays):
      sentences = [list(s) for s in arrays["tokens"]]
      tags = np.zeros((len(sentences), length), np.int32)
      for i, row in enumerate(arrays["tags"]):
        row = list(row)[:length]
        tags[i, :len(row)] = row
      truncated.append(float(np.mean([len(s) > length for s in sentences])))
      return {"tokens": vocabulary.encode_words(sentences, length),
              "chars": chars.encode(sentences, length,
                                    MAX_WORD_LENGTH).astype(np.int32),
              "tags": tags}

    return with_stats(
        _text.encode_splits(splits, encode), vocab_size=vocabulary.size,
        char_vocab_size=chars.size, max_length=length,
        truncated_train=truncated[0], vocabulary=vocabulary)

  def encoded_info(self, info):
    return _text.encoded_info(info)

  def random_batch(self, info, n, rng):
    """Sentences of random lengths: word ids, the character ids of each
    word (random lengths up to ``MAX_WORD_LENGTH``), uniform tags over
    ``info.extra["tag_names"]``; padding words have no characters and tag
    0."""
    info = self.encoded_info(info)
    length = info.stats["max_length"]
    tokens = _text.random_ids(rng, n, length, int(info.stats["vocab_size"]))
    chars = _text.random_ids(rng, n * length, MAX_WORD_LENGTH,
                             int(info.stats["char_vocab_size"])).reshape(
                                 n, length, MAX_WORD_LENGTH)
    real = _text.token_mask(tokens)
    chars[~real] = 0
    tags = random_integers(rng, 0, len(info.extra["tag_names"]), (n, length))
    return {"tokens": tokens, "chars": chars,
            "tags": np.where(real, tags, 0).astype(np.int32)}

  def loss(self, outputs, batch, label_smoothing):
    del label_smoothing  # a CRF has no label smoothing
    nll = crf.nll(outputs["emissions"], batch["tags"],
                  _text.token_mask(batch["tokens"]), outputs["transitions"],
                  outputs["start"], outputs["end"])
    return jnp.sum(nll * batch["mask"]), jnp.sum(batch["mask"])

  def eval_stats(self, outputs, batch, info):
    loss_sum, count = self.loss(outputs, batch, 0.0)
    real = _text.token_mask(batch["tokens"]) & (batch["mask"][:, None] > 0)
    return {"loss_sum": loss_sum, "count": count,
            "predicted": outputs["predicted"], "tags": batch["tags"],
            "token_mask": real.astype(jnp.int8)}

  def finalize(self, stats, info):
    count = float(stats["count"])
    names = list(info.extra["tag_names"])
    true, pred = np.asarray(stats["tags"]), np.asarray(stats["predicted"])
    mask = np.asarray(stats["token_mask"]) > 0
    return {"loss": float(stats["loss_sum"]) / count if count else math.nan,
            **_tagging.entity_scores(true, pred, mask, names),
            **_tagging.token_scores(true, pred, mask, names.index("O"))}


register(NamedEntityRecognition())
