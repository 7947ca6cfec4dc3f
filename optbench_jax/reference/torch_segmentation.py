"""PyTorch twins of the segmentation models: ``unet_vanilla``,
``deeplabv3_resnet50`` (and its ResNet-50 backbone).

Each function is named as the model and builds, from the model's dataset
info and optional field overrides (a reduced width), the ``torch.nn.Module``
computing the same function once given the same weights (NCHW inputs,
PyTorch's default initialisation, the module names the model's conversion
rules use: torchvision's for DeepLabV3, so that a torchvision
``deeplabv3_resnet50(num_classes=K).state_dict()`` loads into it); the
registry entry's ``torch_twin`` points to it. Imports torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from optbench_jax.data.base import DatasetInfo
from optbench_jax.models import deeplab, resnet50, unet
from optbench_jax.reference.torch_models import batch_norm_2d


# -- unet_vanilla --------------------------------------------------------------
class UNetBlock(nn.Module):
  """``[upconv, cat(x, skip)],`` conv1, ReLU, conv2, ReLU."""

  def __init__(self, in_channels, features, up):
    super().__init__()
    self.upconv = (nn.ConvTranspose2d(in_channels, features, 2, 2)
                   if up else None)
    conv_in = 2 * features if up else in_channels
    self.conv1 = nn.Conv2d(conv_in, features, 3, padding=1)
    self.conv2 = nn.Conv2d(features, features, 3, padding=1)

  def forward(self, x, skip=None):
    if self.upconv is not None:
      x = torch.cat([self.upconv(x), skip], dim=1)
    return F.relu(self.conv2(F.relu(self.conv1(x))))


class UNet(nn.Module):
  """The U-Net on NCHW inputs; logits ``(N, classes, H, W)``."""

  def __init__(self, num_classes, in_channels, width=unet.WIDTH):
    super().__init__()
    *down, bottom = unet.widths(width)
    channels = in_channels
    for level, features in enumerate(down, start=1):
      setattr(self, f"down{level}", UNetBlock(channels, features, False))
      channels = features
    self.bottleneck = UNetBlock(channels, bottom, False)
    channels = bottom
    for level in range(unet.DEPTH, 0, -1):
      setattr(self, f"up{level}", UNetBlock(channels, down[level - 1], True))
      channels = down[level - 1]
    self.head = nn.Conv2d(channels, num_classes, 1)

  def forward(self, x):
    skips = []
    for level in range(1, unet.DEPTH + 1):
      x = getattr(self, f"down{level}")(x)
      skips.append(x)
      x = F.max_pool2d(x, 2)
    x = self.bottleneck(x)
    for level in range(unet.DEPTH, 0, -1):
      x = getattr(self, f"up{level}")(x, skips[level - 1])
    return self.head(x)


def unet_vanilla(info: DatasetInfo, width: int = unet.WIDTH) -> nn.Module:
  return UNet(info.num_classes, int(info.input_shape[-1]), width)


# -- the ResNet-50 backbone ----------------------------------------------------
class Bottleneck(nn.Module):
  """torchvision's ``Bottleneck`` (the stride on the 3×3 convolution)."""

  def __init__(self, in_channels, planes, stride, dilation, projected):
    super().__init__()
    out = planes * resnet50.EXPANSION
    self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
    self.bn1 = batch_norm_2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation,
                           dilation=dilation, bias=False)
    self.bn2 = batch_norm_2d(planes)
    self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
    self.bn3 = batch_norm_2d(out)
    self.relu = nn.ReLU()
    self.downsample = nn.Sequential(
        nn.Conv2d(in_channels, out, 1, stride, bias=False),
        batch_norm_2d(out)) if projected else None

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return F.relu(shortcut + y)


class ResNet50Features(nn.Module):
  """torchvision's ``IntermediateLayerGetter(resnet50)`` up to ``layer4``
  (same module names)."""

  def __init__(self, in_channels=3, width=resnet50.WIDTH,
               stage_sizes=resnet50.STAGE_SIZES,
               replace_stride_with_dilation=(False, False, False)):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
    self.bn1 = batch_norm_2d(width)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    stages, channels = {}, width
    for stage, _, planes, stride, dilation, projected in resnet50.blocks(
        stage_sizes, width, replace_stride_with_dilation):
      stages.setdefault(stage, []).append(Bottleneck(
          channels, planes, stride, dilation, projected))
      channels = planes * resnet50.EXPANSION
    self.stages = [f"layer{s}" for s in stages]
    for s, stage_blocks in stages.items():
      setattr(self, f"layer{s}", nn.Sequential(*stage_blocks))

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    for name in self.stages:
      x = getattr(self, name)(x)
    return x


# -- deeplabv3_resnet50 --------------------------------------------------------
def _conv_bn_relu(in_channels, out_channels, kernel_size=1, dilation=1):
  return [nn.Conv2d(in_channels, out_channels, kernel_size,
                    padding=dilation * (kernel_size // 2),
                    dilation=dilation, bias=False),
          batch_norm_2d(out_channels), nn.ReLU()]


class ASPPPooling(nn.Sequential):

  def __init__(self, in_channels, out_channels):
    super().__init__(nn.AdaptiveAvgPool2d(1),
                     *_conv_bn_relu(in_channels, out_channels))

  def forward(self, x):
    size = x.shape[-2:]
    for module in self:
      x = module(x)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):

  def __init__(self, in_channels, rates, out_channels, dropout_rate):
    super().__init__()
    branches = [nn.Sequential(*_conv_bn_relu(in_channels, out_channels))]
    branches += [nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 3,
                                              rate)) for rate in rates]
    branches.append(ASPPPooling(in_channels, out_channels))
    self.convs = nn.ModuleList(branches)
    self.project = nn.Sequential(
        *_conv_bn_relu(len(branches) * out_channels, out_channels),
        nn.Dropout(dropout_rate))

  def forward(self, x):
    return self.project(torch.cat([conv(x) for conv in self.convs], 1))


class DeepLabV3(nn.Module):
  """torchvision's DeepLabV3-ResNet-50 (no aux head); returns the logits
  tensor (torchvision: ``{"out": logits}``)."""

  def __init__(self, num_classes, in_channels=3, output_stride=16,
               width=resnet50.WIDTH, aspp_features=deeplab.ASPP_FEATURES,
               stage_sizes=resnet50.STAGE_SIZES,
               dropout_rate=deeplab.DROPOUT):
    super().__init__()
    dilate, rates = deeplab.OUTPUT_STRIDES[output_stride]
    self.backbone = ResNet50Features(in_channels, width, stage_sizes, dilate)
    channels = width * 2**(len(stage_sizes) - 1) * resnet50.EXPANSION
    self.classifier = nn.Sequential(
        ASPP(channels, rates, aspp_features, dropout_rate),
        *_conv_bn_relu(aspp_features, aspp_features, 3),
        nn.Conv2d(aspp_features, num_classes, 1))

  def forward(self, x):
    logits = self.classifier(self.backbone(x))
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear",
                         align_corners=False)


def deeplabv3_resnet50(info: DatasetInfo, **fields) -> nn.Module:
  """``fields`` as :class:`optbench_jax.models.deeplab.DeepLabV3`'s
  (``output_stride``, ``width``, ...)."""
  return DeepLabV3(info.num_classes, int(info.input_shape[-1]), **fields)
