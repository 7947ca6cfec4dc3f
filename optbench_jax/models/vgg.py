"""``vgg11``: VGG-11 (Simonyan & Zisserman 2015, "Very Deep Convolutional
Networks for Large-Scale Image Recognition", configuration "A").

Eight 3×3 convolutions (padding 1, with bias, each followed by ReLU) and five
2×2 stride-2 max-pools, ``64-M-128-M-256-256-M-512-512-M-512-512-M``; an
adaptive average pool to 7×7; three dense layers 25088 → 4096 → 4096 →
classes with ReLU and dropout 0.5 after the first two. This is torchvision's
``vgg11`` (``batch_norm=True``: ``vgg11_bn``, a batch norm between each
convolution and its ReLU), module for module, with its names:
``features.N`` (``N`` the index in torchvision's ``features`` sequence) is
``features_N`` here, ``classifier.0/3/6`` is ``classifier_0/3/6``; see
:func:`conversion`. At 1000 classes it has 132,863,336 parameters, at 100
classes 129,176,036, of which 102.8 M in ``classifier.0``.

The adaptive average pool (torchvision's ``AdaptiveAvgPool2d((7, 7))``)
averages output cell ``(i, j)`` of an ``H × W`` map over rows
``⌊iH/7⌋ … ⌈(i+1)H/7⌉ − 1`` and columns ``⌊jW/7⌋ … ⌈(j+1)W/7⌉ − 1``
(:func:`adaptive_average_pool`). On 224×224 inputs (ImageNet, the paper's)
the map is 7×7 and the pool is the identity. On 32×32 inputs (CIFAR) the
five pools leave a 1×1 map, and every one of the 49 cells is that one
pixel: the 512 features are replicated 49 times and ``classifier.0`` sees
each of them 49 times (it computes ``Σ_p W[:, c, p]·x_c``). This is
torchvision's behaviour, kept so that its state dicts convert; the
parameter count is then the same as on ImageNet. Inputs must be at least
32×32 (five halvings, rounded down, must leave a pixel).

Dropout draws from the ``dropout`` stream in training. Batch norm, when on,
is ``layers.BatchNorm`` (PyTorch's update rule, momentum 0.1, ε = 1e-5).
Initialisation follows ``--init`` as for every model: ``torch`` is PyTorch's
default module initialisation (the twin's,
``optbench_jax.reference.torch_vision.vgg11``);
torchvision's ``VGG`` re-initialises instead (Kaiming-normal fan-out
convolutions, ``N(0, 0.01)`` dense weights, zero biases).
"""
import functools
from typing import Iterator, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from optbench_jax.data.base import DatasetInfo
from optbench_jax.errors import OptBenchError
from optbench_jax.models.base import ModelSpec, Twin, register
from optbench_jax.nn import convert
from optbench_jax.nn.layers import BatchNorm, Conv, Dense, max_pool

POOL = "M"
# torchvision's cfgs["A"]: convolution widths, "M" a 2×2 max-pool.
CONFIG_A = (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512,
            POOL)
HIDDEN = 4096
POOL_SIZE = 7
DROPOUT = 0.5


def feature_layers(config: Sequence, batch_norm: bool
              ) -> Iterator[tuple[int, str, Optional[int]]]:
  """``(index, kind, width)`` of torchvision's ``features`` sequence:
  ``kind`` is ``"conv"``, ``"bn"``, ``"relu"`` or ``"pool"``."""
  index = 0
  for entry in config:
    if entry == POOL:
      yield index, "pool", None
      index += 1
      continue
    kinds = ("conv", "bn", "relu") if batch_norm else ("conv", "relu")
    for kind in kinds:
      yield index, kind, int(entry)
      index += 1


def _last_width(config: Sequence) -> int:
  return [int(c) for c in config if c != POOL][-1]


def _bins(size: int, out: int) -> np.ndarray:
  """``(out, size)`` averaging matrix of PyTorch's adaptive average pool:
  row ``i`` is ``1/(e−s)`` on ``s = ⌊i·size/out⌋ … e − 1``,
  ``e = ⌈(i+1)·size/out⌉``."""
  weights = np.zeros((out, size))
  for i in range(out):
    start, end = (i * size) // out, -((-(i + 1) * size) // out)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_average_pool(x, output_size: tuple[int, int]):
  """PyTorch's ``AdaptiveAvgPool2d(output_size)`` on NHWC ``x``.

  Each output cell averages its rectangular bin; a bin's mean is the mean
  over its rows of the means over its columns, so the pool is one
  contraction with two averaging matrices (:func:`_bins`).
  """
  rows = jnp.asarray(_bins(x.shape[1], output_size[0]), x.dtype)
  cols = jnp.asarray(_bins(x.shape[2], output_size[1]), x.dtype)
  return jnp.einsum("ih,jw,nhwc->nijc", rows, cols, x)


class VGG(nn.Module):
  """VGG; logits ``(N, classes)``.

  Attributes:
    num_classes: output classes.
    config: convolution widths and ``"M"`` max-pools (torchvision's
      ``cfgs``; :data:`CONFIG_A` is VGG-11).
    hidden: width of ``classifier_0`` and ``classifier_3`` (4096).
    pool_size: side of the adaptive average pool's output (7).
    batch_norm: a batch norm after each convolution (``vgg11_bn``).
    dropout_rate: after ``classifier_0`` and ``classifier_3``.
  """
  num_classes: int = 1000
  config: tuple = CONFIG_A
  hidden: int = HIDDEN
  pool_size: int = POOL_SIZE
  batch_norm: bool = False
  dropout_rate: float = DROPOUT
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False):
    smallest = 2**sum(c == POOL for c in self.config)
    if min(x.shape[1:3]) < smallest:
      raise OptBenchError(f"VGG inputs must be at least {smallest}x"
                          f"{smallest} (one pixel left after its max-pools), "
                          f"got {x.shape[1]}x{x.shape[2]}")
    x = x.astype(self.dtype)
    for index, kind, width in feature_layers(self.config, self.batch_norm):
      name = f"features_{index}"
      if kind == "conv":
        x = Conv(width, (3, 3), padding=1, dtype=self.dtype,
                 init_scheme=self.init_scheme, name=name)(x)
      elif kind == "bn":
        x = BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=self.dtype, name=name)(x)
      elif kind == "relu":
        x = nn.relu(x)
      else:
        x = max_pool(x, (2, 2), strides=(2, 2))
    x = adaptive_average_pool(x, (self.pool_size, self.pool_size))
    x = x.reshape(x.shape[0], -1)
    dense = functools.partial(Dense, dtype=self.dtype,
                              init_scheme=self.init_scheme)
    for index in (0, 3):
      x = nn.relu(dense(self.hidden, name=f"classifier_{index}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train,
                     name=f"classifier_{index + 2}")(x)
    return dense(self.num_classes, name="classifier_6")(x)


def conversion(info: DatasetInfo, config: Sequence = CONFIG_A,
               batch_norm: bool = False,
               pool_size: int = POOL_SIZE) -> list[convert.Rule]:
  """torchvision's names (``features.N``, ``classifier.0/3/6``) <->
  ``features_N``, ``classifier_0/3/6``; ``classifier.0`` reads torchvision's
  ``(c, h, w)`` flatten of the pooled map (``dense_after_flatten``)."""
  del info   # the same names and shapes for every input size
  rules = []
  for index, kind, _ in feature_layers(config, batch_norm):
    if kind in ("conv", "bn"):
      rules.append(convert.Rule(
          f"features.{index}", (f"features_{index}",),
          convert.conv() if kind == "conv" else convert.batch_norm()))
  rules.append(convert.Rule("classifier.0", ("classifier_0",),
                            convert.dense_after_flatten(
                                _last_width(config), pool_size, pool_size)))
  rules += [convert.Rule(f"classifier.{i}", (f"classifier_{i}",),
                         convert.dense()) for i in (3, 6)]
  return rules


register(ModelSpec(
    name="vgg11", task="image_classification",
    factory=lambda info, init: VGG(num_classes=info.num_classes,
                                   init_scheme=init),
    # VGG's own input (ImageNet): 224×224, 1000 classes. The registry-wide
    # twin tests skip examples this large (they run train mode without a
    # dropout key); tests/models/test_vgg.py checks vgg11 at reduced width.
    example_info=DatasetInfo(name="imagenet", task="image_classification",
                             num_classes=1000, input_shape=(224, 224, 3)),
    description="VGG-11 (Simonyan 2015, config A), torchvision's layout: "
                "8 convs, adaptive 7x7 pool, 4096-4096 classifier, dropout",
    torch_twin=Twin("optbench_jax.reference.torch_vision.vgg11"),
    conversion=conversion, widths={"config": 1, "hidden": 1}))
