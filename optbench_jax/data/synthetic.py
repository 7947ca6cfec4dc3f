"""Synthetic datasets: small, deterministic, generated in memory, learnable.

Each task registers a ``synthetic`` dataset here with the real input and label
shapes, whose labels follow a rule of the inputs, so the loss must fall.

``image_classification/synthetic``: 28×28×1 images of Gaussian noise with a
bright 7×7 square whose position (one of 10 cells of a grid) is the label.
"""
from __future__ import annotations

import numpy as np

from optbench_jax.data.base import DatasetInfo, DatasetSpec, RawDataset, register

SYNTHETIC_SEED = 1234  # the data never depend on the run's seed


def image_classification(n_train: int = 1024, n_test: int = 256,
                         size: int = 28, num_classes: int = 10) -> RawDataset:
  rng = np.random.default_rng(SYNTHETIC_SEED)

  def make(n):
    label = rng.integers(0, num_classes, size=n).astype(np.int32)
    image = rng.normal(0.2, 0.1, size=(n, size, size, 1))
    cells = [(r, c) for r in (2, 11, 20) for c in (2, 11, 20)] + [(11, 11)]
    for i, y in enumerate(label):
      r, c = cells[y] if y < 9 else (6, 16)
      r += rng.integers(-2, 3)
      c += rng.integers(-2, 3)
      image[i, r:r + 7, c:c + 7, 0] += 0.7
    return {"image": np.clip(image, 0, 1).astype(np.float32), "label": label}

  info = DatasetInfo(name="synthetic", task="image_classification",
                     num_classes=num_classes, input_shape=(size, size, 1),
                     source="synthetic")
  return RawDataset(train=make(n_train), test=make(n_test), info=info)


register(DatasetSpec(
    name="synthetic", task="image_classification",
    load=lambda data_dir=None: image_classification(),
    description="28x28 noise with a bright square whose position is the label"))
