"""Semantic segmentation: per-pixel classes, pixels labelled 255 ignored.

Batches: ``image`` ``(N, H, W, 3)`` (uint8, or float in [0, 1]), ``label``
``(N, H, W)`` class indices with ``IGNORE = 255`` for pixels without a class
(Oxford-IIIT Pet's outlines, VOC's object boundaries), and the engine's
``mask`` ``(N,)`` for padded examples. Images are normalised with the
ImageNet mean and standard deviation (as the source benchmark); the
augmentation (random flip and scale-crop of image and label together) is the
dataset's (``data/augment.py``).

Loss (per batch, over the valid pixels ``V``: not ignored, not padding)::

  w_c   = |V| / (K · n_c)  for the classes present (n_c pixels of class c)
  CE    = Σ_{i∈V} w_{y_i} · CE_i / Σ_{i∈V} w_{y_i}     (inverse-frequency
          weights, PyTorch's weighted mean; label smoothing on the targets)
  Dice  = 1 − (1/K) Σ_c (2 Σ_i p_ic g_ic + 1) / (Σ_i p_ic + Σ_i g_ic + 1)
          (soft Dice of the softmax probabilities p and one-hot targets g)
  loss  = CE + Dice

``loss`` returns ``(loss · n, n)`` for the ``n`` valid examples of the batch,
so the engine's mean over batches is the mean of these batch losses.

Metrics, from a ``K × K`` confusion matrix (rows: true class, columns:
predicted) summed on the device over the whole evaluation split, ignored
pixels and padding excluded: mean Dice ``2 C_cc / (row_c + col_c)``
(primary), mean IoU ``C_cc / (row_c + col_c − C_cc)`` (both averaged over
the classes that occur in the labels or the predictions), pixel accuracy
``Σ_c C_cc / Σ C`` and mean per-class pixel accuracy ``C_cc / row_c``
(averaged over the classes that occur in the labels).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optbench_jax.tasks._images import (normalized_images, random_images,
                                        with_stats)
from optbench_jax.tasks.base import Task, random_integers, register

IGNORE = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DICE_SMOOTHING = 1.0
RANDOM_IGNORED = 0.01   # the share of ``IGNORE`` pixels of random batches


def valid_pixels(batch) -> jax.Array:
  """``(N, H, W)`` weights: 1 for labelled pixels of real examples."""
  label = batch["label"].astype(jnp.int32)
  return (label != IGNORE).astype(jnp.float32) * batch["mask"][:, None, None]


def inverse_frequency_weights(onehot: jax.Array, valid: jax.Array
                              ) -> jax.Array:
  """``w_c = |V| / (K n_c)`` for the classes present in the batch, 0 else."""
  counts = jnp.einsum("nhwc,nhw->c", onehot, valid)
  num_classes = onehot.shape[-1]
  total = jnp.sum(counts)
  return jnp.where(counts > 0, total / (num_classes * jnp.maximum(counts, 1)),
                   0.0)


def weighted_cross_entropy(logits, onehot, valid, label_smoothing=0.0):
  """Inverse-frequency weighted pixel cross-entropy (weighted mean)."""
  weights = inverse_frequency_weights(onehot, valid)
  targets = optax.smooth_labels(onehot, label_smoothing)
  per_pixel = optax.softmax_cross_entropy(logits, targets)
  pixel_weight = jnp.einsum("nhwc,c->nhw", onehot, weights) * valid
  return jnp.sum(per_pixel * pixel_weight) / jnp.maximum(
      jnp.sum(pixel_weight), 1e-12)


def soft_dice_loss(logits, onehot, valid):
  """``1 − mean_c`` soft Dice of the softmax probabilities (valid pixels)."""
  probs = jax.nn.softmax(logits, axis=-1) * valid[..., None]
  targets = onehot * valid[..., None]
  intersection = jnp.sum(probs * targets, axis=(0, 1, 2))
  sizes = jnp.sum(probs, axis=(0, 1, 2)) + jnp.sum(targets, axis=(0, 1, 2))
  dice = (2.0 * intersection + DICE_SMOOTHING) / (sizes + DICE_SMOOTHING)
  return 1.0 - jnp.mean(dice)


def confusion_matrix(label, prediction, valid, num_classes):
  """``C[i, j]`` = number of valid pixels of class i predicted as j."""
  label = jnp.where(valid > 0, label.astype(jnp.int32), 0)
  true = jax.nn.one_hot(label, num_classes) * valid[..., None]
  pred = jax.nn.one_hot(prediction, num_classes)
  return jnp.einsum("nhwi,nhwj->ij", true, pred)


def segmentation_metrics(confusion: np.ndarray) -> dict[str, float]:
  """Mean Dice, mean IoU, pixel accuracy, mean class accuracy (see module
  docstring); NaN when the matrix is empty."""
  confusion = np.asarray(confusion, dtype=np.float64)
  total = confusion.sum()
  if not total:
    return {k: math.nan for k in ("dice", "iou", "pixel_accuracy",
                                  "mean_class_accuracy")}
  tp = np.diag(confusion)
  rows, cols = confusion.sum(axis=1), confusion.sum(axis=0)
  occurring = (rows + cols) > 0
  labelled = rows > 0
  dice = 2 * tp[occurring] / (rows + cols)[occurring]
  iou = tp[occurring] / (rows + cols - tp)[occurring]
  return {"dice": float(dice.mean()), "iou": float(iou.mean()),
          "pixel_accuracy": float(tp.sum() / total),
          "mean_class_accuracy": float((tp[labelled] / rows[labelled]).mean())}


class SemanticSegmentation(Task):
  name = "semantic_segmentation"
  primary_metric = "dice"
  higher_is_better = True
  default_scheduler = "cosine"
  default_grad_clip = 1.0
  default_label_smoothing = 0.0
  reference_loss = "optbench_jax.reference.torch_losses.SegmentationLoss"

  def model_inputs(self, batch):
    return (batch["image"],)

  def fit(self, splits, config=None, cache_dir=None, model=None):
    """ImageNet statistics (fixed, as the source benchmark)."""
    del config, cache_dir, model
    return with_stats(splits, mean=IMAGENET_MEAN, std=IMAGENET_STD)

  def preprocess(self, batch, info):
    return normalized_images(batch, info)

  def random_batch(self, info, n, rng):
    """uint8 images of ``info.input_shape`` and uint8 per-pixel labels,
    uniform over the classes, ``RANDOM_IGNORED`` of the pixels
    ``IGNORE``."""
    height, width = info.input_shape[:2]
    label = random_integers(rng, 0, info.num_classes, (n, height, width)
                            ).astype(np.uint8)
    label[rng.random(label.shape) < RANDOM_IGNORED] = IGNORE
    return {"image": random_images(info, n, rng), "label": label}

  def _batch_loss(self, logits, batch, label_smoothing):
    logits = logits.astype(jnp.float32)
    valid = valid_pixels(batch)
    label = jnp.where(valid > 0, batch["label"].astype(jnp.int32), 0)
    onehot = jax.nn.one_hot(label, logits.shape[-1])
    return (weighted_cross_entropy(logits, onehot, valid, label_smoothing)
            + soft_dice_loss(logits, onehot, valid))

  def loss(self, outputs, batch, label_smoothing):
    count = jnp.sum(batch["mask"])
    return self._batch_loss(outputs, batch, label_smoothing) * count, count

  def eval_stats(self, outputs, batch, info):
    loss_sum, count = self.loss(outputs, batch, 0.0)
    return {"loss_sum": loss_sum, "count": count,
            "confusion": confusion_matrix(batch["label"],
                                          jnp.argmax(outputs, -1),
                                          valid_pixels(batch),
                                          outputs.shape[-1])}

  def finalize(self, stats, info):
    count = float(stats["count"])
    loss = float(stats["loss_sum"]) / count if count else math.nan
    return {"loss": loss, **segmentation_metrics(stats["confusion"])}


register(SemanticSegmentation())
