"""Downloads on first use, against a tiny Hugging Face Hub on 127.0.0.1.

:class:`~tests.data.hub_server.TinyHub` serves a tiny IMDB in the Hub's
layout (a README with its configs, Parquet files) under its real id,
``stanfordnlp/imdb``; ``datasets`` and ``huggingface_hub`` are pointed at
it (their endpoint constants here; ``HF_ENDPOINT`` in the subprocesses),
and any other host is refused. The published sizes (25,000 + 25,000) are
the registry's; tests of a good download declare the tiny copy's sizes.
"""
import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from optbench_jax import cli, data
from optbench_jax.data import commands, download, hf as hf_lib
from optbench_jax.errors import MissingDataError
from tests.data.hub_server import TinyHub

datasets = pytest.importorskip("datasets")
huggingface_hub = pytest.importorskip("huggingface_hub")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TASK, NAME, HUB_ID = "sentiment_analysis", "imdb", "stanfordnlp/imdb"
ENTRY = "stanfordnlp___imdb"
TINY = {"train": 10, "test": 4}
README = b"""---
configs:
- config_name: plain_text
  data_files:
  - split: train
    path: plain_text/train-*
  - split: test
    path: plain_text/test-*
  default: true
---
# A tiny IMDB
"""


def tiny_imdb() -> tuple[dict[str, bytes], dict[str, dict]]:
  """The repository's files, and its rows per split."""
  features = datasets.Features({
      "text": datasets.Value("string"),
      "label": datasets.ClassLabel(names=["neg", "pos"])})
  files, rows = {"README.md": README}, {}
  for split, n in TINY.items():
    rows[split] = {"text": [f"{split} review {i}" for i in range(n)],
                   "label": [i % 2 for i in range(n)]}
    buffer = io.BytesIO()
    datasets.Dataset.from_dict(rows[split], features=features).to_parquet(
        buffer)
    files[f"plain_text/{split}-00000-of-00001.parquet"] = buffer.getvalue()
  return files, rows


@pytest.fixture
def loopback_only(monkeypatch):
  """Refuses every host but 127.0.0.1 (the real Hub included)."""
  resolve = socket.getaddrinfo

  def only_loopback(host, *args, **kwargs):
    if host not in ("127.0.0.1", "localhost"):
      raise OSError(f"test: no network to {host}")
    return resolve(host, *args, **kwargs)

  monkeypatch.setattr(socket, "getaddrinfo", only_loopback)


@pytest.fixture
def caches(tmp_path, monkeypatch):
  """Empty caches: HF home, hub cache, datasets cache; no offline mode."""
  from huggingface_hub import constants
  for var in download.OFFLINE_ENV + ("HF_DATASETS_CACHE",):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # as at import:
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  return tmp_path


def point_at(monkeypatch, url: str) -> None:
  """Points ``huggingface_hub`` and ``datasets`` at ``url``, as
  ``HF_ENDPOINT=url`` does before they are imported."""
  from huggingface_hub import constants
  monkeypatch.setattr(constants, "ENDPOINT", url)
  monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                      url + "/{repo_id}/resolve/{revision}/{filename}")
  monkeypatch.setattr(datasets.config, "HF_ENDPOINT", url)
  monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL",
                      url + "/datasets/{repo_id}/resolve/{revision}/{path}")
  huggingface_hub.HfFileSystem.clear_instance_cache()


@pytest.fixture
def hub(monkeypatch, caches, loopback_only):
  """The tiny Hub serving ``stanfordnlp/imdb``; libraries pointed at it."""
  del caches, loopback_only
  files, rows = tiny_imdb()
  with TinyHub() as server:
    server.sha = server.add("dataset", HUB_ID, files)
    server.rows = rows
    point_at(monkeypatch, server.url)
    yield server
  huggingface_hub.HfFileSystem.clear_instance_cache()


@pytest.fixture
def tiny_published(monkeypatch):
  """Declares the tiny copy's sizes as IMDB's published ones."""
  source = data.get(TASK, NAME).download.source
  monkeypatch.setitem(source.__dict__, "sizes", dict(TINY))


def api_requests(server) -> list[str]:
  return [p for _, p in server.requests if p.startswith("/api/datasets")]


@pytest.mark.usefixtures("tiny_published")
def test_download_on_first_use_then_the_cache(hub, tmp_path):
  raw = data.load(TASK, NAME, str(tmp_path / "data"))
  for split, arrays in (("train", raw.train), ("test", raw.test)):
    assert list(arrays["text"]) == hub.rows[split]["text"]
    np.testing.assert_array_equal(arrays["label"], hub.rows[split]["label"])
  entry = tmp_path / "data" / ENTRY / "plain_text" / "0.0.0" / hub.sha
  assert (entry / "dataset_info.json").is_file()
  assert raw.info.source == str(entry)
  assert raw.info.provenance == {
      "hub_id": HUB_ID, "config": "plain_text", "revision": hub.sha,
      "split_sizes": TINY, "published_sizes": TINY}
  assert sorted(hub.downloads(".parquet")) == sorted(
      f"/datasets/{HUB_ID}/resolve/{hub.sha}/plain_text/{s}-00000-of-00001"
      ".parquet" for s in TINY)
  # The second load reads the cache: no request at all.
  before = list(hub.requests)
  again = data.load(TASK, NAME, str(tmp_path / "data"))
  assert hub.requests == before
  assert again.info.provenance == raw.info.provenance


@pytest.mark.usefixtures("tiny_published")
def test_prepare_then_list(hub, tmp_path, capsys):
  where = str(tmp_path / "data")
  assert cli.main(["data", "prepare", "--dataset", NAME,
                   "--data-dir", where]) == 0
  out = capsys.readouterr().out
  assert f"imdb: downloaded {HUB_ID} at revision {hub.sha}, train 10, " \
         f"test 4 (the published sizes), in {where}/{ENTRY}" in out
  assert cli.main(["data", "prepare", "--dataset", "sentiment_analysis/imdb",
                   "--data-dir", where, "--offline"]) == 0
  assert "imdb: cached" in capsys.readouterr().out
  assert cli.main(["data", "list", "--data-dir", where]) == 0
  rows = {line.split()[0]: line for line in
          capsys.readouterr().out.splitlines()}
  imdb = rows["sentiment_analysis/imdb"]
  assert "prepared" in imdb and f"{where}/{ENTRY}" in imdb
  kb = commands.disk_usage(f"{where}/{ENTRY}") / 1024
  assert "10 / 4" in imdb and f" {kb:.1f} KB " in imdb
  assert "missing" in rows["sentiment_analysis/sst2"]
  assert "no download" in rows["image_classification/digits"]


@pytest.mark.parametrize("how", ["flag", "HF_HUB_OFFLINE",
                                 "HF_DATASETS_OFFLINE"])
def test_offline_refuses_in_one_line_without_a_request(hub, tmp_path,
                                                       monkeypatch, how):
  if how != "flag":
    monkeypatch.setenv(how, "1")
  with pytest.raises(MissingDataError) as e:
    data.load(TASK, NAME, str(tmp_path / "data"), offline=how == "flag")
  message = str(e.value)
  assert "\n" not in message
  assert f"dataset {NAME!r} is not in any local cache" in message
  assert message.endswith(
      "not downloaded: --offline is set." if how == "flag"
      else f"not downloaded: {how}=1 is set.")
  assert hub.requests == []


def test_server_errors_are_one_line_at_once(hub, tmp_path):
  hub.status = 503
  start = time.monotonic()
  with pytest.raises(download.DownloadError) as e:
    data.load(TASK, NAME, str(tmp_path / "data"))
  assert time.monotonic() - start < 5
  message = str(e.value)
  assert "\n" not in message
  assert f"the Hub at {hub.url} answered HTTP 503 for {HUB_ID}" in message
  assert len(api_requests(hub)) == 1  # asked once, no retries


def test_unreachable_hub_is_one_line_at_once(caches, loopback_only,
                                             monkeypatch, tmp_path):
  del caches, loopback_only
  with socket.socket() as s:   # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  point_at(monkeypatch, f"http://127.0.0.1:{port}")
  start = time.monotonic()
  with pytest.raises(download.DownloadError) as e:
    data.load(TASK, NAME, str(tmp_path / "data"))
  assert time.monotonic() - start < 5
  message = str(e.value)
  assert "\n" not in message
  assert f"cannot reach the Hugging Face Hub at http://127.0.0.1:{port}" in (
      message)


def test_unknown_repository_is_one_line(hub, tmp_path):
  hub.repos.clear()
  with pytest.raises(download.DownloadError, match=(
      f"the Hub at {hub.url} has no dataset {HUB_ID}")):
    data.load(TASK, NAME, str(tmp_path / "data"))


def test_a_loading_script_repository_is_refused_before_any_download(
    hub, tmp_path):
  """``datasets`` ≥ 4 runs no loading script: a repository that is one
  (the IWSLT'14 copies are) is refused from the repository request."""
  hub.repos.clear()
  hub.add("dataset", HUB_ID, {"README.md": README, "imdb.py": b"import x\n",
                              "data/plain_text.zip": b"PK"})
  with pytest.raises(download.DownloadError) as e:
    data.load(TASK, NAME, str(tmp_path / "data"))
  message = str(e.value)
  assert "\n" not in message
  assert (f"dataset 'imdb': the Hub repository {HUB_ID} is a loading script "
          f"(imdb.py), which datasets {datasets.__version__} does not run"
          ) in message
  assert len(api_requests(hub)) == 1
  assert not hub.downloads()


def test_size_mismatch_is_refused_in_one_line(hub, tmp_path):
  """The registry's sizes are IMDB's (25,000 + 25,000), not the tiny
  copy's: refused after the download, and again from the cache."""
  where = tmp_path / "data"
  for attempt in range(2):
    with pytest.raises(hf_lib.SizeMismatchError) as e:
      data.load(TASK, NAME, str(where))
    message = str(e.value)
    assert "\n" not in message
    assert (f"dataset 'imdb': the copy of {HUB_ID} at revision {hub.sha} in "
            f"{where / ENTRY} has train 10, test 4 examples, but its dataset "
            f"card (https://huggingface.co/datasets/{HUB_ID}) publishes "
            f"train 25,000, test 25,000") in message
    if attempt == 0:
      downloads = len(hub.downloads())
  assert len(hub.downloads()) == downloads  # the second read the cache


@pytest.mark.usefixtures("tiny_published")
def test_a_killed_preparation_is_never_read(hub, tmp_path):
  """``datasets`` prepares into ``<commit>.incomplete``: a process killed
  half-way leaves it, and the next load downloads again."""
  half = (tmp_path / "data" / ENTRY / "plain_text" / "0.0.0" /
          f"{hub.sha}.incomplete")
  half.mkdir(parents=True)
  (half / "dataset_info.json").write_text("{}")
  assert hf_lib.cached_entries(str(tmp_path / "data"), HUB_ID) == []
  raw = data.load(TASK, NAME, str(tmp_path / "data"))
  assert len(raw.train["text"]) == TINY["train"]
  assert len(hub.downloads(".parquet")) == len(TINY)


def _prepare_process(where, url, env_home):
  """``data prepare`` in a new process, with the tiny sizes declared and
  ``HF_ENDPOINT`` pointing at the tiny Hub."""
  code = ("import sys; from optbench_jax import cli, data; "
          f"data.get({TASK!r}, {NAME!r}).download.source.__dict__['sizes'] = "
          f"{TINY!r}; sys.exit(cli.main(sys.argv[1:]))")
  env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": env_home,
         "HF_HUB_CACHE": os.path.join(env_home, "hub"),
         "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  for var in download.OFFLINE_ENV + ("HF_DATASETS_CACHE",):
    env.pop(var, None)
  return subprocess.Popen(
      [sys.executable, "-c", code, "data", "prepare", "--dataset", NAME,
       "--data-dir", where], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _wait_for(process, text, deadline):
  """Reads ``process``'s stderr until a line holds ``text``."""
  while time.monotonic() < deadline:
    line = process.stderr.readline()
    if text in line:
      return
    if not line and process.poll() is not None:
      break
  raise AssertionError(f"never printed {text!r}")


@pytest.mark.slow  # two interpreters import the package: ~20-60 s
def test_two_processes_preparing_at_once_download_once(hub, tmp_path):
  """Both start while the cache's lock is held, so they run at once; one
  downloads, the other waits for it and reads its copy."""
  where = str(tmp_path / "data")
  with download.cache_lock(where, ENTRY, "the test"):
    processes = [_prepare_process(where, hub.url, str(tmp_path / "home"))
                 for _ in range(2)]
    deadline = time.monotonic() + 240
    for process in processes:
      _wait_for(process, "waiting for another process preparing dataset "
                "'imdb'", deadline)
  outputs = [p.communicate(timeout=240) for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs
  verbs = sorted(out.split()[1] for out, _ in outputs)
  assert verbs == ["cached", "downloaded"], outputs
  assert len(hub.downloads(".parquet")) == len(TINY)   # each file once


@pytest.mark.slow  # compiles and trains an LSTM: ~30-50 s
@pytest.mark.usefixtures("tiny_published")
def test_run_records_what_it_read(hub, tmp_path):
  """A tiny campaign downloads IMDB, trains, and records the hub id, the
  revision and the split sizes in run_metadata.json."""
  args = ["run", "--task", TASK, "--dataset", NAME, "--model",
          "lstm_sentiment", "--optimizers", "adam", "--epochs", "1",
          "--batch-size", "4", "--quiet", "--data-dir",
          str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")]
  assert cli.main(args) == 0
  meta = json.loads((tmp_path / "out" / TASK / NAME / "lstm_sentiment" /
                     "adam" / "run_metadata.json").read_text())
  assert meta["dataset_info"]["provenance"] == {
      "hub_id": HUB_ID, "config": "plain_text", "revision": hub.sha,
      "split_sizes": TINY, "published_sizes": TINY}


@pytest.mark.usefixtures("tiny_published")
def test_experiment_script_prepares_what_its_configurations_need(
    hub, tmp_path, capsys):
  from tests.test_experiments import _main, _script
  module = _script("thesis_campaign")
  argv = ["--configs", "imdb_lstm", "--data-dir", str(tmp_path / "data"),
          "--output-dir", str(tmp_path / "out")]
  assert _main(module, argv + ["--prepare"]) == 0
  out = capsys.readouterr().out
  assert f"dataset imdb: {HUB_ID}, published train 10, test 4" in out
  assert f"imdb: downloaded {HUB_ID} at revision {hub.sha}" in out
  assert not (tmp_path / "out").exists()   # nothing trained
  before = list(hub.requests)
  assert _main(module, argv + ["--prepare", "--offline"]) == 0
  assert "imdb: cached" in capsys.readouterr().out
  assert hub.requests == before


@pytest.mark.usefixtures("tiny_published")
def test_a_transfer_broken_half_way_is_resumed_not_read(hub, tmp_path):
  """The first file body (the README) ends half-way (the connection
  drops): the Hub client resumes it, and the copy read is whole."""
  hub.cut_after, hub.cuts = 100, 1
  raw = data.load(TASK, NAME, str(tmp_path / "data"))
  assert hub.cuts == 0
  assert list(raw.train["text"]) == hub.rows["train"]["text"]
  assert list(raw.test["text"]) == hub.rows["test"]["text"]
  assert len(hub.downloads("/README.md")) == 2   # cut, then resumed
  assert len(hub.downloads(".parquet")) == len(TINY)


@pytest.mark.usefixtures("tiny_published")
def test_a_damaged_copy_is_one_line_without_a_request(hub, tmp_path):
  where = tmp_path / "data"
  raw = data.load(TASK, NAME, str(where))
  os.remove(os.path.join(raw.info.source, "imdb-train.arrow"))
  before = list(hub.requests)
  with pytest.raises(download.DownloadError) as e:
    data.load(TASK, NAME, str(where))
  message = str(e.value)
  assert "\n" not in message
  assert (f"dataset 'imdb': found {where / ENTRY} but could not read it"
          in message and message.endswith("delete it to download it again"))
  assert hub.requests == before


def test_analyze_offline_refuses_in_one_line(hub, tmp_path, capsys):
  """``analyze`` reads a run's data through the same path as ``run``: a
  run of IMDB whose cache is gone is refused under ``--offline``, before
  any request (the run's metadata is the stored digits run's, retargeted)."""
  stored = (pathlib.Path(ROOT) / "tests" / "fixtures" / "campaign_v1" /
            "image_classification" / "digits" / "cnn_scratch" /
            "sgd_momentum" / "seed_0" / "run_metadata.json")
  metadata = json.loads(stored.read_text())
  metadata.update(task=TASK, dataset=NAME, model="lstm_sentiment",
                  optimizer="adam", learning_rate=1e-3,
                  max_length=64, vocab_size=1000)
  run_dir = tmp_path / "out" / TASK / NAME / "lstm_sentiment" / "adam"
  run_dir.mkdir(parents=True)
  (run_dir / "run_metadata.json").write_text(json.dumps(metadata))
  args = ["analyze", "--run-dir", str(run_dir), "--offline", "--data-dir",
          str(tmp_path / "data")]
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: dataset 'imdb' is not")
  assert err[0].endswith("not downloaded: --offline is set.")
  assert hub.requests == []


def test_run_offline_refuses_in_one_line(hub, tmp_path, capsys):
  args = ["run", "--task", TASK, "--dataset", NAME, "--model",
          "lstm_sentiment", "--optimizers", "adam", "--epochs", "1",
          "--quiet", "--offline", "--data-dir", str(tmp_path / "data"),
          "--output-dir", str(tmp_path / "out")]
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: dataset 'imdb' is not")
  assert err[0].endswith("not downloaded: --offline is set.")
  assert hub.requests == []
