"""``unet_vanilla``: U-Net (Ronneberger et al. 2015), with "same" padding.

Four down blocks (two 3×3 convolutions with ReLU, then a 2×2 max-pool), a
bottleneck block, four up blocks (a 2×2 stride-2 transposed convolution that
halves the channels, the down block's output concatenated after it, two 3×3
convolutions with ReLU) and a 1×1 convolution to the class logits. Widths
``width·(1, 2, 4, 8, 16)`` (64 … 1024 by default); no batch norm, no dropout.
With "same" padding (the paper's convolutions are unpadded) the logits
``(N, H, W, classes)`` have the input's resolution; ``H`` and ``W`` must be
divisible by 16.

Modules are named as the PyTorch twin's
(``optbench_jax.reference.torch_segmentation.unet_vanilla``): ``down1`` …
``down4``, ``bottleneck`` (each with ``conv1``, ``conv2``), ``up4`` …
``up1`` (``upconv``, ``conv1``, ``conv2``; ``up{l}`` joins ``down{l}``'s
output) and ``head``; :func:`conversion` maps the two.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from optbench_jax.data.base import DatasetInfo
from optbench_jax.errors import OptBenchError
from optbench_jax.models.base import ModelSpec, Twin, register
from optbench_jax.nn import convert
from optbench_jax.nn.layers import Conv, ConvTranspose, max_pool

WIDTH = 64
DEPTH = 4   # down blocks (and up blocks)


def widths(width: int = WIDTH) -> list[int]:
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
    *down, bottom = widths(self.width)
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


register(ModelSpec(
    name="unet_vanilla", task="semantic_segmentation",
    factory=lambda info, init: UNet(num_classes=info.num_classes,
                                    init_scheme=init),
    example_info=DatasetInfo(name="oxford_iiit_pet",
                             task="semantic_segmentation", num_classes=2,
                             input_shape=(256, 256, 3)),
    description="U-Net (Ronneberger 2015), same padding, widths 64-1024, "
                "no batch norm",
    torch_twin=Twin("optbench_jax.reference.torch_segmentation.unet_vanilla"),
    conversion=conversion, widths={"width": 1}))
