"""``models.lm``: the language models against their PyTorch twins.

Small configurations (vocabulary 50, 10 positions; GPT ``d_model`` 32, 4
heads, 2 layers, feed-forward 64; GRU embedding and hidden 32, 2 layers, tied
and untied). Each twin (``torch.manual_seed(0)``, eval mode, MHA fast path
off so that padded positions are computed) gives its weights through the
model's conversion rules; both see the same right-padded batch of three rows
(all real, half padding, one real token). Errors are relative max-norm errors
(``tests.transforms.torch_reference.relative_error``).

* Logits, float32, every position: tolerance 1e-5.
* Gradients of ``Σ logits·w`` (fixed random ``w``, real positions only)
  w.r.t. every parameter, float64 on both sides: tolerance 1e-9.
* GPT cached decoding (one token at a time, and chunks of 3, 1, 4, 2; eager
  and under ``jit``) vs the full causal forward: tolerance 1e-5.
* Parameter paths are named explicitly; ``init`` and ``apply`` under
  ``jit(vmap)`` over a leading runs axis equal the per-run computation.

* ``dtype=bfloat16``: finite float32 logits within 5e-2 of float32 (GPT;
  the GRU model is an expected failure until ``recurrent.GRU`` keeps its
  carry in the compute dtype).

Measured on a CPU (seed 0; gpt_small / gru_lm tied / gru_lm untied, over
repeated runs): float32 logits 3.3e-7 to 4.5e-7 / 2.5e-7 to 4.2e-7 / 2.0e-7
to 3.3e-7; float64 gradients (worst leaf) 2.6e-15 / 4.9e-16 / 6.8e-16 (the
key biases, whose exact gradient is 0, against the largest gradient);
cached decoding 3.3e-7 (token by token), 2.9e-7 to 3.6e-7 (chunks); vmap
over runs vs one run 0; GPT bfloat16 vs float32 7e-3 to 9.6e-3.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optbench_jax.data.base import DatasetInfo  # noqa: E402
from optbench_jax.errors import OptBenchError  # noqa: E402
from optbench_jax.models import lm  # noqa: E402
from optbench_jax.nn import convert  # noqa: E402
from optbench_jax.reference import (  # noqa: E402
    torch_generation, torch_models)
from tests.models.test_init import uniform_violations  # noqa: E402
from tests.transforms.torch_reference import relative_error  # noqa: E402

OUTPUT_RTOL = 1e-5
GRAD_RTOL_FLOAT64 = 1e-9
DECODE_RTOL = 1e-5
# The key bias's exact gradient is zero (softmax is invariant to it): its
# error is measured against the largest gradient of all leaves.
ZERO_GRADIENT = "['key']['bias']"
# XLA's backend optimisations off: compiles faster, same function.
jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})
VOCAB, LENGTH = 50, 10
LENGTHS = (10, 5, 1)
INFO = DatasetInfo(name="small", task="text_generation",
                   input_shape=(LENGTH,),
                   stats={"vocab_size": VOCAB, "max_length": LENGTH})
GPT_FIELDS = dict(d_model=32, num_heads=4, num_layers=2, dim_feedforward=64)
TWINS = torch_generation
CASES = {
    "gpt_small": (lm.gpt_small, TWINS.gpt_small, lm.gpt_small_rules,
                  GPT_FIELDS),
    "gru_lm": (lm.gru_lm, TWINS.gru_lm, lm.gru_lm_rules,
               dict(embed=32, hidden=32)),
    "gru_lm_untied": (lm.gru_lm, TWINS.gru_lm, lm.gru_lm_rules,
                      dict(embed=24, hidden=32, tie_weights=False)),
}


@pytest.fixture(autouse=True, scope="module")
def _no_fast_path():
  """PyTorch's eval fast path leaves padded positions undefined (zeros)."""
  enabled = torch.backends.mha.get_fastpath_enabled()
  torch.backends.mha.set_fastpath_enabled(False)
  yield
  torch.backends.mha.set_fastpath_enabled(enabled)


def _inputs(seed=0, lengths=LENGTHS):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (len(lengths), LENGTH)).astype(np.int32)
  mask = np.arange(LENGTH)[None] < np.asarray(lengths)[:, None]
  return tokens, mask


class Pair:
  """A small model, its twin, and the twin's weights converted to ours."""

  def __init__(self, name):
    build, twin, rules, self.fields = CASES[name]
    self.model = build(INFO, **self.fields)
    torch.manual_seed(0)
    self.twin = twin(INFO, **self.fields).eval()
    self.rules = rules(INFO, **self.fields)
    self.tokens, self.mask = _inputs()
    template = jax.eval_shape(lambda: self.model.init(
        jax.random.key(0), self.tokens, self.mask, train=False))
    self.variables = convert.torch_to_flax(
        torch_models.state_dict_numpy(self.twin), self.rules,
        template=template)

  def torch_logits(self, dtype=torch.float32):
    return self.twin.to(dtype)(torch.from_numpy(self.tokens).long(),
                               torch.from_numpy(self.mask))


@functools.lru_cache(maxsize=None)
def pair(name) -> Pair:
  return Pair(name)


def _report(name, err, tol):
  print(f"{name}: relative error {err:.2g}")
  assert err <= tol, (name, err)


# -- equivalence ---------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_logits_match_twin(name):
  p = pair(name)
  ours = jit(lambda v, t, m: p.model.apply(v, t, m, train=False))(
      p.variables, p.tokens, p.mask)
  assert ours.shape == (3, LENGTH, VOCAB) and ours.dtype == jnp.float32
  with torch.no_grad():
    want = p.torch_logits().numpy()
  _report(f"{name} logits", relative_error(ours, want), OUTPUT_RTOL)


@pytest.mark.parametrize("name", CASES)
def test_gradients_match_twin_float64(name):
  p = pair(name)
  weights = np.random.default_rng(2).standard_normal((3, LENGTH, VOCAB))
  weights *= p.mask[..., None]
  try:
    p.twin.zero_grad()
    loss = (p.torch_logits(torch.float64) * torch.from_numpy(weights)).sum()
    loss.backward()
    want = convert.torch_to_flax(torch_models.grads_numpy(p.twin), p.rules,
                                 strict=False)["params"]
  finally:
    p.twin.float().zero_grad()
  with jax.enable_x64(True):
    model = p.model.clone(dtype=jnp.float64)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                          p.variables["params"])
    loss_fn = lambda q: jnp.sum(model.apply(
        {"params": q}, p.tokens, p.mask, train=False) * weights)
    grads = jax.device_get(jit(jax.grad(loss_fn))(params))
    assert {str(g.dtype) for g in jax.tree.leaves(grads)} == {"float64"}
  scale = max(np.abs(g).max() for g in jax.tree.leaves(want))
  errors = {}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    key, ref = jax.tree_util.keystr(path), _get(want, path)
    errors[key] = (np.abs(g - ref).max() / scale if ZERO_GRADIENT in key
                   else relative_error(g, ref))
  worst = max(errors, key=errors.get)
  _report(f"{name} float64 gradients (worst: {worst})", errors[worst],
          GRAD_RTOL_FLOAT64)


def _get(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


@pytest.mark.parametrize("name", CASES)
def test_conversion_round_trip_loads_into_twin(name):
  p = pair(name)
  back = convert.flax_to_torch(p.variables, p.rules)
  original = torch_models.state_dict_numpy(p.twin)
  assert back.keys() == original.keys()
  for key, value in original.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  build, twin, _, fields = CASES[name]
  torch_models.load_numpy_state_dict(twin(INFO, **fields), back)  # strict


# -- GPT decoding --------------------------------------------------------------
def _decode(model, params, tokens, chunks, step):
  cache, start, outs = lm.init_cache(model, tokens.shape[0]), 0, []
  for size in chunks:
    logits, cache = step(params, cache, tokens[:, start:start + size], start)
    outs.append(logits)
    start += size
  assert int(cache["layers_0"]["self_attn"]["cache_index"]) == start
  return jnp.concatenate(outs, axis=1)


def test_gpt_cached_decoding_equals_full_forward():
  p = pair("gpt_small")
  params = p.variables["params"]
  tokens = np.random.default_rng(3).integers(0, VOCAB, (2, LENGTH))
  forward = jit(lambda params, tokens, mask=None: p.model.apply(
      {"params": params}, tokens, mask, train=False))
  full = forward(params, tokens)

  @jit
  def step(params, cache, new, position):
    logits, mutated = p.model.apply(
        {"params": params, "cache": cache}, new, position,
        method=lm.GPTSmall.decode_step, mutable=["cache"])
    return logits, mutated["cache"]

  _report("token by token", relative_error(
      _decode(p.model, params, tokens, [1] * LENGTH, step), full),
          DECODE_RTOL)
  _report("chunks 3, 1, 4, 2", relative_error(
      _decode(p.model, params, tokens, [3, 1, 4, 2], step), full),
          DECODE_RTOL)
  # Right padding does not change the logits at real positions (causal).
  padded = forward(params, p.tokens, p.mask)
  unmasked = forward(params, p.tokens)
  assert relative_error(padded[p.mask], unmasked[p.mask]) <= DECODE_RTOL


# -- structure, runs axis, init ------------------------------------------------
def _paths(tree):
  return {"/".join(k.key for k in path)
          for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def test_explicit_submodule_names():
  want = {
      "gpt_small": {"embedding/embedding", "positions/embedding",
                    "norm/scale", "norm/bias"}
                   | {f"layers_{i}/{m}/{leaf}" for i in range(2)
                      for m in ("self_attn/query", "self_attn/key",
                                "self_attn/value", "self_attn/out",
                                "linear1", "linear2", "norm1", "norm2")
                      for leaf in (("scale", "bias") if m.startswith("norm")
                                   else ("kernel", "bias"))},
      "gru_lm": {"embedding/embedding", "decoder_bias"}
                | {f"gru/l{k}/{part}/{leaf}" for k in range(2)
                   for part in ("ih", "hh") for leaf in ("kernel", "bias")},
  }
  want["gru_lm_untied"] = (want["gru_lm"] - {"decoder_bias"}) | {
      "decoder/kernel", "decoder/bias"}
  for name, paths in want.items():
    assert _paths(pair(name).variables["params"]) == paths, name


@pytest.mark.parametrize("name", ["gpt_small", "gru_lm"])
def test_jit_vmap_over_runs(name):
  p, runs = pair(name), 3
  tokens = np.stack([_inputs(seed)[0] for seed in range(runs)])
  init = lambda key: {"params": p.model.init(key, p.tokens, p.mask,
                                              train=False)["params"]}
  init_keys = jax.random.split(jax.random.key(1), runs)
  variables = jit(jax.vmap(init))(init_keys)
  apply = lambda v, t, key: p.model.apply(v, t, p.mask, train=True,
                                          rngs={"dropout": key})
  keys = jax.random.split(jax.random.key(2), runs)
  batched = jit(jax.vmap(apply))(variables, tokens, keys)
  assert batched.shape == (runs, 3, LENGTH, VOCAB)
  init_one, apply_one = jit(init), jit(apply)
  for r in range(runs):
    one = jax.tree.map(lambda a, r=r: a[r], variables)
    assert relative_error(one, init_one(init_keys[r])) == 0
    _report(f"{name} run {r}",
            relative_error(batched[r], apply_one(one, tokens[r], keys[r])),
            OUTPUT_RTOL)
  assert np.all(np.isfinite(batched))
  assert relative_error(batched[1], batched[0]) > 1e-2


def test_tie_weights_needs_equal_sizes():
  model = lm.gru_lm(INFO, embed=16, hidden=32)
  tokens, mask = _inputs()
  with pytest.raises(OptBenchError, match="tie_weights"):
    model.init(jax.random.key(0), tokens, mask, train=False)
  with pytest.raises(OptBenchError, match="tie_weights"):
    torch_generation.gru_lm(INFO, embed=16, hidden=32)


def test_torch_init_is_the_twins():
  tokens, mask = _inputs()
  gru = lm.gru_lm(INFO, embed=32, hidden=32, tie_weights=False)
  params = jit(gru.init, static_argnames="train")(
      jax.random.key(0), tokens, mask, train=False)["params"]
  twin = pair("gru_lm_untied").twin
  assert not uniform_violations(params["embedding"]["embedding"], 0.1,
                                twin=twin.embedding.weight.detach())
  assert not uniform_violations(params["decoder"]["kernel"], 0.1,
                                twin=twin.decoder.weight.detach())
  assert not np.any(params["decoder"]["bias"])
  assert not uniform_violations(params["gru"]["l1"]["hh"]["kernel"],
                                32 ** -0.5)
  gpt = lm.gpt_small(INFO, **GPT_FIELDS, max_length=64)
  params = jit(gpt.init, static_argnames="train")(
      jax.random.key(0), tokens, mask, train=False)["params"]
  for table in ("embedding", "positions"):
    std = float(np.std(params[table]["embedding"]))
    assert abs(std / lm.GPT_EMBEDDING_STD - 1) < 0.1, (table, std)
  flax = lm.gpt_small(INFO, init_scheme="flax", **GPT_FIELDS)
  params = jit(flax.init, static_argnames="train")(
      jax.random.key(0), tokens, mask, train=False)["params"]
  assert float(np.std(params["embedding"]["embedding"])) > 0.1


@pytest.mark.parametrize("name", ["gpt_small", "gru_lm"])
def test_bfloat16_compute(name):
  p = pair(name)
  ours = jit(lambda v: p.model.clone(dtype=jnp.bfloat16).apply(
      v, p.tokens, p.mask, train=False))(p.variables)
  assert ours.dtype == jnp.float32 and np.all(np.isfinite(ours))
  full = jit(lambda v: p.model.apply(v, p.tokens, p.mask, train=False))(
      p.variables)
  _report(f"{name} bfloat16 vs float32", relative_error(ours, full), 5e-2)
