"""``deeplabv3_resnet50``: DeepLabV3 (Chen et al. 2017, "Rethinking Atrous
Convolution for Semantic Image Segmentation"), ResNet-50 backbone.

torchvision's ``deeplabv3_resnet50`` without pretrained weights and without
the auxiliary head: the ResNet-50 features (``resnet50.py``) at output
stride 16 (``replace_stride_with_dilation = [False, False, True]``, ASPP
rates 6, 12, 18, the paper's training setting) or 8 (``[False, True,
True]``, rates 12, 24, 36, torchvision's configuration), then
torchvision's ``DeepLabHead``:

* ASPP: a 1×1 convolution, three 3×3 atrous convolutions, and image pooling
  (global average, 1×1 convolution, batch norm, ReLU, upsampled back), each
  branch ``aspp_features`` (256) channels with batch norm and ReLU;
  concatenated and projected (1×1 convolution, batch norm, ReLU, dropout
  0.5);
* a 3×3 convolution, batch norm, ReLU and a 1×1 classifier;

and bilinear upsampling of the logits to the input size (PyTorch's
``F.interpolate(mode="bilinear", align_corners=False)`` =
``jax.image.resize(..., "bilinear")`` when upsampling). Batch norm is
``layers.BatchNorm`` (PyTorch's update rule); dropout draws from the
``dropout`` stream.

The PyTorch twin (``optbench_jax.reference.torch_segmentation.
deeplabv3_resnet50``) is written in plain PyTorch with torchvision's module
names (``backbone.layer1.0.downsample.0``,
``classifier.0.convs.4.1``, ``classifier.4``, ...), so a torchvision
``deeplabv3_resnet50(num_classes=K).state_dict()`` loads into it and, with
:func:`conversion`, into this model; the twin returns the logits tensor
(torchvision: ``{"out": logits}``). Initialisation follows ``--init`` as for
every model (torch: PyTorch's default module initialisation; torchvision's
ResNet draws its convolutions Kaiming-normal, fan-out, instead).

This family is built from another: its backbone *is* the ResNet-50 of
``resnet50.py`` (the same modules, names and conversion rules,
:func:`resnet50.rules`, as torchvision builds ``deeplabv3_resnet50`` from its
``resnet50``), so it imports that module; no other model family imports one.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from optbench_jax.data.base import DatasetInfo
from optbench_jax.models import resnet50
from optbench_jax.models.base import ModelSpec, Twin, register
from optbench_jax.nn import convert
from optbench_jax.nn.layers import BatchNorm, Conv

ASPP_FEATURES = 256
DROPOUT = 0.5
# output stride -> (torchvision's replace_stride_with_dilation, ASPP rates)
OUTPUT_STRIDES = {8: ((False, True, True), (12, 24, 36)),
                  16: ((False, False, True), (6, 12, 18))}


class ConvBNReLU(nn.Module):
  """A bias-free convolution (``conv``), batch norm (``bn``) and ReLU."""
  features: int
  kernel_size: int = 1
  dilation: int = 1
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool):
    k, d = self.kernel_size, self.dilation
    x = Conv(self.features, (k, k), padding=d * (k // 2), kernel_dilation=d,
             use_bias=False, dtype=self.dtype, init_scheme=self.init_scheme,
             name="conv")(x)
    x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                  dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


class ASPP(nn.Module):
  """Branches ``convs_0`` (1×1) … ``convs_3`` (atrous), ``convs_4``
  (pooling); ``project`` and dropout."""
  rates: tuple
  features: int = ASPP_FEATURES
  dropout_rate: float = DROPOUT
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool):
    branch = functools.partial(ConvBNReLU, self.features, dtype=self.dtype,
                               init_scheme=self.init_scheme)
    outputs = [branch(name="convs_0")(x, train)]
    outputs += [branch(3, rate, name=f"convs_{i}")(x, train)
                for i, rate in enumerate(self.rates, start=1)]
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = branch(name=f"convs_{len(self.rates) + 1}")(pooled, train)
    # Bilinear upsampling of a 1×1 map is a broadcast.
    outputs.append(jnp.broadcast_to(pooled, (*x.shape[:-1],
                                             pooled.shape[-1])))
    x = branch(name="project")(jnp.concatenate(outputs, axis=-1), train)
    return nn.Dropout(self.dropout_rate, deterministic=not train,
                      name="dropout")(x)


class DeepLabHead(nn.Module):
  """torchvision's ``DeepLabHead``: ``aspp``, a 3×3 ``block``
  (conv/bn/ReLU) and the 1×1 ``logits`` convolution."""
  num_classes: int
  rates: tuple
  features: int = ASPP_FEATURES
  dropout_rate: float = DROPOUT
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool):
    x = ASPP(self.rates, self.features, self.dropout_rate, self.dtype,
             self.init_scheme, name="aspp")(x, train)
    x = ConvBNReLU(self.features, 3, dtype=self.dtype,
                   init_scheme=self.init_scheme, name="block")(x, train)
    return Conv(self.num_classes, (1, 1), dtype=self.dtype,
                init_scheme=self.init_scheme, name="logits")(x)


class DeepLabV3(nn.Module):
  """DeepLabV3-ResNet-50; logits ``(N, H, W, classes)`` at the input size.

  Attributes:
    num_classes: output classes.
    output_stride: 16 (ASPP rates 6, 12, 18) or 8 (12, 24, 36).
    width: the backbone's base width (64; stage ``s`` has ``width·2^s``
      planes and ``4·width·2^s`` output channels).
    aspp_features: channels of the ASPP branches and the head (256).
    stage_sizes: Bottleneck blocks per stage.
    dropout_rate: after the ASPP projection.
  """
  num_classes: int = 21
  output_stride: int = 16
  width: int = resnet50.WIDTH
  aspp_features: int = ASPP_FEATURES
  stage_sizes: tuple = resnet50.STAGE_SIZES
  dropout_rate: float = DROPOUT
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.output_stride not in OUTPUT_STRIDES:
      raise ValueError(f"output_stride must be one of "
                       f"{sorted(OUTPUT_STRIDES)}, got {self.output_stride}")
    dilate, rates = OUTPUT_STRIDES[self.output_stride]
    size = x.shape[1:3]
    x = resnet50.ResNet50Features(self.width, self.stage_sizes, dilate,
                                  self.dtype, self.init_scheme,
                                  name="backbone")(x.astype(self.dtype), train)
    x = DeepLabHead(self.num_classes, rates, self.aspp_features,
                    self.dropout_rate, self.dtype, self.init_scheme,
                    name="classifier")(x, train)
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "bilinear")


def conversion(info: DatasetInfo,
               stage_sizes=resnet50.STAGE_SIZES) -> list[convert.Rule]:
  """torchvision's names (``backbone.*``, ``classifier.0.convs.0.0``, ...)
  <-> ``backbone/…``, ``classifier/aspp/convs_0/conv``, ...; the same for
  every output stride (dilation has no parameters)."""
  del info   # the same names for every input shape and class count
  rules = resnet50.rules("backbone", ("backbone",), stage_sizes)
  aspp, path = "classifier.0", ("classifier", "aspp")
  # (PyTorch conv, PyTorch batch norm, Flax ConvBNReLU path)
  blocks = [(f"{aspp}.convs.{i}.0", f"{aspp}.convs.{i}.1",
             (*path, f"convs_{i}")) for i in range(4)]
  blocks += [(f"{aspp}.convs.4.1", f"{aspp}.convs.4.2",   # 0: the pooling
              (*path, "convs_4")),
             (f"{aspp}.project.0", f"{aspp}.project.1", (*path, "project")),
             ("classifier.1", "classifier.2", ("classifier", "block"))]
  for conv, norm, block in blocks:
    rules += [convert.Rule(conv, (*block, "conv"),
                           convert.conv(use_bias=False)),
              convert.Rule(norm, (*block, "bn"), convert.batch_norm())]
  rules.append(convert.Rule("classifier.4", ("classifier", "logits"),
                            convert.conv()))
  return rules


register(ModelSpec(
    name="deeplabv3_resnet50", task="semantic_segmentation",
    factory=lambda info, init: DeepLabV3(num_classes=info.num_classes,
                                         init_scheme=init),
    example_info=DatasetInfo(name="oxford_iiit_pet",
                             task="semantic_segmentation", num_classes=2,
                             input_shape=(256, 256, 3)),
    description="DeepLabV3 (Chen 2017), ResNet-50 backbone, output stride "
                "16, ASPP (6, 12, 18), torchvision's head",
    torch_twin=Twin(
        "optbench_jax.reference.torch_segmentation.deeplabv3_resnet50"),
    conversion=conversion, widths={"width": 1, "aspp_features": 1}))
