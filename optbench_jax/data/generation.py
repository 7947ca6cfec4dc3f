"""Datasets of the generative tasks: raw strings, tokenised by the task.

Columns (object arrays of ``str``); rows that are blank after stripping are
dropped and every string is stripped of surrounding whitespace:

* ``machine_translation``: ``source`` and ``target``, their languages in
  ``info.extra["source_language"]`` / ``["target_language"]``;
* ``text_generation``: ``text``, one document or line per row (the task
  concatenates and chunks);
* ``text_summarization``: ``document`` and ``summary``.

From the Hugging Face Hub (downloaded on first use; each Hub translation
dataset has a ``translation`` column of ``{language: sentence}`` dicts):

* ``europarl_bilingual``: Europarl German-English, German → English,
  1,961,119 sentence pairs, training split only (``Helsinki-NLP/europarl``
  config ``de-en``, formerly ``europarl_bilingual``; the size of its card
  since the Parquet conversion, commit ``986d6f0`` "Add de-en data files";
  Europarl v7's own release has 1,920,209).
* ``iwslt14_en_de``: IWSLT 2014 TED talks, English → German, 171,721
  training and 4,698 test pairs (``bbaaaa/iwslt14-de-en`` config ``de-en``;
  ``may-ohta/iwslt14`` has the same training pairs and a 4,782-pair test
  split). IWSLT 2014 has no canonical Hub copy: these two community uploads
  are the ones known to have ``translation`` dicts with train/validation/
  test splits; the exact test set differs between them and from fairseq's
  preprocessed IWSLT'14 (``bbaaaa/iwslt14-de-en-preprocess``, not read).
  Both are loading-script repositories (``iwslt14-de-en.py``,
  ``iwslt14.py``), which ``datasets`` 4.0 and later refuse to run: read
  from a cache prepared with ``datasets<4``, not downloaded
  (:func:`~optbench_jax.data.download.refuse_loading_script`).
* ``opus_books_en_de``: OPUS Books, English → German, 51,467 pairs,
  training split only (``Helsinki-NLP/opus_books`` config ``de-en``,
  formerly ``opus_books``).
* ``wikitext2``: WikiText-2 raw, 36,718 + 4,358 lines before blank lines are
  dropped (``Salesforce/wikitext`` config ``wikitext-2-raw-v1``, formerly
  ``wikitext``).
* ``ptb_text_only``: the Penn Treebank sentences of Mikolov et al. (2010),
  42,068 + 3,761 (``ptb-text-only/ptb_text_only`` config ``penn_treebank``,
  formerly ``ptb_text_only``; column ``sentence``).
* ``cnn_dailymail``: CNN/Daily Mail 3.0.0, 287,113 + 11,490 news articles
  with their highlights as summaries (``abisee/cnn_dailymail``, formerly
  ``cnn_dailymail``).
* ``aeslc``: AESLC, 14,436 + 1,906 e-mail bodies with their subject lines
  as summaries (``Yale-LILY/aeslc``, formerly ``aeslc``).

Real text that ships inside installed wheels, for runs without a download
(none has a test split except ``aclsum``):

* ``lee_background``: 300 Australian news articles, one per line, from
  gensim's wheel (``gensim/test/test_data/lee_background.cor``, LGPL-2.1;
  Lee, Pincombe & Welsh 2005).
* ``enwiki_sample``: the 106 articles of the shortened English Wikipedia
  dump in gensim's wheel (``gensim/test/test_data/enwiki-latest-pages-
  articles1.xml-p000000010p000030302-shortened.bz2``, CC BY-SA), one row
  per article: the MediaWiki XML read with ``bz2`` and ``xml.etree``'s
  ``iterparse``, pages outside the article namespace (0) and redirects
  dropped, markup stripped by gensim's ``filter_wiki`` (links, templates,
  tables, references, comments), then bold/italic quote runs (``''``,
  ``'''``) and heading ``==`` marks removed and whitespace collapsed to
  single spaces; pages left empty are dropped. Needs gensim installed for
  ``filter_wiki``.
* ``aclsum``: ACLSum (Takeshita et al. 2024; ``aclsum`` wheel,
  ``aclsum/dataset/{train,val,test}.jsonl``, MIT), 250 ACL papers each with
  three one-sentence summaries (``challenge``, ``approach``, ``outcome``)
  and, per aspect, the abstract/introduction/conclusion sentences the
  annotators highlighted as supporting that summary. One pair per (paper,
  aspect), 750 in all: ``document`` is that aspect's highlighted sentences
  in reading order (abstract, introduction, conclusion) joined by spaces
  (as the dataset gives them, tokenised with spaces around punctuation;
  ~120-190 words), ``summary`` is that aspect's summary (~22 words).
  Train is train + val (150 papers, 450 pairs), test is test (100 papers,
  300 pairs); rows in file order, aspects in the order above.
"""
from __future__ import annotations

import bz2
import io
import json
import os
import re
import xml.etree.ElementTree as ET
from typing import Callable, Optional, Sequence

import numpy as np

from optbench_jax.data.base import DatasetInfo, DatasetSpec, RawDataset, register
from optbench_jax.data.hf import Arrays, HFSource
from optbench_jax.data import packaged
from optbench_jax.data.packaged import read_package_file
from optbench_jax.data.vision import register_cached
from optbench_jax.errors import MissingDataError, OptBenchError

MT, LM, SUM = "machine_translation", "text_generation", "text_summarization"
COLUMNS = {MT: ("source", "target"), LM: ("text",),
           SUM: ("document", "summary")}


def _objects(values: Sequence[str]) -> np.ndarray:
  out = np.empty(len(values), dtype=object)
  out[:] = list(values)
  return out


def text_split(name: str, task: str, columns: dict[str, Sequence],
               source: str) -> Arrays:
  """Checks one split: the task's columns, as many strings each; rows with
  a blank string in any column are dropped, the rest stripped."""
  wanted = COLUMNS[task]
  if set(columns) != set(wanted) or len({len(v) for v in columns.values()
                                         }) != 1:
    raise OptBenchError(f"dataset {name!r} at {source}: expected columns "
                        f"{', '.join(wanted)} of equal length")
  rows = [tuple(str(v).strip() for v in row)
          for row in zip(*(columns[c] for c in wanted))]
  rows = [row for row in rows if all(row)]
  return {c: _objects([row[i] for row in rows]) for i, c in enumerate(wanted)}


def raw_dataset(name: str, task: str, train: dict, test: Optional[dict],
                source: str, extra: Optional[dict] = None) -> RawDataset:
  info = DatasetInfo(name=name, task=task, source=source,
                     extra=dict(extra or {}))
  return RawDataset(
      train=text_split(name, task, train, source),
      test=None if test is None else text_split(name, task, test, source),
      info=info)


# -- from local Hugging Face caches -----------------------------------------

Convert = Callable[[Arrays], dict]  # the source's columns -> ours


def _register_hf(name: str, task: str, sources: Sequence[HFSource],
                 convert: Convert, description: str,
                 extra: Optional[dict] = None) -> DatasetSpec:
  def build(splits, source, class_names):
    del class_names
    test = splits.get("test")
    return raw_dataset(name, task, convert(splits["train"]),
                       None if test is None else convert(test), source, extra)

  return register_cached(name, task, sources, build, description)


def _direction(source_language: str, target_language: str) -> Convert:
  def convert(arrays):
    pairs = arrays["translation"]
    return {"source": [p[source_language] for p in pairs],
            "target": [p[target_language] for p in pairs]}
  return convert


def _renamed(**ours_to_theirs: str) -> Convert:
  return lambda arrays: {k: arrays[v] for k, v in ours_to_theirs.items()}


def _register_translation(name, sources, source_language, target_language,
                          description):
  _register_hf(name, MT, sources, _direction(source_language,
                                             target_language), description,
               {"source_language": source_language,
                "target_language": target_language})


# Split sizes (``sizes=``): each source's dataset card (HFSource.card).
_TRAIN_ONLY = {"train": "train"}
_TRANSLATION = {"translation": "translation"}
_register_translation(
    "europarl_bilingual",
    [HFSource(("Helsinki-NLP/europarl", "europarl_bilingual"), "de-en",
              _TRAIN_ONLY, _TRANSLATION, {"train": 1_961_119})],
    "de", "en",
    "Europarl German → English sentence pairs (training split only), from "
    "the HF Hub")
_register_translation(
    "iwslt14_en_de",
    [HFSource(("bbaaaa/iwslt14-de-en",), "de-en", columns=_TRANSLATION,
              sizes={"train": 171_721, "test": 4_698}),
     HFSource(("may-ohta/iwslt14",), None, columns=_TRANSLATION,
              sizes={"train": 171_721, "test": 4_782})],
    "en", "de",
    "IWSLT 2014 TED talks English → German, 171,721 training pairs, from the "
    "HF Hub")
_register_translation(
    "opus_books_en_de",
    [HFSource(("Helsinki-NLP/opus_books", "opus_books"), "de-en",
              _TRAIN_ONLY, _TRANSLATION, {"train": 51_467})],
    "en", "de",
    "OPUS Books English → German, 51,467 pairs (training split only), from "
    "the HF Hub")

_register_hf(
    "wikitext2", LM,
    [HFSource(("Salesforce/wikitext", "wikitext"), "wikitext-2-raw-v1",
              columns={"text": "text"},
              sizes={"train": 36_718, "test": 4_358})],
    _renamed(text="text"),
    "WikiText-2 (raw) lines, train and test, from the HF Hub")
_register_hf(
    "ptb_text_only", LM,
    [HFSource(("ptb-text-only/ptb_text_only", "ptb_text_only"),
              "penn_treebank", columns={"text": "sentence"},
              sizes={"train": 42_068, "test": 3_761})],
    _renamed(text="text"),
    "Penn Treebank sentences (Mikolov's text-only version), 42,068 + 3,761, "
    "from the HF Hub")

_register_hf(
    "cnn_dailymail", SUM,
    [HFSource(("abisee/cnn_dailymail", "cnn_dailymail"), "3.0.0",
              columns={"document": "article", "summary": "highlights"},
              sizes={"train": 287_113, "test": 11_490})],
    _renamed(document="document", summary="summary"),
    "CNN/Daily Mail 3.0.0 news articles and highlights, 287,113 + 11,490, "
    "from the HF Hub")
_register_hf(
    "aeslc", SUM,
    [HFSource(("Yale-LILY/aeslc", "aeslc"), None,
              columns={"document": "email_body", "summary": "subject_line"},
              sizes={"train": 14_436, "test": 1_906})],
    _renamed(document="document", summary="summary"),
    "AESLC e-mail bodies and subject lines, 14,436 + 1,906, from the HF "
    "Hub")


# -- real text shipped in installed wheels -----------------------------------

GENSIM_DATA = "test/test_data"
ENWIKI_FILE = ("enwiki-latest-pages-articles1.xml-p000000010p000030302-"
               "shortened.bz2")


def load_lee_background(data_dir=None) -> RawDataset:
  name = "lee_background"
  blob, source = read_package_file(
      name, "gensim", f"{GENSIM_DATA}/lee_background.cor", data_dir,
      install=packaged.TEXT_DATA_EXTRA)
  lines = blob.decode("utf-8").splitlines()
  return raw_dataset(name, LM, {"text": lines}, None, source)


_QUOTES_AND_HEADINGS = re.compile(r"'{2,}|={2,}")


def wiki_articles(xml: bytes, filter_wiki: Callable[[str], str]
                  ) -> list[str]:
  """The plain text of each article page of a MediaWiki XML dump.

  Pages outside namespace 0 and redirects are skipped; ``filter_wiki``
  strips the markup, then bold/italic quotes and heading marks go and
  whitespace is collapsed. Pages left empty are dropped.
  """
  articles = []
  for _, element in ET.iterparse(io.BytesIO(xml)):
    if element.tag.rpartition("}")[2] != "page":
      continue
    namespace = element.findtext("{*}ns", default="0")
    redirect = element.find("{*}redirect") is not None
    text = element.findtext("{*}revision/{*}text", default="") or ""
    element.clear()
    if namespace.strip() != "0" or redirect or text.lstrip().lower(
        ).startswith("#redirect"):
      continue
    plain = " ".join(_QUOTES_AND_HEADINGS.sub("", filter_wiki(text)).split())
    if plain:
      articles.append(plain)
  return articles


def load_enwiki_sample(data_dir=None) -> RawDataset:
  name = "enwiki_sample"
  blob, source = read_package_file(
      name, "gensim", f"{GENSIM_DATA}/{ENWIKI_FILE}", data_dir,
      install=packaged.TEXT_DATA_EXTRA)
  try:
    from gensim.corpora.wikicorpus import filter_wiki
  except ImportError as e:
    raise MissingDataError(
        f"dataset {name!r}: found {source} but stripping its wiki markup "
        f"needs gensim ({packaged.TEXT_DATA_EXTRA})") from e
  articles = wiki_articles(bz2.decompress(blob), filter_wiki)
  return raw_dataset(name, LM, {"text": articles}, None, source)


ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
ACLSUM_SECTIONS = ("abstract", "introduction", "conclusion")


def aclsum_pairs(jsonl: str) -> dict[str, list[str]]:
  """One (document, summary) per paper and aspect, as the docstring says."""
  documents, summaries = [], []
  for line in jsonl.splitlines():
    if not line.strip():
      continue
    paper = json.loads(line)
    for aspect in ACLSUM_ASPECTS:
      documents.append(" ".join(
          sentence for section in ACLSUM_SECTIONS
          for sentence, chosen in zip(paper["sentences"][section],
                                      paper["highlights"][aspect][section],
                                      strict=True) if chosen))
      summaries.append(paper["summary"][aspect])
  return {"document": documents, "summary": summaries}


def load_aclsum(data_dir=None) -> RawDataset:
  name = "aclsum"
  splits, sources = {}, []
  for split in ("train", "val", "test"):
    blob, source = read_package_file(
        name, "aclsum", f"dataset/{split}.jsonl", data_dir,
        install=packaged.TEXT_DATA_EXTRA)
    splits[split] = aclsum_pairs(blob.decode("utf-8"))
    sources.append(source)
  train = {k: splits["train"][k] + splits["val"][k] for k in splits["train"]}
  return raw_dataset(name, SUM, train, splits["test"],
                     os.path.dirname(sources[0]))


register(DatasetSpec(
    name="lee_background", task=LM, load=load_lee_background,
    description="300 real news articles shipped in gensim's wheel"))
register(DatasetSpec(
    name="enwiki_sample", task=LM, load=load_enwiki_sample,
    description="106 real Wikipedia articles (markup stripped) from the "
    "dump sample shipped in gensim's wheel"))
register(DatasetSpec(
    name="aclsum", task=SUM, load=load_aclsum,
    description="ACLSum: 750 (highlighted sentences, aspect summary) pairs "
    "of 250 ACL papers, 450 + 300, shipped in the aclsum wheel"))
