"""Initial parameters follow the chosen scheme (``INITS``), layer by layer.

``init="torch"`` (the default) must give every layer the distribution of its
PyTorch twin's freshly initialised tensor: dense and convolution weights and
biases uniform in ``±b``, ``b = 1/√fan_in`` (``fan_in`` from the twin's
weight: ``in_features``, or ``in_channels/groups·kh·kw``); batch norm 1 / 0
(running statistics 0 / 1); embeddings ``N(0, 1)``. ``init="flax"`` keeps
Flax's defaults (LeCun-normal kernels, zero biases).

Statistical tolerances, for a tensor of ``n`` independent ``U(-b, b)``
values (σ = b/√3):

* ``max|w| ≤ b(1 + 1e-6)`` (float32 rounding of the bound);
* ``max|w| ≥ b(1 − 21/n)``: the chance of a false alarm is
  ``(1 − 21/n)^n ≤ e^-21 ≈ 8e-10`` (vacuous for n ≤ 21);
* ``|std/σ − 1| ≤ 2.7/√n``: six standard errors of a sample standard
  deviation of uniform values (``0.447/√n``); against the twin's tensor,
  ``|std − std_twin|/σ ≤ 3.8/√n`` (six standard errors of a difference);
* ``|mean| ≤ 6σ/√n``.

Measured on cnn_scratch and resnet18 (seed 0, ours and the twin's): the
worst ``√n·|std/σ − 1|`` is 1.46 (2.68 allowed), ``√n·|std − std_twin|/σ``
1.30 (3.79 allowed), ``n·(1 − max|w|/b)`` 5.8 (21 allowed). With
``init="flax"`` every one of the 30 tensors fails these checks (worst
``√n·|std/σ − 1|`` 1125).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optbench_jax import models  # noqa: E402
from optbench_jax.errors import OptBenchError  # noqa: E402
from optbench_jax.nn import convert, layers  # noqa: E402
from optbench_jax.reference import torch_models  # noqa: E402

from tests.models.test_torch_equivalence import example_is_small  # noqa: E402

# Models with a large example (see test_torch_equivalence.example_is_small)
# are checked by their own test files, with these functions, at a reduced
# width.
TWINNED = [name for name, spec in models.MODELS.items()
           if spec.torch_twin is not None and example_is_small(spec)
           and spec.vocabulary is None]
MAX_GAP = 21.0            # n·(1 − max|w|/b) allowed
STD_SE = 6 * 0.447        # √n·|std/σ − 1| allowed (six standard errors)
STD_PAIR_SE = 6 * 0.632   # √n·|std − std_twin|/σ allowed
# XLA's backend optimisations off: init compiles 2-3x faster, same values.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def uniform_violations(values, bound, twin=None) -> list[str]:
  """Why ``values`` are not ``n`` draws of ``U(±bound)`` (empty if they are).

  Args:
    values: the tensor.
    bound: ``b``.
    twin: the PyTorch twin's tensor of the same layer, compared by its
      standard deviation.

  Returns:
    One message per failed check, with the measured value.
  """
  w = np.asarray(values, np.float64).reshape(-1)
  n, sigma = w.size, bound / math.sqrt(3)
  top, std, mean = np.abs(w).max(), w.std(), w.mean()
  errors = []
  if top > bound * (1 + 1e-6):
    errors.append(f"max|w| = {top:.4g} > bound {bound:.4g}")
  if top < bound * (1 - MAX_GAP / n):
    errors.append(f"max|w| = {top:.4g} far below bound {bound:.4g} (n={n})")
  if abs(std / sigma - 1) > STD_SE / math.sqrt(n):
    errors.append(f"std = {std:.4g}, expected {sigma:.4g} ± "
                  f"{sigma * STD_SE / math.sqrt(n):.2g} (n={n})")
  if abs(mean) > 6 * sigma / math.sqrt(n):
    errors.append(f"mean = {mean:.3g}, expected 0 ± {6 * sigma / n**.5:.2g}")
  if twin is not None:
    twin_std = np.asarray(twin, np.float64).std()
    if abs(std - twin_std) > sigma * STD_PAIR_SE / math.sqrt(n):
      errors.append(f"std = {std:.4g}, the twin's {twin_std:.4g} (n={n})")
  return errors


def layer_expectations(rules, twin_state):
  """``{torch name: ("uniform", b) | ("exact", value)}`` for every tensor."""
  expected = {}
  for rule in rules:
    name = lambda suffix: f"{rule.torch}.{suffix}" if rule.torch else suffix
    if "running_var" in rule.kind:   # batch norm: PyTorch's constants
      for suffix in rule.kind:
        expected[name(suffix)] = ("exact", twin_state[name(suffix)])
    elif rule.kind.get("weight") and rule.kind["weight"].name == "kernel":
      fan_in = math.prod(twin_state[name("weight")].shape[1:])
      for suffix in rule.kind:
        expected[name(suffix)] = ("uniform", 1 / math.sqrt(fan_in))
    else:
      raise AssertionError(f"no expectation for a layer of kind {rule.kind}")
  return expected


def assert_init_schemes(ours, twin, expected) -> None:
  """``ours[init]`` (PyTorch-named state dicts of ``--init torch`` and
  ``flax``) against the twin's: ``"torch"`` gives each tensor the twin's
  distribution (``layer_expectations``), ``"flax"`` LeCun-normal kernels
  (std 1/√fan_in, within ±4.3/√n) and zero biases; exact tensors (batch
  norm 1 / 0) equal on both."""
  failures = {}
  for key, (kind, value) in expected.items():
    if kind == "exact":
      for init in ours:
        np.testing.assert_array_equal(ours[init][key], value, err_msg=key)
      continue
    assert not uniform_violations(twin[key], value), key
    errors = uniform_violations(ours["torch"][key], value, twin=twin[key])
    if errors:
      failures[key] = errors
    flax = ours["flax"][key].reshape(-1)
    if key.endswith("bias"):
      np.testing.assert_array_equal(flax, 0.0, err_msg=key)
    else:   # LeCun: std 1/√fan_in = value (±4.3/√n)
      assert abs(flax.std() / value - 1) <= 4.3 / np.sqrt(flax.size), key
  assert not failures, failures


def initial_state_dict(spec, init, seed=0):
  """The Flax model's initial variables, in the twin's names and layouts."""
  info = spec.example_info
  model = spec.build(info, init=init)
  x = jnp.zeros((1, *info.input_shape), jnp.float32)
  variables = jax.jit(model.init, compiler_options=COMPILER_OPTIONS)(
      jax.random.key(seed), x)
  return convert.flax_to_torch(jax.device_get(variables),
                               spec.conversion(info))


@pytest.fixture(scope="module", params=TWINNED)
def model_init(request):
  """A registered model: its twin's fresh tensors and ours, both schemes."""
  spec = models.MODELS.get(request.param)
  torch.manual_seed(0)
  twin = torch_models.state_dict_numpy(spec.torch_twin(spec.example_info))
  expected = layer_expectations(spec.conversion(spec.example_info), twin)
  return {"name": request.param, "twin": twin, "expected": expected,
          "torch": initial_state_dict(spec, "torch"),
          "flax": initial_state_dict(spec, "flax")}


def test_default_init_is_pytorchs_per_layer(model_init):
  ours, twin = model_init["torch"], model_init["twin"]
  assert ours.keys() == twin.keys()
  failures = {}
  for name, (kind, value) in model_init["expected"].items():
    if kind == "exact":
      if not np.array_equal(ours[name], value):
        failures[name] = [f"{ours[name].ravel()[:3]} != twin's "
                          f"{np.asarray(value).ravel()[:3]}"]
      continue
    # The twin's tensor must itself fit (PyTorch's default is the reference).
    assert not uniform_violations(twin[name], value), (name, twin[name].shape)
    errors = uniform_violations(ours[name], value, twin=twin[name])
    if errors:
      failures[name] = errors
  assert not failures, failures


def test_build_defaults_to_torch(model_init):
  spec = models.MODELS.get(model_init["name"])
  info = spec.example_info
  assert models.INITS == ("torch", "flax")
  assert spec.build(info) == spec.build(info, init="torch")
  assert spec.build(info) != spec.build(info, init="flax")
  with pytest.raises(OptBenchError, match="initialisation"):
    spec.build(info, init="kaiming")


def test_flax_init_keeps_flax_defaults(model_init):
  """LeCun-normal kernels (std 1/√fan_in, ±4.3/√n), zero biases; the torch
  checks above reject every kernel of 100 values or more."""
  ours = model_init["flax"]
  for name, (kind, bound) in model_init["expected"].items():
    if kind == "exact":
      np.testing.assert_array_equal(ours[name], bound, err_msg=name)
    elif name.endswith("bias"):
      np.testing.assert_array_equal(ours[name], 0.0, err_msg=name)
    else:
      w = ours[name].reshape(-1)
      # bound = 1/√fan_in is also LeCun's standard deviation.
      assert abs(w.std() / bound - 1) <= 4.3 / math.sqrt(w.size), name
      if w.size >= 100:
        assert uniform_violations(w, bound), name


@pytest.mark.parametrize("make_layers, shape", [
    (lambda: (layers.Dense(7), torch.nn.Linear(300, 7)), (300,)),
    (lambda: (layers.Conv(16, (3, 3), padding=1),
              torch.nn.Conv2d(5, 16, 3, padding=1)), (6, 6, 5)),
    (lambda: (layers.Conv(64, (1, 1), strides=2, use_bias=False),
              torch.nn.Conv2d(32, 64, 1, 2, bias=False)), (4, 4, 32)),
    (lambda: (layers.Conv(40, (3, 3), feature_group_count=4),
              torch.nn.Conv2d(8, 40, 3, groups=4)), (5, 5, 8)),
], ids=["dense", "conv", "conv1x1_no_bias", "grouped_conv"])
def test_layers_match_their_torch_counterparts(make_layers, shape):
  """Bounds from the weight's fan-in (grouped: C_in/groups·kh·kw)."""
  torch.manual_seed(1)
  ours, theirs = make_layers()
  params = ours.init(jax.random.key(1), jnp.zeros((2, *shape)))["params"]
  weight = theirs.weight.detach().numpy()
  bound = 1 / math.sqrt(math.prod(weight.shape[1:]))
  assert not uniform_violations(weight, bound)
  assert not uniform_violations(params["kernel"], bound, twin=weight)
  assert ("bias" in params) == (theirs.bias is not None)
  if theirs.bias is not None:
    assert not uniform_violations(params["bias"], bound,
                                  twin=theirs.bias.detach().numpy())


def test_embedding_and_batch_norm():
  """Embeddings N(0, 1) (std within 6/√(2n)); batch norm 1 / 0, both
  schemes; explicit initialisers win over the scheme."""
  embed = layers.Embed(1000, 16)
  table = embed.init(jax.random.key(2), jnp.zeros((1,), jnp.int32))
  table = np.asarray(table["params"]["embedding"], np.float64)
  twin = torch.nn.Embedding(1000, 16).weight.detach().numpy()
  for w in (table, twin):
    assert abs(w.std() - 1) <= 6 / math.sqrt(2 * w.size), w.std()
  lecun = layers.Embed(1000, 16, init_scheme="flax").init(
      jax.random.key(2), jnp.zeros((1,), jnp.int32))["params"]["embedding"]
  assert abs(float(lecun.std()) * 4 - 1) <= 0.05   # 1/√16
  norm = layers.BatchNorm().init(jax.random.key(0), jnp.zeros((2, 3)))
  np.testing.assert_array_equal(norm["params"]["scale"], np.ones(3))
  np.testing.assert_array_equal(norm["params"]["bias"], np.zeros(3))
  fixed = layers.Dense(3, bias_init=jax.nn.initializers.ones).init(
      jax.random.key(0), jnp.zeros((1, 4)))["params"]
  np.testing.assert_array_equal(fixed["bias"], np.ones(3))
  assert float(jnp.abs(fixed["kernel"]).max()) <= 0.5   # U(±1/√4)
