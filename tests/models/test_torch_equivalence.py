"""The Flax models compute the same function as their PyTorch twins.

Every registered model with a twin (``spec.torch_twin``) is tested, on its
``spec.example_info``: the Flax model gets its twin's (PyTorch-initialised)
weights through ``optbench_jax.nn.convert`` and ``spec.conversion``; on
the same random input both must give the same logits, batch-norm running
statistics and cross-entropy gradients. The Flax side runs on both paths of
the layers (``optbench_jax.kernels.select``): the project's CPU kernels
(``"cpu"``) and the library's operations a GPU runs (``"accelerator"``),
with the same tolerances; the accelerator path's float64 gradients are
checked for cnn_scratch only (ResNet-18's take minutes with XLA:CPU's
float64 convolution gradients; its layer types are covered by cnn_scratch
and tests/models/test_segmentation_models.py).
Errors are relative max-norm errors ``max|ours − ref| / max|ref|`` per
tensor (the maximum over tensors for trees).

* Logits (eval mode; train mode with batch statistics) and the updated
  running means, in float32: tolerance 1e-5 (measured on a CPU, cnn_scratch
  / resnet18: eval 7.6e-7 / 3.0e-7, train mode 7.6e-7 / 1.8e-6, running
  means 5.9e-7; earlier runs on another CPU: up to 4.7e-6 train mode).
* Running variances (``layers.BatchNorm`` updates them with the unbiased
  batch variance, as PyTorch does; Flax's own ``BatchNorm`` would not): 1e-5
  (measured 6.5e-8).
* Gradients of the mean cross-entropy w.r.t. every parameter (train mode),
  in float64 on both sides: tolerance 1e-9 (measured 4.1e-15 / 2.1e-14). Not float32:
  at this seed one ResNet pre-activation lies within 1e-6 of zero, so
  rounding decides which side of the ReLU it falls on; PyTorch's float32
  gradient of ``layer4.1.conv1.weight`` then differs from its own float64
  gradient by 2.4 %, and whether XLA's float32 result flips too varied
  between runs. In float64 the two implementations agree to rounding.
"""
import functools
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from optbench_jax import models  # noqa: E402
from optbench_jax.kernels import select  # noqa: E402
from optbench_jax.nn import convert  # noqa: E402
from optbench_jax.reference import torch_models  # noqa: E402

BATCH = 4
OUTPUT_RTOL = 1e-5
GRAD_RTOL_FLOAT64 = 1e-9
# Models with a larger example input than this (the segmentation models:
# 256×256×3 images, 30-40 M parameters, dropout in train mode) would take
# minutes here on a CPU; tests/models/test_segmentation_models.py runs these
# checks for them at a reduced width and input. The other tests of this file
# (names, registry entries) cover every model.
MAX_EXAMPLE_VALUES = 64 * 64 * 3


def example_is_small(spec) -> bool:
  return math.prod(spec.example_info.input_shape) <= MAX_EXAMPLE_VALUES


TWINNED = [name for name, spec in models.MODELS.items()
           if spec.torch_twin is not None and example_is_small(spec)
           and spec.vocabulary is None]


def _has_batch_norm(name):
  spec = models.MODELS.get(name)
  return any("running_var" in rule.kind
             for rule in spec.conversion(spec.example_info))


WITH_BATCH_NORM = [name for name in TWINNED if _has_batch_norm(name)]
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# XLA's backend optimisations off for float32 functions: halves their
# compile time (the HLO, hence the function computed, is the same; measured
# errors unchanged). Not for float64 gradients, which then run slowly:
# ResNet-18's took 198 s instead of 19 s (10 s more compilation; 2-core CPU).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# The layers' two paths, both run on this CPU: the project's kernels and the
# library's (flax) operations that a GPU runs.
KERNELS = ("cpu", "accelerator")
FLOAT64_ACCELERATOR = ("cnn_scratch",)   # module docstring


def rel_error(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  scale = np.abs(ref).max()
  diff = np.abs(ours - ref).max()
  return float(diff / scale) if scale > 0 else float(diff)


def tree_errors(ours, ref) -> dict:
  """``{"path": rel_error}`` over the leaves of two nested dicts."""
  flat_ours = {jax.tree_util.keystr(p): v
               for p, v in jax.tree_util.tree_leaves_with_path(ours)}
  flat_ref = {jax.tree_util.keystr(p): v
              for p, v in jax.tree_util.tree_leaves_with_path(ref)}
  assert flat_ours.keys() == flat_ref.keys()
  return {k: rel_error(flat_ours[k], flat_ref[k]) for k in flat_ref}


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         labels).mean()


class Pair:
  """A Flax model, its PyTorch twin, the same weights, one batch.

  ``flax_results(dtype)`` and ``torch_results(dtype)`` compute, once each,
  everything the tests compare: eval-mode logits, train-mode logits, the
  running statistics after that train-mode pass (float32), and train-mode
  logits and the gradients of the mean cross-entropy (float64). The Flax side
  is one jitted function per dtype (one compilation each per kernel path:
  the path is part of the jit key), which keeps the file fast on a CPU.
  """

  def __init__(self, name):
    self.name, self.spec = name, models.MODELS.get(name)
    self.info = self.spec.example_info
    model = self.spec.build(self.info)
    self.models = {dtype: model.clone(dtype=getattr(jnp, dtype))
                   for dtype in TORCH_DTYPES}
    self.model = self.models["float32"]
    torch.manual_seed(0)
    twin = self.spec.torch_twin(self.info)
    rng = np.random.RandomState(0)
    self.x = rng.randn(BATCH, *self.info.input_shape).astype(np.float32)
    self.labels = rng.randint(0, self.info.num_classes, BATCH)
    self.rules = self.spec.conversion(self.info)
    self.template = jax.eval_shape(
        lambda: self.model.init(jax.random.key(0), self.x[:1]))
    self.state_dict = torch_models.state_dict_numpy(twin)
    self.variables = convert.torch_to_flax(self.state_dict, self.rules,
                                           template=self.template)
    self._flax_fns = {
        dtype: jax.jit(functools.partial(self._flax_outputs, dtype),
                       compiler_options=(COMPILER_OPTIONS
                                         if dtype == "float32" else None))
        for dtype in TORCH_DTYPES}
    self._flax, self._torch = {}, {}

  def _flax_outputs(self, dtype, variables, x, labels):
    model = self.models[dtype]
    others = {c: v for c, v in variables.items() if c != "params"}

    def loss(params):
      if others:
        logits, mutated = model.apply(
            {"params": params, **others}, x, train=True, mutable=list(others))
      else:
        logits, mutated = model.apply({"params": params}, x, train=True), {}
      return cross_entropy(logits, labels), (logits, mutated)

    results = {}
    if dtype == "float64":
      (_, (logits, mutated)), results["grads"] = jax.value_and_grad(
          loss, has_aux=True)(variables["params"])
    else:
      results["eval"] = model.apply(variables, x, train=False)
      _, (logits, mutated) = loss(variables["params"])
    results.update(train=logits, stats=mutated.get("batch_stats"))
    return results

  def flax_results(self, dtype="float32", variables=None, kernels="cpu"):
    """Flax's side on the ``kernels`` path (:data:`KERNELS`); ``variables``
    defaults to the twin's converted weights."""
    if variables is None:
      if (dtype, kernels) not in self._flax:
        self._flax[dtype, kernels] = self.flax_results(dtype, self.variables,
                                                       kernels)
      return self._flax[dtype, kernels]
    with jax.enable_x64(dtype == "float64"), select.use(kernels):
      variables = jax.tree.map(lambda v: jnp.asarray(v, dtype), {
          c: variables[c] for c in ("params", "batch_stats")
          if c in variables})
      out = self._flax_fns[dtype](variables, jnp.asarray(self.x, dtype),
                                  jnp.asarray(self.labels))
      return jax.tree.map(np.asarray, out)

  def torch_input(self, dtype="float32"):
    return torch.from_numpy(self.x.transpose(0, 3, 1, 2).copy()).to(
        TORCH_DTYPES[dtype])

  def torch_results(self, dtype="float32"):
    """PyTorch's side, on a fresh twin loaded with ``self.state_dict``."""
    if dtype in self._torch:
      return self._torch[dtype]
    twin = torch_models.load_numpy_state_dict(
        self.spec.torch_twin(self.info), self.state_dict).to(
            TORCH_DTYPES[dtype])
    counts = {}
    hook = lambda m, inputs, _: counts.__setitem__(
        m, inputs[0].numel() // inputs[0].shape[1])
    for m in twin.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.register_forward_hook(hook)
    twin.eval()
    with torch.no_grad():
      eval_logits = twin(self.torch_input(dtype)).numpy()
    twin.train()
    with torch.set_grad_enabled(dtype == "float64"):
      logits = twin(self.torch_input(dtype))
    results = {"eval": eval_logits, "train": logits.detach().numpy()}
    results["stats"] = convert.torch_to_flax(
        torch_models.state_dict_numpy(twin), self.rules).get("batch_stats")
    if dtype == "float64":
      torch.nn.functional.cross_entropy(
          logits, torch.from_numpy(self.labels)).backward()
      results["grads"] = convert.torch_to_flax(
          torch_models.grads_numpy(twin), self.rules, strict=False)["params"]
      results["num_params"] = len(list(twin.parameters()))
    # elements per channel (N·H·W) of each batch norm, by Flax path
    modules = dict(twin.named_modules())
    results["bn_counts"] = {rule.flax: counts[modules[rule.torch]]
                            for rule in self.rules
                            if "running_var" in rule.kind}
    self._torch[dtype] = results
    return results


_PAIRS = {}


def get_pair(name):
  if name not in _PAIRS:
    _PAIRS[name] = Pair(name)
  return _PAIRS[name]


@pytest.fixture(scope="module", params=TWINNED)
def pair(request):
  return get_pair(request.param)


@pytest.fixture(scope="module", params=WITH_BATCH_NORM)
def bn_pair(request):
  yield get_pair(request.param)
  _PAIRS.clear()


def test_every_model_has_an_example_and_a_twin_with_rules():
  for name, spec in models.MODELS.items():
    assert spec.example_info.task == spec.task, name
    assert spec.example_info.input_shape, name
    # text models: tests/models/test_text_models.py (tokens, not images)
    assert spec.vocabulary is not None or spec.example_info.num_classes
    assert (spec.torch_twin is None) == (spec.conversion is None), name
  assert {"cnn_scratch", "resnet18"} <= set(TWINNED)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


@pytest.mark.parametrize("name", [n for n, s in models.MODELS.items()
                                  if s.vocabulary is None])
def test_submodules_are_named_explicitly(name):
  """No Flax auto-names (``Conv_2``): the conversion rules use the names."""
  spec = models.MODELS.get(name)
  info = spec.example_info
  variables = jax.eval_shape(lambda: spec.build(info).init(
      jax.random.key(0), jnp.zeros((1, *info.input_shape))))
  paths = [tuple(str(k.key) for k in path[1:-1]) for path, _ in
           jax.tree_util.tree_leaves_with_path(variables["params"])]
  auto = {"/".join(p) for p in paths
          if any(re.fullmatch(r"[A-Z]\w*_\d+", key) for key in p)}
  assert not auto, sorted(auto)[:5]


def test_converted_variables_fit_the_model(pair):
  # torch_to_flax(template=...) checked structure and shapes of the
  # collections it produced; check that it produced all of the model's.
  stateful = {"params", "batch_stats"} & set(pair.template)
  assert set(pair.variables) == stateful
  assert all(leaf.dtype == np.float32
             for leaf in jax.tree.leaves(pair.variables))


@pytest.mark.parametrize("kernels", KERNELS)
def test_eval_logits_match(pair, kernels):
  ours = pair.flax_results(kernels=kernels)["eval"]
  assert rel_error(ours, pair.torch_results()["eval"]) <= OUTPUT_RTOL


@pytest.mark.parametrize("kernels", KERNELS)
def test_train_mode_logits_and_running_mean_match(bn_pair, kernels):
  ours, ref = bn_pair.flax_results(kernels=kernels), bn_pair.torch_results()
  assert rel_error(ours["train"], ref["train"]) <= OUTPUT_RTOL
  errors = {k: e for k, e in tree_errors(ours["stats"], ref["stats"]).items()
            if "'mean'" in k}
  assert len(errors) == len(ref["bn_counts"])   # every batch norm (20 in
  assert max(errors.values()) <= OUTPUT_RTOL, errors   # resnet18)


@pytest.mark.parametrize("kernels", KERNELS)
def test_running_var_matches_torch(bn_pair, kernels):
  ours, ref = bn_pair.flax_results(kernels=kernels), bn_pair.torch_results()
  errors = {k: e for k, e in tree_errors(ours["stats"], ref["stats"]).items()
            if "'var'" in k}
  assert max(errors.values()) <= OUTPUT_RTOL


@pytest.mark.parametrize("kernels", KERNELS)
def test_gradients_match_in_float64(pair, kernels):
  """d(mean cross-entropy)/d(params), train mode (batch statistics)."""
  if kernels == "accelerator" and pair.name not in FLOAT64_ACCELERATOR:
    pytest.skip("minutes on a CPU (module docstring)")
  ours = pair.flax_results("float64", kernels=kernels)
  ref = pair.torch_results("float64")
  assert rel_error(ours["train"], ref["train"]) <= GRAD_RTOL_FLOAT64
  errors = tree_errors(ours["grads"], ref["grads"])
  assert len(errors) == ref["num_params"]
  assert max(errors.values()) <= GRAD_RTOL_FLOAT64, sorted(
      errors.items(), key=lambda kv: -kv[1])[:5]


def test_round_trip_is_exact(pair):
  back = convert.flax_to_torch(pair.variables, pair.rules)
  assert back.keys() == pair.state_dict.keys()
  for k, v in pair.state_dict.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  torch_models.load_numpy_state_dict(pair.spec.torch_twin(pair.info), back)


@pytest.mark.parametrize("kernels", KERNELS)
def test_flax_weights_load_into_torch(pair, kernels):
  """The benchmark's direction: Flax weights -> the twin.

  Other weights than the twin's own (scaled and shifted), with the extra
  collections ``model.init`` returns (KFAC captures), which are ignored.
  """
  variables = jax.tree.map(lambda v: 1.1 * v + 0.01, pair.variables)
  variables["kfac_inputs"] = {pair.rules[0].flax[0]: {
      "inputs": (np.zeros(3),)}}
  state_dict = convert.flax_to_torch(variables, pair.rules)
  twin = torch_models.load_numpy_state_dict(pair.spec.torch_twin(pair.info),
                                            state_dict)
  twin.eval()
  with torch.no_grad():
    ref = twin(pair.torch_input()).numpy()
  ours = pair.flax_results("float32", variables,
                           kernels)["eval"]   # no recompile
  assert rel_error(ours, ref) <= OUTPUT_RTOL


def test_mismatches_raise(pair):
  sd = dict(pair.state_dict)
  first = next(iter(sd))
  with pytest.raises(convert.ConversionError, match="missing"):
    convert.torch_to_flax({k: v for k, v in sd.items() if k != first},
                          pair.rules)
  with pytest.raises(convert.ConversionError, match="no rule"):
    convert.torch_to_flax({**sd, "extra.weight": np.zeros(3)}, pair.rules)
  with pytest.raises(convert.ConversionError, match="shape"):
    convert.torch_to_flax({**sd, first: sd[first][:1]}, pair.rules,
                          template=pair.template)


def test_dense_after_flatten_permutes_rows():
  c, h, w, out = 3, 2, 5, 4
  rng = np.random.RandomState(0)
  weight = rng.randn(out, c * h * w)
  leaf = convert.dense_after_flatten(c, h, w)["weight"]
  fmap = rng.randn(c, h, w)
  np.testing.assert_allclose(fmap.reshape(-1) @ weight.T,
                             fmap.transpose(1, 2, 0).reshape(-1)
                             @ leaf.to_flax(weight), rtol=1e-12)
  np.testing.assert_array_equal(leaf.to_torch(leaf.to_flax(weight)), weight)


def test_importing_the_package_does_not_import_torch():
  code = ("import sys, optbench_jax, optbench_jax.models, optbench_jax.nn, "
          "optbench_jax.nn.convert, optbench_jax.kernels, "
          "optbench_jax.transforms, optbench_jax.tasks, "
          "optbench_jax.reference; "
          "assert 'torch' not in sys.modules, 'torch imported'")
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (root, os.environ.get("PYTHONPATH")) if p)}
  subprocess.run([sys.executable, "-c", code], check=True, env=env)
