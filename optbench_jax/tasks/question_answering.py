"""Extractive question answering: the answer is a span of the context.

Inputs (``fit`` builds the vocabulary from the training contexts and
questions and encodes every split): ``batch["context"]`` ``(N, Lc)`` and
``batch["question"]`` ``(N, 64)`` word ids (id 0 is padding),
``batch["start"]``/``batch["end"]`` the answer's first and last context
token, ``batch["answerable"]`` whether the example has such a span, and
``batch["uid"]``, the example's key into the host-side table of contexts,
token offsets and gold answers (``tasks/_text.References``). The model is
called as ``model(context, context_mask, question, question_mask)`` and
returns ``(start_logits, end_logits)``, each ``(N, Lc)``.

Loss: the sum of the start- and end-position cross-entropies (the source
benchmark's), over answerable examples. Metrics: SQuAD v1.1 F1 (primary),
exact match, precision and recall of the decoded answer text against every
gold answer (``tasks/_squad.py``): the best span with ``end ≥ start`` and at
most 30 tokens, on the device, its text cut from the original context on the
host. Every evaluated example is scored, answerable or not.

Training labels. An answer is located by its character offset (SQuAD) or,
when the dataset gives none (TweetQA's free-text answers), by its first
case-insensitive occurrence in the context; the first gold answer that maps
onto the kept context tokens is the label. Examples with no such span (the
answer is not in the tweet, or truncation cut it) cannot supervise a span:
they get no training loss (``answerable`` 0) but are scored in evaluation
like every other, so a model gets no credit for skipping them. The share of
such examples per split is recorded in ``info.stats``; a split with none
answerable (``--max-length`` too short for any answer) is refused, as its
loss would be 0/0. (How the source benchmark labelled them is not
documented.)

Defaults: plateau schedule, clipping at 1.0, contexts of 384 tokens (the
datasets' entries set 256 for TweetQA), questions of 64, a 20,000-word
vocabulary (our choice).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optbench_jax.errors import OptBenchError
from optbench_jax.tasks import _squad, _text
from optbench_jax.tasks.base import Task, register, with_stats

QUESTION_LENGTH = 64
MAX_ANSWER_LENGTH = 30


class QuestionAnswering(Task):
  name = "question_answering"
  primary_metric = "f1"
  higher_is_better = True
  default_scheduler = "plateau"
  default_grad_clip = 1.0
  default_label_smoothing = 0.0
  default_max_length = 384
  default_vocab_size = 20_000
  gathered_stats = ("uid", "start", "end")
  reference_loss = "optbench_jax.reference.torch_losses.SpanLoss"

  def model_inputs(self, batch):
    context, question = batch["context"], batch["question"]
    return (context, _text.token_mask(context), question,
            _text.token_mask(question))

  def fit(self, splits, config=None, cache_dir=None, model=None):
    config = _text.require_config(config, model, self.name)
    corpus = list(splits.train["context"]) + list(splits.train["question"])
    vocabulary, _ = _text.fit_vocabulary(config, model, corpus, cache_dir)
    references = _text.References()
    unanswerable = {}

    def encode(arrays, split):
      contexts = [str(c) for c in arrays["context"]]
      context = vocabulary.encode(contexts, config.max_length)
      question = vocabulary.encode([str(q) for q in arrays["question"]],
                                   QUESTION_LENGTH)
      n = len(contexts)
      start, end = np.zeros(n, np.int32), np.zeros(n, np.int32)
      answerable = np.zeros(n, np.float32)
      for i in range(n):
        span = answer_tokens(contexts[i], context.offsets[i],
                             int(np.sum(context.ids[i] != 0)),
                             arrays["answers"][i], arrays["answer_starts"][i])
        if span is not None:
          start[i], end[i] = span
          answerable[i] = 1.0
      unanswerable[split] = float(1.0 - answerable.mean()) if n else 0.0
      if n and not answerable.any():  # a loss of 0/0: NaN, not a result
        raise OptBenchError(
            f"--max-length {config.max_length}: no {split} example keeps "
            f"its answer in its context cut at {config.max_length} "
            f"token(s); give a larger --max-length (default: the dataset's "
            f"or {self.default_max_length})")
      records = ([None] * n if split == "train" else
                 [(contexts[i], context.offsets[i],
                   [str(a) for a in arrays["answers"][i]]) for i in range(n)])
      return {"context": context.ids, "question": question.ids,
              "start": start, "end": end, "answerable": answerable,
              "uid": references.add(records)}

    out = dataclasses.replace(
        splits, train=encode(splits.train, "train"),
        val=encode(splits.val, "val"),
        test=None if splits.test is None else encode(splits.test, "test"))
    return with_stats(out, vocab_size=vocabulary.size,
                      max_length=config.max_length,
                      question_length=QUESTION_LENGTH,
                      unanswerable=unanswerable, references=references,
                      vocabulary=vocabulary)

  def encoded_info(self, info):
    return _text.encoded_info(info, question_length=int(
        info.stats.get("question_length", QUESTION_LENGTH)))

  def random_batch(self, info, n, rng):
    """Contexts and questions of random lengths, an answer span of at most
    ``MAX_ANSWER_LENGTH`` tokens inside each context, every example
    answerable; ``uid`` 0..n-1 (no reference texts: not for
    ``finalize``)."""
    stats = self.encoded_info(info).stats
    vocab = int(stats["vocab_size"])
    context = _text.random_ids(rng, n, stats["max_length"], vocab)
    question = _text.random_ids(rng, n, stats["question_length"], vocab)
    length = _text.token_mask(context).sum(1)
    start = (rng.random(n) * length).astype(np.int32)
    span = np.minimum(length - start, MAX_ANSWER_LENGTH)
    end = start + (rng.random(n) * span).astype(np.int32)
    return {"context": context, "question": question, "start": start,
            "end": end.astype(np.int32), "answerable": np.ones(n, np.float32),
            "uid": np.arange(n, dtype=np.int32)}

  def loss(self, outputs, batch, label_smoothing):
    start_logits, end_logits = outputs
    length = start_logits.shape[-1]
    per_example = sum(
        optax.softmax_cross_entropy(
            logits.astype(jnp.float32), optax.smooth_labels(
                jax.nn.one_hot(target, length), label_smoothing))
        for logits, target in ((start_logits, batch["start"]),
                               (end_logits, batch["end"])))
    weight = batch["mask"] * batch["answerable"]
    return jnp.sum(per_example * weight), jnp.sum(weight)

  def eval_stats(self, outputs, batch, info):
    loss_sum, count = self.loss(outputs, batch, 0.0)
    start, end, _ = _squad.best_spans(
        outputs[0], outputs[1], _text.token_mask(batch["context"]),
        MAX_ANSWER_LENGTH)
    return {"loss_sum": loss_sum, "count": count, "uid": batch["uid"],
            "start": start, "end": end}

  def finalize(self, stats, info):
    count = float(stats["count"])
    references = info.stats["references"]
    predictions, golds = [], []
    for uid, start, end in zip(stats["uid"], stats["start"], stats["end"]):
      context, offsets, answers = references[uid]
      predictions.append(_squad.span_text(context, offsets, start, end))
      golds.append(answers)
    scores = (_squad.squad_scores(predictions, golds) if predictions else
              {"f1": 0.0, "exact_match": 0.0, "precision": 0.0,
               "recall": 0.0})
    return {"loss": float(stats["loss_sum"]) / count if count else math.nan,
            **scores}


def answer_tokens(context, offsets, n_tokens, answers, starts):
  """``(start, end)`` tokens of the first gold answer that maps onto the
  kept context tokens, or None (see the module docstring)."""
  starts = list(starts) if starts is not None else []
  for k, answer in enumerate(answers):
    answer = str(answer)
    char = starts[k] if k < len(starts) and starts[k] is not None else -1
    if char is None or int(char) < 0:
      char = _squad.find_answer_span(context, answer)
      if char is None:
        continue
    span = _squad.char_span_to_tokens(offsets, n_tokens, int(char), answer)
    if span is not None:
      return span
  return None


register(QuestionAnswering())
