"""Image classification: cross-entropy, accuracy and macro P/R/F1.

Loss: softmax cross-entropy with label smoothing ε (PyTorch's convention:
targets ``(1 − ε)·onehot + ε/K``), summed over valid examples.
Metrics: accuracy (primary) and macro precision / recall / F1, all from a
confusion matrix accumulated on the device over the whole evaluation split.
Inputs: ``batch["image"]`` (HWC, uint8 or float in [0, 1]); augmentation is
the dataset's (``data/augment.py``). Normalisation with the training split's
per-channel mean and std (``fit``).
"""
from __future__ import annotations

import numpy as np

from optbench_jax.tasks._classification import (Classification,
                                                classification_metrics,
                                                confusion_matrix)
from optbench_jax.tasks._images import (normalized_images, random_images,
                                        with_stats)
from optbench_jax.tasks.base import random_integers, register

__all__ = ["ImageClassification", "classification_metrics",
           "confusion_matrix"]


class ImageClassification(Classification):
  name = "image_classification"
  default_scheduler = "cosine"
  default_grad_clip = None
  default_label_smoothing = 0.0
  reference_loss = ("optbench_jax.reference.torch_losses."
                    "ImageClassificationLoss")

  def model_inputs(self, batch):
    return (batch["image"],)

  def fit(self, splits, config=None, cache_dir=None, model=None):
    """Per-channel mean and std of the training images (in [0, 1])."""
    del config, cache_dir, model
    image = splits.train["image"].astype(np.float64)
    if splits.train["image"].dtype == np.uint8:
      image /= 255.0
    axes = tuple(range(image.ndim - 1))
    return with_stats(
        splits, mean=tuple(float(m) for m in image.mean(axis=axes)),
        std=tuple(float(s) + 1e-12 for s in image.std(axis=axes)))

  def preprocess(self, batch, info):
    return normalized_images(batch, info)

  def random_batch(self, info, n, rng):
    """uint8 images of ``info.input_shape``, uniform labels."""
    return {"image": random_images(info, n, rng),
            "label": random_integers(rng, 0, info.num_classes, n
                                     ).astype(np.int32)}


register(ImageClassification())
