"""Vocabularies and encoders of ``optbench_jax/data/text.py``.

Conventions under test: ``[PAD]`` is id 0 and ``[UNK]`` id 1, encodings have
a fixed length (truncated, then right-padded with 0), and the vocabularies
built here are deterministic (words ranked by count, ties by the word).
"""
import json

import numpy as np
import pytest

from optbench_jax.data import text
from optbench_jax.errors import OptBenchError

pytest.importorskip("tokenizers")

CORPUS = ["The cat sat on the mat.", "A dog, a cat!", "the end"]


def vocab_of(v):
  return v.tokenizer.get_vocab()


# -- word vocabulary ---------------------------------------------------------


def test_word_vocabulary_is_deterministic_and_ranks_by_count_then_word():
  a = text.word_vocabulary(CORPUS, max_size=100)
  b = text.word_vocabulary(list(CORPUS), max_size=100)
  assert a.to_json() == b.to_json()
  assert a == b and hash(a) == hash(b)
  # Counts (lower-cased): the 3, a 2, cat 2, then count-1 words by the word.
  ids = vocab_of(a)
  assert ids[text.PAD] == 0 and ids[text.UNK] == 1
  ordered = sorted(ids, key=ids.get)
  assert ordered == ["[PAD]", "[UNK]", "the", "a", "cat",
                     "!", ",", ".", "dog", "end", "mat", "on", "sat"]
  # The order of the corpus does not matter either.
  c = text.word_vocabulary(list(reversed(CORPUS)), max_size=100)
  assert c.to_json() == a.to_json()


def test_ties_are_broken_by_the_word():
  v = text.word_vocabulary(["zeta beta alpha", "gamma"], max_size=4)
  ids = vocab_of(v)
  assert ids == {"[PAD]": 0, "[UNK]": 1, "alpha": 2, "beta": 3}


def test_cap_includes_the_special_tokens():
  v = text.word_vocabulary(CORPUS, max_size=5)
  assert v.size == 5
  assert sorted(vocab_of(v), key=vocab_of(v).get) == [
      "[PAD]", "[UNK]", "the", "a", "cat"]
  with pytest.raises(OptBenchError, match="at least 3"):
    text.word_vocabulary(CORPUS, max_size=2)


def test_lowercasing_folds_case_in_counting_and_encoding():
  lower = text.word_vocabulary(["Cat cat CAT Dog"], max_size=10)
  assert "cat" in vocab_of(lower) and "Cat" not in vocab_of(lower)
  assert vocab_of(lower)["cat"] == 2
  e = lower.encode(["CAT dog"], 4)
  np.testing.assert_array_equal(e.ids, [[2, 3, 0, 0]])

  cased = text.word_vocabulary(["Cat cat CAT Dog"], max_size=10,
                               lowercase=False)
  assert {"Cat", "cat", "CAT", "Dog"} <= set(vocab_of(cased))
  e = cased.encode(["CAT dog"], 4)
  assert e.ids[0, 0] == vocab_of(cased)["CAT"]
  assert e.ids[0, 1] == 1  # "dog" is not "Dog"


def test_unknown_words_are_one_and_padding_is_zero():
  v = text.word_vocabulary(CORPUS, max_size=100)
  e = v.encode(["the zebra sat", ""], max_length=6)
  assert e.ids.dtype == np.int32 and e.ids.shape == (2, 6)
  assert e.offsets.dtype == np.int32 and e.offsets.shape == (2, 6, 2)
  assert e.truncated.dtype == bool and e.truncated.shape == (2,)
  ids = vocab_of(v)
  np.testing.assert_array_equal(
      e.ids, [[ids["the"], 1, ids["sat"], 0, 0, 0], [0] * 6])
  np.testing.assert_array_equal(e.offsets[0, 3:], 0)
  np.testing.assert_array_equal(e.offsets[1], 0)
  assert not e.truncated.any()
  # The mask convention: ids != 0 are the tokens.
  assert int((e.ids != 0).sum()) == 3


def test_truncation_flag():
  v = text.word_vocabulary(CORPUS, max_size=100)
  e = v.encode(["the cat sat", "the cat sat on", "the cat sat on the mat"],
               max_length=4)
  assert e.truncated.tolist() == [False, False, True]
  ids = vocab_of(v)
  np.testing.assert_array_equal(
      e.ids[2], [ids["the"], ids["cat"], ids["sat"], ids["on"]])
  with pytest.raises(OptBenchError, match="positive"):
    v.encode(["the"], 0)


def test_encoding_leaves_the_tokenizer_untruncated():
  v = text.word_vocabulary(CORPUS, max_size=100)
  v.encode(["the cat sat on the mat"], max_length=2)
  assert v.tokenizer.truncation is None and v.tokenizer.padding is None
  assert v.encode(["the cat sat on the mat"], max_length=10).ids[0, 5] != 0


def test_offsets_map_back_to_the_characters_of_the_text():
  v = text.word_vocabulary(CORPUS, max_size=100)
  texts = ["  The CAT,  sat on   the mat.", "a dog"]
  e = v.encode(texts, max_length=10)
  inverse = {i: w for w, i in vocab_of(v).items()}
  for row, t in enumerate(texts):
    n = int((e.ids[row] != 0).sum())
    for j in range(n):
      start, end = e.offsets[row, j]
      assert 0 <= start < end <= len(t)
      assert t[start:end].lower() == inverse[int(e.ids[row, j])]
  assert tuple(e.offsets[0, 1]) == (6, 9)  # "CAT"
  # Offsets count characters, not bytes.
  u = text.word_vocabulary(["café naïve déjà vu"], max_size=10)
  e = u.encode(["Déjà vu, CAFÉ!"], max_length=6)
  inverse = {i: w for w, i in vocab_of(u).items()}
  spans = [("Déjà vu, CAFÉ!"[s:t].lower(), inverse[int(i)])
           for (s, t), i in zip(e.offsets[0], e.ids[0]) if i != 0]
  assert [a for a, _ in spans] == ["déjà", "vu", ",", "café", "!"]
  assert [a for a, b in spans if b != "[UNK]"] == ["déjà", "vu", "café"]


def test_pre_split_words_give_one_id_per_word():
  v = text.word_vocabulary([["New", "York", "is", "big"], ["it", "is"]],
                           max_size=100)
  ids = vocab_of(v)
  # Pre-split words are counted as given (not split further) and lowered.
  assert ids["is"] == 2 and "new" in ids
  got = v.encode_words([["New", "York", "rocks,", "IS"], ["it"]], 3)
  assert got.dtype == np.int32 and got.shape == (2, 3)
  np.testing.assert_array_equal(
      got, [[ids["new"], ids["york"], 1], [ids["it"], 0, 0]])
  # A word with punctuation stays one word (one id), not two.
  v2 = text.word_vocabulary([["U.S.", "rocks"]], max_size=10)
  assert "u.s." in vocab_of(v2)
  assert v2.encode_words([["U.S."]], 2).tolist() == [
      [vocab_of(v2)["u.s."], 0]]


def test_encode_words_needs_a_word_vocabulary():
  w = text.wordpiece_vocabulary(CORPUS * 3, max_size=60)
  with pytest.raises(OptBenchError, match="word vocabulary"):
    w.encode_words([["the"]], 4)


def test_word_vocabulary_json_round_trip():
  v = text.word_vocabulary(CORPUS, max_size=8, lowercase=False)
  blob = v.to_json()
  assert json.loads(blob)["kind"] == "words"
  back = text.Vocabulary.from_json(blob)
  assert back == v and back.kind == "words" and back.size == v.size
  texts = ["The cat sat on a mat", "Dog"]
  for got, want in [(back.encode(texts, 5), v.encode(texts, 5))]:
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.offsets, want.offsets)
    np.testing.assert_array_equal(got.truncated, want.truncated)
  np.testing.assert_array_equal(back.encode_words([["The", "the"]], 3),
                                v.encode_words([["The", "the"]], 3))


# -- WordPiece ---------------------------------------------------------------

WP_CORPUS = ["the quick brown fox jumps over the lazy dog",
             "a quicker browner fox jumped over lazier dogs",
             "foxes and dogs are friends"] * 4


def test_wordpiece_specials_are_0_to_4_and_cls_sep_are_added():
  w = text.wordpiece_vocabulary(WP_CORPUS, max_size=120)
  assert w.kind == "wordpiece"
  assert [w.id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] \
      == [0, 1, 2, 3, 4]
  assert 5 < w.size <= 120
  e = w.encode(["The quick fox", "zzzz"], max_length=12)
  row = e.ids[0]
  n = int((row != 0).sum())
  assert row[0] == 2 and row[n - 1] == 3 and (row[n:] == 0).all()
  assert not np.isin(row[1:n - 1], [0, 2, 3, 4]).any()
  # Special tokens and padding have (0, 0) offsets; word pieces point back.
  np.testing.assert_array_equal(e.offsets[0, 0], 0)
  np.testing.assert_array_equal(e.offsets[0, n - 1:], 0)
  t = "The quick fox"
  pieces = [t[s:e_].lower() for s, e_ in e.offsets[0, 1:n - 1]]
  assert "".join(pieces) == "thequickfox"
  # Text pairs: [CLS] a [SEP] b [SEP].
  p = w.encode(["the fox"], max_length=16, pairs=["lazy dog"])
  m = int((p.ids[0] != 0).sum())
  assert p.ids[0, 0] == 2 and p.ids[0, m - 1] == 3
  assert (p.ids[0, :m] == 3).sum() == 2
  # Truncation keeps [CLS] and [SEP] within max_length.
  long = w.encode([" ".join(WP_CORPUS)], max_length=6)
  assert long.truncated[0] and (long.ids[0] != 0).all()
  assert long.ids[0, 0] == 2 and long.ids[0, -1] == 3


def test_wordpiece_ids_follow_a_fixed_order():
  """Ids are the specials, then the learned pieces sorted: a vocabulary's
  ids depend only on its pieces. (Which pieces tokenizers' WordPiece
  trainer keeps among equally frequent ones can vary between calls: the
  campaign's cached vocabulary is what makes runs reproducible.)"""
  for _ in range(3):
    vocab = text.wordpiece_vocabulary(WP_CORPUS, max_size=100)
    by_id = sorted(vocab.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in by_id]
    assert tokens[:5] == list(text.SPECIALS)
    assert tokens[5:] == sorted(tokens[5:])
    assert [i for _, i in by_id] == list(range(len(tokens)))


def test_bpe_is_deterministic_and_lossless():
  vocabs = [text.bpe_vocabulary(WP_CORPUS, max_size=120) for _ in range(3)]
  assert len({v.to_json() for v in vocabs}) == 1
  v = vocabs[0]
  assert [v.id(t) for t in text.GENERATION_SPECIALS] == [0, 1, 2, 3]
  sentence = "Hello, the lazy dog's 3 naps!"
  ids = v.encode([sentence], 64).ids[0]
  assert v.decode(ids).strip() == sentence.lower()


def test_wordpiece_round_trips():
  a = text.wordpiece_vocabulary(WP_CORPUS, max_size=100)
  back = text.Vocabulary.from_json(a.to_json())
  assert back == a and back.kind == "wordpiece"
  np.testing.assert_array_equal(back.encode(WP_CORPUS[:3], 16).ids,
                                a.encode(WP_CORPUS[:3], 16).ids)
  assert a.decode(a.encode(["the lazy dog"], 8).ids[0]) == "the lazy dog"


# -- pretrained --------------------------------------------------------------

VOCAB_TXT = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat",
             "sat", "hello", "world", "##s", ",", "Hello"]


def write_vocab(directory, tokens, config=None):
  directory.mkdir(exist_ok=True)
  (directory / "vocab.txt").write_text("\n".join(tokens) + "\n",
                                       encoding="utf-8")
  if config is not None:
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
  return str(directory)


def test_pretrained_vocab_txt_lowercase_by_default(tmp_path):
  v = text.pretrained_vocabulary(write_vocab(tmp_path / "m", VOCAB_TXT))
  assert v.kind == "wordpiece" and v.size == len(VOCAB_TXT)
  assert v.id("[PAD]") == 0 and v.id("[UNK]") == 1
  e = v.encode(["Hello, worlds! cats"], max_length=10)
  want = [2, 8, 11, 9, 10, 1, 6, 10, 3, 0]
  np.testing.assert_array_equal(e.ids, [want])
  assert not e.truncated[0]


def test_pretrained_vocab_txt_honours_do_lower_case(tmp_path):
  cased = text.pretrained_vocabulary(write_vocab(
      tmp_path / "cased", VOCAB_TXT, {"do_lower_case": False}))
  lower = text.pretrained_vocabulary(write_vocab(
      tmp_path / "lower", VOCAB_TXT, {"do_lower_case": True}))
  assert cased.encode(["Hello hello"], 4).ids.tolist() == [[2, 12, 8, 3]]
  assert lower.encode(["Hello hello"], 4).ids.tolist() == [[2, 8, 8, 3]]


def test_pretrained_tokenizer_json_is_preferred(tmp_path):
  trained = text.wordpiece_vocabulary(WP_CORPUS, max_size=80)
  directory = tmp_path / "model"
  write_vocab(directory, ["[UNK]", "[PAD]"])  # would fail if it were read
  trained.tokenizer.save(str(directory / "tokenizer.json"))
  v = text.pretrained_vocabulary(str(directory))
  np.testing.assert_array_equal(v.encode(WP_CORPUS[:2], 12).ids,
                                trained.encode(WP_CORPUS[:2], 12).ids)


def test_pretrained_pad_not_zero_is_refused(tmp_path):
  directory = write_vocab(tmp_path / "bad",
                          ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "the"])
  with pytest.raises(OptBenchError, match=r"\[PAD\] must have id 0"):
    text.pretrained_vocabulary(directory)


def test_pretrained_directory_without_vocabulary(tmp_path):
  with pytest.raises(OptBenchError, match="neither tokenizer.json nor"):
    text.pretrained_vocabulary(str(tmp_path))


def test_vocabulary_refuses_a_tokenizer_without_pad_at_zero():
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {"[UNK]": 0, "[PAD]": 1, "x": 2}, unk_token="[UNK]"))
  with pytest.raises(OptBenchError):
    text.Vocabulary(tok, "words")
  blob = json.dumps({"kind": "words", "tokenizer": json.loads(tok.to_str())})
  with pytest.raises(OptBenchError):
    text.Vocabulary.from_json(blob)


# -- characters --------------------------------------------------------------


def test_char_vocabulary_encode_shapes_and_ids():
  words = [["aab", "Ab"], ["b"]]
  cv = text.CharVocabulary.build(words)
  # Counts: a 2, b 3, A 1 -> b, a, A (case kept).
  assert cv.chars == ("b", "a", "A")
  assert cv.size == 5
  out = cv.encode([["abz", "Aaaaaa", "b"], []], max_length=2,
                  max_word_length=4)
  assert out.dtype == np.int32 and out.shape == (2, 2, 4)
  np.testing.assert_array_equal(out[0, 0], [3, 2, 1, 0])
  np.testing.assert_array_equal(out[0, 1], [4, 3, 3, 3])
  np.testing.assert_array_equal(out[1], 0)


def test_char_vocabulary_cap_and_json_round_trip():
  cv = text.CharVocabulary.build([["abc", "ab", "a"]], max_size=4)
  assert cv.chars == ("a", "b") and cv.size == 4
  back = text.CharVocabulary.from_json(cv.to_json())
  assert back == cv
  np.testing.assert_array_equal(back.encode([["cab"]], 1, 3), [[[1, 2, 3]]])
