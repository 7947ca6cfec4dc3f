"""Semantic segmentation datasets from the Hugging Face Hub or a TFDS cache.

Both datasets give ``image`` uint8 ``(N, 256, 256, 3)`` and ``label`` uint8
``(N, 256, 256)`` class indices, ``255`` marking pixels without a class
(ignored by the loss and the metrics). Images are resized with PIL's
antialiased bilinear resize, labels with nearest neighbour (no new label
values). The training split is ``train``, the official validation split is
the test split (the engine holds out its own validation split from train).
Training augmentation: :func:`~optbench_jax.data.augment.flip_scale_crop`.

* ``oxford_iiit_pet``: Oxford-IIIT Pet (Parkhi et al., 2012; 3,680 trainval
  + 3,669 test images) with its trimaps turned binary: foreground (trimap 1)
  → 1, background (2) → 0, outline (3) → 255. Sources: the Hugging Face
  dataset ``tchevrou/oxford-iiit-pet`` (``image``, trimap image ``label``;
  ``timm/oxford-iiit-pet`` has breeds only, no trimaps; an id not confirmed
  against its card), then TFDS ``oxford_iiit_pet`` (``image``,
  ``segmentation_mask`` with values 1, 2, 3), read from either cache. A
  missing copy is downloaded by TFDS (the canonical source: the authors'
  files at robots.ox.ac.uk), which needs TensorFlow to prepare it.
* ``voc2012``: PASCAL VOC 2012 segmentation (Everingham et al., 2010; 1,464
  train + 1,449 val images), 21 classes (background and 20 objects), object
  boundaries and difficult regions 255. Source: the Hugging Face dataset
  ``nateraw/pascal-voc-2012`` (``image``, ``mask``; splits ``train`` and
  ``val``). A mask read as palette indices (the ``SegmentationClass`` PNGs)
  is the class map itself; an RGB mask is mapped through the VOC colour map
  (boundary colour (224, 224, 192) and unknown colours → 255). TFDS has no
  source: its ``voc/2012`` holds detection boxes only, no segmentation masks.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from optbench_jax.data import augment
from optbench_jax.data.base import DatasetInfo, RawDataset
from optbench_jax.data.hf import Arrays, HFSource, Loaded
from optbench_jax.data.tfds import TFDSSource
from optbench_jax.data.vision import register_cached
from optbench_jax.errors import MissingDataError, OptBenchError

IGNORE = 255
SIZE = (256, 256)  # (H, W) of every image and label map
PET_CLASSES = ["background", "pet"]
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
VOC_BOUNDARY_RGB = (224, 224, 192)


def lookup_table(mapping: dict[int, int]) -> np.ndarray:
  """A 256-entry uint8 table: ``mapping``'s values, 255 everywhere else."""
  table = np.full(256, IGNORE, np.uint8)
  for raw, ours in mapping.items():
    table[raw] = ours
  return table


PET_TRIMAP = lookup_table({1: 1, 2: 0})  # 3 (outline) and anything else: 255
VOC_INDEX = lookup_table({i: i for i in range(len(VOC_CLASSES))})


def voc_colormap(n: int = 256) -> np.ndarray:
  """The VOC palette: ``(n, 3)`` uint8, index ``i``'s colour from its bits."""
  index = np.arange(n)
  cmap = np.zeros((n, 3), np.int64)
  for shift in range(8):
    for channel in range(3):
      bit = (index >> (3 * shift + channel)) & 1
      cmap[:, channel] |= bit << (7 - shift)
  return cmap.astype(np.uint8)


def voc_rgb_to_index(mask: np.ndarray) -> np.ndarray:
  """An RGB VOC mask ``(H, W, 3)`` → class indices; other colours → 255."""
  packed = lambda rgb: (rgb[..., 0].astype(np.int64) << 16) | (
      rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
  keys = packed(voc_colormap(len(VOC_CLASSES)))
  flat = packed(mask[..., :3])
  order = np.argsort(keys)
  pos = np.clip(np.searchsorted(keys[order], flat), 0, len(keys) - 1)
  found = keys[order][pos] == flat
  return np.where(found, order[pos], IGNORE).astype(np.uint8)


def rgb(image: np.ndarray) -> np.ndarray:
  """Grey ``(H, W)``/``(H, W, 1)`` and RGBA images as uint8 RGB."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def resize_image(image: np.ndarray, size: tuple = SIZE) -> np.ndarray:
  """PIL's antialiased bilinear resize of an RGB image to ``size`` (H, W)."""
  from PIL import Image
  out = Image.fromarray(rgb(image)).resize(
      (size[1], size[0]), Image.Resampling.BILINEAR)
  return np.asarray(out, np.uint8)


def resize_label(label: np.ndarray, size: tuple = SIZE) -> np.ndarray:
  """Nearest-neighbour resize of a uint8 label map to ``size`` (H, W)."""
  from PIL import Image
  out = Image.fromarray(np.ascontiguousarray(label, np.uint8)).resize(
      (size[1], size[0]), Image.Resampling.NEAREST)
  return np.asarray(out, np.uint8)


def trimap_labels(mask: np.ndarray) -> np.ndarray:
  """A Pet trimap (1 pet, 2 background, 3 outline) → 1, 0, 255."""
  mask = np.asarray(mask)
  if mask.ndim == 3:
    mask = mask[..., 0]
  return PET_TRIMAP[mask.astype(np.uint8)]


def voc_labels(mask: np.ndarray) -> np.ndarray:
  """A VOC mask, palette indices ``(H, W)`` or RGB ``(H, W, 3)`` → classes."""
  mask = np.asarray(mask)
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.ndim == 3:
    return voc_rgb_to_index(mask)
  return VOC_INDEX[mask.astype(np.uint8)]


def segmentation_split(name: str, arrays: Arrays, to_labels: Callable,
                       source: str, size: tuple = SIZE) -> Arrays:
  """Maps, resizes and stacks one split: uint8 images and label maps."""
  images, masks = arrays["image"], arrays["label"]
  if len(images) != len(masks):
    raise OptBenchError(f"dataset {name!r} at {source}: {len(images)} images "
                        f"but {len(masks)} masks")
  out_image = np.empty((len(images), *size, 3), np.uint8)
  out_label = np.empty((len(images), *size), np.uint8)
  for i, (image, mask) in enumerate(zip(images, masks)):
    labels = to_labels(mask)
    if labels.shape != np.asarray(image).shape[:2]:
      raise OptBenchError(
          f"dataset {name!r} at {source}: example {i} has a {labels.shape} "
          f"mask for a {np.asarray(image).shape[:2]} image")
    out_image[i] = resize_image(image, size)
    out_label[i] = resize_label(labels, size)
  return {"image": out_image, "label": out_label}


def make_build(name: str, to_labels: Callable, class_names: list[str]):
  """The ``build`` of :func:`register_cached` for a segmentation dataset."""

  def build(splits: dict[str, Arrays], source: str,
            names: dict[str, list[str]]) -> RawDataset:
    del names  # the label columns are masks; our class names are fixed
    info = DatasetInfo(
        name=name, task="semantic_segmentation",
        num_classes=len(class_names), input_shape=(*SIZE, 3), source=source,
        extra={"ignore_index": IGNORE, "class_names": list(class_names)})
    test = splits.get("test")
    return RawDataset(
        train=segmentation_split(name, splits["train"], to_labels, source),
        test=None if test is None else segmentation_split(
            name, test, to_labels, source),
        info=info)

  return build


class NoSource:
  """A place that cannot hold the dataset; says so in the missing-data error.

  Attributes:
    note: the sentence :func:`~optbench_jax.data.vision.load_cached` quotes.
  """

  def __init__(self, note: str):
    self.note = note

  def load(self, name: str, data_dir: Optional[str]) -> Loaded:
    del name, data_dir
    raise MissingDataError(self.note)


# Split sizes (``sizes=``): each source's dataset card (HFSource.card).
PET_SOURCES: Sequence = (
    HFSource(("tchevrou/oxford-iiit-pet",), None,
             {"train": "train", "test": "test"},
             {"image": "image", "label": "label"},
             {"train": 3_680, "test": 3_669}),
    # The TFDS catalog's sizes of oxford_iiit_pet 4.0.0.
    TFDSSource("oxford_iiit_pet", {"train": "train", "test": "test"},
               {"image": "image", "label": "segmentation_mask"},
               sizes={"train": 3_680, "test": 3_669}, download=True),
)
VOC_SOURCES: Sequence = (
    HFSource(("nateraw/pascal-voc-2012",), None,
             {"train": "train", "test": "val"},
             {"image": "image", "label": "mask"},
             {"train": 1_464, "val": 1_449}),
    NoSource("TensorFlow Datasets: not a source (its voc/2012 has detection "
             "boxes only, no segmentation masks)"),
)

register_cached(
    "oxford_iiit_pet", "semantic_segmentation", PET_SOURCES,
    make_build("oxford_iiit_pet", trimap_labels, PET_CLASSES),
    "Oxford-IIIT Pet trimaps as pet/background (outline ignored), 256x256, "
    "from the HF Hub or a TFDS cache", augment=augment.flip_scale_crop)
register_cached(
    "voc2012", "semantic_segmentation", VOC_SOURCES,
    make_build("voc2012", voc_labels, VOC_CLASSES),
    "PASCAL VOC 2012 segmentation, 21 classes (boundaries ignored), 256x256, "
    "from the HF Hub", augment=augment.flip_scale_crop)
