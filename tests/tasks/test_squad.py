"""Extractive QA pieces: SQuAD v1.1 scores on hand-computed examples, span
decoding against a brute-force search (ties, masks, runs axis), and the
mapping between characters and tokens."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax.tasks import _squad as squad


# --- SQuAD v1.1 scoring -----------------------------------------------------


@pytest.mark.parametrize("text, want", [
    ("The  Cat!", "cat"),
    ("an apple a day", "apple day"),
    ("  Hello,   World.\n", "hello world"),
    ("theater anthem", "theater anthem"),   # articles only as whole words
    ("the-cat", "thecat"),                  # punctuation goes first
    ("A", ""),
    ("", ""),
])
def test_normalize_answer(text, want):
  assert squad.normalize_answer(text) == want


def test_exact_match_is_the_max_over_ground_truths():
  assert squad.exact_match("The Eiffel Tower", ["Paris", "eiffel tower!"]) == 1
  assert squad.exact_match("Paris, France", ["Paris", "France"]) == 0
  assert squad.exact_match("The", ["a"]) == 1     # both normalise to ""


def test_f1_on_partial_overlaps_by_hand():
  # ['big', 'cat'] vs ['cat', 'sat']: one common token, P = R = 1/2.
  assert squad.f1("the big cat", ["a cat sat"]) == pytest.approx(0.5)
  # vs ['cat']: P = 1/2, R = 1, F1 = 2/3; the max over ground truths.
  assert squad.f1("the big cat", ["dog", "a cat sat", "The cat."]
                  ) == pytest.approx(2 / 3)
  assert squad.f1("the big cat", ["a cat sat", "Big cat"]) == 1.0
  # Counter overlap: 'cat' counts once, P = 1/3, R = 1, F1 = 1/2.
  assert squad.f1("cat cat cat", ["cat"]) == pytest.approx(0.5)
  assert squad.f1("dog", ["cat"]) == 0.0


def test_empty_prediction_follows_v1_1():
  assert squad.f1("", ["cat"]) == 0.0
  assert squad.exact_match("", ["cat"]) == 0.0
  # v1.1: no common token means F1 = 0, even when both sides are empty.
  assert squad.f1("", [""]) == 0.0
  assert squad.exact_match("", [""]) == 1.0


def test_squad_scores_means_and_best_ground_truth_precision_recall():
  scores = squad.squad_scores(
      ["the big cat", "Paris", ""],
      [["dog", "a cat sat", "The cat."], ["paris!", "France"], ["x"]])
  # Example 1: best F1 2/3 from "The cat." (P 1/2, R 1); example 2: all 1;
  # example 3: all 0.
  assert scores["f1"] == pytest.approx((2 / 3 + 1) / 3)
  assert scores["exact_match"] == pytest.approx(1 / 3)
  assert scores["precision"] == pytest.approx((1 / 2 + 1) / 3)
  assert scores["recall"] == pytest.approx((1 + 1) / 3)


def test_squad_scores_rejects_bad_references():
  with pytest.raises(ValueError):
    squad.squad_scores(["a"], [["a"], ["b"]])
  with pytest.raises(ValueError):
    squad.f1("a", "a")        # a string is not a list of ground truths
  with pytest.raises(ValueError):
    squad.exact_match("a", [])


# --- Span decoding ----------------------------------------------------------


def _brute_force(start, end, mask, length):
  """Lowest (start, end) of the best score, by enumeration."""
  out = []
  for s_row, e_row, m_row in zip(start, end, mask):
    best = (-np.inf, 0, 0)
    for i, j in itertools.product(range(len(s_row)), repeat=2):
      if m_row[i] and m_row[j] and i <= j < i + length:
        if s_row[i] + e_row[j] > best[0]:   # strict: the first one stays
          best = (s_row[i] + e_row[j], i, j)
    out.append(best)
  score, i, j = map(np.array, zip(*out))
  return i, j, score


def _random_case(rng, batch=7, seq_len=9):
  # Small integers make ties frequent.
  start = rng.integers(-2, 3, (batch, seq_len)).astype(np.float32)
  end = rng.integers(-2, 3, (batch, seq_len)).astype(np.float32)
  mask = (rng.random((batch, seq_len)) < 0.7).astype(np.int32)
  mask[0] = 0                   # no real token
  mask[1] = 0
  mask[1, 4] = 1                # one real token
  mask[2, :3] = 0               # question tokens first
  return start, end, mask


@pytest.mark.parametrize("length", [1, 2, 3, 9, 30])
def test_best_spans_equal_brute_force_with_ties_and_masks(length):
  rng = np.random.default_rng(length)
  start, end, mask = _random_case(rng)
  decode = jax.jit(squad.best_spans, static_argnums=3)
  got = decode(start, end, mask, length)
  want = _brute_force(start, end, mask, length)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), w)
  assert got[2].dtype == jnp.float32


def test_best_spans_by_hand():
  start = jnp.array([[0.0, 5.0, 1.0, 0.0]])
  end = jnp.array([[0.0, 1.0, 6.0, 0.0]])
  mask = jnp.ones((1, 4))
  s, e, score = squad.best_spans(start, end, mask, 2)
  assert (int(s[0]), int(e[0]), float(score[0])) == (1, 2, 11.0)
  s, e, score = squad.best_spans(start, end, mask, 1)
  assert (int(s[0]), int(e[0]), float(score[0])) == (2, 2, 7.0)
  # Masking the best start moves the span; bfloat16 logits score in float32.
  s, e, score = squad.best_spans(start.astype(jnp.bfloat16),
                                 end.astype(jnp.bfloat16),
                                 jnp.array([[1, 0, 1, 1]]), 3)
  assert (int(s[0]), int(e[0]), float(score[0])) == (2, 2, 7.0)
  assert score.dtype == jnp.float32


def test_best_spans_under_vmap_over_runs():
  rng = np.random.default_rng(7)
  cases = [_random_case(rng) for _ in range(3)]
  start, end, mask = (np.stack(parts) for parts in zip(*cases))
  decode = jax.jit(jax.vmap(lambda s, e, m: squad.best_spans(s, e, m, 4)))
  got = decode(start, end, mask)
  assert got[0].shape == (3, 7)
  for run, (s, e, m) in enumerate(cases):
    want = _brute_force(s, e, m, 4)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g[run]), w)


# --- Characters and tokens --------------------------------------------------

CONTEXT = "The quick brown fox jumps."
# [CLS] The quick brown fox jumps . [PAD] [PAD]
OFFSETS = np.array([[0, 0], [0, 3], [4, 9], [10, 15], [16, 19], [20, 25],
                    [25, 26], [0, 0], [0, 0]])
N_TOKENS = 7


@pytest.mark.parametrize("answer_start, answer, want", [
    (10, "brown fox", (3, 4)),
    (0, "The", (1, 1)),           # the zero-width [CLS] is not a token
    (11, "row", (3, 3)),          # inside a token: the whole token
    (15, " fox", (4, 4)),         # leading whitespace belongs to no token
    (20, "jumps.", (5, 6)),
    (10, "", None),               # an empty answer
])
def test_char_span_to_tokens(answer_start, answer, want):
  assert squad.char_span_to_tokens(OFFSETS, N_TOKENS, answer_start, answer
                                   ) == want
  if want is not None:
    text = squad.span_text(CONTEXT, OFFSETS, *want)
    assert answer.strip() in text


def test_char_span_to_tokens_none_when_truncation_cuts_the_answer():
  # Truncated after "brown": the answer's end is not kept.
  assert squad.char_span_to_tokens(OFFSETS, 4, 10, "brown fox") is None
  assert squad.char_span_to_tokens(OFFSETS, 4, 16, "fox") is None
  assert squad.char_span_to_tokens(OFFSETS, 4, 4, "quick brown") == (2, 3)
  # A later window (stride) starting at "brown": the answer began before.
  window = OFFSETS[3:6]
  assert squad.char_span_to_tokens(window, 3, 4, "quick brown") is None
  assert squad.char_span_to_tokens(window, 3, 16, "fox jumps") == (1, 2)


def test_span_text():
  assert squad.span_text(CONTEXT, OFFSETS, 3, 4) == "brown fox"
  assert squad.span_text(CONTEXT, OFFSETS, np.int32(5), jnp.int32(6)
                         ) == "jumps."


def test_find_answer_span():
  tweet = "Obama tweeted about PARIS (France) and paris again."
  assert squad.find_answer_span(tweet, "paris") == 20
  assert squad.find_answer_span(tweet, "(france)") == 26   # no regex
  assert squad.find_answer_span(tweet, "because he was happy") is None
  assert squad.find_answer_span(tweet, "") is None
  start = squad.find_answer_span(tweet, "Paris (FRANCE)")
  assert tweet[start:start + len("Paris (FRANCE)")] == "PARIS (France)"


def test_decoded_spans_are_scored_as_text():
  """From logits to SQuAD scores: the decoded span's text against free-text
  references, so an answer that is not in the context still counts."""
  start = np.full((2, 9), -5.0, np.float32)
  end = np.full((2, 9), -5.0, np.float32)
  start[:, 3], end[:, 4] = 1.0, 1.0                 # "brown fox"
  mask = (np.arange(9) >= 1) & (np.arange(9) < N_TOKENS)
  s, e, _ = squad.best_spans(start, end, np.stack([mask, mask]), 5)
  texts = [squad.span_text(CONTEXT, OFFSETS, i, j) for i, j in zip(s, e)]
  assert texts == ["brown fox", "brown fox"]
  scores = squad.squad_scores(texts, [["the brown fox"], ["a red fox"]])
  assert scores["exact_match"] == 0.5
  assert scores["f1"] == pytest.approx((1 + 0.5) / 2)
