"""The six text models against their PyTorch twins, at small sizes.

Each registered text model (``lstm_sentiment``, ``lstm_crf_ner``,
``bilstm_crf_charcnn_ner``, ``bilstm_attention_qa``, ``transformer_qa``,
``distilbert_sentiment``) is built for a small :class:`DatasetInfo`
(vocabulary 50-60, 12 tokens, 6 question tokens, 16 characters per word;
DistilBERT from a 2-layer, width-32 checkpoint saved in a temporary
directory). Its twin (``spec.torch_twin``, ``torch.manual_seed(0)``, eval
mode) gives its weights through ``spec.conversion``; both then see the same
right-padded batch of three rows: all real, half padding, one real token.

Errors are relative max-norm errors ``max|ours − ref| / max|ref|``.

* Outputs, float32, tolerance 1e-5: sentiment logits; NER emissions at the
  real positions and the CRF's transitions/start/end (the twin's
  ``crf_*``); QA start/end logits at every position (padding −1e9 on both
  sides).
* Gradients of ``Σ outputs·w`` (fixed random ``w``, real positions only)
  w.r.t. every parameter, float64 on both sides: tolerance 1e-9.
* Parameter paths hold no Flax auto-names (``Dense_0``, ``LSTM_1``, ...).
* ``init="torch"``: dense and LSTM tensors of lstm_sentiment and
  lstm_crf_ner are ``U(±1/√fan_in)`` / ``U(±1/√H)``
  (``test_init.uniform_violations``).
* ``precision.with_compute_dtype(model, "bf16")``: finite outputs within
  5e-2 of float32.

Measured on a CPU (seed 0; lstm_sentiment, lstm_crf_ner,
bilstm_crf_charcnn_ner, bilstm_attention_qa, transformer_qa,
distilbert_sentiment):

* float32 outputs: 3.3e-7, 1.9e-7, 2.9e-7, 7.3e-7, 6.3e-7, 2.6e-7 (CRF
  parameters exact);
* float64 gradients (worst leaf): 8.4e-16, 6.0e-16, 6.7e-16, 5.0e-15,
  7.1e-12, 7.7e-16 -- once no float32 cast sits in the float64 path (the
  NER emissions, the QA logits and attention scores, MultiHeadAttention's
  logits and TransformerQA's position embeddings were cast to float32,
  which left errors of 3e-8 to 6e-8);
* bf16 vs float32: 8.0e-3, 3.9e-3, 3.0e-3, 6.8e-3, 1.1e-2, 5.4e-3.
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optbench_jax import models  # noqa: E402
from optbench_jax.data.base import DatasetInfo  # noqa: E402
from optbench_jax.nn import convert  # noqa: E402
from optbench_jax.reference import torch_models  # noqa: E402
from optbench_jax.engine import precision  # noqa: E402

from tests.models.test_init import uniform_violations  # noqa: E402
from tests.models.test_torch_equivalence import rel_error, tree_errors  # noqa: E402

NAMES = ["lstm_sentiment", "lstm_crf_ner", "bilstm_crf_charcnn_ner",
         "bilstm_attention_qa", "transformer_qa", "distilbert_sentiment"]
OUTPUT_RTOL = 1e-5
GRAD_RTOL_FLOAT64 = 1e-9
BF16_RTOL = 5e-2
LENGTH, QUESTION, CHARS = 12, 6, 16
LENGTHS = (LENGTH, 7, 1)          # all real, padded, a single real token
QUESTION_LENGTHS = (QUESTION, 3, 1)
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
# XLA's backend optimisations off: faster compiles, same function.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
AUTO_NAME = re.compile(r"^[A-Z]\w*_\d+$")   # Flax's Dense_0, LSTM_1, ...
NEG_FILL = np.float32(-1e9)
# Leaves whose exact gradient is zero (softmax is invariant to the key
# bias): compared in absolute terms, against the largest gradient of all.
ZERO_GRADIENT = re.compile(r"\['key'\]\['bias'\]")


# -- small infos ----------------------------------------------------------------
@pytest.fixture(scope="module")
def distilbert_dir(tmp_path_factory):
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  directory = tmp_path_factory.mktemp("distilbert")
  transformers.DistilBertModel(transformers.DistilBertConfig(
      vocab_size=60, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
      max_position_embeddings=32)).save_pretrained(directory)
  return str(directory)


def small_info(name, distilbert_dir=None) -> DatasetInfo:
  task = models.MODELS.get(name).task
  if name == "distilbert_sentiment":
    return DatasetInfo(name="small", task=task, num_classes=3,
                       input_shape=(LENGTH,),
                       stats={"vocab_size": 60, "max_length": 16,
                              "pretrained": distilbert_dir})
  stats = {"vocab_size": 50, "char_vocab_size": 20, "max_length": LENGTH,
           "question_length": QUESTION}
  extra = {"tag_names": TAGS} if task == "ner" else {}
  classes = {"ner": len(TAGS), "sentiment_analysis": 3}.get(task, 0)
  return DatasetInfo(name="small", task=task, num_classes=classes,
                     input_shape=(LENGTH,), stats=stats, extra=extra)


# -- inputs and outputs ---------------------------------------------------------
def _ids(rng, vocab, lengths, steps):
  mask = np.arange(steps)[None] < np.asarray(lengths)[:, None]
  ids = rng.randint(1, vocab, (len(lengths), steps))
  return np.where(mask, ids, 0).astype(np.int32), mask


def make_inputs(name, info):
  """Our inputs, in call order (numpy: int32 ids, bool masks)."""
  rng = np.random.RandomState(1)
  vocab = int(info.stats["vocab_size"])
  task = info.task
  tokens, mask = _ids(rng, vocab, LENGTHS, LENGTH)
  if task == "sentiment_analysis":
    return (tokens, mask)
  if task == "ner":
    chars = rng.randint(1, int(info.stats["char_vocab_size"]),
                        (len(LENGTHS), LENGTH, CHARS))
    word_lengths = rng.randint(1, 9, (len(LENGTHS), LENGTH))
    word_lengths[0, 2] = 0          # a real word without characters
    chars = np.where(np.arange(CHARS) < word_lengths[..., None], chars, 0)
    chars = np.where(mask[..., None], chars, 0).astype(np.int32)
    return (tokens, chars, mask)
  question, question_mask = _ids(rng, vocab, QUESTION_LENGTHS, QUESTION)
  return (tokens, mask, question, question_mask)


def to_torch(arrays):
  return [torch.from_numpy(np.asarray(a)) if a.dtype == bool
          else torch.from_numpy(np.asarray(a, np.int64)) for a in arrays]


def twin_outputs(name, twin, inputs) -> dict:
  """The twin's outputs as ``{name: tensor}`` (CRF: its parameters)."""
  args = to_torch(inputs)
  if name == "distilbert_sentiment":
    return {"logits": twin(input_ids=args[0],
                           attention_mask=args[1].long()).logits}
  out = twin(*args)
  task = models.MODELS.get(name).task
  if task == "sentiment_analysis":
    return {"logits": out}
  if task == "ner":
    return {"emissions": out, "transitions": twin.crf_transitions,
            "start": twin.crf_start, "end": twin.crf_end}
  return {"start": out[0], "end": out[1]}


def flax_outputs(name, out) -> dict:
  task = models.MODELS.get(name).task
  if task == "sentiment_analysis":
    return {"logits": out}
  if task == "ner":
    return {k: out[k] for k in ("emissions", "transitions", "start", "end")}
  return {"start": out[0], "end": out[1]}


def real_positions(name, inputs) -> dict:
  """Where each output is compared: a bool mask of its shape."""
  task = models.MODELS.get(name).task
  if task == "ner":
    return {"emissions": np.broadcast_to(inputs[2][..., None],
                                         inputs[2].shape + (len(TAGS),))}
  if task == "question_answering":
    return {"start": inputs[1], "end": inputs[1]}
  return {}


def compare(name, ours, ref, inputs) -> dict:
  """Relative errors at the real positions; QA padding must be exactly the
  −1e9 fill on both sides (a relative error over all positions would be
  scaled by 1e9 and say nothing)."""
  where = real_positions(name, inputs)
  errors = {}
  for key, value in ref.items():
    a, b = np.asarray(ours[key], np.float64), np.asarray(value, np.float64)
    if key in where:
      if models.MODELS.get(name).task == "question_answering":
        pad = ~where[key]
        assert np.all(a[pad] == NEG_FILL) and np.all(b[pad] == NEG_FILL), key
      a, b = a[where[key]], b[where[key]]
    errors[key] = rel_error(a, b)
  return errors


def loss_weights(name, inputs, outputs) -> dict:
  """Fixed random weights per output, zero off the real positions."""
  rng = np.random.RandomState(2)
  task = models.MODELS.get(name).task
  weights = {}
  for key, value in outputs.items():
    w = rng.randn(*np.shape(value))
    if task == "ner" and key == "emissions":
      w = w * inputs[2][..., None]
    if task == "question_answering":
      w = w * inputs[1]
    weights[key] = w
  return weights


# -- pairs ----------------------------------------------------------------------
class Pair:
  """A small model, its twin and the twin's weights converted to ours."""

  def __init__(self, name, distilbert_dir):
    self.name, self.spec = name, models.MODELS.get(name)
    self.info = small_info(name, distilbert_dir)
    self.model = self.spec.build(self.info)
    self.inputs = make_inputs(name, self.info)
    torch.manual_seed(0)
    self.twin = self.spec.torch_twin(self.info).eval()
    self.rules = self.spec.conversion(self.info)
    self.template = jax.eval_shape(
        lambda: self.model.init(jax.random.key(0), *self.inputs, train=False))
    self.state_dict = torch_models.state_dict_numpy(self.twin)
    self.variables = convert.torch_to_flax(self.state_dict, self.rules,
                                           template=self.template)

  @functools.cached_property
  def torch_float32(self):
    with torch.no_grad():
      return {k: v.numpy().copy()
              for k, v in twin_outputs(self.name, self.twin,
                                       self.inputs).items()}

  def apply(self, model, variables):
    fn = jax.jit(lambda v, *x: model.apply(v, *x, train=False),
                 compiler_options=COMPILER_OPTIONS)
    return jax.device_get(fn(variables, *self.inputs))

  @functools.cached_property
  def flax_float32(self):
    return flax_outputs(self.name, self.apply(self.model, self.variables))


_PAIRS = {}


@pytest.fixture(scope="module")
def pairs(distilbert_dir):
  def get(name):
    if name not in _PAIRS:
      _PAIRS[name] = Pair(name, distilbert_dir)
    return _PAIRS[name]
  yield get
  _PAIRS.clear()


# -- tests ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_twin(pairs, name):
  pair = pairs(name)
  errors = compare(name, pair.flax_float32, pair.torch_float32, pair.inputs)
  print(name, errors)
  assert max(errors.values()) <= OUTPUT_RTOL, errors


@pytest.mark.parametrize("name", NAMES)
def test_qa_padding_is_fill(pairs, name):
  """QA logits are −1e9 exactly at padding; every output is finite."""
  pair = pairs(name)
  out = pair.flax_float32
  if pair.info.task == "question_answering":
    mask = pair.inputs[1]
    for key in ("start", "end"):
      assert np.all(out[key][~mask] == -1e9)
      assert np.all(np.abs(out[key][mask]) < 1e6)
  for value in out.values():
    assert np.all(np.isfinite(value))


GRAD_NAMES = NAMES


@pytest.mark.parametrize("name", GRAD_NAMES)
def test_gradients_match_twin_float64(pairs, name):
  pair = pairs(name)
  weights = loss_weights(name, pair.inputs, pair.torch_float32)

  twin = pair.twin.double()
  try:
    twin.zero_grad()
    outputs = twin_outputs(name, twin, pair.inputs)
    loss = sum((v * torch.from_numpy(weights[k])).sum()
               for k, v in outputs.items())
    loss.backward()
    ref = convert.torch_to_flax(torch_models.grads_numpy(twin), pair.rules,
                                strict=False)["params"]
  finally:
    twin.float()
    twin.zero_grad()

  with jax.enable_x64(True):
    model = pair.model.clone(dtype=jnp.float64)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                          pair.variables["params"])

    def loss_fn(p):
      out = flax_outputs(name, model.apply({"params": p}, *pair.inputs,
                                           train=False))
      return sum(jnp.sum(out[k] * weights[k]) for k in weights)

    grads = jax.device_get(jax.jit(jax.grad(loss_fn),
                                   compiler_options=COMPILER_OPTIONS)(params))
    dtypes = {str(g.dtype) for g in jax.tree.leaves(grads)}
  errors = tree_errors(grads, ref)
  scale = max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(ref))
  flat = lambda t: {jax.tree_util.keystr(p): np.asarray(v) for p, v in
                    jax.tree_util.tree_leaves_with_path(t)}
  ours_flat, ref_flat = flat(grads), flat(ref)
  for key in errors:
    if ZERO_GRADIENT.search(key):
      errors[key] = float(np.abs(ours_flat[key] - ref_flat[key]).max()
                          / scale)
  worst = max(errors, key=errors.get)
  print(name, f"worst {worst}: {errors[worst]:.3g}", dtypes)
  assert dtypes == {"float64"}
  assert errors[worst] <= GRAD_RTOL_FLOAT64, {
      k: v for k, v in errors.items() if v > GRAD_RTOL_FLOAT64}


@pytest.mark.parametrize("name", NAMES)
def test_explicit_submodule_names(pairs, name):
  pair = pairs(name)
  paths = [tuple(getattr(k, "key", str(k)) for k in p)
           for p, _ in jax.tree_util.tree_leaves_with_path(pair.template)]
  auto = ["/".join(map(str, p)) for p in paths
          if any(AUTO_NAME.match(str(part)) for part in p)]
  assert not auto, auto


@pytest.mark.parametrize("name,bounds", [
    ("lstm_sentiment", {("fc",): 1 / 128 ** .5,
                        ("lstm", "l0"): 1 / 128 ** .5}),
    ("lstm_crf_ner", {("emissions",): 1 / 256 ** .5,
                      ("lstm", "l0"): 1 / 128 ** .5,
                      ("lstm", "l0_reverse"): 1 / 128 ** .5}),
])
def test_torch_init_statistics(pairs, name, bounds):
  pair = pairs(name)
  params = jax.jit(lambda: pair.spec.build(pair.info, init="torch").init(
      jax.random.key(0), *pair.inputs, train=False)["params"],
                   compiler_options=COMPILER_OPTIONS)()
  twin = {p: v for p, v in jax.tree_util.tree_leaves_with_path(
      pair.variables["params"])}
  checked, failures = 0, {}
  for path, value in jax.tree_util.tree_leaves_with_path(params):
    keys = tuple(k.key for k in path)
    bound = next((b for prefix, b in bounds.items()
                  if keys[:len(prefix)] == prefix), None)
    if bound is None:
      continue
    checked += 1
    errors = uniform_violations(value, bound, twin=twin[path])
    if errors:
      failures["/".join(keys)] = errors
  # fc: kernel+bias; LSTM direction: ih/hh kernel+bias.
  assert checked == 2 * len(bounds) + 2 * sum(
      "lstm" in p for p in bounds), checked
  assert not failures, failures


@pytest.mark.parametrize("name", NAMES)
def test_bf16_compute(pairs, name):
  pair = pairs(name)
  model = precision.with_compute_dtype(pair.model, "bf16")
  assert model.dtype == jnp.bfloat16
  out = flax_outputs(name, pair.apply(model, pair.variables))
  ref = pair.flax_float32
  for value in out.values():
    assert np.all(np.isfinite(np.asarray(value, np.float32)))
  errors = compare(name, out, ref, pair.inputs)
  print(name, errors)
  assert max(errors.values()) <= BF16_RTOL, errors
