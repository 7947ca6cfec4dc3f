"""Every task's PyTorch reference loss (``optbench_jax/reference/
torch_losses.py``, named by ``Task.reference_loss``) equals ``Task.loss``,
and every task's random batches (``Task.random_batch``) fit the task and
its models.

Sizes are tiny: each registered model's ``example_info`` with 32×32 images,
a 40-id vocabulary and 12-token sequences. The losses are compared on a
random batch of the task (the first model of the task gives the outputs'
structure, ``jax.eval_shape``; the values are random), with label smoothing
0 and 0.1, and with padding: ``Task.loss`` on the whole batch with the last
examples masked out, the reference on the real examples only (as the speed
benchmark feeds it). JAX computes in float32 (``Task.loss`` casts to it),
the reference in float64 from the same float32 values: relative tolerance
1e-5.
"""
import dataclasses
import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optbench_jax import data, models, tasks  # noqa: E402
from optbench_jax.errors import OptBenchError  # noqa: E402
from optbench_jax.reference import torch_losses  # noqa: E402

N, REAL = 5, 3          # batch size; examples not masked out
RTOL = 1e-5


def tiny_info(spec):
  """The model's ``example_info`` shrunk: 32×32 images; text of 12 tokens
  (7 target tokens) over 40 ids (20 characters)."""
  info = spec.example_info
  if len(info.input_shape) == 3:
    return dataclasses.replace(info, input_shape=(32, 32, info.input_shape[2]))
  sizes = {"char_vocab_size": 20, "question_length": 6, "target_length": 7}
  stats = {**info.stats, "vocab_size": 40, "max_length": 12,
           **{k: v for k, v in sizes.items() if k in info.stats}}
  return dataclasses.replace(info, input_shape=(12,), stats=stats)


def task_info(task, spec):
  """What a run's ``fit`` leaves in the info: encoded statistics (text), or
  ``fit`` on a random training split (images)."""
  info = tiny_info(spec)
  encoded = task.encoded_info(info)
  if encoded is not None:
    return encoded
  train = task.random_batch(info, 8, np.random.default_rng(1))
  return task.fit(data.Splits(train=train, val=data.take(train, np.arange(0)),
                              test=None, info=info)).info


def device_batch(task, info, n, seed=0):
  """A preprocessed random batch of ``n`` examples, the last ``n - REAL``
  masked out."""
  arrays = task.random_batch(info, n, np.random.default_rng(seed))
  batch = {k: jnp.asarray(v) for k, v in arrays.items()}
  batch["mask"] = jnp.asarray(np.arange(n) < REAL, jnp.float32)
  return task.preprocess(batch, info)


@functools.lru_cache(maxsize=None)
def model_setup(name):
  """``(task, info, the model's outputs for a batch of N as shapes)``;
  nothing runs (``jax.eval_shape``), once per model."""
  spec = models.MODELS.get(name)
  task = tasks.get(spec.task)
  info = task_info(task, spec)
  model = spec.build(info)
  key = jax.random.key(0)
  outputs, _ = jax.eval_shape(
      lambda b: model.init_with_output({"params": key, "dropout": key},
                                       *task.model_inputs(b), train=False),
      device_batch(task, info, N))
  return task, info, outputs


ALL_MODELS = models.MODELS.names()
TASK_NAMES = tasks.TASKS.names()


def first_model(task_name):
  return models.names_for(task_name)[0]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_names_its_reference(name):
  task = tasks.get(name)
  reference = torch_losses.for_task(task)
  assert issubclass(reference, torch_losses.Reference)


def test_base_random_batch_names_the_task():
  class Bare(tasks.Task):
    name = "bare"
    model_inputs = loss = eval_stats = finalize = None

  with pytest.raises(OptBenchError, match="task bare"):
    Bare().random_batch(None, 1, np.random.default_rng(0))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_random_batch_fits_the_task_and_model(name):
  task, info, outputs = model_setup(name)
  host = task.random_batch(info, N, np.random.RandomState(0))
  chex.assert_tree_shape_prefix(host, (N,))
  assert all(isinstance(v, np.ndarray) for v in host.values())
  batch = device_batch(task, info, N)
  chex.assert_tree_shape_prefix(batch, (N,))
  chex.assert_tree_all_finite(
      {k: v for k, v in batch.items() if jnp.issubdtype(v.dtype,
                                                         jnp.floating)})
  loss_sum, count = jax.eval_shape(task.loss, outputs, batch, 0.1)
  chex.assert_shape((loss_sum, count), ())
  tokens = task.target_tokens(host)
  if tokens is not None:
    chex.assert_shape(tokens, (N,))
    assert (tokens >= 1).all()


@functools.lru_cache(maxsize=None)
def task_loss(name):
  """``Task.loss`` compiled once per task (the smoothing traced)."""
  return jax.jit(tasks.get(name).loss)


def random_outputs(shapes, rng):
  """Random values of the outputs' structure: normal logits of scale 3."""
  def fill(s):
    if jnp.issubdtype(s.dtype, jnp.floating):
      return jnp.asarray(3 * rng.standard_normal(s.shape), jnp.float32)
    return jnp.zeros(s.shape, s.dtype)
  return jax.tree.map(fill, shapes)


def as_torch(x):
  x = np.asarray(x)
  return torch.from_numpy(x.astype(np.float64) if x.dtype == np.float32
                          else x)


def twin_side(reference, outputs, m):
  """The twin's output for the Flax model's first ``m`` examples, and a
  stand-in twin holding the loss's own parameters (a CRF's)."""
  if reference is torch_losses.CRFLoss:
    twin = types.SimpleNamespace(
        crf_transitions=as_torch(outputs["transitions"]),
        crf_start=as_torch(outputs["start"]), crf_end=as_torch(outputs["end"]))
    return as_torch(outputs["emissions"][:m]), twin
  outputs = jax.tree.map(lambda x: np.asarray(x)[:m], outputs)
  if reference is torch_losses.SegmentationLoss:       # NHWC -> NCHW
    outputs = np.moveaxis(outputs, -1, 1)
  return jax.tree.map(as_torch, outputs), None


@pytest.mark.parametrize("label_smoothing", [None, 0.1])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_reference_loss_equals_task_loss(name, label_smoothing):
  task, info, shapes = model_setup(first_model(name))
  batch = device_batch(task, info, N, seed=2)
  if "answerable" in batch:            # an example without a span: no loss
    batch["answerable"] = batch["answerable"].at[1].set(0.0)
  outputs = random_outputs(shapes, np.random.default_rng(3))
  smoothing = (task.default_label_smoothing if label_smoothing is None
               else label_smoothing)
  loss_sum, count = task_loss(name)(outputs, batch, smoothing)
  expected = float(loss_sum) / float(count)

  reference = torch_losses.for_task(task)
  real = {k: np.asarray(v)[:REAL] for k, v in batch.items()}
  _, target = reference.torch_batch(real)
  target = (tuple(map(as_torch, target)) if isinstance(target, tuple)
            else as_torch(target))
  output, twin = twin_side(reference, outputs, REAL)
  loss = reference(task, twin, label_smoothing=label_smoothing)(output, target)
  assert loss.dtype == torch.float64
  np.testing.assert_allclose(float(loss), expected, rtol=RTOL)
