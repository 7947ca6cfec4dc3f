"""The image-classification task: loss, metrics, statistics of the split."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from optbench_jax import data, tasks
from optbench_jax.tasks.image_classification import (classification_metrics,
                                                     confusion_matrix)


def test_classification_metrics_match_sklearn():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 200)
  predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 4, 200))
  mask = np.ones(200, np.float32)
  confusion = np.asarray(confusion_matrix(jnp.asarray(labels),
                                          jnp.asarray(predictions),
                                          jnp.asarray(mask), 6))
  got = classification_metrics(confusion)
  assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions))
  for name, fn in (("precision_macro", skm.precision_score),
                   ("recall_macro", skm.recall_score),
                   ("f1_macro", skm.f1_score)):
    want = fn(labels, predictions, average="macro", zero_division=0)
    assert got[name] == pytest.approx(want, abs=1e-12), name


def test_confusion_matrix_ignores_padding():
  labels = jnp.array([0, 1, 1, 2])
  predictions = jnp.array([0, 1, 0, 2])
  mask = jnp.array([1.0, 1.0, 1.0, 0.0])
  confusion = np.asarray(confusion_matrix(labels, predictions, mask, 3))
  assert confusion.sum() == 3 and confusion[2, 2] == 0 and confusion[1, 0] == 1


def test_masked_loss_equals_unpadded_loss():
  task = tasks.get("image_classification")
  logits = jax.random.normal(jax.random.key(0), (6, 10))
  labels = jnp.arange(6) % 10
  full = task.loss(logits[:4], {"label": labels[:4], "mask": jnp.ones(4)}, 0.1)
  padded = task.loss(logits, {"label": labels,
                              "mask": jnp.array([1., 1., 1., 1., 0., 0.])}, 0.1)
  np.testing.assert_allclose(padded[0], full[0], rtol=1e-6)
  assert float(padded[1]) == 4.0


def test_label_smoothing_matches_pytorch_convention():
  task = tasks.get("image_classification")
  logits = jnp.array([[2.0, 0.5, -1.0]])
  batch = {"label": jnp.array([0]), "mask": jnp.ones(1)}
  eps = 0.2
  log_p = jax.nn.log_softmax(logits)[0]
  want = -((1 - eps) * log_p[0] + eps / 3 * log_p.sum())
  np.testing.assert_allclose(task.loss(logits, batch, eps)[0], want, rtol=1e-6)


def test_fit_computes_per_channel_statistics_of_the_training_split():
  task = tasks.get("image_classification")
  raw = data.load("image_classification", "digits", None)
  splits = task.fit(data.prepare(raw, seed=0, max_samples=100))
  image = splits.train["image"].astype(np.float64)
  assert splits.info.stats["mean"] == pytest.approx((image.mean(),))
  assert splits.info.stats["std"] == pytest.approx((image.std(),))
  batch = task.preprocess({"image": jnp.asarray(splits.train["image"])},
                          splits.info)
  assert float(jnp.mean(batch["image"])) == pytest.approx(0.0, abs=1e-5)
