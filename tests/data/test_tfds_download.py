"""TFDS downloads on first use, from the tiny Hub server on 127.0.0.1.

A tiny TFDS builder (``optbench_tiny_digits``: 28×28 digits, two classes)
downloads its two ``.npz`` files with TFDS's own download manager from
:class:`~tests.data.hub_server.TinyHub` (any other host is refused), and
TFDS prepares it in the ``array_record`` format; the dataset is registered
as an image-classification dataset whose TFDS source is its download path
(as ``oxford_iiit_pet``'s is), so ``data prepare`` and ``run`` go through
:class:`~optbench_jax.data.tfds.TFDSDownload` as a user's would.
"""
import importlib.util
import io
import json
import time

import numpy as np
import pytest

from optbench_jax import cli, data
from optbench_jax.data import base, download
from optbench_jax.data import hf as hf_lib
from optbench_jax.data import tfds as tfds_lib
from optbench_jax.data import vision
from optbench_jax.errors import MissingDataError
from tests.data.hub_server import TinyHub
from tests.data.test_download import loopback_only  # noqa: F401 (fixture)

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

TASK, NAME, TFDS_NAME = "image_classification", "tiny_tfds_digits", (
    "optbench_tiny_digits")
REPO = "optbench/tiny-digits"
TINY = {"train": 40, "test": 8}


def tiny_files() -> dict[str, bytes]:
  rng = np.random.default_rng(0)
  files = {}
  for split, n in TINY.items():
    label = np.arange(n) % 2
    image = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
    image[label == 1, 8:20, 8:20] = 255   # class 1: a bright square
    buffer = io.BytesIO()
    np.savez(buffer, image=image, label=label)
    files[f"{split}.npz"] = buffer.getvalue()
  return files


class OptbenchTinyDigits(tfds.core.GeneratorBasedBuilder):
  """The tiny builder; :attr:`url` is set to the server's before use."""
  # A module outside a package: TFDS looks no checksum files up for it
  # (as tests/data/test_segmentation_data.py's tiny Pet builder).
  __module__ = "tiny_tfds_builder"
  VERSION = tfds.core.Version("1.0.0")
  url = ""

  def _info(self):
    features = tfds.features
    return tfds.core.DatasetInfo(builder=self, features=features.FeaturesDict({
        "image": features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
        "label": features.ClassLabel(names=["plain", "square"])}))

  def _split_generators(self, dl_manager):
    paths = dl_manager.download(
        {split: f"{self.url}/{split}.npz" for split in TINY})
    return {split: self._generate_examples(path)
            for split, path in paths.items()}

  def _generate_examples(self, path):
    with open(path, "rb") as f:
      arrays = np.load(f)
      image, label = arrays["image"], arrays["label"]
    for i, (x, y) in enumerate(zip(image, label)):
      yield i, {"image": x, "label": int(y)}


SOURCE = tfds_lib.TFDSSource(TFDS_NAME, {"train": "train", "test": "test"},
                             {"image": "image", "label": "label"},
                             sizes=dict(TINY), download=True)


@pytest.fixture
def server(monkeypatch, loopback_only):  # noqa: F811
  """The tiny server holding the builder's files; the dataset registered
  (for this test only) with its TFDS source as its download path."""
  del loopback_only
  for var in download.OFFLINE_ENV:
    monkeypatch.delenv(var, raising=False)
  with TinyHub() as hub:
    hub.add("dataset", REPO, tiny_files())
    monkeypatch.setattr(OptbenchTinyDigits, "url",
                        f"{hub.url}/datasets/{REPO}/resolve/main")
    spec = vision.register_image_classification(
        NAME, [SOURCE], num_classes=2, input_shape=(28, 28, 1),
        add=lambda entry: entry)
    monkeypatch.setitem(base.DATASETS._entries,  # pylint: disable=protected-access
                        f"{TASK}/{NAME}", spec)
    yield hub


def test_prepare_downloads_through_tfds_once_then_lists_it(server, tmp_path,
                                                          capsys):
  where = tmp_path / "tfds"
  assert cli.main(["data", "prepare", "--dataset", NAME, "--data-dir",
                   str(where)]) == 0
  out = capsys.readouterr().out.strip()   # TFDS's progress is on stderr
  prepared = where / TFDS_NAME / "1.0.0"
  assert out == (f"{NAME}: downloaded TFDS {TFDS_NAME} 1.0.0, train 40, "
                 f"test 8 (the published sizes), in {prepared}")
  assert sorted(server.downloads()) == [
      f"/datasets/{REPO}/resolve/main/test.npz",
      f"/datasets/{REPO}/resolve/main/train.npz"]
  # Prepared in array_record (read without TensorFlow); no half-written
  # folder is left.
  assert sorted(p.name for p in (where / TFDS_NAME).iterdir()) == ["1.0.0"]
  info = json.loads((prepared / "dataset_info.json").read_text())
  assert info["fileFormat"] == "array_record"
  # Again: the copy is checked, nothing is requested.
  before = list(server.requests)
  assert cli.main(["data", "prepare", "--dataset", NAME, "--data-dir",
                   str(where)]) == 0
  assert capsys.readouterr().out.startswith(f"{NAME}: cached TFDS ")
  assert server.requests == before
  assert cli.main(["data", "list", "--data-dir", str(where)]) == 0
  row = next(line for line in capsys.readouterr().out.splitlines()
             if line.startswith(f"{TASK}/{NAME} "))
  assert row.split()[1:6] == ["TFDS", TFDS_NAME, "40", "/", "8"]
  assert "prepared" in row and row.endswith(str(where / TFDS_NAME))


def test_run_downloads_and_trains(server, tmp_path):
  where, out = tmp_path / "tfds", tmp_path / "out"
  assert cli.main(["run", "--task", TASK, "--dataset", NAME, "--model",
                   "cnn_scratch", "--optimizers", "adam", "--epochs", "1",
                   "--batch-size", "8", "--width", "0.25", "--quiet",
                   "--data-dir", str(where), "--output-dir", str(out)]) == 0
  assert len(server.downloads()) == 2
  meta = json.loads((out / TASK / NAME / "cnn_scratch" / "adam" /
                     "run_metadata.json").read_text())
  assert meta["dataset_info"]["provenance"] == {
      "tfds_name": TFDS_NAME, "version": "1.0.0",
      "split_sizes": {"train": 40, "test": 8}}


def test_offline_refuses_in_one_line_without_a_request(server, tmp_path):
  with pytest.raises(MissingDataError) as e:
    base.fetch(TASK, NAME, str(tmp_path), offline=True)
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"dataset {NAME!r} is not prepared in {tmp_path}"
                            " and --offline is set")
  assert server.requests == []


def test_server_errors_are_one_line_and_leave_no_copy(server, tmp_path):
  server.status = 503
  start = time.monotonic()
  with pytest.raises(download.DownloadError) as e:
    base.fetch(TASK, NAME, str(tmp_path))
  assert time.monotonic() - start < 10   # a few retries, not minutes
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"dataset {NAME!r}: downloading and preparing "
                            f"{TFDS_NAME} with TFDS into {tmp_path} failed")
  assert message.endswith("run again to resume")
  assert not tfds_lib.prepared_versions(str(tmp_path), TFDS_NAME)
  server.status = None   # the next attempt succeeds
  assert base.fetch(TASK, NAME, str(tmp_path))["downloaded"]


def test_size_mismatch_is_refused_in_one_line(server, tmp_path, monkeypatch):
  monkeypatch.setitem(SOURCE.__dict__, "sizes", {"train": 60_000,
                                                 "test": 10_000})
  for _ in range(2):   # after the download, then from the prepared copy
    with pytest.raises(hf_lib.SizeMismatchError) as e:
      base.fetch(TASK, NAME, str(tmp_path))
    message = str(e.value)
    assert "\n" not in message
    assert (f"dataset {NAME!r}: the copy of TFDS {TFDS_NAME} in "
            f"{tmp_path / TFDS_NAME / '1.0.0'} has train 40, test 8 "
            f"examples, but the TFDS catalog publishes train 60,000, test "
            f"10,000") in message
  assert len(server.downloads()) == 2   # downloaded once


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow installed: TFDS encodes the images")
def test_images_without_tensorflow_are_one_line(server, tmp_path,
                                                monkeypatch):
  """A builder with ``tfds.features.Image`` (as Oxford Pet's) needs
  TensorFlow to encode its images while preparing."""

  def image_info(self):
    features = tfds.features
    return tfds.core.DatasetInfo(builder=self, features=features.FeaturesDict({
        "image": features.Image(shape=(28, 28, 1)),
        "label": features.ClassLabel(names=["plain", "square"])}))

  monkeypatch.setattr(OptbenchTinyDigits, "_info", image_info)
  with pytest.raises(download.DownloadError) as e:
    base.fetch(TASK, NAME, str(tmp_path))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(
      f"dataset {NAME!r}: TFDS needs TensorFlow to prepare {TFDS_NAME} (it "
      f"encodes its images): pip install tensorflow-cpu")
  assert not tfds_lib.prepared_versions(str(tmp_path), TFDS_NAME)


def test_experiment_prepare_lists_a_tfds_dataset(tmp_path, capsys,
                                                 monkeypatch):
  """``--prepare`` names each dataset's source and published sizes through
  the download's interface, a TFDS one (Oxford Pet) included."""
  from tests.test_experiments import _main, _script
  for var in download.OFFLINE_ENV:
    monkeypatch.delenv(var, raising=False)
  module = _script("thesis_campaign")
  argv = ["--configs", "pet_unet", "--data-dir", str(tmp_path / "data"),
          "--output-dir", str(tmp_path / "out"), "--prepare", "--offline"]
  assert _main(module, argv) == 2
  captured = capsys.readouterr()
  assert ("  dataset oxford_iiit_pet: TFDS oxford_iiit_pet, published "
          "train 3,680, test 3,669") in captured.out.splitlines()
  err = captured.err.strip().splitlines()
  assert len(err) == 1 and "--offline is set" in err[0]
