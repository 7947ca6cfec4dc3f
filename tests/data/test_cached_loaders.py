"""Loaders of locally cached datasets (Hugging Face and TFDS), on tiny data.

Each test writes a tiny dataset in the library's own on-disk format with the
library's own writer, then reads it back through the registry:

* Hugging Face: a ``datasets`` builder, given the ``repo_id``, config and
  commit hash a Hub download has, writes its Arrow cache entry
  (``<cache>/ylecun___mnist/mnist/0.0.0/<commit>/``) with ``datasets``'
  ``ArrowWriter`` and ``dataset_info.json``; the loader then finds it through
  ``load_dataset``'s offline path (the ``cache`` packaged module). Also a
  ``DatasetDict.save_to_disk`` folder.
* TFDS: a subclass of TFDS's own ``MNIST``/``Cifar10``/``Cifar100`` builders
  with tiny in-memory splits writes an ``array_record`` dataset (no
  TensorFlow needed); skipped when ``tensorflow-datasets`` is not installed.

Every test runs with sockets disabled, so any network access fails the test.
"""
import os
import socket
import sys
import time
import types

import numpy as np
import pytest

from optbench_jax import data
from optbench_jax.data import augment
from optbench_jax.data import hf as hf_lib
from optbench_jax.data import tfds as tfds_lib
from optbench_jax.data import vision
from optbench_jax.errors import MissingDataError

# Tiny copies under real hub ids: their split sizes are not the published
# ones (checked in test_download.py).
pytestmark = pytest.mark.usefixtures("tiny_copies")

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a Hub commit hash
# datasets patches the globals (os, np, open, ...) of the module that defines
# a builder, for streaming; the test builder lives in a module of its own.
BUILDER_MODULE = "_optbench_tiny_hub_builder"
N_TRAIN, N_TEST = 12, 5


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
  """Points every default cache at empty folders and refuses the network."""
  for var, sub in [("HF_HOME", "hf_home"), ("XDG_CACHE_HOME", "xdg"),
                   ("TFDS_DATA_DIR", "tfds_default")]:
    monkeypatch.setenv(var, str(tmp_path / sub))
  monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args[1:2] or args)
    raise OSError("network access attempted in a test")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  yield
  assert not attempts, f"network access attempted: {attempts}"


def tiny(shape, seed, num_classes=10):
  """Random images and labels; with more than 10 classes the last class is
  always present, and a ``coarse_label`` (CIFAR-100's 20 superclasses) too."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in [("train", N_TRAIN), ("test", N_TEST)]:
    label = rng.integers(0, num_classes, n).astype(np.int32)
    arrays[split] = {"image": rng.integers(0, 256, (n, *shape),
                                           dtype=np.uint8), "label": label}
    if num_classes > 10:
      label[0] = num_classes - 1
      arrays[split]["coarse_label"] = rng.integers(0, 20, n).astype(np.int32)
  return arrays


def assert_same(got, want, shape):
  assert got["image"].dtype == np.uint8 and got["label"].dtype == np.int32
  assert got["image"].shape == (len(want["label"]), *shape)
  np.testing.assert_array_equal(got["image"], want["image"])
  np.testing.assert_array_equal(got["label"], want["label"])


def sort_by_image(split):
  order = sorted(range(len(split["label"])),
                 key=lambda i: split["image"][i].tobytes())
  return {k: v[order] for k, v in split.items()}


# -- Hugging Face ------------------------------------------------------------


def write_hf_cache(cache_dir, hub_id, config, image_column, arrays,
                   shape, label_columns=(("label", "label", 10),)):
  """Writes ``arrays`` as a Hub download of ``hub_id`` leaves them cached;
  ``label_columns``: (Hub column, key in ``arrays``, classes) per label."""
  datasets = pytest.importorskip("datasets")
  sys.modules.setdefault(BUILDER_MODULE, types.ModuleType(BUILDER_MODULE))
  features = datasets.Features({
      image_column: datasets.Image(),
      **{column: datasets.ClassLabel(names=[f"c{i}" for i in range(n)])
         for column, _, n in label_columns}})

  class TinyHubDataset(datasets.GeneratorBasedBuilder):
    """The Arrow cache writer every Hub dataset goes through."""
    __module__ = BUILDER_MODULE

    def _info(self):
      return datasets.DatasetInfo(features=features)

    def _split_generators(self, dl_manager):
      return [datasets.SplitGenerator(name=s, gen_kwargs={"split": s})
              for s in arrays]

    def _generate_examples(self, split):
      images = arrays[split]["image"]
      if shape[-1] == 1:
        images = images[..., 0]  # grey PNGs, as the Hub's MNIST has
      for i in range(len(images)):
        yield i, {image_column: images[i],
                  **{column: int(arrays[split][key][i])
                     for column, key, _ in label_columns}}

  builder = TinyHubDataset(
      cache_dir=str(cache_dir), dataset_name=hub_id.split("/")[-1],
      repo_id=hub_id, config_name=config, hash=COMMIT)
  builder.download_and_prepare()
  return builder.cache_dir


@pytest.mark.parametrize("hub_id", ["ylecun/mnist", "mnist"])
def test_hf_cache_mnist_round_trip(tmp_path, hub_id):
  arrays = tiny((28, 28, 1), seed=0)
  entry = write_hf_cache(tmp_path, hub_id, "mnist", "image", arrays,
                         (28, 28, 1))
  folder = hf_lib.cache_entry_name(hub_id)
  assert entry == str(tmp_path / folder / "mnist" / "0.0.0" / COMMIT)
  assert os.path.exists(os.path.join(entry, "mnist-train.arrow"))
  assert os.path.exists(os.path.join(entry, "mnist-test.arrow"))

  raw = data.load("image_classification", "mnist", str(tmp_path))
  assert_same(raw.train, arrays["train"], (28, 28, 1))
  assert_same(raw.test, arrays["test"], (28, 28, 1))
  info = raw.info
  assert (info.name, info.task, info.num_classes) == (
      "mnist", "image_classification", 10)
  assert info.input_shape == (28, 28, 1)
  assert info.source == entry
  assert info.augment is augment.rotate_images
  # It fits the rest of the pipeline.
  splits = data.prepare(raw, seed=0)
  assert len(splits.val["label"]) + len(splits.train["label"]) == N_TRAIN


def test_hf_cache_cifar10_from_default_location(tmp_path, monkeypatch):
  cache = tmp_path / "hf_datasets_cache"
  monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
  arrays = tiny((32, 32, 3), seed=1)
  entry = write_hf_cache(cache, "uoft-cs/cifar10", "plain_text", "img",
                         arrays, (32, 32, 3))

  raw = data.load("image_classification", "cifar10", None)
  assert_same(raw.train, arrays["train"], (32, 32, 3))
  assert_same(raw.test, arrays["test"], (32, 32, 3))
  assert raw.info.source == entry
  assert raw.info.input_shape == (32, 32, 3)
  assert raw.info.augment is augment.crop_flip_images

  source = vision.HFSource(("uoft-cs/cifar10",), "plain_text",
                           columns={"image": "img", "label": "label"})
  names = source.load("cifar10", None).class_names
  assert names == {"label": [f"c{i}" for i in range(10)]}


@pytest.mark.parametrize("hub_id", ["uoft-cs/cifar100", "cifar100"])
def test_hf_cache_cifar100_reads_the_fine_labels(tmp_path, hub_id):
  """The Hub's CIFAR-100 columns: ``img``, ``fine_label`` (100 classes, the
  labels read) and ``coarse_label`` (20, ignored)."""
  arrays = tiny((32, 32, 3), seed=7, num_classes=100)
  entry = write_hf_cache(
      tmp_path, hub_id, "cifar100", "img", arrays, (32, 32, 3),
      label_columns=(("fine_label", "label", 100),
                     ("coarse_label", "coarse_label", 20)))
  assert entry == str(tmp_path / hf_lib.cache_entry_name(hub_id)
                      / "cifar100" / "0.0.0" / COMMIT)

  raw = data.load("image_classification", "cifar100", str(tmp_path))
  assert_same(raw.train, arrays["train"], (32, 32, 3))
  assert_same(raw.test, arrays["test"], (32, 32, 3))
  assert raw.train["label"].max() == 99
  assert set(raw.train) == {"image", "label"}
  info = raw.info
  assert (info.name, info.num_classes, info.input_shape) == (
      "cifar100", 100, (32, 32, 3))
  assert info.source == entry
  assert info.augment is augment.crop_flip_images


def test_hf_save_to_disk(tmp_path):
  datasets = pytest.importorskip("datasets")
  arrays = tiny((28, 28, 1), seed=2)
  features = datasets.Features({"image": datasets.Image(),
                                "label": datasets.ClassLabel(num_classes=10)})
  datasets.DatasetDict({
      split: datasets.Dataset.from_dict(
          {"image": list(a["image"][..., 0]), "label": a["label"].tolist()},
          features=features)
      for split, a in arrays.items()}).save_to_disk(str(tmp_path / "mnist"))

  raw = data.load("image_classification", "mnist", str(tmp_path))
  assert_same(raw.train, arrays["train"], (28, 28, 1))
  assert_same(raw.test, arrays["test"], (28, 28, 1))
  assert raw.info.source.startswith(str(tmp_path / "mnist"))


def test_hf_unreadable_cache_entry_is_reported_without_network(tmp_path):
  entry = write_hf_cache(tmp_path, "ylecun/mnist", "mnist", "image",
                         tiny((28, 28, 1), seed=3), (28, 28, 1))
  os.remove(os.path.join(entry, "mnist-train.arrow"))
  start = time.monotonic()
  with pytest.raises(MissingDataError) as e:
    data.load("image_classification", "mnist", str(tmp_path), offline=True)
  assert time.monotonic() - start < 5
  message = str(e.value)
  assert f"found {tmp_path / 'ylecun___mnist'} but could not read it" in message
  assert "\n" not in message


def test_offline_mode_refuses_the_hub_at_once(tmp_path):
  datasets = pytest.importorskip("datasets")
  before = (datasets.config.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"))
  start = time.monotonic()
  with pytest.raises(ConnectionError, match="(?i)offline"):
    with hf_lib.offline(datasets):
      datasets.load_dataset("ylecun/mnist", cache_dir=str(tmp_path))
  assert time.monotonic() - start < 5
  assert (datasets.config.HF_HUB_OFFLINE,
          os.environ.get("HF_HUB_OFFLINE")) == before  # restored


# -- Missing data ------------------------------------------------------------


@pytest.mark.parametrize("name,hub_id,entry", [
    ("mnist", "ylecun/mnist", "ylecun___mnist"),
    ("cifar10", "uoft-cs/cifar10", "uoft-cs___cifar10"),
    ("cifar100", "uoft-cs/cifar100", "uoft-cs___cifar100")])
def test_missing_with_data_dir_fails_fast_naming_every_place(
    tmp_path, name, hub_id, entry):
  start = time.monotonic()
  with pytest.raises(MissingDataError) as e:
    data.load("image_classification", name, str(tmp_path), offline=True)
  assert time.monotonic() - start < 3
  message = str(e.value)
  assert "\n" not in message
  assert f"dataset {name!r}" in message
  assert message.endswith("; not downloaded: --offline is set.")
  for place in [tmp_path / entry, tmp_path / name]:
    assert str(place) in message
  assert f"save_to_disk folder {tmp_path / name}" in message
  assert f"load_dataset({hub_id!r}" in message
  assert f"tfds build {name} --data_dir DIR" in message
  if not tfds_lib.tfds_installed():
    assert "tensorflow-datasets is not installed" in message


def test_missing_without_data_dir_names_default_caches(tmp_path):
  with pytest.raises(MissingDataError) as e:
    data.load("image_classification", "mnist", None, offline=True)
  message = str(e.value)
  hf_cache = tmp_path / "hf_home" / "datasets"
  assert str(hf_cache / "ylecun___mnist") in message
  assert str(hf_cache / "mnist") in message
  assert str(tmp_path / "tfds_default" / "mnist") in message
  assert "--data-dir DIR" in message


# -- TFDS --------------------------------------------------------------------


def write_tfds(data_dir, name, arrays):
  """Prepares ``name`` in ``data_dir`` with TFDS's own builder and writer."""
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")
  from PIL import Image
  parent = {"mnist": tfds.image_classification.MNIST,
            "cifar10": tfds.image_classification.Cifar10,
            "cifar100": tfds.image_classification.Cifar100}[name]

  class Tiny(parent, skip_registration=True):
    """The real builder, fed tiny splits instead of downloads."""
    # A one-part module name: tfds 4.9.10 looks for the checksums file of a
    # builder in a package through importlib_resources, not installed here.
    __module__ = "tiny_tfds_builder"

    def _split_generators(self, dl_manager):
      return {split: self._tiny(split) for split in arrays}

    def _tiny(self, split):
      for i, label in enumerate(arrays[split]["label"]):
        image = arrays[split]["image"][i]
        # PIL images are encoded by TFDS without TensorFlow.
        example = {"image": Image.fromarray(
            image[..., 0] if image.shape[-1] == 1 else image),
                   "label": int(label)}
        if name.startswith("cifar"):
          example["id"] = f"{split}_{i:05d}"
        if name == "cifar100":
          example["coarse_label"] = int(arrays[split]["coarse_label"][i])
        yield i, example

  Tiny.name = name
  builder = Tiny(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder.data_dir


@pytest.mark.parametrize("name,shape,num_classes", [
    ("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10),
    ("cifar100", (32, 32, 3), 100)])
def test_tfds_round_trip(tmp_path, name, shape, num_classes):
  arrays = tiny(shape, seed=4, num_classes=num_classes)
  path = write_tfds(tmp_path, name, arrays)
  raw = data.load("image_classification", name, str(tmp_path))
  # TFDS shuffles examples when writing; compare in a fixed order.
  assert_same(sort_by_image(raw.train), sort_by_image(arrays["train"]), shape)
  assert_same(sort_by_image(raw.test), sort_by_image(arrays["test"]), shape)
  assert raw.info.source == str(path)
  assert raw.info.input_shape == shape
  assert raw.info.num_classes == num_classes
  # CIFAR-100: the fine labels (feature ``label``), not ``coarse_label``.
  assert set(raw.train) == {"image", "label"}


def test_tfds_from_default_data_dir(tmp_path):
  arrays = tiny((28, 28, 1), seed=5)
  write_tfds(tmp_path / "tfds_default", "mnist", arrays)
  raw = data.load("image_classification", "mnist", None)
  assert_same(sort_by_image(raw.test), sort_by_image(arrays["test"]),
              (28, 28, 1))


def test_tfds_tfrecord_without_tensorflow_is_explained(tmp_path):
  if tfds_lib.importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed: tfrecord copies are readable")
  path = write_tfds(tmp_path, "mnist", tiny((28, 28, 1), seed=6))
  # Writing tfrecord needs TensorFlow; mark the copy as TFDS's default format.
  info = os.path.join(path, "dataset_info.json")
  with open(info) as f:
    text = f.read()
  with open(info, "w") as f:
    f.write(text.replace('"fileFormat": "array_record"',
                         '"fileFormat": "tfrecord"'))
  with pytest.raises(MissingDataError) as e:
    data.load("image_classification", "mnist", str(tmp_path), offline=True)
  message = str(e.value)
  assert f"found {path} but could not read it" in message
  assert "needs TensorFlow" in message and "array_record" in message
