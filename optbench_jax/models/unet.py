"""``unet_vanilla``: U-Net (Ronneberger et al. 2015), with "same" padding.

Four down blocks (two 3×3 convolutions with ReLU, then a 2×2 max-pool), a
bottleneck block, four up blocks (a 2×2 stride-2 transposed convolution that
halves the channels, the down block's output concatenated after it, two 3×3
convolutions with ReLU) and a 1×1 convolution to the class logits. Widths
``width·(1, 2, 4, 8, 16)`` (64 … 1024 by default); no batch norm, no dropout.
With "same" padding (the paper's convolutions are unpadded) the logits
``(N, H, W, classes)`` have the input's resolution; ``H`` and ``W`` must be
divisible by 16.

Modules are named as the PyTorch twin's (:func:`torch_twin`): ``down1`` …
``down4``, ``bottleneck`` (each with ``conv1``, ``conv2``), ``up4`` …
``up1`` (``upconv``, ``conv1``, ``conv2``; ``up{l}`` joins ``down{l}``'s
output) and ``head``; :func:`conversion` maps the two.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from optbench_jax.data.base import DatasetInfo
from optbench_jax.errors import OptBenchError
from optbench_jax.models import convert
from optbench_jax.models.base import ModelSpec, register
from optbench_jax.models.layers import Conv, ConvTranspose, max_pool

WIDTH = 64
DEPTH = 4   # down blocks (and up blocks)


def _features(width: int = WIDTH) -> list[int]:
  """Channels of ``down1`` … ``down4`` and of the bottleneck."""
  return [width * 2**level for level in range(DEPTH + 1)]


class Block(nn.Module):
  """Optionally a 2×2 stride-2 transposed convolution (``upconv``) and the
  concatenated skip; then two 3×3 "same" convolutions with ReLU."""
  features: int
  up: bool = False
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, skip=None):
    if self.up:
      x = ConvTranspose(self.features, (2, 2), strides=(2, 2),
                        padding="VALID", dtype=self.dtype,
                        init_scheme=self.init_scheme, name="upconv")(x)
      # [upsampled, skip] channels, as the twin's torch.cat([x, skip], 1).
      x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    conv = functools.partial(Conv, self.features, (3, 3), padding=1,
                             dtype=self.dtype, init_scheme=self.init_scheme)
    x = nn.relu(conv(name="conv1")(x))
    return nn.relu(conv(name="conv2")(x))


class UNet(nn.Module):
  """U-Net; ``width`` is the first block's channel count."""
  num_classes: int = 2
  width: int = WIDTH
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train   # no batch norm, no dropout
    factor = 2**DEPTH
    if x.shape[1] % factor or x.shape[2] % factor:
      raise OptBenchError(f"U-Net input height and width must be divisible "
                          f"by {factor}, got {x.shape[1:3]}")
    x = x.astype(self.dtype)
    block = functools.partial(Block, dtype=self.dtype,
                              init_scheme=self.init_scheme)
    *down, bottom = _features(self.width)
    skips = []
    for level, features in enumerate(down, start=1):
      x = block(features, name=f"down{level}")(x)
      skips.append(x)
      x = max_pool(x, (2, 2), strides=(2, 2))
    x = block(bottom, name="bottleneck")(x)
    for level in range(DEPTH, 0, -1):
      x = block(down[level - 1], up=True, name=f"up{level}")(
          x, skips[level - 1])
    return Conv(self.num_classes, (1, 1), dtype=self.dtype,
                init_scheme=self.init_scheme, name="head")(x)


def _block_names():
  """``(name, up)`` of every block, in the twin's order."""
  return ([(f"down{level}", False) for level in range(1, DEPTH + 1)]
          + [("bottleneck", False)]
          + [(f"up{level}", True) for level in range(DEPTH, 0, -1)])


def conversion(info: DatasetInfo) -> list[convert.Rule]:
  """Twin ``down1.conv1`` … ``up1.upconv`` … ``head`` <-> the same paths."""
  del info   # the same names for every input shape and class count
  rules = []
  for name, up in _block_names():
    if up:
      rules.append(convert.Rule(f"{name}.upconv", (name, "upconv"),
                                convert.conv_transpose()))
    rules += [convert.Rule(f"{name}.{conv}", (name, conv), convert.conv())
              for conv in ("conv1", "conv2")]
  rules.append(convert.Rule("head", ("head",), convert.conv()))
  return rules


@functools.cache
def _torch_classes():
  """The twin's PyTorch classes (defined on first use: torch is optional)."""
  import torch
  import torch.nn.functional as F
  from torch import nn as tnn

  class TorchBlock(tnn.Module):
    """``[upconv, cat(x, skip)],`` conv1, ReLU, conv2, ReLU."""

    def __init__(self, in_channels, features, up):
      super().__init__()
      self.upconv = (tnn.ConvTranspose2d(in_channels, features, 2, 2)
                     if up else None)
      conv_in = 2 * features if up else in_channels
      self.conv1 = tnn.Conv2d(conv_in, features, 3, padding=1)
      self.conv2 = tnn.Conv2d(features, features, 3, padding=1)

    def forward(self, x, skip=None):
      if self.upconv is not None:
        x = torch.cat([self.upconv(x), skip], dim=1)
      return F.relu(self.conv2(F.relu(self.conv1(x))))

  class TorchUNet(tnn.Module):
    """The U-Net on NCHW inputs; logits ``(N, classes, H, W)``."""

    def __init__(self, num_classes, in_channels, width=WIDTH):
      super().__init__()
      *down, bottom = _features(width)
      channels = in_channels
      for level, features in enumerate(down, start=1):
        setattr(self, f"down{level}", TorchBlock(channels, features, False))
        channels = features
      self.bottleneck = TorchBlock(channels, bottom, False)
      channels = bottom
      for level in range(DEPTH, 0, -1):
        setattr(self, f"up{level}",
                TorchBlock(channels, down[level - 1], True))
        channels = down[level - 1]
      self.head = tnn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
      skips = []
      for level in range(1, DEPTH + 1):
        x = getattr(self, f"down{level}")(x)
        skips.append(x)
        x = F.max_pool2d(x, 2)
      x = self.bottleneck(x)
      for level in range(DEPTH, 0, -1):
        x = getattr(self, f"up{level}")(x, skips[level - 1])
      return self.head(x)

  return TorchUNet


def torch_twin(info: DatasetInfo, width: int = WIDTH):
  """The PyTorch module (NCHW inputs, PyTorch's default initialisation)."""
  return _torch_classes()(info.num_classes, int(info.input_shape[-1]), width)


register(ModelSpec(
    name="unet_vanilla", task="semantic_segmentation",
    factory=lambda info, init: UNet(num_classes=info.num_classes,
                                    init_scheme=init),
    example_info=DatasetInfo(name="oxford_iiit_pet",
                             task="semantic_segmentation", num_classes=2,
                             input_shape=(256, 256, 3)),
    description="U-Net (Ronneberger 2015), same padding, widths 64-1024, "
                "no batch norm",
    torch_twin=torch_twin, conversion=conversion))
