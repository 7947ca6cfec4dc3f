"""ResNet-50 feature extractor (He et al. 2016), torchvision's layout.

The stem — 7×7 stride-2 convolution, batch norm, ReLU, 3×3 stride-2
max-pool — and four stages of Bottleneck blocks ([3, 4, 6, 3]; 1×1, 3×3,
1×1 convolutions, expansion 4, the stride on the 3×3 convolution as in
torchvision's "ResNet v1.5", a 1×1 projection shortcut on each stage's first
block). No pooling or classifier: the backbone returns the last stage's
feature map (``32·width`` channels). ``replace_stride_with_dilation`` is
torchvision's: a stage whose flag is set keeps its resolution and dilates
its 3×3 convolutions instead (the stage's first block keeps the previous
dilation), which sets the output stride (32, 16 or 8).

Batch norm is ``layers.BatchNorm`` (PyTorch's update rule, momentum 0.1,
ε = 1e-5). Flax modules are named ``conv1, bn1, layer{s}_{b}`` and, inside
a block, ``conv1 … bn3, downsample_conv, downsample_bn`` (torchvision:
``layer{s}.{b}.downsample.0/1``); :func:`rules` maps them. The backbone of
``deeplab.py``; registers no model itself (its PyTorch twin:
``optbench_jax.reference.torch_segmentation.ResNet50Features``).
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from optbench_jax.nn import convert
from optbench_jax.nn.layers import BatchNorm, Conv, max_pool

STAGE_SIZES = (3, 4, 6, 3)
WIDTH = 64
EXPANSION = 4


def blocks(stage_sizes=STAGE_SIZES, width=WIDTH,
           replace_stride_with_dilation=(False, False, False)):
  """``(stage, block, planes, stride, dilation, projected)`` per block.

  torchvision's ``ResNet._make_layer``: a dilated stage multiplies the
  dilation by its stride and uses stride 1; its first block keeps the
  previous dilation; a block is projected when its stride is not 1 or its
  input channels differ from ``planes·4``.
  """
  dilation, channels = 1, width
  for stage, count in enumerate(stage_sizes):
    planes, previous = width * 2**stage, dilation
    stride = 1 if stage == 0 else 2
    if stage > 0 and replace_stride_with_dilation[stage - 1]:
      dilation, stride = dilation * stride, 1
    for block in range(count):
      first = block == 0
      yield (stage + 1, block, planes, stride if first else 1,
             previous if first else dilation,
             first and (stride != 1 or channels != planes * EXPANSION))
      channels = planes * EXPANSION


def _norm(train: bool, dtype, name: str):
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                   dtype=dtype, name=name)


class Bottleneck(nn.Module):
  planes: int
  strides: int = 1
  dilation: int = 1
  projected: bool = False
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype,
                             init_scheme=self.init_scheme)
    d = self.dilation
    y = conv(self.planes, (1, 1), name="conv1")(x)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = conv(self.planes, (3, 3), strides=self.strides, padding=d,
             kernel_dilation=d, name="conv2")(y)
    y = nn.relu(_norm(train, self.dtype, "bn2")(y))
    y = conv(self.planes * EXPANSION, (1, 1), name="conv3")(y)
    y = _norm(train, self.dtype, "bn3")(y)
    if self.projected:
      x = conv(self.planes * EXPANSION, (1, 1), strides=self.strides,
               name="downsample_conv")(x)
      x = _norm(train, self.dtype, "downsample_bn")(x)
    return nn.relu(x + y)


class ResNet50Features(nn.Module):
  """The stem and the four stages; NHWC in, the last stage's map out."""
  width: int = WIDTH
  stage_sizes: tuple = STAGE_SIZES
  replace_stride_with_dilation: tuple = (False, False, False)
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = Conv(self.width, (7, 7), strides=2, padding=3, use_bias=False,
             dtype=self.dtype, init_scheme=self.init_scheme, name="conv1")(x)
    x = nn.relu(_norm(train, self.dtype, "bn1")(x))
    x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, block, planes, stride, dilation, projected in blocks(
        self.stage_sizes, self.width, self.replace_stride_with_dilation):
      x = Bottleneck(planes, stride, dilation, projected, self.dtype,
                     self.init_scheme, name=f"layer{stage}_{block}")(x, train)
    return x


def rules(torch_prefix: str, flax_path: tuple,
          stage_sizes=STAGE_SIZES) -> list[convert.Rule]:
  """torchvision names under ``torch_prefix`` <-> Flax under ``flax_path``."""
  rules_ = [convert.Rule(f"{torch_prefix}.conv1", (*flax_path, "conv1"),
                         convert.conv(use_bias=False)),
            convert.Rule(f"{torch_prefix}.bn1", (*flax_path, "bn1"),
                         convert.batch_norm())]
  for stage, block, _, _, _, projected in blocks(stage_sizes):
    prefix = f"{torch_prefix}.layer{stage}.{block}"
    path = (*flax_path, f"layer{stage}_{block}")
    names = [(f"{kind}{i}", f"{kind}{i}") for i in (1, 2, 3)
             for kind in ("conv", "bn")]
    if projected:
      names += [("downsample.0", "downsample_conv"),
                ("downsample.1", "downsample_bn")]
    rules_ += [convert.Rule(f"{prefix}.{t}", (*path, f),
                            convert.conv(use_bias=False) if "conv" in f
                            else convert.batch_norm())
               for t, f in names]
  return rules_

