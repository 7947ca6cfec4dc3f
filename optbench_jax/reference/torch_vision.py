"""PyTorch twins of the image classifiers: ``cnn_scratch``, ``resnet18``,
``vgg11``.

Each function is named as the model and builds, from the model's dataset
info, the ``torch.nn.Module`` computing the same function once given the
same weights (NCHW inputs, PyTorch's default initialisation, the module
names the model's conversion rules use); the registry entry's ``torch_twin``
points to it. Imports torch.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from optbench_jax.data.base import DatasetInfo
from optbench_jax.models import cnn, resnet, vgg
from optbench_jax.reference.torch_models import batch_norm_2d


# -- cnn_scratch ---------------------------------------------------------------
def cnn_scratch(info: DatasetInfo) -> nn.Module:
  """``conv1, relu1, pool1, conv2, ..., flatten, fc1, relu3, fc2``."""
  channels = int(info.input_shape[-1])
  modules = OrderedDict()
  for i, width in enumerate(cnn.WIDTHS):
    modules[f"conv{i + 1}"] = nn.Conv2d(channels, width, 3, padding=1)
    modules[f"relu{i + 1}"] = nn.ReLU()
    modules[f"pool{i + 1}"] = nn.MaxPool2d(2)
    channels = width
  c, h, w = cnn.flattened_map(info.input_shape, cnn.WIDTHS)
  modules["flatten"] = nn.Flatten()
  modules["fc1"] = nn.Linear(c * h * w, cnn.HIDDEN)
  modules["relu3"] = nn.ReLU()
  modules["fc2"] = nn.Linear(cnn.HIDDEN, info.num_classes)
  return nn.Sequential(modules)


# -- resnet18 ------------------------------------------------------------------
class BasicBlock(nn.Module):
  """Two 3×3 conv-BN layers and a (projected when needed) shortcut."""

  def __init__(self, in_channels, features, stride, projected):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, features, 3, stride, 1, bias=False)
    self.bn1 = batch_norm_2d(features)
    self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
    self.bn2 = batch_norm_2d(features)
    self.downsample = nn.Sequential(
        nn.Conv2d(in_channels, features, 1, stride, bias=False),
        batch_norm_2d(features)) if projected else None

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return F.relu(shortcut + y)


class ResNet18(nn.Module):
  """ResNet-18 with the CIFAR stem: 3×3 stride-1 conv, BN, ReLU, no pool;
  torchvision's module names."""

  def __init__(self, num_classes, in_channels):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, resnet.WIDTH, 3, 1, 1, bias=False)
    self.bn1 = batch_norm_2d(resnet.WIDTH)
    stages, channels = {}, resnet.WIDTH
    for stage, _, features, stride, projected in resnet.blocks():
      stages.setdefault(stage, []).append(
          BasicBlock(channels, features, stride, projected))
      channels = features
    self.stages = [f"layer{s}" for s in stages]
    for s, blocks in stages.items():
      setattr(self, f"layer{s}", nn.Sequential(*blocks))
    self.fc = nn.Linear(channels, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    for name in self.stages:
      x = getattr(self, name)(x)
    return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet18(info: DatasetInfo) -> nn.Module:
  return ResNet18(info.num_classes, int(info.input_shape[-1]))


# -- vgg11 ---------------------------------------------------------------------
class VGG(nn.Module):
  """torchvision's ``VGG`` layout and names, any width and input channels,
  PyTorch's default initialisation."""

  def __init__(self, num_classes, in_channels=3, config=vgg.CONFIG_A,
               hidden=vgg.HIDDEN, pool_size=vgg.POOL_SIZE, batch_norm=False,
               dropout_rate=vgg.DROPOUT):
    super().__init__()
    features, channels = [], in_channels
    for _, kind, width in vgg.feature_layers(config, batch_norm):
      if kind == "conv":
        features.append(nn.Conv2d(channels, width, 3, padding=1))
        channels = width
      elif kind == "bn":
        features.append(batch_norm_2d(width))
      elif kind == "relu":
        features.append(nn.ReLU())
      else:
        features.append(nn.MaxPool2d(2, 2))
    self.features = nn.Sequential(*features)
    self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
    self.classifier = nn.Sequential(
        nn.Linear(channels * pool_size**2, hidden), nn.ReLU(),
        nn.Dropout(dropout_rate), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Dropout(dropout_rate), nn.Linear(hidden, num_classes))

  def forward(self, x):
    x = torch.flatten(self.avgpool(self.features(x)), 1)
    return self.classifier(x)


def vgg11(info: DatasetInfo, **fields) -> nn.Module:
  """``fields`` as :class:`optbench_jax.models.vgg.VGG`'s (``config``,
  ``hidden``, ``batch_norm``, ...). torchvision's ``vgg11(num_classes=K)``
  (``vgg11_bn`` with ``batch_norm=True``) state dict loads into it."""
  return VGG(info.num_classes, int(info.input_shape[-1]), **fields)
