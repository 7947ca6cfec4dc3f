"""PyTorch references of the tasks' training losses, for the equivalence
tests (``tests/tasks/test_torch_losses.py``) and the speed benchmark.

One class per task family; a task names its own (``Task.reference_loss``)
and :func:`for_task` resolves the name. A reference is a
``torch.nn.Module``:

* ``Reference(task, model=None, label_smoothing=None)``: ``model`` is the
  task's PyTorch twin, for losses with parameters of their own (a CRF's);
  the label smoothing is the task's default unless given.
* ``forward(output, target)``: the batch's mean loss, ``Task.loss``'s
  ``sum / count`` for a batch without padding examples, from the twin's
  output (a Hugging Face output's ``.logits`` is read), computed in the
  output's precision (float32 at least).
* ``Reference.torch_batch(batch)``: a host batch (numpy arrays, after the
  task's ``preprocess``) → ``(the twin's positional inputs, target)``, numpy
  arrays in PyTorch's layouts (images NCHW, ids int64); a target may be a
  tuple of arrays.

This module imports torch; the library never imports it, so torch stays a
test and benchmark dependency.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from optbench_jax.errors import OptBenchError
from optbench_jax.tasks import semantic_segmentation as segmentation


def for_task(task) -> type["Reference"]:
  """The reference class the task names (``task.reference_loss``)."""
  if task.reference_loss is None:
    raise OptBenchError(f"task {task.name} has no PyTorch reference loss "
                        f"(reference_loss)")
  module, _, name = task.reference_loss.rpartition(".")
  return getattr(importlib.import_module(module), name)


def _long(x) -> np.ndarray:
  return np.asarray(x).astype(np.int64)


def _float(x: torch.Tensor) -> torch.Tensor:
  """``x`` in float32, or float64 if it is."""
  return x if x.dtype == torch.float64 else x.float()


def _logits(output) -> torch.Tensor:
  return _float(getattr(output, "logits", output))


def nchw_images(batch: Mapping[str, Any]) -> tuple:
  """``((images NCHW,), int64 labels)`` (per example or per pixel)."""
  image = np.asarray(batch["image"])
  return ((image.transpose(0, image.ndim - 1, *range(1, image.ndim - 1)),),
          _long(batch["label"]))


class Reference(torch.nn.Module):
  """What every reference keeps: the label smoothing and the twin."""

  def __init__(self, task, model: Optional[torch.nn.Module] = None,
               label_smoothing: Optional[float] = None):
    super().__init__()
    self.label_smoothing = float(task.default_label_smoothing
                                 if label_smoothing is None
                                 else label_smoothing)
    # Not a submodule: the twin's parameters stay the twin's.
    self.twin = lambda: model

  @staticmethod
  def torch_batch(batch: Mapping[str, Any]) -> tuple[tuple, Any]:
    raise NotImplementedError


# -- classification ----------------------------------------------------------
class ClassificationLoss(Reference):
  """Cross-entropy with label smoothing (``tasks/_classification.py``)."""

  def forward(self, output, target):
    return F.cross_entropy(_logits(output), target,
                           label_smoothing=self.label_smoothing)


class ImageClassificationLoss(ClassificationLoss):
  """``image_classification``: ``model(images NCHW)``, class targets."""
  torch_batch = staticmethod(nchw_images)


class SentimentLoss(ClassificationLoss):
  """``sentiment_analysis``: ``model(tokens, mask)``, class targets."""

  @staticmethod
  def torch_batch(batch):
    tokens = _long(batch["tokens"])
    return (tokens, tokens != 0), _long(batch["label"])


# -- segmentation ------------------------------------------------------------
class SegmentationLoss(Reference):
  """``semantic_segmentation``: inverse-frequency weighted pixel
  cross-entropy plus soft Dice over the pixels not labelled ``IGNORE``;
  logits NCHW, ``model(images NCHW)``."""
  torch_batch = staticmethod(nchw_images)

  def forward(self, output, target):
    logits = _logits(output)
    num_classes = logits.shape[1]
    valid = target != segmentation.IGNORE
    label = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(label, num_classes).permute(0, 3, 1, 2).to(
        logits.dtype) * valid[:, None]
    counts = onehot.sum((0, 2, 3))
    weights = torch.where(counts > 0, counts.sum() / (
        num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    pixel_weight = weights[label] * valid
    per_pixel = F.cross_entropy(logits, label, reduction="none",
                                label_smoothing=self.label_smoothing)
    cross_entropy = (per_pixel * pixel_weight).sum() / pixel_weight.sum(
    ).clamp(min=1e-12)
    probs = logits.softmax(1) * valid[:, None]
    smoothing = segmentation.DICE_SMOOTHING
    dice = (2 * (probs * onehot).sum((0, 2, 3)) + smoothing) / (
        probs.sum((0, 2, 3)) + counts + smoothing)
    return cross_entropy + 1 - dice.mean()


# -- tagging -----------------------------------------------------------------
def crf_nll(emissions, tags, mask, transitions, start, end):
  """Per-sentence CRF negative log-likelihood ``log Z − S(y)`` ``(B,)``:
  forward algorithm in log space, right padding (a padding step carries α
  unchanged), 0 for an empty row."""
  mask = mask.bool()
  real = mask.to(emissions.dtype)
  tags = torch.where(mask, tags, torch.zeros_like(tags))
  emitted = emissions.gather(-1, tags[..., None])[..., 0]
  moved = transitions[tags[:, :-1], tags[:, 1:]] * real[:, 1:]
  length = mask.sum(-1)
  last = tags.gather(1, (length - 1).clamp(min=0)[:, None])[:, 0]
  score = (start[tags[:, 0]] + (emitted * real).sum(-1) + moved.sum(-1)
           + end[last])
  alpha = start + emissions[:, 0]
  for t in range(1, emissions.shape[1]):
    nxt = torch.logsumexp(alpha[:, :, None] + transitions, dim=1) + (
        emissions[:, t])
    alpha = torch.where(mask[:, t, None], nxt, alpha)
  log_z = torch.logsumexp(alpha + end, dim=-1)
  nonempty = length > 0
  return torch.where(nonempty, log_z - score, torch.zeros_like(score))


class CRFLoss(Reference):
  """``ner``: the CRF negative log-likelihood of the gold tags, mean over
  sentences, with the twin's ``crf_transitions/start/end`` (a CRF has no
  label smoothing); ``model(tokens, chars, mask)`` → emissions."""

  @staticmethod
  def torch_batch(batch):
    tokens = _long(batch["tokens"])
    mask = tokens != 0
    return (tokens, _long(batch["chars"]), mask), (_long(batch["tags"]),
                                                   mask)

  def forward(self, output, target):
    tags, mask = target
    emissions = _float(output)
    twin = self.twin()
    crf = (twin.crf_transitions, twin.crf_start, twin.crf_end)
    return crf_nll(emissions, tags, mask,
                   *(p.to(emissions.dtype) for p in crf)).mean()


# -- extractive question answering --------------------------------------------
class SpanLoss(Reference):
  """``question_answering``: the start plus the end position's
  cross-entropy, the mean over the answerable examples;
  ``model(context, context_mask, question, question_mask)`` →
  ``(start_logits, end_logits)``."""

  @staticmethod
  def torch_batch(batch):
    context, question = _long(batch["context"]), _long(batch["question"])
    return ((context, context != 0, question, question != 0),
            (_long(batch["start"]), _long(batch["end"]),
             np.asarray(batch["answerable"], np.float32)))

  def forward(self, output, target):
    start, end, answerable = target
    per_example = sum(
        F.cross_entropy(_float(logits), position, reduction="none",
                        label_smoothing=self.label_smoothing)
        for logits, position in zip(output, (start, end)))
    weight = answerable.to(per_example.dtype)
    return (per_example * weight).sum() / weight.sum()


# -- generation: next-token prediction ----------------------------------------
class TokenLoss(Reference):
  """Next-token cross-entropy over the real target tokens (id 0 ignored),
  the mean over them, with the task's label smoothing (PyTorch's
  ``label_smoothing`` mixes in the uniform distribution as optax's
  ``smooth_labels``). Logits ``(B, T, V)``, targets ``(B, T)``."""

  def forward(self, output, target):
    return F.cross_entropy(_logits(output).flatten(0, 1), target.flatten(),
                           ignore_index=0,
                           label_smoothing=self.label_smoothing)


class LanguageModelLoss(TokenLoss):
  """``text_generation``: ``model(tokens[:, :-1], mask)``, targets
  ``tokens[:, 1:]``."""

  @staticmethod
  def torch_batch(batch):
    tokens = _long(batch["tokens"])
    inputs = tokens[:, :-1]
    return (inputs, inputs != 0), tokens[:, 1:]


class Seq2SeqLoss(TokenLoss):
  """Translation, summarization: ``model(source, source_mask,
  target[:, :-1], target_mask)``, targets ``target[:, 1:]``."""

  @staticmethod
  def torch_batch(batch):
    source, target = _long(batch["source"]), _long(batch["target"])
    target_in = target[:, :-1]
    return ((source, source != 0, target_in, target_in != 0),
            target[:, 1:])
