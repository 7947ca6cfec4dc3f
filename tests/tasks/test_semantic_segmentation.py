"""The semantic-segmentation task: loss against PyTorch, metrics against
hand-computed confusion matrices (ignored pixels, absent classes, padding)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from optbench_jax import tasks
from optbench_jax.tasks import semantic_segmentation as seg


def _batch(rng, n=3, h=5, w=4, k=3, ignore_share=0.2, absent=None):
  label = rng.integers(0, k, (n, h, w))
  if absent is not None:
    label[label == absent] = (absent + 1) % k
  label[rng.random((n, h, w)) < ignore_share] = seg.IGNORE
  logits = rng.normal(size=(n, h, w, k))
  return logits, label.astype(np.uint8)


def test_weighted_cross_entropy_equals_pytorch_with_inverse_frequency():
  rng = np.random.default_rng(0)
  logits, label = _batch(rng, absent=2)
  valid = (label != seg.IGNORE).astype(np.float64)
  counts = np.array([(label == c).sum() for c in range(3)], np.float64)
  weights = np.where(counts > 0, counts.sum() / (3 * np.maximum(counts, 1)), 0)
  want = torch.nn.functional.cross_entropy(
      torch.tensor(logits).permute(0, 3, 1, 2),
      torch.tensor(label.astype(np.int64)), weight=torch.tensor(weights),
      ignore_index=seg.IGNORE).item()
  onehot = jax.nn.one_hot(np.where(valid > 0, label, 0), 3)
  got = seg.weighted_cross_entropy(jnp.asarray(logits, jnp.float32), onehot,
                                   jnp.asarray(valid, jnp.float32))
  assert float(got) == pytest.approx(want, rel=1e-5)  # measured 2e-7


def test_soft_dice_by_hand_and_padding_changes_nothing():
  rng = np.random.default_rng(1)
  logits, label = _batch(rng)
  task = tasks.get("semantic_segmentation")
  batch = {"label": jnp.asarray(label), "mask": jnp.ones(3)}
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  valid = (label != seg.IGNORE)[..., None]
  onehot = np.eye(3)[np.where(label == seg.IGNORE, 0, label)] * valid
  p = probs * valid
  dice = (2 * (p * onehot).sum((0, 1, 2)) + 1) / (
      p.sum((0, 1, 2)) + onehot.sum((0, 1, 2)) + 1)
  got = seg.soft_dice_loss(jnp.asarray(logits, jnp.float32),
                           jnp.asarray(onehot, jnp.float32),
                           jnp.asarray(valid[..., 0], jnp.float32))
  assert float(got) == pytest.approx(1 - dice.mean(), rel=1e-5)
  # A padded example (mask 0) contributes nothing to the loss.
  loss_sum, count = task.loss(jnp.asarray(logits, jnp.float32), batch, 0.0)
  padded = {"label": jnp.concatenate([batch["label"], batch["label"][:1]]),
            "mask": jnp.array([1.0, 1.0, 1.0, 0.0])}
  logits4 = jnp.concatenate([logits, rng.normal(size=(1, 5, 4, 3))])
  loss_sum4, count4 = task.loss(jnp.asarray(logits4, jnp.float32), padded,
                                0.0)
  assert float(count4) == float(count) == 3.0
  assert float(loss_sum4) == pytest.approx(float(loss_sum), rel=1e-6)


def test_confusion_matrix_excludes_ignored_pixels_and_padding():
  label = np.array([[[0, 1], [255, 2]], [[1, 1], [0, 0]]], np.uint8)
  pred = np.array([[[0, 2], [1, 2]], [[0, 0], [0, 0]]])
  batch = {"label": jnp.asarray(label), "mask": jnp.array([1.0, 0.0])}
  confusion = np.asarray(seg.confusion_matrix(
      batch["label"], jnp.asarray(pred), seg.valid_pixels(batch), 3))
  want = np.zeros((3, 3))
  want[0, 0] = want[1, 2] = want[2, 2] = 1  # example 2 is padding
  np.testing.assert_array_equal(confusion, want)


def test_metrics_from_a_hand_computed_confusion_matrix():
  # Rows: true 0, 1, 2, 3; class 3 never occurs (absent class).
  confusion = np.array([[8, 2, 0, 0],
                        [1, 3, 0, 0],
                        [0, 1, 5, 0],
                        [0, 0, 0, 0]], np.float64)
  got = seg.segmentation_metrics(confusion)
  dice = [2 * 8 / (10 + 9), 2 * 3 / (4 + 6), 2 * 5 / (6 + 5)]
  iou = [8 / (10 + 9 - 8), 3 / (4 + 6 - 3), 5 / (6 + 5 - 5)]
  assert got["dice"] == pytest.approx(np.mean(dice))
  assert got["iou"] == pytest.approx(np.mean(iou))
  assert got["pixel_accuracy"] == pytest.approx(16 / 20)
  assert got["mean_class_accuracy"] == pytest.approx(np.mean([.8, .75, 5 / 6]))
  # A class predicted but never labelled counts in Dice/IoU (score 0), not in
  # the per-class accuracy.
  confusion[0, 3] = 2
  confusion[0, 0] = 6
  got = seg.segmentation_metrics(confusion)
  assert got["dice"] == pytest.approx(np.mean(
      [2 * 6 / (10 + 7), 2 * 3 / (4 + 6), 2 * 5 / (6 + 5), 0.0]))
  assert got["mean_class_accuracy"] == pytest.approx(np.mean(
      [.6, .75, 5 / 6]))


def test_task_defaults_follow_the_source_protocol():
  task = tasks.get("semantic_segmentation")
  assert (task.primary_metric, task.higher_is_better) == ("dice", True)
  assert task.default_grad_clip == 1.0 and task.default_scheduler == "cosine"
