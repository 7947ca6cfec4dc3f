"""Text to fixed-shape integer arrays: vocabularies and encoders.

Tokenisation runs through Hugging Face ``tokenizers`` (normalisation,
pre-tokenisation with character offsets, WordPiece, truncation and padding
in Rust); this module fixes the conventions every text task shares:

* id 0 is the padding token ``[PAD]`` in every vocabulary (so a token mask
  is ``ids != 0``) and id 1 ``[UNK]`` in the vocabularies built here;
* every encoding has a fixed length (truncated, then right-padded), so every
  batch of a run has one shape and the train step compiles once;
* vocabularies are built from the *training* split only and are
  deterministic: words are ranked by count, ties by the word itself.

Vocabularies:

* :func:`word_vocabulary`: one id per word (``tokenizers``' ``WordLevel``
  model), words split by the ``Whitespace`` pre-tokenizer (runs of word
  characters, runs of punctuation) and lower-cased by default; capped at
  ``max_size`` entries including the special tokens; everything else is
  ``[UNK]``. Pre-split input (a list of words, as NER datasets give) keeps
  one id per given word.
* :func:`wordpiece_vocabulary`: a WordPiece vocabulary (BERT's scheme)
  trained on the training split, for a BERT-style model trained from
  scratch (ids in a fixed order; which pieces ``tokenizers``' trainer keeps
  among equally frequent ones can vary between calls, so the vocabulary a
  campaign uses is the one cached beside its runs); :func:`pretrained_vocabulary` reads a pretrained model's own
  (``tokenizer.json``, else ``vocab.txt``), with ``[CLS] … [SEP]`` added.
* :func:`bpe_vocabulary`: byte-level BPE (Sennrich et al. 2016; GPT-2's
  byte-level variant, lossless) trained on the training split, for the
  generative tasks; ``[BOS]`` and ``[EOS]`` are ids 2 and 3.
* :class:`CharVocabulary`: characters of words, for character CNNs.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from optbench_jax.errors import OptBenchError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
PAD_ID = 0
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
BOS, EOS = "[BOS]", "[EOS]"
GENERATION_SPECIALS = (PAD, UNK, BOS, EOS)
Text = Union[str, Sequence[str]]   # raw text, or a list of words


@dataclasses.dataclass
class Encoded:
  """Fixed-length encodings of ``N`` texts.

  Attributes:
    ids: ``(N, L)`` int32 token ids, right-padded with 0.
    offsets: ``(N, L, 2)`` int32 character ``[start, end)`` of each token in
      its text (``(0, 0)`` for padding and special tokens).
    truncated: ``(N,)`` whether the length cap cut the text.
  """
  ids: np.ndarray
  offsets: np.ndarray
  truncated: np.ndarray


def _tokenizers():
  try:
    import tokenizers
  except ImportError:
    raise OptBenchError("text tasks need the 'tokenizers' package (pip "
                        "install tokenizers)") from None
  return tokenizers


class Vocabulary:
  """A tokenizer with the conventions above; build with the functions below.

  Attributes:
    kind: ``"words"``, ``"wordpiece"`` (how it splits text).
    size: number of ids.
  """

  def __init__(self, tokenizer, kind: str):
    self.tokenizer, self.kind = tokenizer, kind
    if tokenizer.token_to_id(PAD) != PAD_ID:
      raise OptBenchError(
          f"vocabulary: {PAD} must have id {PAD_ID} (has "
          f"{tokenizer.token_to_id(PAD)}); this vocabulary cannot be used")
    self.tokenizer.no_padding()
    self.tokenizer.no_truncation()

  @property
  def size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def id(self, token: str) -> Optional[int]:
    return self.tokenizer.token_to_id(token)

  def encode(self, texts: Sequence[str], max_length: int,
             pairs: Optional[Sequence[str]] = None) -> Encoded:
    """Encodes raw texts (optionally text pairs) to ``max_length`` ids."""
    if max_length < 1:
      raise OptBenchError(f"the maximum length must be positive "
                          f"(got {max_length})")
    tok = self.tokenizer
    inputs = list(texts) if pairs is None else list(zip(texts, pairs))
    tok.enable_truncation(max_length)
    try:
      encodings = tok.encode_batch(inputs)
    finally:
      tok.no_truncation()
    ids = np.zeros((len(encodings), max_length), np.int32)
    offsets = np.zeros((len(encodings), max_length, 2), np.int32)
    truncated = np.zeros(len(encodings), bool)
    for i, e in enumerate(encodings):
      n = len(e.ids)
      ids[i, :n] = e.ids
      off = np.asarray(e.offsets, np.int32).reshape(n, 2)
      off[np.asarray(e.special_tokens_mask, bool)] = 0
      offsets[i, :n] = off
      truncated[i] = bool(e.overflowing)
    return Encoded(ids, offsets, truncated)

  def encode_words(self, word_lists: Sequence[Sequence[str]],
                   max_length: int) -> np.ndarray:
    """One id per given word (``(N, max_length)`` int32, right-padded)."""
    if self.kind != "words":
      raise OptBenchError("pre-split words need a word vocabulary (this one "
                          f"is {self.kind})")
    vocab = self.tokenizer.get_vocab()
    lower = self.tokenizer.normalizer is not None
    unk = vocab[UNK]
    ids = np.zeros((len(word_lists), max_length), np.int32)
    for i, words in enumerate(word_lists):
      row = [vocab.get(w.lower() if lower else w, unk)
             for w in list(words)[:max_length]]
      ids[i, :len(row)] = row
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids if i != PAD_ID])

  def to_json(self) -> str:
    return json.dumps({"kind": self.kind,
                       "tokenizer": json.loads(self.tokenizer.to_str())})

  @classmethod
  def from_json(cls, text: str) -> "Vocabulary":
    blob = json.loads(text)
    tok = _tokenizers().Tokenizer.from_str(json.dumps(blob["tokenizer"]))
    return cls(tok, blob["kind"])

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocabulary) and self.to_json() == other.to_json()

  def __hash__(self) -> int:
    return hash(self.to_json())


def _words_of(texts: Iterable[Text], pre_tokenize) -> Iterable[str]:
  for text in texts:
    if isinstance(text, str):
      yield from (w for w, _ in pre_tokenize(text))
    else:
      yield from text


def ranked(counts: collections.Counter, max_size: int) -> list[str]:
  """The ``max_size`` most frequent items, ties broken by the item."""
  return [w for w, _ in sorted(counts.items(),
                               key=lambda kv: (-kv[1], kv[0]))][:max_size]


def word_vocabulary(corpus: Iterable[Text], max_size: int,
                    lowercase: bool = True) -> Vocabulary:
  """A word vocabulary of at most ``max_size`` ids built from ``corpus``.

  Args:
    corpus: raw texts or lists of words (the training split).
    max_size: the cap, including ``[PAD]`` and ``[UNK]``.
    lowercase: fold case before counting and encoding.
  """
  tk = _tokenizers()
  if max_size < 3:
    raise OptBenchError(f"--vocab-size must be at least 3 (got {max_size})")
  normalizer = tk.normalizers.Lowercase() if lowercase else None
  pre = tk.pre_tokenizers.Whitespace()

  def pre_tokenize(text):
    if normalizer is not None:
      text = normalizer.normalize_str(text)
    return pre.pre_tokenize_str(text)

  counts = collections.Counter(
      (w.lower() if lowercase else w) for w in _words_of(corpus, pre_tokenize))
  counts.pop(PAD, None)
  counts.pop(UNK, None)
  words = [PAD, UNK] + ranked(counts, max_size - 2)
  tok = tk.Tokenizer(tk.models.WordLevel(
      {w: i for i, w in enumerate(words)}, unk_token=UNK))
  tok.normalizer = normalizer
  tok.pre_tokenizer = pre
  return Vocabulary(tok, "words")


def _bert_post_processor(tk, tok):
  cls, sep = tok.token_to_id(CLS), tok.token_to_id(SEP)
  return tk.processors.TemplateProcessing(
      single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
      special_tokens=[(CLS, cls), (SEP, sep)])


def wordpiece_vocabulary(corpus: Iterable[str], max_size: int,
                         lowercase: bool = True) -> Vocabulary:
  """A BERT-style WordPiece vocabulary trained on ``corpus`` (raw texts);
  special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` are ids 0-4."""
  tk = _tokenizers()
  tok = tk.Tokenizer(tk.models.WordPiece(unk_token=UNK))
  tok.normalizer = tk.normalizers.BertNormalizer(lowercase=lowercase)
  tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
  tok.decoder = tk.decoders.WordPiece()
  trainer = tk.trainers.WordPieceTrainer(
      vocab_size=max_size, special_tokens=list(SPECIALS),
      show_progress=False)
  tok.train_from_iterator(
      (t if isinstance(t, str) else " ".join(t) for t in corpus), trainer)
  # Ids in a fixed order (specials, then by token): the trainer's own order
  # of equally frequent pieces varies between calls.
  learned = sorted(set(tok.get_vocab()) - set(SPECIALS))
  tok.model = tk.models.WordPiece(
      {t: i for i, t in enumerate(list(SPECIALS) + learned)}, unk_token=UNK)
  tok.post_processor = _bert_post_processor(tk, tok)
  return Vocabulary(tok, "wordpiece")


def bpe_vocabulary(corpus: Iterable[str], max_size: int,
                   lowercase: bool = True) -> Vocabulary:
  """A byte-level BPE vocabulary (GPT-2's scheme: lossless, so decoded text
  is exactly the text encoded) trained on ``corpus`` (raw texts); special
  tokens ``[PAD] [UNK] [BOS] [EOS]`` are ids 0-3. Ids after the specials in
  a fixed order (by token)."""
  tk = _tokenizers()
  tok = tk.Tokenizer(tk.models.BPE(unk_token=UNK))
  if lowercase:
    tok.normalizer = tk.normalizers.Lowercase()
  tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=True)
  tok.decoder = tk.decoders.ByteLevel()
  trainer = tk.trainers.BpeTrainer(
      vocab_size=max_size, special_tokens=list(GENERATION_SPECIALS),
      initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False)
  tok.train_from_iterator(
      (t if isinstance(t, str) else " ".join(t) for t in corpus), trainer)
  return Vocabulary(tok, "bpe")


def pretrained_vocabulary(directory: str) -> Vocabulary:
  """A pretrained model's WordPiece vocabulary, from ``tokenizer.json`` or
  ``vocab.txt`` (with ``do_lower_case`` from ``tokenizer_config.json``)."""
  tk = _tokenizers()
  path = os.path.join(directory, "tokenizer.json")
  if os.path.exists(path):
    tok = tk.Tokenizer.from_file(path)
  else:
    vocab = os.path.join(directory, "vocab.txt")
    if not os.path.exists(vocab):
      raise OptBenchError(f"pretrained directory {directory} has neither "
                          f"tokenizer.json nor vocab.txt")
    lowercase = True
    config = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(config):
      with open(config, encoding="utf-8") as f:
        lowercase = bool(json.load(f).get("do_lower_case", True))
    tok = tk.Tokenizer(tk.models.WordPiece.from_file(vocab, unk_token=UNK))
    tok.normalizer = tk.normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    tok.decoder = tk.decoders.WordPiece()
    tok.post_processor = _bert_post_processor(tk, tok)
  return Vocabulary(tok, "wordpiece")


@dataclasses.dataclass(frozen=True)
class CharVocabulary:
  """Characters of words: ``[PAD]`` 0, ``[UNK]`` 1, then by frequency.

  Case is kept (capitalisation is a strong cue for named entities).
  """
  chars: tuple[str, ...]

  @classmethod
  def build(cls, word_lists: Iterable[Sequence[str]], max_size: int = 256
            ) -> "CharVocabulary":
    counts = collections.Counter(c for words in word_lists for w in words
                                 for c in w)
    return cls(tuple(ranked(counts, max_size - 2)))

  @property
  def size(self) -> int:
    return len(self.chars) + 2

  def encode(self, word_lists: Sequence[Sequence[str]], max_length: int,
             max_word_length: int) -> np.ndarray:
    """``(N, max_length, max_word_length)`` int32 character ids."""
    index = {c: i + 2 for i, c in enumerate(self.chars)}
    out = np.zeros((len(word_lists), max_length, max_word_length), np.int32)
    for i, words in enumerate(word_lists):
      for j, word in enumerate(list(words)[:max_length]):
        row = [index.get(c, 1) for c in word[:max_word_length]]
        out[i, j, :len(row)] = row
    return out

  def to_json(self) -> str:
    return json.dumps({"chars": list(self.chars)})

  @classmethod
  def from_json(cls, text: str) -> "CharVocabulary":
    return cls(tuple(json.loads(text)["chars"]))
