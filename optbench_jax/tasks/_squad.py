"""What the extractive question-answering tasks share: SQuAD scoring, span
decoding on the device, and the host-side mapping between characters and
tokens.

Scoring is that of the official SQuAD v1.1 script (``evaluate-v1.1.py``,
Rajpurkar et al. 2016, "SQuAD: 100,000+ Questions for Machine Comprehension
of Text"), reported as fractions in [0, 1] rather than percentages::

  normalize(s) = fix_whitespace(remove_articles(remove_punctuation(lower(s))))
      remove_punctuation drops every character of ``string.punctuation``;
      remove_articles replaces ``\\b(a|an|the)\\b`` by a space;
      fix_whitespace is ``" ".join(s.split())``.
  EM(p, g)  = [normalize(p) == normalize(g)]
  common    = |Counter(tokens(p)) ∩ Counter(tokens(g))|   (multiset overlap)
  P = common / |tokens(p)|,  R = common / |tokens(g)|,  F1 = 2PR / (P + R)
      and P = R = F1 = 0 when common = 0 (v1.1 has no special case for empty
      answers, so an empty prediction against an empty gold answer has
      F1 = 0 but EM = 1).
  per example: the maximum over the ground truths (F1 and EM separately);
  the reported P and R are those of the first ground truth with the best F1.

Span decoding picks, for each example, the pair ``start ≤ end < start + L``
with both ends on real context tokens that maximises ``start_logit[start] +
end_logit[end]``; ties go to the lowest start, then the lowest end.

TweetQA's answers are free text written by annotators, often not a substring
of the tweet. ``find_answer_span`` finds a training span only when the answer
occurs in the tweet (case-insensitively); the task decides what the other
training examples are labelled with. Evaluation never needs a span: the
predicted span's text is scored against the free-text references with the
same SQuAD F1/EM, so examples whose answer is not in the tweet count as they
are, with whatever overlap the prediction achieves.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# --- SQuAD v1.1 scoring (host) ---------------------------------------------


def normalize_answer(s: str) -> str:
  """Lower case, no punctuation, no articles, single spaces (SQuAD v1.1)."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in _PUNCTUATION)
  s = _ARTICLES.sub(" ", s)
  return " ".join(s.split())


def _overlap(prediction: str, ground_truth: str) -> tuple[float, float, float]:
  """``(f1, precision, recall)`` of the normalised token overlap."""
  pred = normalize_answer(prediction).split()
  gold = normalize_answer(ground_truth).split()
  common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
  if common == 0:
    return 0.0, 0.0, 0.0
  precision, recall = common / len(pred), common / len(gold)
  return 2 * precision * recall / (precision + recall), precision, recall


def _best_overlap(prediction: str, ground_truths: Sequence[str]
                  ) -> tuple[float, float, float]:
  """The ``(f1, precision, recall)`` of the first ground truth of best F1."""
  if isinstance(ground_truths, str) or not ground_truths:
    raise ValueError("ground_truths must be a non-empty list of strings, got "
                     f"{ground_truths!r}")
  return max((_overlap(prediction, g) for g in ground_truths),
             key=lambda scores: scores[0])


def exact_match(prediction: str, ground_truths: Sequence[str]) -> float:
  """1.0 if the prediction equals some ground truth after normalisation."""
  if isinstance(ground_truths, str) or not ground_truths:
    raise ValueError("ground_truths must be a non-empty list of strings, got "
                     f"{ground_truths!r}")
  pred = normalize_answer(prediction)
  return float(any(pred == normalize_answer(g) for g in ground_truths))


def f1(prediction: str, ground_truths: Sequence[str]) -> float:
  """The best token-overlap F1 over the ground truths."""
  return _best_overlap(prediction, ground_truths)[0]


def squad_scores(predictions: Sequence[str],
                 references: Sequence[Sequence[str]]) -> dict[str, float]:
  """Means over the examples of F1, exact match, precision and recall.

  ``references[i]`` lists the ground truths of example ``i``; precision and
  recall are those of its first ground truth with the best F1.
  """
  if len(predictions) != len(references) or not predictions:
    raise ValueError(f"{len(predictions)} predictions for {len(references)} "
                     "references; need the same positive number")
  overlaps = np.array([_best_overlap(p, r)
                       for p, r in zip(predictions, references)])
  em = np.array([exact_match(p, r) for p, r in zip(predictions, references)])
  f1s, precision, recall = overlaps.mean(axis=0)
  return {"f1": float(f1s), "exact_match": float(em.mean()),
          "precision": float(precision), "recall": float(recall)}


# --- Span decoding (device) -------------------------------------------------


def best_spans(start_logits: jax.Array, end_logits: jax.Array,
               mask: jax.Array, max_answer_length: int
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The best-scoring answer span of each example.

  Args:
    start_logits, end_logits: ``(B, T)``.
    mask: ``(B, T)``, nonzero on the context tokens a span may start or end
      on (question, special and padding tokens 0).
    max_answer_length: ``L``, a Python int: spans have at most ``L`` tokens.

  Returns:
    ``(start, end, score)``, each ``(B,)``: the pair ``start ≤ end < start +
    L`` with ``mask`` nonzero at both ends maximising ``score =
    start_logit[start] + end_logit[end]`` (computed in at least float32);
    ties go to the lowest start, then the lowest end. An example without a
    real token gets ``(0, 0, -inf)``.

  The candidates are laid out as a ``(B, T, L)`` band (start ``i``, length
  ``k + 1``), never ``(T, T)``, so memory is ``O(B T L)``; scanning the band
  in row-major order is the tie order. For a leading runs axis, ``vmap``.
  """
  length = int(max_answer_length)
  if length < 1:
    raise ValueError(f"max_answer_length must be ≥ 1, got {length}")
  dtype = jnp.promote_types(
      jnp.result_type(start_logits, end_logits), jnp.float32)
  seq_len = start_logits.shape[-1]
  length = min(length, seq_len)
  real = mask != 0
  ends = jnp.arange(seq_len)[:, None] + jnp.arange(length)[None, :]  # (T, L)
  inside = ends < seq_len
  ends = jnp.minimum(ends, seq_len - 1)
  end_scores = end_logits.astype(dtype)[..., ends]                    # (B,T,L)
  valid = real[..., :, None] & real[..., ends] & inside
  scores = jnp.where(valid, start_logits.astype(dtype)[..., :, None]
                     + end_scores, -jnp.inf)
  flat = scores.reshape(*scores.shape[:-2], seq_len * length)
  best = jnp.argmax(flat, axis=-1)
  start = best // length
  return start, start + best % length, jnp.max(flat, axis=-1)


# --- Characters and tokens (host) -------------------------------------------


def span_text(context: str, offsets: np.ndarray, start: int, end: int
              ) -> str:
  """The context's characters from token ``start`` through token ``end``.

  ``offsets`` is ``(T, 2)``: each token's ``[begin, end)`` character range.
  """
  return context[int(offsets[int(start)][0]):int(offsets[int(end)][1])]


def char_span_to_tokens(offsets: np.ndarray, n_tokens: int,
                        answer_start_char: int, answer_text: str
                        ) -> Optional[tuple[int, int]]:
  """The first and last token of the answer, or None.

  The answer covers characters ``[a, b) = [answer_start_char,
  answer_start_char + len(answer_text))``. Only the first ``n_tokens`` rows
  of ``offsets`` (the context tokens kept after truncation) count, and
  zero-width tokens (special tokens, offsets ``(0, 0)``) are ignored. The
  start token is the first token whose range overlaps ``[a, b)``, the end
  token the last one; so an answer beginning or ending inside a token takes
  the whole token, and whitespace at the answer's edges, which belongs to no
  token, is skipped.

  None when the answer is empty, or not wholly inside the kept tokens (it
  begins before the first or ends after the last: truncation cut it), which
  is the policy of Hugging Face's ``run_qa.py``: a cut answer is no answer.
  """
  begin = int(answer_start_char)
  stop = begin + len(answer_text)
  kept = np.asarray(offsets, np.int64)[:int(n_tokens)]
  index = np.flatnonzero(kept[:, 1] > kept[:, 0])
  tokens = kept[index]
  if stop <= begin or len(tokens) == 0:
    return None
  if begin < tokens[:, 0].min() or stop > tokens[:, 1].max():
    return None
  overlapping = index[(tokens[:, 0] < stop) & (tokens[:, 1] > begin)]
  if len(overlapping) == 0:  # the answer lies between tokens (whitespace)
    return None
  return int(overlapping[0]), int(overlapping[-1])


def find_answer_span(context: str, answer: str) -> Optional[int]:
  """The first character of the answer's first occurrence in the context,
  compared case-insensitively; None when the answer is empty or absent.

  The search is over the original string (no lower-casing that could change
  its length), so the index is valid for ``context`` and the matched text is
  ``context[start:start + len(answer)]``.
  """
  if not answer:
    return None
  found = re.search(re.escape(answer), context, flags=re.IGNORECASE)
  return None if found is None else found.start()
