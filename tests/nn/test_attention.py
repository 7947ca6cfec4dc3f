"""``nn.attention`` computes PyTorch's attention and transformer layers.

Weights go from the PyTorch module to ours through the conversion rules of
``nn.attention``; both run in float32, eval mode (PyTorch's fast path
off, so that padded positions are computed too). Errors are relative
max-norm errors (``tests.transforms.torch_reference.relative_error``),
asserted at 1e-5. Measured on a CPU: ``MultiheadAttention`` 1.1e-7,
``TransformerEncoderLayer`` 1.6e-7 / 7.4e-8 (post-/pre-LN),
``TransformerDecoderLayer`` 1.7e-7 / 6.8e-8; cached decoding vs the full
causal computation 0 (decoder layer, one step at a time; attention, chunks
of 3, 1, 2); jit vs no jit 4.9e-8.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax.nn import attention, convert
from tests.transforms.torch_reference import relative_error

torch = pytest.importorskip("torch")

RTOL = 1e-5
D, HEADS, FF = 16, 4, 32


@pytest.fixture(autouse=True)
def _no_fast_path():
  """PyTorch's eval fast path leaves padded positions undefined (zeros)."""
  torch.manual_seed(0)
  enabled = torch.backends.mha.get_fastpath_enabled()
  torch.backends.mha.set_fastpath_enabled(False)
  yield
  torch.backends.mha.set_fastpath_enabled(enabled)


def _numpy_state(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _variables(module, rules, template):
  return convert.torch_to_flax(_numpy_state(module), rules, template=template)


def _template(module, *inputs):
  """The variables' shapes, without computing them."""
  return jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs,
                                            train=False))


def _key_mask(batch, length, rng):
  """True for real tokens; every row keeps at least its first token."""
  lengths = rng.integers(1, length + 1, batch)
  lengths[0] = length - 2
  return np.arange(length)[None, :] < lengths[:, None]


def _report(name, err):
  print(f"{name}: relative error {err:.2g}")
  assert err <= RTOL, (name, err)


def test_multihead_attention_matches_torch():
  rng = np.random.default_rng(0)
  batch, tq, tk = 3, 5, 7
  ref = torch.nn.MultiheadAttention(D, HEADS, batch_first=True).eval()
  # Non-zero biases, so that the mapping of every bias is checked.
  with torch.no_grad():
    for p in (ref.in_proj_bias, ref.out_proj.bias):
      p.uniform_(-0.5, 0.5)
  q = rng.standard_normal((batch, tq, D), np.float32)
  kv = rng.standard_normal((batch, tk, D), np.float32)
  key_mask = _key_mask(batch, tk, rng)
  attn_mask = rng.random((tq, tk)) < 0.8
  attn_mask[:, 0] = True   # no fully masked row (PyTorch: NaN)
  module = attention.MultiHeadAttention(HEADS, D)
  template = _template(module, q, kv)
  variables = _variables(ref, attention.torch_attention_rules("", ()),
                         template)
  mask = attention.combine_masks(attention.padding_mask(key_mask),
                                 attn_mask[None, None])
  ours = module.apply(variables, q, kv, mask, train=False)
  with torch.no_grad():
    want, _ = ref(torch.from_numpy(q), torch.from_numpy(kv),
                  torch.from_numpy(kv),
                  key_padding_mask=torch.from_numpy(~key_mask),
                  attn_mask=torch.from_numpy(~attn_mask))
  _report("MultiheadAttention", relative_error(ours, want.numpy()))


@pytest.mark.parametrize("norm_first,activation",
                         [(False, "relu"), (True, "gelu")])
def test_encoder_layer_matches_torch(norm_first, activation):
  rng = np.random.default_rng(1)
  batch, length = 3, 6
  ref = torch.nn.TransformerEncoderLayer(
      D, HEADS, FF, dropout=0.1, activation=activation, batch_first=True,
      norm_first=norm_first).eval()
  x = rng.standard_normal((batch, length, D), np.float32)
  key_mask = _key_mask(batch, length, rng)
  module = attention.TransformerEncoderLayer(
      D, HEADS, FF, dropout=0.1, activation=activation,
      norm_first=norm_first)
  template = _template(module, x)
  variables = _variables(
      ref, attention.torch_encoder_layer_rules("", ()), template)
  ours = module.apply(variables, x, attention.padding_mask(key_mask),
                      train=False)
  with torch.no_grad():
    want = ref(torch.from_numpy(x),
               src_key_padding_mask=torch.from_numpy(~key_mask))
  _report(f"TransformerEncoderLayer norm_first={norm_first}",
          relative_error(ours, want.numpy()))


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first):
  rng = np.random.default_rng(2)
  batch, length, source = 3, 6, 5
  ref = torch.nn.TransformerDecoderLayer(
      D, HEADS, FF, dropout=0.1, batch_first=True,
      norm_first=norm_first).eval()
  x = rng.standard_normal((batch, length, D), np.float32)
  memory = rng.standard_normal((batch, source, D), np.float32)
  tgt_keys = _key_mask(batch, length, rng)
  memory_keys = _key_mask(batch, source, rng)
  module = attention.TransformerDecoderLayer(D, HEADS, FF, dropout=0.1,
                                             norm_first=norm_first)
  template = _template(module, x, memory)
  variables = _variables(
      ref, attention.torch_decoder_layer_rules("", ()), template)
  ours = module.apply(variables, x, memory, attention.padding_mask(tgt_keys),
                      attention.padding_mask(memory_keys), train=False)
  causal = torch.from_numpy(~np.tril(np.ones((length, length), bool)))
  with torch.no_grad():
    want = ref(torch.from_numpy(x), torch.from_numpy(memory),
               tgt_mask=causal,
               tgt_key_padding_mask=torch.from_numpy(~tgt_keys),
               memory_key_padding_mask=torch.from_numpy(~memory_keys))
  _report(f"TransformerDecoderLayer norm_first={norm_first}",
          relative_error(ours, want.numpy()))


def test_cached_decoding_equals_full_causal_computation():
  rng = np.random.default_rng(3)
  batch, length, source = 2, 6, 4
  x = rng.standard_normal((batch, length, D), np.float32)
  memory = rng.standard_normal((batch, source, D), np.float32)
  layer = attention.TransformerDecoderLayer(D, HEADS, FF, dropout=0.1)
  variables = layer.init(jax.random.key(0), x, memory, train=False,
                         decode=True)
  params, cache = variables["params"], variables["cache"]
  full = layer.apply({"params": params}, x, memory, train=False)
  steps = []
  for t in range(length):
    out, mutated = layer.apply({"params": params, "cache": cache},
                               x[:, t:t + 1], memory, train=False,
                               decode=True, mutable=["cache"])
    cache = mutated["cache"]
    steps.append(out)
  _report("decoder layer, one step at a time",
          relative_error(jnp.concatenate(steps, axis=1), full))

  # The attention alone, fed in chunks (3, 1, 2) with a padding mask.
  mha = attention.MultiHeadAttention(HEADS, D)
  variables = mha.init(jax.random.key(1), x, x, train=False, decode=True)
  params, cache = variables["params"], variables["cache"]
  keys = attention.padding_mask((np.arange(length) < 5)[None])
  full = mha.apply({"params": params}, x, x,
                   attention.combine_masks(attention.causal_mask(length), keys),
                   train=False)
  chunks, start = [], 0
  for size in (3, 1, 2):
    out, mutated = mha.apply({"params": params, "cache": cache},
                             x[:, start:start + size], x[:, start:start + size],
                             keys, train=False, decode=True, mutable=["cache"])
    cache, start = mutated["cache"], start + size
    chunks.append(out)
  assert int(cache["cache_index"]) == length
  _report("attention, chunks of 3, 1, 2",
          relative_error(jnp.concatenate(chunks, axis=1), full))


def test_jit_equals_no_jit():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((2, 5, D), np.float32)
  mask = attention.padding_mask(np.array([[1, 1, 1, 0, 0], [1] * 5], bool))
  layer = attention.TransformerEncoderLayer(D, HEADS, FF, norm_first=True)
  variables = layer.init(jax.random.key(0), x, train=False)
  apply = lambda v, x, m: layer.apply(v, x, m, train=False)
  err = relative_error(jax.jit(apply)(variables, x, mask),
                       apply(variables, x, mask))
  _report("jit vs no jit", err)


def test_fully_masked_rows_return_the_output_bias():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((2, 4, D), np.float32)
  mha = attention.MultiHeadAttention(HEADS, D)
  variables = mha.init(jax.random.key(0), x, x, train=False)
  variables = {"params": jax.tree.map(lambda p: p + 0.1,   # non-zero bias
                                      variables["params"])}
  mask = np.ones((2, 1, 4, 4), bool)
  mask[0, :, 1] = False   # query 1 of example 0 sees nothing
  out = mha.apply(variables, x, x, mask, train=False)
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[0, 1], variables["params"]["out"]["bias"])
  assert relative_error(out[1], mha.apply(variables, x, x, None,
                                          train=False)[1]) == 0


def test_dropout_only_in_train_mode():
  x = np.ones((2, 4, D), np.float32) + np.arange(4)[:, None]
  layer = attention.TransformerEncoderLayer(D, HEADS, FF, dropout=0.5)
  variables = layer.init(jax.random.key(0), x, train=False)
  eval_out = layer.apply(variables, x, train=False)
  train_out = layer.apply(variables, x, train=True,
                          rngs={"dropout": jax.random.key(1)})
  assert np.all(np.isfinite(train_out))
  assert relative_error(train_out, eval_out) > 1e-2


def test_torch_init():
  d = 64
  x = np.zeros((1, 2, d), np.float32)
  layer = attention.TransformerEncoderLayer(d, 4, 128)
  params = layer.init(jax.random.key(0), x, train=False)["params"]
  attn = params["self_attn"]
  xavier = math.sqrt(6 / (4 * d))
  for name in ("query", "key", "value"):
    kernel = np.asarray(attn[name]["kernel"])
    assert xavier * 0.95 < np.abs(kernel).max() <= xavier
    assert not np.any(attn[name]["bias"])
  out = np.asarray(attn["out"]["kernel"])
  assert 0.95 / math.sqrt(d) < np.abs(out).max() <= 1 / math.sqrt(d)
  assert not np.any(attn["out"]["bias"])
  bias = np.asarray(params["linear2"]["bias"])   # nn.Linear: U(±1/√128)
  assert np.any(bias) and np.abs(bias).max() <= 1 / math.sqrt(128)
  np.testing.assert_array_equal(params["norm1"]["scale"], np.ones(d))
  np.testing.assert_array_equal(params["norm1"]["bias"], np.zeros(d))

  flax_params = attention.TransformerEncoderLayer(
      d, 4, 128, init_scheme="flax").init(jax.random.key(0), x,
                                          train=False)["params"]
  for name in ("query", "out"):
    kernel = np.asarray(flax_params["self_attn"][name]["kernel"])
    assert abs(kernel.std() * math.sqrt(d) - 1) < 0.1   # LeCun normal
  assert not np.any(flax_params["linear1"]["bias"])


def test_conversion_round_trip():
  ref = torch.nn.TransformerDecoderLayer(D, HEADS, FF, batch_first=True)
  state = _numpy_state(ref)
  rules = attention.torch_decoder_layer_rules("decoder.layers.0",
                                              ("decoder", "layers_0"))
  prefixed = {f"decoder.layers.0.{k}": v for k, v in state.items()}
  variables = convert.torch_to_flax(prefixed, rules)
  for _ in range(2):   # twice: nothing carries over between exports
    back = convert.flax_to_torch(variables, rules)
    assert back.keys() == prefixed.keys()
    for k, v in prefixed.items():
      np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_positions():
  pe = attention.sinusoidal_positions(50, 10)
  assert pe.shape == (50, 10) and pe.dtype == np.float32
  pos = np.arange(50)[:, None]
  np.testing.assert_allclose(pe[:, 0::2],
                             np.sin(pos / 10000 ** (np.arange(0, 10, 2) / 10)),
                             atol=1e-6)
  np.testing.assert_allclose(pe[:, 1::2],
                             np.cos(pos / 10000 ** (np.arange(0, 10, 2) / 10)),
                             atol=1e-6)
  assert attention.sinusoidal_positions(4, 7).shape == (4, 7)
  emb = attention.PositionEmbedding(16, 8)
  variables = emb.init(jax.random.key(0), np.arange(3))
  assert variables["params"]["embedding"].shape == (16, 8)
  np.testing.assert_array_equal(
      emb.apply(variables, np.array([[2, 0]])),
      variables["params"]["embedding"][np.array([[2, 0]])])
