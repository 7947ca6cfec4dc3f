"""What the sequence-to-sequence tasks (translation, summarization) share:
subword encoding, teacher-forced training, and evaluation on decoded text.

``fit`` trains the model's vocabulary (one byte-level BPE vocabulary over the
training sources and targets) and encodes every split: ``batch["source"]``
``(N, max_length)``, ``batch["target"]`` ``(N, target_length + 1)`` =
``[BOS] y [EOS]`` right-padded (truncated texts keep their ``[EOS]``), and
``batch["uid"]``, the example's key into the host-side table of source and
reference texts (``tasks/_text.References``), normalised as the vocabulary
normalises (lower-cased, the source's "lc"), so hypotheses and references
are compared alike.

Training: teacher forcing, the model reads ``target[:, :-1]`` and predicts
``target[:, 1:]``; cross-entropy with label smoothing (0.1, the source's),
summed over real target tokens and divided by their number.

Evaluation decodes every example of the split with the model's key/value
cache (``nn/decoding.py``: beam search with GNMT's length penalty,
``--beam-size 1`` = greedy; fixed shapes, one compiled batch step), turns
the tokens back into text (``[EOS]`` ends a hypothesis) and scores the
hypotheses against the reference texts on the host (``finalize``). The
teacher-forced loss and token accuracy (``tf_token_accuracy``) are reported
beside, as the named extras they are. A few source / reference /
hypothesis triples of each evaluation are written to the run directory
(``samples/``).

The model protocol: ``model(source, source_mask, target_in, target_mask)``
→ logits; ``encode(source, source_mask)`` → memory; ``init_cache(batch,
length)`` (with ``mutable=["cache"]``) creates the decoding cache;
``decode_step(memory, source_mask, tokens, position)`` (with
``mutable=["cache"]``) → the next token's logits.

Random batches (tests, benchmarks) are encoded already: sources of random
lengths, targets ``[BOS] y [EOS]`` as ``encode_targets`` lays them out
(:func:`random_targets`).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.data import text
from optbench_jax.nn import decoding
from optbench_jax.tasks import _text
from optbench_jax.tasks.base import (RandomGenerator, Task,
                                     random_integers, with_stats)

SAMPLE_COUNT = 5


def encode_targets(vocabulary: text.Vocabulary, texts, length: int
                   ) -> np.ndarray:
  """``(N, length + 1)``: ``[BOS] y [EOS]``, ``y`` cut to ``length - 1``."""
  bos, eos = vocabulary.id(text.BOS), vocabulary.id(text.EOS)
  out = np.zeros((len(texts), length + 1), np.int32)
  for i, e in enumerate(vocabulary.tokenizer.encode_batch(list(texts))):
    row = [bos, *e.ids[:length - 1], eos]
    out[i, :len(row)] = row
  return out


def random_targets(rng: RandomGenerator, n: int, length: int,
                   vocab_size: int) -> np.ndarray:
  """``(n, length + 1)`` as :func:`encode_targets` lays targets out: ``[BOS]
  y [EOS]`` right-padded, ``y`` random ordinary ids of a uniform random
  length in ``[1, length - 1]``."""
  words = random_integers(rng, 1, length, n)
  target = random_integers(rng, _text.FIRST_GENERATION_ID, vocab_size,
                           (n, length + 1)).astype(np.int32)
  target[:, 0] = _text.BOS_ID
  position = np.arange(length + 1)[None, :]
  target[position == words[:, None] + 1] = _text.EOS_ID
  target[position > words[:, None] + 1] = text.PAD_ID
  return target


def detokenize(vocabulary: text.Vocabulary, ids) -> str:
  """Text of generated ids, up to the first ``[EOS]``."""
  eos = vocabulary.id(text.EOS)
  ids = [int(i) for i in ids]
  if eos in ids:
    ids = ids[:ids.index(eos)]
  return vocabulary.decode(ids).strip()


class Seq2SeqTask(Task):
  """A sequence-to-sequence task; subclasses name the columns and scores."""
  higher_is_better = True
  default_scheduler = "plateau"
  default_grad_clip = 1.0
  default_label_smoothing = 0.1
  default_beam_size = 4
  default_length_penalty = 0.6
  default_eval_batch_size = 64   # logits are batch × length × vocabulary
  gathered_stats = ("uid", "decoded")
  source_column = "source"
  target_column = "target"
  reference_loss = "optbench_jax.reference.torch_losses.Seq2SeqLoss"

  def scores(self, hypotheses, references, sources) -> dict:
    raise NotImplementedError

  def model_inputs(self, batch):
    source, target_in = batch["source"], batch["target"][:, :-1]
    return (source, _text.token_mask(source), target_in,
            _text.token_mask(target_in))

  def fit(self, splits, config=None, cache_dir=None, model=None):
    config = _text.require_config(config, model, self.name)
    sources = [str(t) for t in splits.train[self.source_column]]
    targets = [str(t) for t in splits.train[self.target_column]]
    vocabulary, _ = _text.fit_vocabulary(config, model, sources + targets,
                                         cache_dir)
    references = _text.References()
    normalizer = vocabulary.tokenizer.normalizer   # e.g. lower-casing
    normalize = (normalizer.normalize_str if normalizer is not None
                 else lambda t: t)

    def encode(arrays, keep):
      src = [str(t) for t in arrays[self.source_column]]
      tgt = [str(t) for t in arrays[self.target_column]]
      records = ([(normalize(a), normalize(b)) for a, b in zip(src, tgt)]
                 if keep else [None] * len(src))
      return {"source": vocabulary.encode(src, config.max_length).ids,
              "target": encode_targets(vocabulary, tgt,
                                       config.target_length),
              "uid": references.add(records)}

    out = dataclasses.replace(
        splits, train=encode(splits.train, False),
        val=encode(splits.val, True),
        test=None if splits.test is None else encode(splits.test, True))
    return with_stats(
        out, vocab_size=vocabulary.size, max_length=config.max_length,
        target_length=config.target_length, vocabulary=vocabulary,
        references=references, bos_id=vocabulary.id(text.BOS),
        eos_id=vocabulary.id(text.EOS), beam_size=config.beam_size,
        length_penalty=config.length_penalty)

  def encoded_info(self, info):
    return _text.encoded_info(
        info, target_length=int(info.stats.get("target_length",
                                               self.default_target_length)),
        bos_id=_text.BOS_ID, eos_id=_text.EOS_ID)

  def random_batch(self, info, n, rng):
    """Sources of random lengths, random targets (:func:`random_targets`);
    ``uid`` 0..n-1 (no reference texts: not for ``finalize``)."""
    stats = self.encoded_info(info).stats
    vocab = int(stats["vocab_size"])
    return {"source": _text.random_ids(rng, n, stats["max_length"], vocab),
            "target": random_targets(rng, n, stats["target_length"], vocab),
            "uid": np.arange(n, dtype=np.int32)}

  def target_tokens(self, arrays):
    return _text.token_mask(np.asarray(arrays["target"])[:, 1:]).sum(1)

  def loss(self, outputs, batch, label_smoothing):
    return _text.token_statistics(outputs, batch["target"][:, 1:],
                                  batch["mask"], label_smoothing)[:2]

  def eval_outputs(self, apply, variables, batch, info):
    logits = apply(variables, *self.model_inputs(batch), train=False)
    source = batch["source"]
    source_mask = _text.token_mask(source)
    stats = info.stats
    memory = apply(variables, source, source_mask, method="encode")
    _, cache = apply(variables, source.shape[0], stats["target_length"],
                     method="init_cache", mutable=["cache"])
    state = {"model": cache["cache"], "memory": memory,
             "source_mask": source_mask}

    def step(state, tokens, position):
      logits, mutated = apply({**variables, "cache": state["model"]},
                              state["memory"], state["source_mask"], tokens,
                              position, method="decode_step",
                              mutable=["cache"])
      return (jax.nn.log_softmax(logits.astype(jnp.float32)),
              {**state, "model": mutated["cache"]})

    common = dict(bos_id=stats["bos_id"], eos_id=stats["eos_id"],
                  max_length=stats["target_length"])
    if stats["beam_size"] == 1:
      decoded = decoding.greedy_search(step, state, source.shape[0],
                                       **common)
    else:
      decoded, _ = decoding.beam_search(
          step, state, source.shape[0], beam_size=stats["beam_size"],
          length_penalty=stats["length_penalty"], **common)
    return {"logits": logits, "decoded": decoded}

  def eval_stats(self, outputs, batch, info):
    loss_sum, count, correct = _text.token_statistics(
        outputs["logits"], batch["target"][:, 1:], batch["mask"], 0.0)
    return {"loss_sum": loss_sum, "count": count, "correct": correct,
            "uid": batch["uid"], "decoded": outputs["decoded"]}

  def finalize(self, stats, info):
    vocabulary, references = (info.stats["vocabulary"],
                              info.stats["references"])
    count = float(stats["count"])
    sources, refs, hyps = [], [], []
    for uid, tokens in zip(stats["uid"], stats["decoded"]):
      source, reference = references[uid]
      sources.append(source)
      refs.append(reference)
      hyps.append(detokenize(vocabulary, tokens))
    scores = self.scores(hyps, refs, sources) if hyps else {}
    samples = [{"source": s, "reference": r, "hypothesis": h}
               for s, r, h in list(zip(sources, refs, hyps))[:SAMPLE_COUNT]]
    return {"loss": float(stats["loss_sum"]) / count if count else math.nan,
            **scores,
            "tf_token_accuracy": float(stats["correct"]) / count if count
            else math.nan, "samples": samples}
