"""``models.distilbert`` computes transformers' DistilBERT from its checkpoints.

Tiny random transformers models (vocabulary 100, dim 32, 2 layers, 4 heads)
are saved with ``save_pretrained`` and read back by ``locate_pretrained`` +
``load_pretrained``; nothing is downloaded. Both sides run in float32, eval
mode, on the same random tokens with padding; errors are relative max-norm
errors (``tests.transforms.torch_reference.relative_error``) over every
position (padded ones included: transformers computes them too), asserted at
1e-5. Measured on a CPU: hidden states 1.8e-7 (learned positions) and 3.3e-7
(sinusoidal), sequence-classification logits 1.4e-7, pytorch_model.bin
checkpoint 1.8e-7.
"""
import json

import jax
import numpy as np
import pytest

from optbench_jax.models import distilbert
from optbench_jax.nn import convert
from tests.transforms.torch_reference import relative_error

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RTOL = 1e-5
TINY = dict(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
            max_position_embeddings=64)
BATCH, LENGTH = 3, 10


def _tokens(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, TINY["vocab_size"], (BATCH, LENGTH))
  mask = np.ones((BATCH, LENGTH), np.int64)
  mask[0, 7:] = 0
  mask[2, 4:] = 0
  ids[mask == 0] = 0   # pad_token_id
  return ids, mask


def _save(model_class, path, **config):
  torch.manual_seed(0)
  model = model_class(transformers.DistilBertConfig(**TINY, **config)).eval()
  model.save_pretrained(path)
  return model


def _report(name, err):
  print(f"{name}: relative error {err:.2g}")
  assert err <= RTOL, (name, err)


def _hidden_states(path):
  config, params = distilbert.load_pretrained(
      distilbert.locate_pretrained(str(path)))
  ids, mask = _tokens()
  return distilbert.DistilBertEncoder(config).apply(
      {"params": params}, ids, mask, train=False)


@pytest.mark.parametrize("sinusoidal", [False, True])
def test_encoder_matches_transformers(tmp_path, sinusoidal):
  model = _save(transformers.DistilBertModel, tmp_path,
                sinusoidal_pos_embds=sinusoidal)
  assert (tmp_path / "model.safetensors").is_file()
  ids, mask = _tokens()
  with torch.no_grad():
    want = model(input_ids=torch.from_numpy(ids),
                 attention_mask=torch.from_numpy(mask)).last_hidden_state
  _report(f"DistilBertModel sinusoidal={sinusoidal}",
          relative_error(_hidden_states(tmp_path), want.numpy()))


def test_pytorch_model_bin(tmp_path):
  torch.manual_seed(0)
  config = transformers.DistilBertConfig(**TINY)
  model = transformers.DistilBertModel(config).eval()
  config.save_pretrained(tmp_path)
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  ids, mask = _tokens()
  with torch.no_grad():
    want = model(input_ids=torch.from_numpy(ids),
                 attention_mask=torch.from_numpy(mask)).last_hidden_state
  _report("pytorch_model.bin",
          relative_error(_hidden_states(tmp_path), want.numpy()))


def test_sequence_classification_matches_transformers(tmp_path):
  model = _save(transformers.DistilBertForSequenceClassification, tmp_path,
                num_labels=3)
  config = distilbert.config_from_json(tmp_path / "config.json")
  classifier = distilbert.DistilBertClassifier(config, num_classes=3)
  ids, mask = _tokens(1)
  template = jax.eval_shape(
      lambda: classifier.init(jax.random.key(0), ids, mask, train=False))
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  variables = convert.torch_to_flax(state, distilbert.classifier_rules(config),
                                    template=template)
  logits = classifier.apply(variables, ids, mask, train=False)
  with torch.no_grad():
    want = model(input_ids=torch.from_numpy(ids),
                 attention_mask=torch.from_numpy(mask)).logits
  _report("DistilBertForSequenceClassification",
          relative_error(logits, want.numpy()))

  # load_pretrained drops the heads and the "distilbert." prefix.
  _, encoder = distilbert.load_pretrained(tmp_path)
  assert relative_error(encoder, variables["params"]["distilbert"]) == 0


def _fake_snapshot(cache, repo, revision, config=None):
  snapshot = cache / repo / "snapshots" / revision
  snapshot.mkdir(parents=True)
  (snapshot / "config.json").write_text(json.dumps(config or {}))
  return snapshot


def test_hub_cache_lookup(tmp_path, monkeypatch):
  cache = tmp_path / "hub"
  repo = "models--distilbert--distilbert-base-uncased"
  main = _fake_snapshot(cache, repo, "abc123")
  _fake_snapshot(cache, repo, "zzz999")   # newer, but not refs/main
  (cache / repo / "refs").mkdir()
  (cache / repo / "refs" / "main").write_text("abc123\n")
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  for name in ("distilbert/distilbert-base-uncased",
               "distilbert-base-uncased"):   # the legacy alias too
    assert distilbert.locate_pretrained(name) == str(main)
  monkeypatch.delenv("HF_HUB_CACHE")
  monkeypatch.setenv("HF_HOME", str(tmp_path))
  assert distilbert.locate_pretrained("distilbert-base-uncased") == str(main)
  assert distilbert.locate_pretrained(
      "distilbert-base-uncased", cache_dir=cache) == str(main)
  # Without refs/main: the snapshot with a config.
  other = _fake_snapshot(cache, "models--org--tiny", "r1")
  assert distilbert.locate_pretrained("org/tiny", cache_dir=cache) == str(
      other)


def test_missing_checkpoint_is_one_line(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
  monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
  with pytest.raises(distilbert.MissingPretrainedError) as info:
    distilbert.locate_pretrained("distilbert-base-uncased")
  message = str(info.value)
  assert "\n" not in message
  for part in (str(tmp_path / "empty"), str(tmp_path / "home" / "hub"),
               "huggingface-cli download distilbert-base-uncased",
               "save_pretrained", "--pretrained none"):
    assert part in message, part
  with pytest.raises(distilbert.MissingPretrainedError):
    distilbert.load_pretrained(tmp_path / "nowhere")


def test_config_from_json(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      {"architectures": ["DistilBertForMaskedLM"], "model_type": "distilbert",
       "dim": 48, "n_heads": 6, "sinusoidal_pos_embds": True,
       "qa_dropout": 0.1}))
  config = distilbert.config_from_json(tmp_path)
  assert (config.dim, config.n_heads, config.sinusoidal_pos_embds) == (
      48, 6, True)
  assert config == distilbert.config_from_json(tmp_path / "config.json")
  assert config.vocab_size == 30522 and config.activation == "gelu"


def test_init_and_padding_gradient():
  config = distilbert.DistilBertConfig(**TINY)
  ids, mask = _tokens()
  classifier = distilbert.DistilBertClassifier(config, num_classes=2)
  params = jax.jit(lambda key: classifier.init(key, ids, mask, train=False))(
      jax.random.key(0))["params"]
  words = np.asarray(params["distilbert"]["embeddings"]["word_embeddings"][
      "embedding"])
  assert not np.any(words[config.pad_token_id])
  assert abs(words[1:].std() - 0.02) < 2e-3
  query = params["distilbert"]["layer_0"]["attention"]["query"]
  assert abs(np.std(query["kernel"]) - 0.02) < 3e-3
  assert not np.any(query["bias"])

  def loss(p):
    logits = classifier.apply({"params": p}, ids, mask, train=True,
                              rngs={"dropout": jax.random.key(1)})
    return (logits ** 2).sum()

  grads = jax.jit(jax.grad(loss))(params)
  word_grads = np.asarray(grads["distilbert"]["embeddings"]["word_embeddings"][
      "embedding"])
  assert not np.any(word_grads[config.pad_token_id])
  assert np.any(word_grads[ids[0, 0]])
