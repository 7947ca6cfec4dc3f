"""``unet_vanilla`` and ``deeplabv3_resnet50`` against their PyTorch twins.

Their registered examples (256×256 images, 31 M and 40 M parameters) are
too slow for the registry-wide files (``test_torch_equivalence.py``,
``test_init.py``, which skip models with large examples); this file runs the
same checks, with those files' helpers, on reduced configurations: U-Net of
base width 4 on 32×32 inputs, DeepLabV3 of backbone width 4 and 8 ASPP
channels (the layout, block counts and dilations unchanged) on 64×64 inputs.
Only the parameter shapes and names are checked at full size.

Errors are relative max-norm errors (``rel_error``). Tolerances, and the
values measured on this project's 2-core CPU:

* U-Net logits (float32): 1e-5 (measured 1.5e-7); gradients of the mean
  per-pixel cross-entropy w.r.t. all 46 parameter tensors, float64: 1e-10
  (measured 2.1e-15).
* DeepLabV3, float32, random batch-norm statistics and affine parameters:
  eval-mode logits 1e-4 (measured 2.6e-7 at output stride 16, 2.5e-7 at
  OS 8); after one train-mode pass (dropout 0 on both sides) the running
  means and variances 1e-4 (measured 1.1e-5), the train-mode logits 1e-3
  (measured 1.2e-4 / 1.4e-4: float32 rounding amplified by batch
  statistics over few values, as large in PyTorch alone, see the test).
  Float64, OS 16: train-mode logits, running statistics and gradients of
  all 182 parameter tensors 1e-10 (measured 3.3e-13, 1.2e-14, 1.4e-12).
* Against torchvision's own ``deeplabv3_resnet50(weights=None,
  weights_backbone=None, num_classes=21, aux_loss=False)`` (full size,
  output stride 8 as torchvision builds it, random batch-norm statistics,
  64×64 inputs, float32, eval mode): the Flax model with torchvision's
  weights converted by the model's rules, 1e-4 (measured 1.9e-6); the twin
  with torchvision's state dict loaded strictly, 1e-5 (measured 0.0).
  torchvision's PyPI wheel needs CUDA torch; ``reference.torchvision_models``
  makes its model code importable on the CPU torch of the test extra.
* ``jax.image.resize(..., "bilinear")`` against ``F.interpolate(mode=
  "bilinear", align_corners=False)`` when upsampling: 1e-6 (measured
  4.0e-7).

The comparisons with the twins (U-Net logits and gradients, DeepLabV3 in
both modes and float64, the transposed-convolution layer) run on both paths
of the layers (``optbench_jax.kernels.select``, ``KERNELS`` of
test_torch_equivalence.py): the project's CPU kernels and the library's
operations a GPU runs, with the same tolerances. Together they use every
layer type on the accelerator path: convolutions (strided, 1×1, 7×7),
dilated convolutions, max pooling (padded and not) and the transposed
convolution.
"""
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from optbench_jax.errors import OptBenchError  # noqa: E402
from optbench_jax import models  # noqa: E402
from optbench_jax.kernels import select  # noqa: E402
from optbench_jax.models import deeplab, unet  # noqa: E402
from optbench_jax.nn import convert, layers  # noqa: E402
from optbench_jax.reference import torch_models, torchvision_models  # noqa: E402

from tests.models.test_init import (  # noqa: E402
    assert_init_schemes, layer_expectations, uniform_violations)
from tests.models.test_torch_equivalence import (  # noqa: E402
    COMPILER_OPTIONS, KERNELS, rel_error, tree_errors)

UNET = models.MODELS.get("unet_vanilla")
DEEPLAB = models.MODELS.get("deeplabv3_resnet50")
UNET_RTOL = 1e-5
DEEPLAB_RTOL = 1e-4
TRAIN_LOGITS_RTOL = 1e-3
GRAD_RTOL_FLOAT64 = 1e-10
RESIZE_RTOL = 1e-6
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclasses.dataclass(frozen=True)
class Small:
  """A registered model in a reduced configuration, with its twin."""
  spec: Any
  fields: dict
  input_shape: tuple
  num_classes: int = 3

  @property
  def info(self):
    return dataclasses.replace(self.spec.example_info,
                               input_shape=self.input_shape,
                               num_classes=self.num_classes)

  def model(self, init="torch", **fields):
    return self.spec.build(self.info, init).clone(**self.fields, **fields)

  def twin(self, seed=0, **fields):
    torch.manual_seed(seed)
    return self.spec.torch_twin(self.info, **self.fields, **fields)

  @property
  def rules(self):
    return self.spec.conversion(self.info)

  def template(self, model):
    return jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, *self.input_shape))))


SMALL_UNET = Small(UNET, {"width": 4}, (32, 32, 3))
SMALL_DEEPLAB = Small(DEEPLAB, {"width": 4, "aspp_features": 8}, (64, 64, 3))


def nhwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def nchw(x: np.ndarray, dtype="float32"):
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(
      TORCH_DTYPES[dtype])


def randomised_batch_norms(state_dict: dict, rng) -> dict:
  """Batch-norm affine parameters and running statistics drawn at random
  (PyTorch initialises them to the identity)."""
  out = dict(state_dict)
  for name, value in state_dict.items():
    if name.endswith("running_var"):
      prefix = name[:-len("running_var")]
      shape = value.shape
      out[prefix + "running_mean"] = rng.normal(0, 0.1, shape)
      out[prefix + "running_var"] = rng.uniform(0.5, 1.5, shape)
      out[prefix + "weight"] = rng.uniform(0.5, 1.5, shape)
      out[prefix + "bias"] = rng.normal(0, 0.1, shape)
  return {k: np.asarray(v, state_dict[k].dtype) for k, v in out.items()}


def images(rng, n, shape):
  """Noise plus a per-image, per-channel offset: the image-pooling branch's
  batch norm then normalises well-separated averages (pure noise averages
  to nearly the same value in every image, and the batch statistics of
  nearly equal values amplify rounding)."""
  return (rng.randn(n, *shape) + rng.randn(n, 1, 1, shape[-1])).astype(
      np.float32)


def mean_cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         labels).mean()


# -- U-Net ---------------------------------------------------------------
@pytest.mark.parametrize("size", [(32, 32), (48, 80)])
def test_unet_output_has_the_input_resolution(size):
  small = dataclasses.replace(SMALL_UNET, input_shape=(*size, 3))
  out = jax.eval_shape(lambda: small.model().init_with_output(
      jax.random.key(0), jnp.zeros((2, *size, 3)))[0])
  assert out.shape == (2, *size, 3)
  twin_out = small.twin()(torch.zeros(2, 3, *size))
  assert tuple(twin_out.shape) == (2, 3, *size)


def test_unet_rejects_sizes_not_divisible_by_16():
  with pytest.raises(OptBenchError, match="divisible by 16"):
    jax.eval_shape(lambda: SMALL_UNET.model().init(
        jax.random.key(0), jnp.zeros((1, 40, 32, 3))))


def unet_reach(last: int) -> int:
  """The largest input row (column) that output rows ``0 … last`` of the
  U-Net depend on: 3×3 "same" convolutions widen a range by one on each
  side, a 2×2 max-pool maps output row ``i`` to rows ``2i, 2i+1``, the 2×2
  stride-2 transposed convolution output row ``i`` to input row ``i // 2``,
  and an up block reads both its skip and the upsampled deeper map."""

  def down(level, b):   # rows of down{level}'s (or the bottleneck's) output
    b += 2
    return b if level == 1 else down(level - 1, 2 * b + 1)

  def up(level, b):     # rows of up{level}'s output
    b += 2
    deeper = (down(unet.DEPTH + 1, b // 2) if level == unet.DEPTH
              else up(level + 1, b // 2))
    return max(down(level, b), deeper)

  return up(1, last)


def test_unet_receptive_field():
  """The 4×4 top-left logits depend on input rows and columns ``0 … R``
  only, R = 109 from the layer geometry (93 for the single top-left logit),
  and do depend on row and column R: the path through the bottleneck, the
  deepest, sets R."""
  small = dataclasses.replace(SMALL_UNET, input_shape=(160, 160, 3))
  corner, reach = 4, unet_reach(3)
  assert (unet_reach(0), reach) == (93, 109)
  model = small.model()
  x = jax.random.normal(jax.random.key(0), (1, 160, 160, 3))
  variables = convert.torch_to_flax(
      torch_models.state_dict_numpy(small.twin()), small.rules)
  grad = jax.jit(jax.grad(lambda x: model.apply(
      variables, x)[0, :corner, :corner].sum()),
                 compiler_options=COMPILER_OPTIONS)(x)
  support = np.abs(np.asarray(grad[0])).max(-1) > 0
  rows, cols = np.nonzero(support)
  assert rows.max() == reach and cols.max() == reach, (rows.max(),
                                                       cols.max())


@functools.cache
def unet_pair(kernels):
  """Eval logits (float32) and float64 gradients of both sides, the Flax
  side on the ``kernels`` path."""
  small, rng = SMALL_UNET, np.random.RandomState(0)
  twin = small.twin()
  state = torch_models.state_dict_numpy(twin)
  x = rng.randn(2, *small.input_shape).astype(np.float32)
  labels = rng.randint(0, small.num_classes, (2, *small.input_shape[:2]))
  model = small.model()
  variables = convert.torch_to_flax(state, small.rules,
                                    template=small.template(model))
  results = {"x": x, "state": state, "variables": variables}
  with select.use(kernels):
    results["ours"] = np.asarray(jax.jit(model.apply)(variables, x))
  with torch.no_grad():
    results["ref"] = nhwc(twin(nchw(x)))
  with jax.enable_x64(True), select.use(kernels):
    model64 = model.clone(dtype=jnp.float64)
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64),
                          variables["params"])
    grads = jax.jit(jax.grad(lambda p: mean_cross_entropy(
        model64.apply({"params": p}, jnp.asarray(x, jnp.float64)),
        labels)), compiler_options=COMPILER_OPTIONS)(params)
    results["grads"] = jax.tree.map(np.asarray, grads)
  twin = twin.double()
  torch.nn.functional.cross_entropy(
      twin(nchw(x, "float64")), torch.from_numpy(labels)).backward()
  results["ref_grads"] = convert.torch_to_flax(
      torch_models.grads_numpy(twin), small.rules, strict=False)["params"]
  results["num_params"] = len(list(twin.parameters()))
  return results


@pytest.mark.parametrize("kernels", KERNELS)
def test_unet_logits_match_the_twin(kernels):
  pair = unet_pair(kernels)
  assert rel_error(pair["ours"], pair["ref"]) <= UNET_RTOL


@pytest.mark.parametrize("kernels", KERNELS)
def test_unet_gradients_match_in_float64(kernels):
  pair = unet_pair(kernels)
  errors = tree_errors(pair["grads"], pair["ref_grads"])
  assert len(errors) == pair["num_params"]   # 46 tensors
  assert max(errors.values()) <= GRAD_RTOL_FLOAT64, sorted(
      errors.items(), key=lambda kv: -kv[1])[:3]


# -- DeepLabV3 -------------------------------------------------------------
@functools.cache
def deeplab_pair(output_stride, kernels):
  """Eval and train-mode logits and updated statistics of both sides
  (float32; dropout 0 so that train mode is deterministic), the Flax side
  on the ``kernels`` path."""
  small, rng = SMALL_DEEPLAB, np.random.RandomState(output_stride)
  fields = {"output_stride": output_stride, "dropout_rate": 0.0}
  twin = small.twin(**fields)
  state = randomised_batch_norms(torch_models.state_dict_numpy(twin), rng)
  torch_models.load_numpy_state_dict(twin, state)
  x = images(rng, 2, small.input_shape)
  model = small.model(**fields)
  variables = convert.torch_to_flax(state, small.rules,
                                    template=small.template(model))

  def both_modes(variables, x):
    train, mutated = model.apply(variables, x, train=True,
                                 mutable=["batch_stats"])
    return model.apply(variables, x, train=False), train, mutated

  with select.use(kernels):
    ours = jax.jit(both_modes, compiler_options=COMPILER_OPTIONS)(variables,
                                                                  x)
  twin.eval()
  with torch.no_grad():
    ref_eval = nhwc(twin(nchw(x)))
    twin.train()
    ref_train = nhwc(twin(nchw(x)))
  ref_stats = convert.torch_to_flax(torch_models.state_dict_numpy(twin),
                                    small.rules)["batch_stats"]
  return {"ours": jax.tree.map(np.asarray, ours),
          "ref": (ref_eval, ref_train, {"batch_stats": ref_stats})}


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplab_eval_logits_match_the_twin(output_stride, kernels):
  pair = deeplab_pair(output_stride, kernels)
  assert pair["ours"][0].shape == (2, 64, 64, 3)
  assert rel_error(pair["ours"][0], pair["ref"][0]) <= DEEPLAB_RTOL


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplab_train_mode_and_batch_stat_updates_match(output_stride,
                                                         kernels):
  """Batch statistics in float32. The train-mode logits get a looser
  tolerance: with 2·4·4 values per channel in the last stages, 53 batch
  norms amplify rounding, and PyTorch's own float32 logits differ from its
  float64 ones by as much (6.1e-5 OS 16, 1.1e-4 OS 8); the float64 test
  below compares the same computation to 1e-10."""
  (_, ours, stats), (_, ref, ref_stats) = (
      deeplab_pair(output_stride, kernels)[k] for k in ("ours", "ref"))
  assert rel_error(ours, ref) <= TRAIN_LOGITS_RTOL
  errors = tree_errors(stats, ref_stats)
  # mean and var of every batch norm: 53 in the backbone, 7 in the head
  assert len(errors) == 2 * 60
  assert max(errors.values()) <= DEEPLAB_RTOL, sorted(
      errors.items(), key=lambda kv: -kv[1])[:3]


def test_deeplab_dropout_draws_from_the_dropout_stream():
  """Train mode needs the ``dropout`` key; the ASPP projection's dropout
  (rate 0.5) zeroes about half of its outputs, scales the others by 2, and
  changes with the key; the model passes its rate on."""
  model, key = SMALL_DEEPLAB.model(), jax.random.key(0)
  assert model.dropout_rate == deeplab.DROPOUT == 0.5
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(key, x))
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda v: model.apply(v, x, train=True,
                                         mutable=["batch_stats"]), variables)
  aspp = deeplab.ASPP((1, 2, 3), features=32)
  features = jax.random.normal(key, (2, 6, 6, 16))
  variables = aspp.init(key, features, train=False)

  @functools.partial(jax.jit, static_argnums=1,
                     compiler_options=COMPILER_OPTIONS)
  def train(key, rate):
    return aspp.clone(dropout_rate=rate).apply(
        variables, features, train=True, mutable=["batch_stats"],
        rngs={"dropout": key})[0]

  kept = np.asarray(train(key, 0.0))
  a, b, c = (np.asarray(train(jax.random.key(k), 0.5)) for k in (1, 1, 2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  active = kept != 0
  np.testing.assert_allclose(a[a != 0], 2 * kept[a != 0], rtol=1e-6)
  dropped = np.mean(a[active] == 0)   # n ≈ 1000: ±0.1 is > 6 std errors
  assert abs(dropped - 0.5) <= 0.1, dropped


@pytest.mark.parametrize("kernels", KERNELS)
def test_deeplab_train_mode_and_gradients_match_in_float64(kernels):
  """Train-mode logits, updated statistics and d(mean cross-entropy)/
  d(params) (dropout 0, OS 16), float64 on both sides."""
  small, rng = SMALL_DEEPLAB, np.random.RandomState(1)
  twin = small.twin(dropout_rate=0.0).double()
  state = randomised_batch_norms(torch_models.state_dict_numpy(twin), rng)
  torch_models.load_numpy_state_dict(twin, state)
  x = images(rng, 2, small.input_shape).astype(np.float64)
  labels = rng.randint(0, small.num_classes, (2, *small.input_shape[:2]))
  twin.train()
  ref_logits = twin(nchw(x, "float64"))
  torch.nn.functional.cross_entropy(ref_logits,
                                    torch.from_numpy(labels)).backward()
  ref = convert.torch_to_flax(torch_models.grads_numpy(twin), small.rules,
                              strict=False)["params"]
  ref_stats = convert.torch_to_flax(torch_models.state_dict_numpy(twin),
                                    small.rules)["batch_stats"]
  with jax.enable_x64(True), select.use(kernels):
    model = small.model(dropout_rate=0.0, dtype=jnp.float64)
    variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64),
                             convert.torch_to_flax(state, small.rules))

    def loss(params):
      logits, mutated = model.apply({**variables, "params": params}, x,
                                    train=True, mutable=["batch_stats"])
      return mean_cross_entropy(logits, labels), (logits, mutated)

    grads, (logits, mutated) = jax.jit(
        jax.grad(loss, has_aux=True), compiler_options=COMPILER_OPTIONS)(
            variables["params"])
  assert rel_error(logits, nhwc(ref_logits)) <= GRAD_RTOL_FLOAT64
  stat_errors = tree_errors(jax.tree.map(np.asarray, mutated["batch_stats"]),
                            ref_stats)
  assert max(stat_errors.values()) <= GRAD_RTOL_FLOAT64
  errors = tree_errors(jax.tree.map(np.asarray, grads), ref)
  assert len(errors) == len(list(twin.parameters()))
  assert max(errors.values()) <= GRAD_RTOL_FLOAT64, sorted(
      errors.items(), key=lambda kv: -kv[1])[:3]


def test_bilinear_upsampling_is_pytorchs_align_corners_false():
  rng = np.random.RandomState(0)
  for (h, w), (big_h, big_w) in [((8, 8), (64, 64)), ((4, 4), (64, 64)),
                                 ((5, 7), (37, 50)), ((1, 1), (9, 9))]:
    x = rng.randn(2, h, w, 3).astype(np.float32)
    ours = jax.image.resize(x, (2, big_h, big_w, 3), "bilinear")
    ref = torch.nn.functional.interpolate(
        nchw(x), size=(big_h, big_w), mode="bilinear", align_corners=False)
    assert rel_error(ours, nhwc(ref)) <= RESIZE_RTOL, (h, w)


def full_size_state_dict(output_stride, num_classes):
  """Names and shapes of the full-size twin (on the meta device: no
  memory, no initialisation)."""
  info = dataclasses.replace(DEEPLAB.example_info, num_classes=num_classes)
  with torch.device("meta"):
    twin = DEEPLAB.torch_twin(info, output_stride=output_stride)
  return info, twin


def test_deeplab_state_dict_has_torchvisions_names_and_shapes():
  """The twin's module names are torchvision's (``deeplabv3_resnet50(
  weights=None, weights_backbone=None, num_classes=K)``, whose backbone is
  ``resnet50(replace_stride_with_dilation=[False, True, True])`` = OS 8):
  its state dict is the expected key set; the conversion rules name exactly
  those tensors, in the same order, and give the full-size Flax model's
  shapes. The parameter count is torchvision's published 42,004,074 for 21
  classes with the auxiliary FCN head, less that head's 2,365,205 (3×3
  1024→256 convolution, batch norm, 1×1 256→21 convolution)."""
  info, twin = full_size_state_dict(8, 21)
  expected = twin.state_dict()
  rules = DEEPLAB.conversion(info)
  names = [f"{rule.torch}.{suffix}" for rule in rules for suffix in rule.kind]
  assert names == list(expected)
  assert {"backbone.layer1.0.downsample.0.weight",
          "classifier.0.convs.4.1.weight", "classifier.0.project.0.weight",
          "classifier.4.bias"} <= set(expected)
  assert sum(p.numel() for p in twin.parameters()) == 42_004_074 - 2_365_205
  model = DEEPLAB.build(info).clone(output_stride=8)
  template = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  zeros = {k: np.zeros(tuple(v.shape), np.float32)
           for k, v in expected.items()}
  convert.torch_to_flax(zeros, rules, template=template)   # raises if not


def test_registered_configurations():
  info = UNET.example_info
  assert (UNET.build(info).width, UNET.build(info).num_classes) == (64, 2)
  model = DEEPLAB.build(DEEPLAB.example_info)
  assert (model.output_stride, model.width, model.aspp_features,
          model.dropout_rate) == (16, 64, 256, 0.5)
  assert deeplab.OUTPUT_STRIDES[16][1] == (6, 12, 18)
  assert deeplab.OUTPUT_STRIDES[8] == ((False, True, True), (12, 24, 36))
  with pytest.raises(ValueError, match="output_stride"):
    jax.eval_shape(lambda: model.clone(output_stride=32).init(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


# -- both models -----------------------------------------------------------
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 2), (3, 1)])
def test_conv_transpose_layer_is_pytorchs(kernel, stride, kernels):
  """``layers.ConvTranspose`` (``padding="VALID"``) with a converted
  ``nn.ConvTranspose2d`` weight (``padding=0``) computes its function
  (float32: 1e-5, measured 0, 3.9e-7, 7.1e-7), and its ``"torch"``
  initialisation has PyTorch's bound ``1/√(C_out·kh·kw)``."""
  torch.manual_seed(0)
  theirs = torch.nn.ConvTranspose2d(24, 40, kernel, stride)
  ours = layers.ConvTranspose(40, (kernel, kernel), strides=stride,
                              padding="VALID")
  x = np.random.RandomState(0).randn(2, 5, 6, 24).astype(np.float32)
  rules = [convert.Rule("up", ("up",), convert.conv_transpose())]
  variables = convert.torch_to_flax(
      torch_models.state_dict_numpy(torch.nn.ModuleDict({"up": theirs})),
      rules)
  with torch.no_grad():
    ref = nhwc(theirs(nchw(x)))
  with select.use(kernels):
    out = ours.apply({"params": variables["params"]["up"]}, x)
  assert rel_error(out, ref) <= 1e-5
  params = ours.init(jax.random.key(1), x)["params"]
  bound = 1 / np.sqrt(40 * kernel * kernel)
  for name, twin in (("kernel", theirs.weight), ("bias", theirs.bias)):
    twin = twin.detach().numpy()
    assert not uniform_violations(twin, bound), name
    assert not uniform_violations(params[name], bound, twin=twin), name


@pytest.mark.parametrize("small", [SMALL_UNET, SMALL_DEEPLAB],
                         ids=["unet_vanilla", "deeplabv3_resnet50"])
def test_bfloat16_compute_keeps_float32_parameters(small):
  """``dtype`` (``--precision bf16``) sets the activations' type only."""
  model = small.model(dtype=jnp.bfloat16)
  x = jnp.zeros((2, *small.input_shape))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  logits = jax.eval_shape(lambda v: model.apply(v, x), variables)
  assert logits.dtype == jnp.bfloat16
  assert logits.shape == (2, *small.input_shape[:2], small.num_classes)
  assert {v.dtype for v in jax.tree.leaves(variables["params"])} == {
      jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("small", [SMALL_UNET, SMALL_DEEPLAB],
                         ids=["unet_vanilla", "deeplabv3_resnet50"])
def test_round_trip_and_flax_weights_load_into_the_twin(small):
  twin = small.twin()
  state = torch_models.state_dict_numpy(twin)
  variables = convert.torch_to_flax(state, small.rules)
  back = convert.flax_to_torch(variables, small.rules)
  assert back.keys() == state.keys()
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  torch_models.load_numpy_state_dict(small.twin(seed=1), back)


@functools.cache
def initial_state_dicts(name):
  """Both schemes' initial variables (one compilation), in torch names."""
  small = INIT_SMALL[name]
  x = jnp.zeros((1, *small.input_shape))
  models_ = {init: small.model(init) for init in ("torch", "flax")}
  variables = jax.jit(lambda key: {i: m.init(key, x) for i, m in
                                   models_.items()},
                      compiler_options=COMPILER_OPTIONS)(jax.random.key(0))
  return {i: convert.flax_to_torch(jax.device_get(v), small.rules)
          for i, v in variables.items()}


INIT_SMALL = {"unet_vanilla": dataclasses.replace(
                  SMALL_UNET, fields={"width": 16}, input_shape=(16, 16, 3)),
              "deeplabv3_resnet50": dataclasses.replace(
                  SMALL_DEEPLAB, fields={"width": 8, "aspp_features": 32},
                  input_shape=(32, 32, 3))}


@pytest.mark.parametrize("name", sorted(INIT_SMALL))
def test_init_schemes_per_layer(name):
  """test_init's checks: ``"torch"`` gives each tensor its twin's
  distribution (transposed convolutions: PyTorch's fan-in ``C_out·kh·kw``),
  ``"flax"`` LeCun-normal kernels and zero biases; batch norm 1 / 0."""
  small = INIT_SMALL[name]
  twin = torch_models.state_dict_numpy(small.twin())
  expected = layer_expectations(small.rules, twin)
  ours = initial_state_dicts(name)
  assert ours["torch"].keys() == twin.keys()
  assert_init_schemes(ours, twin, expected)


@functools.cache
def torchvision_deeplab():
  """torchvision's own ``deeplabv3_resnet50`` (no weights, no auxiliary
  head, output stride 8: its ``replace_stride_with_dilation=[False, True,
  True]`` and ASPP rates 12, 24, 36), batch norms randomised, eval mode."""
  try:
    torchvision = torchvision_models.import_torchvision()
  except ImportError as e:
    pytest.skip(str(e))
  torch.manual_seed(0)
  reference = torchvision.models.segmentation.deeplabv3_resnet50(
      weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
  state = randomised_batch_norms(torch_models.state_dict_numpy(reference),
                                 np.random.RandomState(1))
  torch_models.load_numpy_state_dict(reference, state)
  return reference.eval(), state


def test_the_twin_is_torchvisions_deeplabv3_resnet50():
  """torchvision's ``deeplabv3_resnet50`` loads into the OS-8 twin with
  every name and shape (``strict=True``) and both give the same logits."""
  reference, state = torchvision_deeplab()
  info = dataclasses.replace(DEEPLAB.example_info, num_classes=21)
  twin = DEEPLAB.torch_twin(info, output_stride=8)
  torch_models.load_numpy_state_dict(twin, state)
  twin.eval()
  x = torch.from_numpy(images(np.random.RandomState(2), 1, (64, 64, 3))
                       .transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    want = reference(x)["out"].numpy()
    got = twin(x).numpy()
  assert rel_error(got, want) <= 1e-5


def test_flax_model_equals_torchvisions_deeplabv3_resnet50():
  """The issue's check, full size: torchvision's weights (random init,
  random batch-norm statistics) converted by ``convert.torch_to_flax`` with
  the model's own rules into ``deeplabv3_resnet50`` at output stride 8 give
  torchvision's eval-mode logits to 1e-4 relative (float32)."""
  reference, state = torchvision_deeplab()
  info = dataclasses.replace(DEEPLAB.example_info, num_classes=21,
                             input_shape=(64, 64, 3))
  model = DEEPLAB.build(info, "torch").clone(output_stride=8)
  template = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  variables = convert.torch_to_flax(state, DEEPLAB.conversion(info),
                                    template=template)
  x = images(np.random.RandomState(2), 2, (64, 64, 3))
  got = jax.jit(lambda v, x: model.apply(v, x, train=False),
                compiler_options=COMPILER_OPTIONS)(variables, x)
  with torch.no_grad():
    want = nhwc(reference(nchw(x))["out"])
  assert got.shape == want.shape == (2, 64, 64, 21)
  assert rel_error(np.asarray(got), want) <= DEEPLAB_RTOL
