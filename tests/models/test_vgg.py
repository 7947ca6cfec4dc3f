"""``vgg11`` against its PyTorch twin and torchvision's ``vgg11``.

The registered example (224×224 ImageNet images, 133 M parameters, dropout
in train mode) is skipped by the registry-wide files
(``test_torch_equivalence.py``, ``test_init.py``); this file runs their
checks, with their helpers, on reduced widths of the same layout (five
stages of configuration "A", the same module indices, the 7×7 adaptive
pool): convolution widths 8-16-16-16-32-32-32-32 and a 32-wide classifier,
on 32×32 inputs (a 1×1 map before the pool, as CIFAR) and 64×96 inputs (a
2×3 map, overlapping pool bins). At full size: torchvision's own ``vgg11``
(its code, through ``reference.torchvision_models``) converted into the Flax
model on a CIFAR-100 batch, and the names and parameter counts of ``vgg11``
and ``vgg11_bn`` (on the meta device: no memory).

Errors are relative max-norm errors (``rel_error``). Tolerances, and the
values measured on this project's 2-core CPU:

* Full size, torchvision's ``vgg11(num_classes=100)`` weights (its
  initialisation, biases drawn at random) in the Flax model, eval-mode
  logits on two 32×32 images, float32: 1e-5 (measured 1.4e-6); the twin
  loaded with the same state dict gives torchvision's logits exactly.
* Reduced width against the twin, float64, random batch-norm statistics and
  affine parameters, dropout 0: eval-mode and train-mode logits 1e-10
  (measured 1.2e-16 / 1.2e-16 without batch norm, 1.3e-16 / 2.8e-15 with);
  updated running statistics 1e-10 (measured 1.6e-15); gradients of the
  mean cross-entropy w.r.t. every parameter tensor (22 without batch norm,
  38 with) 1e-10 (measured 1.8e-15 / 1.7e-14), except the convolution
  biases before a train-mode batch norm, whose gradient is exactly zero:
  both sides within 1e-10 of the largest gradient (measured 4.8e-16).
* The adaptive average pool against ``F.adaptive_avg_pool2d``, float64:
  1e-12 (measured 1.3e-16); 7×7 -> 7×7 is exactly the identity and 1×1 ->
  7×7 exactly the replication.
* K-FAC statistics of the same train-mode pass: the kernel gradients
  rebuilt from the recorded inputs (im2col patches for the convolutions)
  and output gradients match ``jax.grad`` for all 11 layers, float64: 1e-10
  (measured 4.2e-16 / 1.2e-15).

The reduced-width comparisons run on the project's CPU kernels and, without
batch norm, also on the accelerator path (``optbench_jax.kernels.select``:
flax's convolutions and max pooling, as on a GPU), with the same
tolerances; the batch-norm variant adds no other kernel, and VGG's layer
types are the equivalence tests' (test_torch_equivalence.py).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optbench_jax import models  # noqa: E402
from optbench_jax.errors import OptBenchError  # noqa: E402
from optbench_jax.kernels import select  # noqa: E402
from optbench_jax.models import vgg  # noqa: E402
from optbench_jax.nn import convert, curvature  # noqa: E402
from optbench_jax.reference import (  # noqa: E402
    torch_models, torchvision_models)

from tests.models.test_init import (  # noqa: E402
    assert_init_schemes, layer_expectations)
from tests.models.test_segmentation_models import (  # noqa: E402
    Small, images, mean_cross_entropy, nchw, randomised_batch_norms)
from tests.models.test_torch_equivalence import (  # noqa: E402
    COMPILER_OPTIONS, rel_error, tree_errors)

VGG11 = models.MODELS.get("vgg11")
OUTPUT_RTOL = 1e-5
FLOAT64_RTOL = 1e-10
POOL_RTOL = 1e-12
# Configuration "A"'s layout (same indices, five pools) at reduced widths.
SMALL_CONFIG = (8, "M", 16, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M")
SMALL = Small(VGG11, {"config": SMALL_CONFIG, "hidden": 32}, (32, 32, 3),
              num_classes=5)
PUBLISHED_COUNTS = {100: 129_176_036, 1000: 132_863_336}   # torchvision


def small(batch_norm=False, input_shape=(32, 32, 3), **fields):
  return dataclasses.replace(SMALL, input_shape=input_shape, fields={
      **SMALL.fields, "batch_norm": batch_norm, **fields})


def rules(config):
  """The conversion rules of a reduced configuration (``small``)."""
  return vgg.conversion(config.info, config=config.fields["config"],
                        batch_norm=config.fields["batch_norm"])


def random_state(twin, rng):
  """The twin's state dict with random batch norms (if any)."""
  return randomised_batch_norms(torch_models.state_dict_numpy(twin), rng)


# -- the adaptive average pool ----------------------------------------------
@pytest.mark.parametrize("size, out", [((1, 1), (7, 7)), ((2, 3), (7, 7)),
                                       ((5, 9), (7, 7)), ((13, 4), (3, 2)),
                                       ((7, 7), (7, 7))])
def test_adaptive_average_pool_is_pytorchs(size, out):
  x = np.random.RandomState(0).randn(2, *size, 3)
  with jax.enable_x64(True):
    got = np.asarray(vgg.adaptive_average_pool(jnp.asarray(x), out))
  want = torch.nn.functional.adaptive_avg_pool2d(
      torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), out).numpy()
  assert rel_error(got, want.transpose(0, 2, 3, 1)) <= POOL_RTOL
  if size == out:
    np.testing.assert_array_equal(got, x)
  if size == (1, 1):   # CIFAR: the one pixel, replicated in every cell
    np.testing.assert_array_equal(got, np.broadcast_to(x, got.shape))


def test_inputs_smaller_than_32_are_refused():
  model = small().model()
  with pytest.raises(OptBenchError, match="at least 32x32") as e:
    jax.eval_shape(lambda: model.init(jax.random.key(0),
                                      jnp.zeros((1, 28, 28, 1))))
  assert "\n" not in str(e.value) and "28x28" in str(e.value)
  jax.eval_shape(lambda: model.init(jax.random.key(0),
                                    jnp.zeros((1, 32, 40, 1))))


# -- reduced width against the twin -----------------------------------------
@functools.cache
def twin_pair(batch_norm, kernels="cpu"):
  """Both sides on one batch in float64, dropout 0, random batch norms:
  eval-mode logits, then one train-mode pass (logits, updated statistics,
  gradients of the mean cross-entropy) and, on the Flax side, the K-FAC
  statistics of that pass; all of Flax's in one compilation. Without batch
  norm on 32×32 inputs (a 1×1 map before the pool), with it on 64×96 (2×3,
  overlapping pool bins). The Flax side on the ``kernels`` path."""
  config = small(batch_norm, (64, 96, 3) if batch_norm else (32, 32, 3),
                 dropout_rate=0.0)
  rng = np.random.RandomState(1)
  twin = config.twin().double()
  state = random_state(twin, rng)
  torch_models.load_numpy_state_dict(twin, state)
  x = images(rng, 4, config.input_shape).astype(np.float64)
  labels = rng.randint(0, config.num_classes, 4)
  twin.eval()
  with torch.no_grad():
    ref = {"eval": twin(nchw(x, "float64")).numpy()}
  twin.train()
  logits = twin(nchw(x, "float64"))
  torch.nn.functional.cross_entropy(logits,
                                    torch.from_numpy(labels)).backward()
  ref["train"] = logits.detach().numpy()
  ref["grads"] = convert.torch_to_flax(torch_models.grads_numpy(twin),
                                       rules(config), strict=False)["params"]
  ref["stats"] = convert.torch_to_flax(torch_models.state_dict_numpy(twin),
                                       rules(config)).get("batch_stats")
  ref["num_params"] = len(list(twin.parameters()))
  with jax.enable_x64(True), select.use(kernels):
    model = config.model(dtype=jnp.float64)
    variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64),
                             convert.torch_to_flax(state, rules(config)))
    others = {c: v for c, v in variables.items() if c != "params"}
    loss = lambda logits: mean_cross_entropy(logits, labels)

    def train(trained, mutable=()):   # trained: params (+ perturbations)
      return model.apply({**trained, **others}, x, train=True,
                         mutable=list(mutable) + list(others))

    def outputs(variables):
      out = {"eval": model.apply(variables, x, train=False)}
      out["grads"], (out["train"], mutated) = jax.grad(
          lambda p: (loss(train({"params": p})[0]), train({"params": p})),
          has_aux=True)(variables["params"])
      out["stats"] = mutated.get("batch_stats")
      out["kfac"] = curvature.layer_statistics(train, loss,
                                               variables["params"])
      return out

    ours = jax.jit(outputs, compiler_options=COMPILER_OPTIONS)(variables)
  return jax.tree.map(np.asarray, ours), ref


# (batch_norm, kernels): the accelerator path without batch norm (docstring)
CASES = pytest.mark.parametrize(
    "batch_norm, kernels", [(False, "cpu"), (True, "cpu"),
                            (False, "accelerator")],
    ids=["plain", "bn", "plain-accelerator"])


@CASES
def test_eval_and_train_logits_match_the_twin(batch_norm, kernels):
  ours, ref = twin_pair(batch_norm, kernels)
  assert ours["eval"].shape == ref["eval"].shape == (4, SMALL.num_classes)
  assert rel_error(ours["eval"], ref["eval"]) <= FLOAT64_RTOL
  assert rel_error(ours["train"], ref["train"]) <= FLOAT64_RTOL


def test_running_statistics_match_the_twin():
  ours, ref = twin_pair(True)
  errors = tree_errors(ours["stats"], ref["stats"])
  assert len(errors) == 2 * 8   # mean and var of 8 batch norms
  assert max(errors.values()) <= FLOAT64_RTOL
  assert twin_pair(False)[0]["stats"] is None


@CASES
def test_gradients_match_in_float64(batch_norm, kernels):
  ours, ref = twin_pair(batch_norm, kernels)
  errors = tree_errors(ours["grads"], ref["grads"])
  assert len(errors) == ref["num_params"] == (38 if batch_norm else 22)
  if batch_norm:
    # A bias before a train-mode batch norm has zero gradient (the batch
    # mean cancels it): rounding on both sides, compared to the largest.
    scale = max(np.abs(g).max() for g in jax.tree.leaves(ref["grads"]))
    convs = [rule.flax[0] for rule in rules(small(True))
             if rule.torch.startswith("features") and "running_var"
             not in rule.kind]
    assert len(convs) == 8
    for key in convs:
      assert max(np.abs(ours["grads"][key]["bias"]).max(),
                 np.abs(ref["grads"][key]["bias"]).max()
                 ) <= FLOAT64_RTOL * scale
      del errors[f"['{key}']['bias']"]
  assert max(errors.values()) <= FLOAT64_RTOL, sorted(
      errors.items(), key=lambda kv: -kv[1])[:3]


@CASES
def test_kfac_statistics_give_every_layers_gradient(batch_norm, kernels):
  """``curvature.layer_statistics`` records all 8 convolutions (im2col
  patches) and 3 dense layers; ``Σ inputsᵀ · output_grads`` over examples
  and positions is each kernel's gradient (checked against PyTorch's
  above), as K-FAC assumes."""
  ours, _ = twin_pair(batch_norm, kernels)
  stats, grads = ours["kfac"], ours["grads"]
  weighted = {k for k, v in grads.items() if "kernel" in v}
  assert set(stats["inputs"]) == set(stats["output_grads"]) == weighted
  assert len(weighted) == 11
  for name in weighted:
    inputs = stats["inputs"][name]["inputs"][0]
    outputs = stats["output_grads"][name]["outputs"]
    rebuilt = (inputs.reshape(-1, inputs.shape[-1]).T
               @ outputs.reshape(-1, outputs.shape[-1]))
    kernel = grads[name]["kernel"]
    assert rel_error(rebuilt, kernel.reshape(rebuilt.shape)) <= FLOAT64_RTOL


def test_dropout_follows_both_hidden_layers():
  """Train mode needs the ``dropout`` key; after ``classifier_0`` and
  ``classifier_3`` (torchvision's ``classifier.2`` and ``.5``) dropout 0.5
  zeroes about half of the ReLU outputs and doubles the others, with the
  same mask for the same key."""
  config = small(hidden=512)
  model = config.model()
  assert model.dropout_rate == vgg.DROPOUT == 0.5
  variables = convert.torch_to_flax(
      torch_models.state_dict_numpy(config.twin()), rules(config))
  x = images(np.random.RandomState(2), 4, (32, 32, 3))
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)
  is_layer = lambda m, _: bool(m.name) and m.name.startswith("classifier_")

  def hidden(key):
    return model.apply(variables, x, train=key is not None,
                       rngs={} if key is None else {"dropout": key},
                       capture_intermediates=is_layer,
                       mutable=["intermediates"])[1]["intermediates"]

  kept, a, b, c = jax.tree.map(np.asarray, jax.jit(
      lambda k1, k2: (hidden(None), hidden(k1), hidden(k1), hidden(k2)),
      compiler_options=COMPILER_OPTIONS)(jax.random.key(1),
                                         jax.random.key(2)))
  for layer, dropout in (("classifier_0", "classifier_2"),
                         ("classifier_3", "classifier_5")):
    out = a[dropout]["__call__"][0]
    np.testing.assert_array_equal(out, b[dropout]["__call__"][0])
    assert not np.array_equal(out, c[dropout]["__call__"][0])
    before = kept[dropout]["__call__"][0]
    np.testing.assert_array_equal(before, np.maximum(
        kept[layer]["__call__"][0], 0))
  # classifier_2 sees the same input in both modes
  out, before = a["classifier_2"]["__call__"][0], kept["classifier_2"][
      "__call__"][0]
  np.testing.assert_allclose(out[out != 0], 2 * before[out != 0], rtol=1e-6)
  active = before > 0
  dropped = np.mean(out[active] == 0)   # n ≈ 1000: ±0.1 ≥ 6 std errors
  assert active.sum() > 500 and abs(dropped - 0.5) <= 0.1, dropped


def test_bfloat16_compute_keeps_float32_parameters():
  """``dtype`` (``--precision bf16``) sets the activations' type only."""
  model = small(True).model(dtype=jnp.bfloat16)
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  logits = jax.eval_shape(lambda v: model.apply(v, x), variables)
  assert logits.dtype == jnp.bfloat16 and logits.shape == (2, 5)
  assert {v.dtype for v in jax.tree.leaves(variables["params"])} == {
      jnp.dtype(jnp.float32)}


def test_round_trip_and_flax_weights_load_into_the_twin():
  config = small(True)
  state = random_state(config.twin(), np.random.RandomState(4))
  back = convert.flax_to_torch(convert.torch_to_flax(state, rules(config)),
                               rules(config))
  assert list(back) == list(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  torch_models.load_numpy_state_dict(config.twin(seed=1), back)


def test_init_schemes_per_layer():
  """test_init's checks at widths 16-32-64 and a 64-wide classifier (the
  largest tensor, ``classifier.0``, 200,704 values): ``"torch"`` gives each
  tensor its twin's distribution, ``"flax"`` LeCun-normal kernels and zero
  biases; batch norm 1 / 0."""
  config = small(True, config=(16, "M", 32, "M", 64, 64, "M", 64, 64, "M",
                               64, 64, "M"), hidden=64)
  twin = torch_models.state_dict_numpy(config.twin())
  expected = layer_expectations(rules(config), twin)
  x = jnp.zeros((1, *config.input_shape))
  built = {init: config.model(init) for init in ("torch", "flax")}
  variables = jax.jit(lambda key: {i: m.init(key, x)
                                   for i, m in built.items()},
                      compiler_options=COMPILER_OPTIONS)(jax.random.key(0))
  ours = {i: convert.flax_to_torch(jax.device_get(v), rules(config))
          for i, v in variables.items()}
  assert ours["torch"].keys() == twin.keys()
  assert_init_schemes(ours, twin, expected)


# -- full size ---------------------------------------------------------------
def import_torchvision():
  try:
    return torchvision_models.import_torchvision()
  except ImportError as e:
    pytest.skip(str(e))


def test_registered_model_is_configuration_a():
  model = VGG11.build(VGG11.example_info)
  assert (model.config, model.hidden, model.pool_size, model.batch_norm,
          model.dropout_rate, model.num_classes) == (
              vgg.CONFIG_A, 4096, 7, False, 0.5, 1000)
  assert list(vgg.CONFIG_A) == import_torchvision().models.vgg.cfgs["A"]


@pytest.mark.parametrize("batch_norm", [False, True],
                         ids=["vgg11", "vgg11_bn"])
@pytest.mark.parametrize("num_classes", [100, 1000])
def test_names_shapes_and_parameter_count_are_torchvisions(batch_norm,
                                                           num_classes):
  """torchvision's ``vgg11``/``vgg11_bn`` (meta device), the twin and the
  conversion rules have the same tensor names in the same order and the
  same shapes; the Flax model has as many parameters (vgg11: torchvision's
  published 132,863,336 at 1000 classes; 129,176,036 at 100)."""
  torchvision = import_torchvision()
  info = dataclasses.replace(VGG11.example_info, num_classes=num_classes,
                             input_shape=(32, 32, 3))
  build = (torchvision.models.vgg11_bn if batch_norm
           else torchvision.models.vgg11)
  with torch.device("meta"):
    reference = build(num_classes=num_classes)
    twin = VGG11.torch_twin(info, batch_norm=batch_norm)
  want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
  assert {k: tuple(v.shape) for k, v in twin.state_dict().items()} == want
  names = [f"{rule.torch}.{suffix}"
           for rule in vgg.conversion(info, batch_norm=batch_norm)
           for suffix in rule.kind]
  assert names == list(want)
  count = sum(p.numel() for p in reference.parameters())
  if not batch_norm:
    assert count == PUBLISHED_COUNTS[num_classes]
  model = VGG11.build(info).clone(batch_norm=batch_norm)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, 32, 32, 3))))
  assert sum(v.size for v in jax.tree.leaves(template["params"])) == count


def test_flax_vgg11_equals_torchvisions_vgg11():
  """The full-size check on CIFAR-100 shapes: torchvision's ``vgg11(
  num_classes=100)`` (its initialisation, biases drawn at random), its
  state dict converted by the registered rules, gives torchvision's
  eval-mode logits; the same state dict loads into the twin (strict) and
  gives them too."""
  torchvision = import_torchvision()
  torch.manual_seed(0)
  reference = torchvision.models.vgg11(num_classes=100).eval()
  for name, value in reference.named_parameters():
    if name.endswith("bias"):
      torch.nn.init.uniform_(value.data, -0.05, 0.05)
  # Views of the 0.5 GB of weights (torch_to_flax copies what it keeps).
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  info = dataclasses.replace(VGG11.example_info, num_classes=100,
                             input_shape=(32, 32, 3))
  model = VGG11.build(info)
  variables = convert.torch_to_flax(
      state, VGG11.conversion(info), template=jax.eval_shape(
          lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))))
  x = images(np.random.RandomState(5), 2, (32, 32, 3))
  got = jax.jit(lambda v, x: model.apply(v, x, train=False),
                compiler_options=COMPILER_OPTIONS)(variables, x)
  del variables
  with torch.device("meta"):   # no initialisation: the weights are given
    twin = VGG11.torch_twin(info)
  twin.load_state_dict(reference.state_dict(), strict=True, assign=True)
  twin.eval()
  with torch.no_grad():
    want = reference(nchw(x)).numpy()
    from_twin = twin(nchw(x)).numpy()
  assert got.shape == want.shape == (2, 100)
  assert rel_error(np.asarray(got), want) <= OUTPUT_RTOL
  np.testing.assert_array_equal(from_twin, want)
