"""``resnet18`` with the CIFAR stem (He et al. 2016, "Deep Residual Learning").

3×3 stride-1 convolution, no max-pool; four stages of two BasicBlocks (64,
128, 256, 512 channels, stride 2 from the second stage, 1×1 projection
shortcuts); global average pool; dense classifier. Batch norm uses batch
statistics in training and running statistics in evaluation, with PyTorch's
settings and update rule (momentum 0.1 ⇔ ``momentum=0.9``, ε = 1e-5, running
variance from the unbiased batch variance; ``layers.BatchNorm``), so that
weights converted from ``torchvision``-style models give the same outputs.
Modules are named as torchvision's (``conv1, bn1, layer{s}.{b}.conv1, ...,
fc``; a block is ``layer{s}_{b}`` and its shortcut ``downsample_conv`` /
``downsample_bn``), see :func:`conversion`; the twin is
``optbench_jax.reference.torch_vision.resnet18``.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from optbench_jax.data.base import DatasetInfo
from optbench_jax.models.base import ModelSpec, Twin, register
from optbench_jax.nn import convert
from optbench_jax.nn.layers import BatchNorm, Conv, Dense

STAGE_SIZES = (2, 2, 2, 2)
WIDTH = 64


def blocks(stage_sizes=STAGE_SIZES, width=WIDTH):
  """``(stage, block, features, strides, projected)`` of every BasicBlock."""
  channels = width
  for stage, blocks in enumerate(stage_sizes):
    features = width * 2**stage
    for block in range(blocks):
      strides = 2 if stage > 0 and block == 0 else 1
      yield (stage + 1, block, features, strides,
             strides != 1 or channels != features)
      channels = features


class BasicBlock(nn.Module):
  features: int
  strides: int = 1
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    conv = functools.partial(Conv, self.features, use_bias=False,
                             dtype=self.dtype, init_scheme=self.init_scheme)
    y = conv((3, 3), strides=self.strides, padding=1, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv((3, 3), padding=1, name="conv2")(y)
    y = norm(name="bn2")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv((1, 1), strides=self.strides, name="downsample_conv")(x)
      x = norm(name="downsample_bn")(x)
    return nn.relu(x + y)


class ResNet18(nn.Module):
  num_classes: int = 10
  stage_sizes: tuple = STAGE_SIZES
  width: int = WIDTH
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    x = Conv(self.width, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
             init_scheme=self.init_scheme, name="conv1")(x)
    x = BatchNorm(use_running_average=not train, momentum=0.9,
                  epsilon=1e-5, dtype=self.dtype, name="bn1")(x)
    x = nn.relu(x)
    for stage, block, features, strides, _ in blocks(self.stage_sizes,
                                                     self.width):
      x = BasicBlock(features, strides, dtype=self.dtype,
                     init_scheme=self.init_scheme,
                     name=f"layer{stage}_{block}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return Dense(self.num_classes, dtype=self.dtype,
                 init_scheme=self.init_scheme, name="fc")(x)


def conversion(info: DatasetInfo) -> list[convert.Rule]:
  """torchvision names (``layer{s}.{b}.conv1``, ``downsample.0``, ...).

  A torchvision ResNet-18 whose ``conv1`` is replaced by a 3×3 stride-1
  convolution and whose ``maxpool`` is an identity converts as well.
  """
  del info   # the same names for every input shape and class count
  rules = [convert.Rule("conv1", ("conv1",), convert.conv(use_bias=False)),
           convert.Rule("bn1", ("bn1",), convert.batch_norm())]
  for stage, block, _, _, projected in blocks():
    prefix, path = f"layer{stage}.{block}", f"layer{stage}_{block}"
    names = [("conv1", "conv1"), ("bn1", "bn1"), ("conv2", "conv2"),
             ("bn2", "bn2")]
    if projected:
      names += [("downsample.0", "downsample_conv"),
                ("downsample.1", "downsample_bn")]
    rules += [convert.Rule(f"{prefix}.{t}", (path, f),
                           convert.conv(use_bias=False) if "conv" in f
                           else convert.batch_norm())
              for t, f in names]
  rules.append(convert.Rule("fc", ("fc",), convert.dense()))
  return rules


register(ModelSpec(
    name="resnet18", task="image_classification",
    factory=lambda info, init: ResNet18(num_classes=info.num_classes,
                                        init_scheme=init),
    example_info=DatasetInfo(name="cifar10", task="image_classification",
                             num_classes=10, input_shape=(32, 32, 3)),
    description="ResNet-18, CIFAR stem (3x3 stride-1 conv, no max-pool), BN",
    torch_twin=Twin("optbench_jax.reference.torch_vision.resnet18"),
    conversion=conversion, widths={"width": 1}))
