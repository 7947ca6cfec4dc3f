"""One benchmark entry: a registered model and the random data it trains on.

Every model of the model registry (``optbench_jax.models``) is an entry. Its
registry entry states the data it expects (``example_info``: input shape,
classes) and, when it has one, its PyTorch twin (``torch_twin``) and the
weight conversion (``conversion``); its task's recipe in ``TASK_DATA`` makes
random data of that shape and says how PyTorch reads a batch and which loss
it trains; the task computes the data's statistics (``Task.fit``). A model
whose task has no recipe is reported as not implemented yet, with the
reason.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import torch

from optbench_jax import data, models, tasks
from optbench_jax.data.base import DatasetInfo
from optbench_jax.tasks import semantic_segmentation as segmentation


@dataclasses.dataclass(frozen=True)
class TaskData:
  """How a task's benchmark data are made and fed to PyTorch.

  random(info, n, rng) -> host arrays of n examples; torch_batch(a
  preprocessed numpy batch) ->
  (model inputs, target); torch_loss() -> the PyTorch loss module (the mean
  over the batch, as the engine's loss).
  """
  random: Callable[[DatasetInfo, int, np.random.RandomState], dict]
  torch_batch: Callable[[Mapping[str, np.ndarray]], tuple[tuple, Any]]
  torch_loss: Callable[[], torch.nn.Module]


def random_images(info, n, rng):
  """uint8 images of ``info.input_shape`` and uniform labels."""
  return {"image": rng.randint(0, 256, (n, *info.input_shape), dtype=np.uint8),
          "label": rng.randint(0, info.num_classes, n).astype(np.int32)}


def nchw_images(batch):
  """NHWC images → PyTorch's NCHW; int64 class targets (per example or per
  pixel)."""
  image = np.asarray(batch["image"])
  return ((image.transpose(0, image.ndim - 1, *range(1, image.ndim - 1)),),
          np.asarray(batch["label"]).astype(np.int64))


def random_segmentation(info, n, rng):
  """uint8 images of ``info.input_shape`` and uint8 per-pixel labels,
  uniform over the classes with 1 % of pixels ``IGNORE`` (255)."""
  height, width = info.input_shape[:2]
  label = rng.randint(0, info.num_classes, (n, height, width)).astype(np.uint8)
  label[rng.random_sample(label.shape) < 0.01] = segmentation.IGNORE
  return {"image": rng.randint(0, 256, (n, *info.input_shape), dtype=np.uint8),
          "label": label}


class SegmentationLoss(torch.nn.Module):
  """The ``semantic_segmentation`` task's batch loss in PyTorch (no padding,
  no label smoothing): inverse-frequency weighted pixel cross-entropy plus
  soft Dice, over the pixels not labelled ``IGNORE``; logits NCHW."""

  def forward(self, logits, target):
    num_classes = logits.shape[1]
    valid = target != segmentation.IGNORE
    label = torch.where(valid, target, torch.zeros_like(target))
    onehot = torch.nn.functional.one_hot(label, num_classes).permute(
        0, 3, 1, 2).to(logits.dtype) * valid[:, None]
    counts = onehot.sum((0, 2, 3))
    weights = torch.where(counts > 0, counts.sum() / (
        num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    pixel_weight = weights[label] * valid
    per_pixel = torch.nn.functional.cross_entropy(logits, label,
                                                  reduction="none")
    cross_entropy = (per_pixel * pixel_weight).sum() / pixel_weight.sum(
    ).clamp(min=1e-12)
    probs = logits.softmax(1) * valid[:, None]
    smoothing = segmentation.DICE_SMOOTHING
    dice = (2 * (probs * onehot).sum((0, 2, 3)) + smoothing) / (
        probs.sum((0, 2, 3)) + counts + smoothing)
    return cross_entropy + 1 - dice.mean()


TASK_DATA = {
    "image_classification": TaskData(random_images, nchw_images,
                                     torch.nn.CrossEntropyLoss),
    "semantic_segmentation": TaskData(random_segmentation, nchw_images,
                                      SegmentationLoss),
}


class NotImplementedYet(Exception):
  """The benchmark cannot measure this model; the message says why."""


@dataclasses.dataclass
class Workload:
  spec: models.ModelSpec
  info: DatasetInfo          # example_info, with the random data's stats
  arrays: dict               # host arrays: steps × batch random examples
  recipe: TaskData
  jax: Any = None            # jax_timing.Setup, once made

  @property
  def name(self) -> str:
    return self.spec.name


def registered() -> list[str]:
  """Every model of the registry, in registry order."""
  return models.MODELS.names()


def make(name: str, args) -> Workload:
  spec = models.MODELS.get(name)
  recipe = TASK_DATA.get(spec.task)
  if recipe is None:
    raise NotImplementedYet(f"no random-data recipe for task {spec.task!r} "
                            f"in benchmarks/speed/workload.py")
  arrays = recipe.random(spec.example_info, args.batch_size * args.steps,
                         np.random.RandomState(args.seed))
  # The task's statistics of the training data (e.g. normalisation); the
  # example info has no augmentation, so none runs.
  splits = tasks.get(spec.task).fit(data.Splits(
      train=arrays, val=data.take(arrays, np.arange(0)), test=None,
      info=dataclasses.replace(spec.example_info, name="random",
                               source="random")))
  return Workload(spec, splits.info, arrays, recipe)
