"""A NaN in a large array still reaches the engine's divergence check.

Measured on this project's 2-core CPU (jaxlib 0.10.2), with XLA:CPU's
default YNNPACK reduction fusions: ``jnp.max`` and ``jnp.min`` of 32,768,
65,536 and 2²⁰ float32 ones holding one NaN return 1.0, a row-wise max of a
64×512 array drops the NaN row, ``nn.max_pool`` over a (32, 32, 32, 16)
array drops it (the models' ``layers.max_pool`` keeps it on the CPU:
tests/models/test_convolution.py), and ``relu(x).sum()`` over 32K elements counts the NaN as 0
(1,000 elements were right; with ``--xla_cpu_experimental_ynn_fusion_type=
-reduce`` all of them propagate the NaN, but ResNet-18's scanned epoch at
batch 32 ran 2.8× slower, 2.01 → 0.71 steps/s, so XLA's default stays).
Sums, ``isfinite(x).all()``, ``argmax`` and softmax cross-entropy propagate
it either way. The engine's divergence check is ``isfinite`` of the mean
loss, a *sum* of per-example cross-entropies (log-softmax subtracts the row
max, but ``x − max`` keeps the NaN and the sum of its exponentials
propagates it): a NaN in one input pixel of a 64-example ``cnn_scratch``
batch with 512 classes (64×512 logits) makes the train step non-finite
(tested here; it also held with ``-individual_convolution,-reduce``).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optbench_jax import models, tasks, transforms
from optbench_jax.data.base import DatasetInfo
from optbench_jax.engine import optimizer as optimizer_lib
from optbench_jax.engine.program import Hyper, Program
from optbench_jax.transforms.base import RUN_AXIS


def _with_nan(shape, index):
  x = np.ones(shape, np.float32)
  x[index] = np.nan
  return jnp.asarray(x)


def test_the_divergence_reductions_propagate_nan():
  logits = _with_nan((64, 512), (3, 7))
  labels = jnp.zeros(64, jnp.int32)
  losses = jax.jit(lambda v: optax.softmax_cross_entropy_with_integer_labels(
      v, labels))(logits)
  assert np.isnan(losses).sum() == 1
  assert np.isnan(jax.jit(jnp.sum)(logits))
  assert not jax.jit(lambda v: jnp.isfinite(v).all())(logits)
  assert np.isnan(jax.jit(optax.global_norm)({"w": logits}))
  assert jax.jit(jnp.argmax)(logits.ravel()) == 3 * 512 + 7


@pytest.fixture(scope="module")
def step_and_batch():
  """The engine's train step of ``cnn_scratch`` with 512 classes: 64×512
  logits (32,768 elements) per batch of 64 8×8 images."""
  info = DatasetInfo("random", "image_classification", num_classes=512,
                     input_shape=(8, 8, 1))
  spec = models.get("image_classification", "cnn_scratch")
  hyper = Hyper(batch_size=64, eval_batch_size=64, total_steps=1,
                scheduler="none")
  tx = optimizer_lib.build("sgd_momentum", 0.01,
                           hyperparameters={"momentum": 0.9})
  program = Program(tasks.get("image_classification"), spec.build(info), info,
                    transforms.get("sgd_momentum"), tx, hyper)
  rng = np.random.RandomState(0)
  raw = {"image": rng.uniform(size=(64, 8, 8, 1)).astype(np.float32),
         "label": rng.randint(0, 512, 64).astype(np.int32)}
  state = program.init(jax.random.split(jax.random.key(0), 1),
                       program.example(raw), jnp.full((1,), 0.01), None)
  step = jax.jit(jax.vmap(program.train_step, in_axes=(0, None, 0),
                          axis_name=RUN_AXIS))
  keys = jax.random.split(jax.random.key(1), 1)

  def finite(image):
    batch = {**raw, "image": image, "mask": np.ones(64, np.float32)}
    _, metrics = step(state, program.task.preprocess(batch, info), keys)
    return bool(metrics["finite"][0])

  return finite, raw["image"]


def test_a_nan_pixel_makes_the_train_step_non_finite(step_and_batch):
  finite, image = step_and_batch
  assert finite(image)
  with_nan = image.copy()
  with_nan[5, 3, 4, 0] = np.nan
  assert not finite(with_nan)
