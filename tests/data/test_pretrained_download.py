"""A pretrained checkpoint downloads on first use (``models/hub.py``),
from a tiny Hugging Face Hub on 127.0.0.1 (``tests/data/hub_server.py``)."""
import json
import os

import pytest

from optbench_jax.data import download
from optbench_jax.models import distilbert, hub as hub_lib
from tests.data.hub_server import TinyHub
from tests.data.test_download import (caches, loopback_only,  # noqa: F401
                                      point_at)

pytest.importorskip("huggingface_hub")

REPO = "distilbert/distilbert-base-uncased"
FILES = {"config.json": json.dumps({"model_type": "distilbert", "dim": 8}
                                   ).encode(),
         "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nword\n",
         "tokenizer_config.json": b'{"do_lower_case": true}',
         "model.safetensors": b"weights",
         "pytorch_model.bin": b"the same weights, not fetched",
         "tf_model.h5": b"not fetched", "README.md": b"not fetched"}


@pytest.fixture
def model_hub(monkeypatch, caches, loopback_only):  # noqa: F811
  del caches, loopback_only
  with TinyHub() as server:
    server.sha = server.add("model", REPO, FILES)
    point_at(monkeypatch, server.url)
    yield server


def test_checkpoint_downloads_once_with_only_what_is_read(model_hub,
                                                          tmp_path):
  directory = distilbert.locate_pretrained("distilbert-base-uncased",
                                           download=True)
  assert directory == str(tmp_path / "hub" / "models--distilbert--"
                          "distilbert-base-uncased" / "snapshots" /
                          model_hub.sha)
  assert sorted(os.listdir(directory)) == [
      "config.json", "model.safetensors", "tokenizer_config.json",
      "vocab.txt"]
  assert len(model_hub.downloads()) == 4
  before = list(model_hub.requests)
  for download_too in (False, True):   # found in the cache: no request
    assert distilbert.locate_pretrained("distilbert-base-uncased",
                                        download=download_too) == directory
  assert model_hub.requests == before


def test_offline_checkpoint_is_todays_message(model_hub, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(hub_lib.MissingPretrainedError) as e:
    distilbert.locate_pretrained("distilbert-base-uncased", download=True)
  message = str(e.value)
  assert "\n" not in message
  assert "huggingface-cli download distilbert-base-uncased" in message
  assert message.endswith("(not downloaded: HF_HUB_OFFLINE=1 is set)")
  assert model_hub.requests == []


def test_checkpoint_errors_are_one_line(model_hub):
  model_hub.repos.clear()
  with pytest.raises(download.DownloadError, match=(
      f"the Hub at {model_hub.url} has no model {REPO}")):
    distilbert.locate_pretrained("distilbert-base-uncased", download=True)
  model_hub.add("model", REPO, {"config.json": b"{}"})
  with pytest.raises(download.DownloadError, match="has no config.json or "
                     "no weights"):
    distilbert.locate_pretrained("distilbert-base-uncased", download=True)
