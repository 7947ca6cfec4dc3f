"""The sequence-to-sequence models against their PyTorch twins, small sizes.

Each model of ``models.seq2seq`` and ``models.seq2seq_lstm``
(``transformer_seq2seq``, ``bart_small``,
``tiny_transformer_seq2seq``, ``lstm_seq2seq``, and ``lstm_seq2seq`` with
input feeding) is built with width 32 (feed-forward 64, the variant's own
layer counts), source vocabulary 40, target vocabulary 41, positions 16.
Its twin (``torch_generation.seq2seq_twin(model)``,
``torch.manual_seed(0)``, eval mode, PyTorch's attention fast path off)
gives its weights through
``model.conversion()``; both see one right-padded batch of three rows
(source lengths 7, 4, 1; target lengths 6, 3, 1).

Errors are relative max-norm errors (``tests.transforms.torch_reference``),
float32, asserted at 1e-5:

* teacher-forced logits vs the twin, every position;
* ``decode_step`` one token at a time (after ``init_cache``) vs the
  teacher-forced logits at every real target position (padded positions
  differ by design: the full computation masks padded target keys);
* ``jit(vmap)`` over a leading runs axis (2 runs) of ``__call__`` and of one
  ``decode_step`` vs the single runs;
* parameter and cache paths hold no Flax auto-names.

Measured on a CPU (seed 0; transformer_seq2seq, bart_small,
tiny_transformer_seq2seq, lstm_seq2seq, lstm_seq2seq with input feeding):
vs torch 5.0e-7, 4.3e-7, 2.1e-7, 1.8e-7, 1.4e-7; incremental decoding
2.5e-7, 2.6e-7, 1.0e-7, 6.1e-8, 1.2e-7; vmap vs single runs 0 (logits and
caches).
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optbench_jax.models import seq2seq, seq2seq_lstm  # noqa: E402
from optbench_jax.nn import convert  # noqa: E402
from optbench_jax.reference import torch_generation  # noqa: E402
from tests.transforms.torch_reference import relative_error  # noqa: E402

# PyTorch's nn.Transformer warns that norm_first disables nested tensors.
pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor")
RTOL = 1e-5
SRC_VOCAB, TGT_VOCAB, MAX_LENGTH = 40, 41, 16
SRC_LENGTHS, TGT_LENGTHS = (7, 4, 1), (6, 3, 1)
AUTO_NAME = re.compile(r"^[A-Z]\w*_\d+$")   # Flax's Dense_0, LSTM_1, ...
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
CASES = {
    "transformer_seq2seq": ("transformer_seq2seq", {}),
    "bart_small": ("bart_small", {}),
    "tiny_transformer_seq2seq": ("tiny_transformer_seq2seq", {}),
    "lstm_seq2seq": ("lstm_seq2seq", {}),
    "lstm_seq2seq_feeding": ("lstm_seq2seq", {"input_feeding": True}),
}


CLASSES = {"transformer_seq2seq": seq2seq.TransformerSeq2Seq,
           "bart_small": seq2seq.BartSmall,
           "tiny_transformer_seq2seq": seq2seq.TinyTransformerSeq2Seq,
           "lstm_seq2seq": seq2seq_lstm.LSTMSeq2Seq}


def _build(case):
  name, extra = CASES[case]
  widths = ({"embed": 32, "hidden": 32} if name == "lstm_seq2seq" else
            {"d_model": 32, "dim_feedforward": 64})
  return CLASSES[name](SRC_VOCAB, TGT_VOCAB, MAX_LENGTH, **widths, **extra)


def _batch():
  rng = np.random.default_rng(0)
  src = rng.integers(1, SRC_VOCAB, (3, max(SRC_LENGTHS)))
  tgt = rng.integers(1, TGT_VOCAB, (3, max(TGT_LENGTHS)))
  mask = lambda lengths, steps: (np.arange(steps)[None]
                                 < np.asarray(lengths)[:, None])
  return (src, mask(SRC_LENGTHS, src.shape[1]), tgt,
          mask(TGT_LENGTHS, tgt.shape[1]))


def _jit(fn):
  return jax.jit(fn, compiler_options=COMPILER_OPTIONS)


class Case:
  """A model, its twin's weights, and the compiled functions the tests share."""

  def __init__(self, case):
    self.model = model = _build(case)
    self.inputs = _batch()
    torch.manual_seed(0)
    self.twin = torch_generation.seq2seq_twin(model).eval()
    self.state = {k: v.detach().numpy()
                  for k, v in self.twin.state_dict().items()}
    template = jax.eval_shape(lambda: model.init(
        jax.random.key(0), *self.inputs, train=False))
    self.variables = convert.torch_to_flax(self.state, model.conversion(),
                                           template=template)
    self.forward_fn = lambda v, *x: model.apply(v, *x, train=False)
    self.forward = _jit(self.forward_fn)
    self.encode = _jit(lambda v, src, mask: model.apply(v, src, mask,
                                                        method="encode"))
    self.step_fn = lambda v, cache, memory, mask, tokens, position: (
        model.apply({**v, "cache": cache}, memory, mask, tokens, position,
                    method="decode_step", mutable=["cache"]))
    self.step = _jit(self.step_fn)

  @functools.cached_property
  def logits(self):
    return np.asarray(self.forward(self.variables, *self.inputs))

  def init_cache(self, variables, batch):
    steps = self.inputs[2].shape[1]
    return self.model.apply(variables, batch, steps, method="init_cache",
                            mutable=["cache"])[1]["cache"]


_CASES = {}


@pytest.fixture(scope="module")
def cases():
  torch.backends.mha.set_fastpath_enabled(False)

  def get(case):
    if case not in _CASES:
      _CASES[case] = Case(case)
    return _CASES[case]

  yield get
  torch.backends.mha.set_fastpath_enabled(True)


def _report(what, case, err):
  print(f"{case} {what}: relative error {err:.2g}")
  assert err <= RTOL, (case, what, err)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(cases, case):
  pair = cases(case)
  with torch.no_grad():
    ref = pair.twin(*(torch.from_numpy(x) for x in pair.inputs)).numpy()
  assert pair.logits.dtype == np.float32
  _report("vs torch", case, relative_error(pair.logits, ref))
  back = convert.flax_to_torch(pair.variables, pair.model.conversion())
  assert back.keys() == pair.state.keys()
  for k, v in pair.state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


@pytest.mark.parametrize("case", list(CASES))
def test_incremental_decoding_equals_full(cases, case):
  pair = cases(case)
  src, src_mask, tgt, tgt_mask = pair.inputs
  cache = pair.init_cache(pair.variables, src.shape[0])
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
    if leaf.ndim:   # the attention's cache_index is a scalar
      assert leaf.shape[0] == src.shape[0], jax.tree_util.keystr(path)
  memory = pair.encode(pair.variables, src, src_mask)
  steps = []
  for t in range(tgt.shape[1]):
    logits, mutated = pair.step(pair.variables, cache, memory, src_mask,
                                tgt[:, t], t)
    cache = mutated["cache"]
    steps.append(np.asarray(logits))
  steps = np.stack(steps, axis=1)
  _report("incremental decoding", case,
          relative_error(steps[tgt_mask], pair.logits[tgt_mask]))


@pytest.mark.parametrize("case", list(CASES))
def test_explicit_names(cases, case):
  pair = cases(case)
  cache = pair.init_cache(pair.variables, 1)
  for tree in (pair.variables, cache):
    for path, _ in jax.tree_util.tree_leaves_with_path(tree):
      names = [p.key for p in path]
      assert not any(AUTO_NAME.match(n) for n in names), names


@pytest.mark.parametrize("case", list(CASES))
def test_jit_vmap_over_runs(cases, case):
  pair = cases(case)
  src, src_mask, tgt, tgt_mask = pair.inputs
  other = jax.tree.map(lambda x: 0.9 * x, pair.variables)
  runs = jax.tree.map(lambda a, b: jnp.stack([a, b]), pair.variables, other)
  logits = _jit(jax.vmap(pair.forward_fn, in_axes=(0, None, None, None, None)))(
      runs, *pair.inputs)
  single = [pair.logits, np.asarray(pair.forward(other, *pair.inputs))]
  for r in range(2):
    _report(f"vmap run {r}", case, relative_error(logits[r], single[r]))

  # One decode_step at position 1, per run, after the single runs' step 0.
  caches, memories = [], []
  for v in (pair.variables, other):
    memory = pair.encode(v, src, src_mask)
    _, mutated = pair.step(v, pair.init_cache(v, src.shape[0]), memory,
                           src_mask, tgt[:, 0], 0)
    caches.append(mutated["cache"])
    memories.append(memory)
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
  step = _jit(jax.vmap(pair.step_fn, in_axes=(0, 0, 0, None, None, None)))
  logits, mutated = step(runs, stack(caches), stack(memories), src_mask,
                         tgt[:, 1], 1)
  for r, (v, cache, memory) in enumerate(zip((pair.variables, other), caches,
                                             memories)):
    want, want_cache = pair.step(v, cache, memory, src_mask, tgt[:, 1], 1)
    _report(f"vmap decode_step run {r}", case,
            relative_error(logits[r], want))
    _report(f"vmap decode_step cache run {r}", case, max(
        relative_error(a[r], b) for a, b in zip(
            jax.tree.leaves(mutated["cache"]),
            jax.tree.leaves(want_cache["cache"]))))
