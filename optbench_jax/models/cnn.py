"""``cnn_scratch``: the source benchmark's small CNN trained from scratch.

conv(3×3, 32) → ReLU → max-pool(2) → conv(3×3, 64) → ReLU → max-pool(2) →
dense(128) → ReLU → dense(classes). No batch norm, no dropout. Its PyTorch
twin (``optbench_jax.reference.torch_vision.cnn_scratch``, modules ``conv1,
conv2, fc1, fc2``) and the weight mapping between the two
(:func:`conversion`) are registered with it.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from optbench_jax.data.base import DatasetInfo
from optbench_jax.models.base import ModelSpec, Twin, register
from optbench_jax.nn import convert
from optbench_jax.nn.layers import Conv, Dense, max_pool

WIDTHS = (32, 64)
HIDDEN = 128


class CNNScratch(nn.Module):
  num_classes: int = 10
  widths: tuple = WIDTHS
  hidden: int = HIDDEN
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      x = Conv(width, (3, 3), padding=1, dtype=self.dtype,
               init_scheme=self.init_scheme, name=f"conv{i + 1}")(x)
      x = max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(Dense(self.hidden, dtype=self.dtype,
                      init_scheme=self.init_scheme, name="fc1")(x))
    return Dense(self.num_classes, dtype=self.dtype,
                 init_scheme=self.init_scheme, name="fc2")(x)


def flattened_map(input_shape: Sequence[int], widths: Sequence[int]):
  """``(channels, height, width)`` of the feature map before the flatten."""
  height, width = int(input_shape[0]), int(input_shape[1])
  for _ in widths:
    height, width = height // 2, width // 2   # max-pool 2, floor
  return widths[-1], height, width


def conversion(info: DatasetInfo) -> list[convert.Rule]:
  """PyTorch ``conv1, conv2, fc1, fc2`` <-> Flax modules of the same names."""
  rules = [convert.Rule(f"conv{i + 1}", (f"conv{i + 1}",), convert.conv())
           for i in range(len(WIDTHS))]
  rules.append(convert.Rule("fc1", ("fc1",), convert.dense_after_flatten(
      *flattened_map(info.input_shape, WIDTHS))))
  rules.append(convert.Rule("fc2", ("fc2",), convert.dense()))
  return rules


register(ModelSpec(
    name="cnn_scratch", task="image_classification",
    factory=lambda info, init: CNNScratch(num_classes=info.num_classes,
                                          init_scheme=init),
    example_info=DatasetInfo(name="mnist", task="image_classification",
                             num_classes=10, input_shape=(28, 28, 1)),
    description="2x(conv-relu-pool) + dense-relu + dense, no batch norm",
    torch_twin=Twin("optbench_jax.reference.torch_vision.cnn_scratch"),
    conversion=conversion, widths={"widths": 1, "hidden": 1}))
