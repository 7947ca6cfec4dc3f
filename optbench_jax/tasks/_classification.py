"""What the classification tasks share: cross-entropy and confusion-matrix
metrics.

Loss: softmax cross-entropy with label smoothing ε (PyTorch's convention:
targets ``(1 − ε)·onehot + ε/K``), summed over valid examples.
Metrics: accuracy and macro precision / recall / F1, all from a confusion
matrix accumulated on the device over the whole evaluation split.
A task subclasses :class:`Classification` and names its inputs and
preprocessing; labels are ``batch["label"]``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optbench_jax.tasks.base import Task


def confusion_matrix(labels, predictions, mask, num_classes):
  """``C[i, j]`` = weight of examples with label i predicted as j."""
  true = jax.nn.one_hot(labels, num_classes) * mask[:, None]
  pred = jax.nn.one_hot(predictions, num_classes)
  return true.T @ pred


def classification_metrics(confusion: np.ndarray) -> dict[str, float]:
  """Accuracy and macro precision/recall/F1 from a confusion matrix.

  Macro averages run over the classes present in the labels or the
  predictions (scikit-learn's convention); a class never predicted has
  precision 0, never present recall 0 (``zero_division=0``).
  """
  confusion = np.asarray(confusion, dtype=np.float64)
  total = confusion.sum()
  tp = np.diag(confusion)
  support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
  present = (support + predicted) > 0
  with np.errstate(divide="ignore", invalid="ignore"):
    precision = np.where(predicted > 0, tp / predicted, 0.0)
    recall = np.where(support > 0, tp / support, 0.0)
    f1 = np.where(precision + recall > 0,
                  2 * precision * recall / (precision + recall), 0.0)
  macro = lambda x: float(x[present].mean()) if present.any() else 0.0
  return {"accuracy": float(tp.sum() / total) if total else 0.0,
          "precision_macro": macro(precision), "recall_macro": macro(recall),
          "f1_macro": macro(f1)}


class Classification(Task):
  """Cross-entropy and confusion-matrix metrics; accuracy is primary."""
  primary_metric = "accuracy"
  higher_is_better = True

  def loss(self, outputs, batch, label_smoothing):
    num_classes = outputs.shape[-1]
    targets = optax.smooth_labels(
        jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
    per_example = optax.softmax_cross_entropy(
        outputs.astype(jnp.float32), targets)
    return jnp.sum(per_example * batch["mask"]), jnp.sum(batch["mask"])

  def eval_stats(self, outputs, batch, info):
    loss_sum, count = self.loss(outputs, batch, 0.0)
    return {"loss_sum": loss_sum, "count": count,
            "confusion": confusion_matrix(batch["label"],
                                          jnp.argmax(outputs, -1),
                                          batch["mask"], outputs.shape[-1])}

  def finalize(self, stats, info):
    count = float(stats["count"])
    loss = float(stats["loss_sum"]) / count if count else math.nan
    return {"loss": loss, **classification_metrics(stats["confusion"])}
