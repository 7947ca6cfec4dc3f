"""``recurrent.LSTM``/``GRU`` compute ``torch.nn.LSTM``/``GRU``'s function.

The PyTorch layer (``batch_first=True``) gets right-padded sequences of
unsorted lengths through ``pack_padded_sequence(enforce_sorted=False)`` and
``pad_packed_sequence``; ours gets the same weights through
``recurrent.torch_rnn_rules`` and the mask. Errors are relative max-norm
errors (``rel_error`` of ``test_torch_equivalence``), float32 on both sides.

* Outputs and final states (1 and 2 layers, uni- and bidirectional, random
  initial state): tolerance 1e-5 (measured on a CPU: at most 3.6e-7).
* Gradients of a weighted sum of outputs and final states w.r.t. every
  parameter, the inputs and the initial state (2-layer bidirectional LSTM and
  GRU): tolerance 1e-4 (measured: at most 5.1e-7).
* Initial values: ``uniform_violations`` of ``test_init`` (six standard
  errors) for the ``"torch"`` scheme.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optbench_jax.nn import convert, curvature, recurrent  # noqa: E402

from tests.models.test_init import uniform_violations  # noqa: E402
from tests.models.test_torch_equivalence import rel_error  # noqa: E402

OUTPUT_RTOL = 1e-5
GRAD_RTOL = 1e-4
B, T, D, H = 3, 6, 5, 4
LENGTHS = (6, 2, 4)   # unsorted, one full-length sequence
OURS = {"lstm": recurrent.LSTM, "gru": recurrent.GRU}
TWINS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
CASES = [(cell, num_layers, bidirectional) for cell in ("lstm", "gru")
         for num_layers in (1, 2) for bidirectional in (False, True)]


def _ids(case):
  cell, num_layers, bidirectional = case
  return f"{cell}-{num_layers}l-{'bi' if bidirectional else 'uni'}"


def _inputs(seed=0, steps=T, lengths=LENGTHS):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((len(lengths), steps, D)).astype(np.float32)
  mask = np.arange(steps)[None] < np.asarray(lengths)[:, None]
  return x, mask


def _pair(cell, num_layers, bidirectional, dropout=0.0):
  """``(ours, params, twin)`` with the twin's weights copied into ours."""
  torch.manual_seed(0)
  twin = TWINS[cell](D, H, num_layers=num_layers, batch_first=True,
                     bidirectional=bidirectional, dropout=dropout)
  ours = OURS[cell](H, num_layers=num_layers, bidirectional=bidirectional,
                    dropout=dropout)
  x, mask = _inputs()
  template = jax.eval_shape(
      lambda: ours.init(jax.random.PRNGKey(0), x, mask, train=False))
  rules = recurrent.torch_rnn_rules("", (), num_layers, bidirectional,
                                    ours.gates)
  state = {k: v.detach().numpy() for k, v in twin.state_dict().items()}
  params = convert.torch_to_flax(state, rules, template=template)["params"]
  return ours, params, twin


def _initial_state(cell, rows, seed=1):
  rng = np.random.default_rng(seed)
  draw = lambda: rng.standard_normal((rows, B, H)).astype(np.float32)
  return (draw(), draw()) if cell == "lstm" else draw()


def _torch_run(twin, x, lengths, initial_state):
  """The twin on packed sequences: ``(outputs, final_state)`` as tensors."""
  packed = torch.nn.utils.rnn.pack_padded_sequence(
      x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
  outputs, final = twin(packed, initial_state)
  outputs, _ = torch.nn.utils.rnn.pad_packed_sequence(
      outputs, batch_first=True, total_length=x.shape[1])
  return outputs, final


def _to_torch(tree):
  return jax.tree_util.tree_map(lambda a: torch.from_numpy(np.array(a)), tree)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_outputs_and_final_states_match_torch(case):
  cell, num_layers, bidirectional = case
  ours, params, twin = _pair(*case)
  x, mask = _inputs()
  h0 = _initial_state(cell, num_layers * (2 if bidirectional else 1))
  outputs, final = jax.jit(
      lambda p, x, m, s: ours.apply({"params": p}, x, m, s, train=False))(
          params, x, mask, h0)
  with torch.no_grad():
    ref_outputs, ref_final = _torch_run(twin, torch.from_numpy(x), LENGTHS,
                                        _to_torch(h0))
  assert rel_error(outputs, ref_outputs.numpy()) <= OUTPUT_RTOL
  assert np.all(np.asarray(outputs)[~mask] == 0)
  finals = final if cell == "lstm" else (final,)
  ref_finals = ref_final if cell == "lstm" else (ref_final,)
  for ours_state, ref_state in zip(finals, ref_finals):
    assert rel_error(ours_state, ref_state.numpy()) <= OUTPUT_RTOL


def test_without_mask_matches_unpacked_torch():
  ours, params, twin = _pair("lstm", 2, True)
  x, _ = _inputs()
  outputs, (h, c) = ours.apply({"params": params}, x, train=False)
  with torch.no_grad():
    ref_outputs, (ref_h, ref_c) = twin(torch.from_numpy(x))
  for a, b in ((outputs, ref_outputs), (h, ref_h), (c, ref_c)):
    assert rel_error(a, b.numpy()) <= OUTPUT_RTOL


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradients_match_torch(cell):
  ours, params, twin = _pair(cell, 2, True)
  x, mask = _inputs()
  h0 = _initial_state(cell, 4)
  rng = np.random.default_rng(2)
  w_out = rng.standard_normal((B, T, 2 * H)).astype(np.float32)
  w_state = rng.standard_normal((4, B, H)).astype(np.float32)

  def weighted(outputs, final, w_out, w_state):
    states = final if cell == "lstm" else (final,)
    return (outputs * w_out).sum() + sum((s * w_state).sum() for s in states)

  def loss(p, x, s):
    return weighted(*ours.apply({"params": p}, x, mask, s, train=False),
                    w_out, w_state)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x, h0)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))

  x_t = torch.from_numpy(x).requires_grad_()
  h0_t = jax.tree_util.tree_map(lambda a: a.requires_grad_(), _to_torch(h0))
  ref = _torch_run(twin, x_t, LENGTHS, h0_t)
  weighted(*ref, *_to_torch((w_out, w_state))).backward()
  rules = recurrent.torch_rnn_rules("", (), 2, True, ours.gates)
  ours_torch = convert.flax_to_torch({"params": grads[0]}, rules)
  for name, p in twin.named_parameters():
    assert rel_error(ours_torch[name], p.grad.numpy()) <= GRAD_RTOL, name
  assert rel_error(grads[1], x_t.grad.numpy()) <= GRAD_RTOL
  for ours_g, ref_t in zip(jax.tree_util.tree_leaves(grads[2]),
                           jax.tree_util.tree_leaves(h0_t)):
    assert rel_error(ours_g, ref_t.grad.numpy()) <= GRAD_RTOL


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_conversion_round_trip_and_gate_check(cell):
  _, params, twin = _pair(cell, 2, True)
  rules = recurrent.torch_rnn_rules("rnn", ("encoder", "rnn"), 2, True,
                                    OURS[cell].gates)
  state = {f"rnn.{k}": v.detach().numpy()
           for k, v in twin.state_dict().items()}
  variables = convert.torch_to_flax(state, rules)
  np.testing.assert_array_equal(
      variables["params"]["encoder"]["rnn"]["l1_reverse"]["hh"]["kernel"],
      state["rnn.weight_hh_l1_reverse"].T)
  back = convert.flax_to_torch(variables, rules)
  assert list(back) == list(state)
  for name in state:
    np.testing.assert_array_equal(back[name], state[name])
  wrong = recurrent.torch_rnn_rules("rnn", (), 2, True, 5)
  with pytest.raises(convert.ConversionError):
    convert.torch_to_flax(state, wrong)


def _init(ours, x, mask, seed=0):
  return jax.jit(lambda k: ours.init(k, x, mask, train=False)["params"])(
      jax.random.PRNGKey(seed))


def _apply_fn(ours, mask=None, train=False):
  return lambda p, x: ours.apply({"params": p}, x, mask, train=train)


def test_jit_matches_eager_and_padding_is_ignored():
  ours, params, _ = _pair("gru", 2, True)
  x, mask = _inputs()
  apply = _apply_fn(ours, mask)
  eager = apply(params, x)
  jitted = jax.jit(apply)(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(eager),
                  jax.tree_util.tree_leaves(jitted)):
    assert rel_error(a, b) <= 1e-6
  noisy = np.where(mask[..., None], x, 100.0).astype(np.float32)
  for a, b in zip(jax.tree_util.tree_leaves(jitted),
                  jax.tree_util.tree_leaves(jax.jit(apply)(params, noisy))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_one_scan_per_layer_and_no_unrolling(num_layers):
  ours = recurrent.LSTM(H, num_layers=num_layers, bidirectional=True)
  sizes = []
  for steps in (3, 7):
    x, mask = _inputs(steps=steps, lengths=(steps, 1, 2))
    params = jax.eval_shape(lambda: _init(ours, x, mask))
    jaxpr = jax.make_jaxpr(_apply_fn(ours, mask))(params, x)
    text = str(jaxpr)
    # Both directions of a layer share one scan.
    assert text.count(" scan[") == num_layers
    sizes.append(len(text.splitlines()))
  assert sizes[0] == sizes[1]


def test_vmap_over_runs():
  ours = recurrent.LSTM(H, bidirectional=True)
  x, mask = _inputs()
  keys = jax.random.split(jax.random.PRNGKey(3), 2)
  params = jax.jit(jax.vmap(
      lambda k: ours.init(k, x, mask, train=False)["params"]))(keys)
  outputs, (h, c) = jax.jit(jax.vmap(_apply_fn(ours, mask),
                                     in_axes=(0, None)))(params, x)
  apply = jax.jit(_apply_fn(ours, mask))
  for run in range(2):
    one = jax.tree_util.tree_map(lambda a: a[run], params)
    ref_outputs, (ref_h, ref_c) = apply(one, x)
    for a, b in ((outputs[run], ref_outputs), (h[run], ref_h),
                 (c[run], ref_c)):
      assert rel_error(a, b) <= 1e-6


def test_torch_scheme_is_uniform_in_one_over_sqrt_hidden():
  hidden = 32
  ours = recurrent.GRU(hidden, num_layers=2, bidirectional=True)
  x, mask = _inputs()
  params = _init(ours, x, mask, seed=4)
  bound = 1 / math.sqrt(hidden)
  errors = [f"{jax.tree_util.keystr(path)}: {e}"
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            for e in uniform_violations(leaf, bound)]
  assert not errors, errors


def test_flax_scheme():
  hidden = 32
  ours = recurrent.LSTM(hidden, init_scheme="flax")
  x, mask = _inputs()
  params = _init(ours, x, mask, seed=5)
  for part in ("ih", "hh"):
    np.testing.assert_array_equal(params["l0"][part]["bias"], 0)
  blocks = np.split(np.asarray(params["l0"]["hh"]["kernel"]), 4, axis=-1)
  for block in blocks:   # orthogonal per gate, as flax.linen.LSTMCell
    np.testing.assert_allclose(block.T @ block, np.eye(hidden), atol=1e-5)
  kernel = np.asarray(params["l0"]["ih"]["kernel"])   # LeCun normal
  assert abs(kernel.std() * math.sqrt(D) - 1) < 6 * 0.71 / math.sqrt(
      kernel.size)
  with pytest.raises(Exception, match="unknown initialisation"):
    recurrent.LSTM(H, init_scheme="glorot").init(
        jax.random.PRNGKey(0), x, mask, train=False)


def test_dropout_only_between_layers_and_in_training():
  ours, params, _ = _pair("lstm", 2, False, dropout=0.5)
  single = recurrent.GRU(H, dropout=0.5)
  x, mask = _inputs()
  one = _init(single, x, mask)

  @jax.jit
  def run(seed):
    key = jax.random.PRNGKey(seed)
    apply = lambda model, p, train: model.apply(
        {"params": p}, x, mask, train=train, rngs={"dropout": key})[0]
    return {"eval": apply(ours, params, False),
            "no_dropout": apply(recurrent.LSTM(H, num_layers=2), params,
                                False),
            "train": apply(ours, params, True),
            "single_eval": apply(single, one, False),
            "single_train": apply(single, one, True)}

  first, second = run(0), run(1)
  np.testing.assert_array_equal(first["eval"], first["no_dropout"])
  assert rel_error(first["train"], first["eval"]) > 1e-2
  assert rel_error(first["train"], second["train"]) > 1e-2
  # One layer: PyTorch applies no dropout (there is no following layer).
  np.testing.assert_array_equal(first["single_train"], first["single_eval"])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_over_reverse_hessian_vector_product(cell):
  ours, params, _ = _pair(cell, 1, True)
  x, mask = _inputs()

  def loss(p):
    outputs, _ = ours.apply({"params": p}, x, mask, train=False)
    return jnp.sum(jnp.sin(outputs))

  v = jax.tree_util.tree_map(jnp.ones_like, params)
  _, hvp = jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,)))(
      params, v)
  ref = jax.jit(jax.grad(lambda p: sum(jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(jnp.vdot, jax.grad(loss)(p), v)))))(params)
  for a, b in zip(jax.tree_util.tree_leaves(hvp),
                  jax.tree_util.tree_leaves(ref)):
    assert np.isfinite(a).all()
    assert rel_error(a, b) <= 1e-5


def test_curvature_statistics_of_the_recurrent_kernel():
  ours, params, _ = _pair("lstm", 1, True)
  x, mask = _inputs()
  w_out = np.random.default_rng(6).standard_normal((B, T, 2 * H))

  def apply_fn(variables, mutable):
    return ours.apply(variables, x, mask, train=False, mutable=mutable)

  stats, grads = jax.jit(lambda p: (
      curvature.layer_statistics(apply_fn, lambda out: jnp.sum(out[0] * w_out),
                              p),
      jax.grad(lambda q: jnp.sum(apply_fn({"params": q}, [])[0][0]
                                 * w_out))(p)))(params)
  for direction in ("l0", "l0_reverse"):
    (h_prev,) = stats["inputs"][direction]["hh"]["inputs"]
    g_hh = stats["output_grads"][direction]["hh"]["outputs"]
    assert h_prev.shape == (B, T, H) and g_hh.shape == (B, T, 4 * H)
    # The LSTM's gates are ih + hh outputs: both get the same gradient.
    assert rel_error(g_hh, stats["output_grads"][direction]["ih"]["outputs"]
                     ) <= 1e-6
    # Σ_t h_{t-1} g_tᵀ is the recurrent kernel's gradient.
    assert rel_error(jnp.einsum("bti,bto->io", h_prev, g_hh),
                     grads[direction]["hh"]["kernel"]) <= 1e-5


def test_reverse_padded_and_lengths_from_mask():
  x = jnp.arange(2 * 4, dtype=jnp.float32).reshape(2, 4)[..., None]
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
  lengths = recurrent.lengths_from_mask(mask)
  np.testing.assert_array_equal(lengths, [3, 2])
  y = recurrent.reverse_padded(x, lengths)
  np.testing.assert_array_equal(y[..., 0], [[2, 1, 0, 3], [5, 4, 6, 7]])
  np.testing.assert_array_equal(recurrent.reverse_padded(y, lengths), x)
