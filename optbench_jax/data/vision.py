"""Real datasets read from the user's local caches, downloaded when missing.

Each dataset lists its sources, tried in order: the Hugging Face ``datasets``
cache (:class:`~optbench_jax.data.hf.HFSource`, which also accepts a
``save_to_disk`` folder at ``<data-dir>/<name>``), then a TensorFlow Datasets
``data_dir`` (:class:`~optbench_jax.data.tfds.TFDSSource`). When no source
has the data, reading raises one
:class:`~optbench_jax.errors.MissingDataError` naming the dataset, every
directory looked in and how to fill one, and :func:`optbench_jax.data.load`
downloads the first Hugging Face source (``data/download.py``) unless the
network is forbidden.

* ``mnist``: 60,000 + 10,000 28×28 grey digits (``ylecun/mnist``; TFDS
  ``mnist``).
* ``cifar10``: 50,000 + 10,000 32×32 colour images, 10 classes
  (``uoft-cs/cifar10``; TFDS ``cifar10``).
* ``cifar100``: 50,000 + 10,000 32×32 colour images, the 100 fine classes
  (``uoft-cs/cifar100`` column ``fine_label``; TFDS ``cifar100`` feature
  ``label``; the 20 coarse classes are not read).

Other tasks register their cached datasets with one call each:
:func:`register_cached` takes the sources and a ``build`` function that turns
the numpy columns into a :class:`RawDataset`, e.g.::

  register_cached(
      "imdb", "sentiment",
      [HFSource(("stanfordnlp/imdb", "imdb"), "plain_text",
                columns={"text": "text", "label": "label"}),
       TFDSSource("imdb_reviews/plain_text",
                  columns={"text": "text", "label": "label"})],
      build=build_imdb)
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from optbench_jax.data import augment as augment_lib
from optbench_jax.data.base import DatasetInfo, DatasetSpec, RawDataset, register
from optbench_jax.data.download import HubDownload
from optbench_jax.data.hf import Arrays, HFSource, Loaded
from optbench_jax.data.tfds import TFDSDownload, TFDSSource
from optbench_jax.errors import MissingDataError, OptBenchError

__all__ = ["HFSource", "TFDSSource", "image_split", "load_cached",
           "register_cached", "register_image_classification"]


class Source(Protocol):
  """Anything that reads a dataset from a local copy (HF, TFDS, ...)."""

  def load(self, name: str, data_dir: Optional[str]) -> Loaded:
    """Returns (splits, source path, class names); raises MissingDataError."""


# (splits, source path, class names of label columns) -> the dataset
Build = Callable[[dict[str, Arrays], str, dict[str, list[str]]], RawDataset]


def load_cached(name: str, sources: Sequence[Source],
                data_dir: Optional[str] = None) -> Loaded:
  """Reads ``name`` from the first source that has a local copy.

  Args:
    name: our name of the dataset.
    sources: tried in order.
    data_dir: ``--data-dir``, or None for each library's standard cache.

  Returns:
    ``(splits, source, class_names)`` from the first source that has it.

  Raises:
    MissingDataError: no source has it; one line that names the dataset,
      every directory looked in and how to fill each cache.
  """
  notes = []
  for source in sources:
    try:
      return source.load(name, data_dir)
    except MissingDataError as e:
      notes.append(str(e).rstrip("."))
  raise MissingDataError(
      f"dataset {name!r} is not in any local cache. {'. '.join(notes)}.")


def register_cached(name: str, task: str, sources: Sequence[Source],
                    build: Build, description: str = "",
                    augment: Optional[Callable] = None,
                    defaults: Optional[dict] = None, *,
                    add: Callable[[DatasetSpec], DatasetSpec] = register
                    ) -> DatasetSpec:
  """Registers a dataset read by :func:`load_cached` and shaped by ``build``
  (``augment``: its training augmentation, see ``data/augment.py``;
  ``defaults``: its values of unset run settings); :func:`downloader`
  says which source is downloaded when no source has it. ``add`` registers
  the entry (the identity: build it only)."""

  def load(data_dir: Optional[str] = None) -> RawDataset:
    loaded = load_cached(name, sources, data_dir)
    raw = build(loaded.splits, loaded.source, loaded.class_names)
    return dataclasses.replace(raw, info=dataclasses.replace(
        raw.info, provenance=dict(loaded.provenance or {})))

  return add(DatasetSpec(
      name=name, task=task, load=load, augment=augment,
      description=description, defaults=dict(defaults or {}),
      download=downloader(name, sources)))


def downloader(name: str, sources: Sequence[Source]):
  """The download path of a dataset: its TFDS source marked ``download``
  (:class:`~optbench_jax.data.tfds.TFDSDownload`), else its first
  :class:`HFSource` (:class:`HubDownload`), else None."""
  for source in sources:
    if isinstance(source, TFDSSource) and source.download:
      return TFDSDownload(name, source)
  hub = next((s for s in sources if isinstance(s, HFSource)), None)
  return HubDownload(name, hub) if hub is not None else None


def image_split(name: str, arrays: Arrays, input_shape: tuple,
                num_classes: int, source: str) -> Arrays:
  """Checks and normalises one split: uint8 ``(N, H, W, C)`` images, int32
  labels in ``[0, num_classes)``."""
  image, label = arrays["image"], np.asarray(arrays["label"])
  if image.dtype == object:
    raise OptBenchError(f"dataset {name!r} at {source}: images differ in "
                        f"shape; expected all {input_shape}")
  if image.ndim == len(input_shape):  # grey images decode without a channel
    image = image[..., None]
  if tuple(image.shape[1:]) != tuple(input_shape) or image.dtype != np.uint8:
    raise OptBenchError(
        f"dataset {name!r} at {source}: images are {image.dtype} "
        f"{tuple(image.shape[1:])}, expected uint8 {tuple(input_shape)}")
  if len(label) != len(image) or label.size and (
      label.min() < 0 or label.max() >= num_classes):
    raise OptBenchError(f"dataset {name!r} at {source}: labels must be "
                        f"{len(image)} integers in [0, {num_classes})")
  return {"image": np.ascontiguousarray(image), "label": label.astype(np.int32)}


def register_image_classification(
    name: str, sources: Sequence[Source], *, num_classes: int,
    input_shape: tuple, augment: Optional[Callable] = None,
    description: str = "",
    add: Callable[[DatasetSpec], DatasetSpec] = register
) -> DatasetSpec:
  """Registers an ``image_classification`` dataset with ``image``/``label``
  columns (sources map theirs onto these) and train/test splits (``add``:
  as :func:`register_cached`)."""

  def build(splits: dict[str, Arrays], source: str,
            class_names: dict[str, list[str]]) -> RawDataset:
    del class_names
    test = splits.get("test")
    info = DatasetInfo(name=name, task="image_classification",
                       num_classes=num_classes, input_shape=tuple(input_shape),
                       source=source)
    return RawDataset(
        train=image_split(name, splits["train"], input_shape, num_classes,
                          source),
        test=None if test is None else image_split(
            name, test, input_shape, num_classes, source),
        info=info)

  return register_cached(name, "image_classification", sources, build,
                         description, augment, add=add)


_SPLITS = {"train": "train", "test": "test"}
# Split sizes (``sizes=``): each source's dataset card (HFSource.card).
_TEN_K_TEST = {"train": 50_000, "test": 10_000}

register_image_classification(
    "mnist",
    [HFSource(("ylecun/mnist", "mnist"), "mnist", _SPLITS,
              {"image": "image", "label": "label"},
              sizes={"train": 60_000, "test": 10_000}),
     TFDSSource("mnist", _SPLITS, {"image": "image", "label": "label"})],
    num_classes=10, input_shape=(28, 28, 1),
    augment=augment_lib.rotate_images,
    description="MNIST, 60,000 + 10,000 28x28 digits, from the HF Hub or a "
    "TFDS cache")
register_image_classification(
    "cifar10",
    [HFSource(("uoft-cs/cifar10", "cifar10"), "plain_text", _SPLITS,
              {"image": "img", "label": "label"}, sizes=_TEN_K_TEST),
     TFDSSource("cifar10", _SPLITS, {"image": "image", "label": "label"})],
    num_classes=10, input_shape=(32, 32, 3),
    augment=augment_lib.crop_flip_images,
    description="CIFAR-10, 50,000 + 10,000 32x32 colour images, from the HF "
    "Hub or a TFDS cache")
register_image_classification(
    "cifar100",
    [HFSource(("uoft-cs/cifar100", "cifar100"), "cifar100", _SPLITS,
              {"image": "img", "label": "fine_label"}, sizes=_TEN_K_TEST),
     TFDSSource("cifar100", _SPLITS, {"image": "image", "label": "label"})],
    num_classes=100, input_shape=(32, 32, 3),
    augment=augment_lib.crop_flip_images,
    description="CIFAR-100, 50,000 + 10,000 32x32 colour images, 100 fine "
    "classes, from the HF Hub or a TFDS cache")
