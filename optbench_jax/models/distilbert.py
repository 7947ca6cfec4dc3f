"""DistilBERT (Sanh et al. 2019) in Flax, and its pretrained weights.

DistilBERT is BERT with half the layers, distilled from BERT-base ("DistilBERT,
a distilled version of BERT: smaller, faster, cheaper and lighter", Sanh,
Debut, Chaumond, Wolf 2019, arXiv:1910.01108); its blocks are the post-LN
Transformer encoder of Vaswani et al. (2017, arXiv:1706.03762). For token ids
``w_1..w_T`` and an attention mask ``m`` (1 for tokens, 0 for padding)::

  h⁰_t = Drop(LN(E[w_t] + P[t]))                      (P learned or sinusoidal)
  a    = LN_sa(hˡ + MHA(hˡ; keys with m = 1))         (heads n_heads, no
                                                        dropout after W_O)
  hˡ⁺¹ = LN_out(a + Drop(W₂ GELU(W₁ a + b₁) + b₂))    (GELU with erf)

with every layer norm's ε = 1e-12 and dropout ``attention_dropout`` on the
attention weights. :class:`DistilBertEncoder` returns ``h^{n_layers}``
``(B, T, dim)``. :class:`DistilBertClassifier` is transformers'
``DistilBertForSequenceClassification``: ``logits = W_c Drop(ReLU(W_p h_0 +
b_p)) + b_c`` on the first token's state, dropout ``seq_classif_dropout``.

Parameters: ``embeddings/{word_embeddings, position_embeddings,
LayerNorm}``, ``layer_{i}/attention/{query, key, value, out}``,
``layer_{i}/{sa_layer_norm, lin1, lin2, output_layer_norm}``; the classifier
holds the encoder as ``distilbert`` and ``pre_classifier``, ``classifier``.
Sinusoidal position embeddings (``sinusoidal_pos_embds``) are a constant, not
a parameter. As in PyTorch's ``nn.Embedding(padding_idx=pad_token_id)``, the
padding row of the word embeddings gets no gradient.

Initialisation (``init_scheme``): ``"torch"`` is transformers' (the PyTorch
twin's): dense kernels and embeddings ``N(0, initializer_range²)``, the
padding row 0, biases 0, layer norms 1/0; ``"flax"`` is Flax's defaults.

Pretrained weights are read from a local directory only (``config.json`` and
``model.safetensors`` or ``pytorch_model.bin``): :func:`locate_pretrained`
finds it (a path, or a hub name in the local Hugging Face cache),
:func:`load_pretrained` converts it with :func:`encoder_rules`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.errors import OptBenchError, one_line
from optbench_jax.data import text
from optbench_jax.data.base import DatasetInfo
from optbench_jax.models import hub
from optbench_jax.models.base import ModelSpec, Pretrained, Twin, register
from optbench_jax.models.hub import CONFIG_FILE, MissingPretrainedError
from optbench_jax.nn import convert
from optbench_jax.nn.attention import (
    ACTIVATIONS, MultiHeadAttention, padding_mask, sinusoidal_positions)
from optbench_jax.nn.layers import Dense, Embed, check_init

LAYER_NORM_EPS = 1e-12
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin")


@dataclasses.dataclass(frozen=True)
class DistilBertConfig:
  """The fields of transformers' ``DistilBertConfig`` this model uses.

  Defaults are ``distilbert-base-uncased``'s.
  """
  vocab_size: int = 30522
  dim: int = 768
  n_layers: int = 6
  n_heads: int = 12
  hidden_dim: int = 3072
  max_position_embeddings: int = 512
  dropout: float = 0.1
  attention_dropout: float = 0.1
  activation: str = "gelu"
  sinusoidal_pos_embds: bool = False
  pad_token_id: int = 0
  initializer_range: float = 0.02
  seq_classif_dropout: float = 0.2


def config_from_json(path: str | os.PathLike) -> DistilBertConfig:
  """Reads a checkpoint's ``config.json`` (the file, or its directory).

  Keys this model does not use (``architectures``, ``qa_dropout``, ...) are
  ignored; missing ones take :class:`DistilBertConfig`'s defaults.
  """
  path = Path(path)
  if path.is_dir():
    path = path / CONFIG_FILE
  try:
    raw = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise MissingPretrainedError(f"cannot read {path}: {one_line(e)}") from e
  if raw.get("model_type", "distilbert") != "distilbert":
    raise OptBenchError(f"{path} describes a {raw['model_type']!r} model, "
                        "not DistilBERT")
  names = {f.name for f in dataclasses.fields(DistilBertConfig)}
  config = DistilBertConfig(**{k: v for k, v in raw.items() if k in names})
  if config.activation not in ACTIVATIONS:
    raise OptBenchError(f"{path}: activation {config.activation!r} is not one "
                        f"of {', '.join(ACTIVATIONS)}")
  return config


# -- model -------------------------------------------------------------------
def _initializers(config: DistilBertConfig, init_scheme: str):
  """(kernel, bias, embedding) initialisers; None = the scheme's (Flax)."""
  if check_init(init_scheme) != "torch":
    return None, None, None
  normal = nn.initializers.normal(config.initializer_range)

  def embedding(key, shape, dtype=jnp.float32):
    table = normal(key, shape, dtype)
    return table.at[config.pad_token_id].set(0)

  return normal, nn.initializers.zeros_init(), embedding


class _Block(nn.Module):
  """One transformer block (module docstring)."""
  config: DistilBertConfig
  init_scheme: str
  dtype: Any

  @nn.compact
  def __call__(self, x, mask, *, train: bool):
    c = self.config
    kernel, bias, _ = _initializers(c, self.init_scheme)
    dense = lambda n, name: Dense(n, kernel_init=kernel, bias_init=bias,
                                  init_scheme=self.init_scheme,
                                  dtype=self.dtype, name=name)
    norm = lambda name: nn.LayerNorm(LAYER_NORM_EPS, dtype=self.dtype,
                                     use_fast_variance=False, name=name)
    attention = MultiHeadAttention(
        c.n_heads, c.dim, c.attention_dropout, init_scheme=self.init_scheme,
        kernel_init=kernel, bias_init=bias, dtype=self.dtype,
        name="attention")
    x = norm("sa_layer_norm")(x + attention(x, x, mask, train=train))
    h = ACTIVATIONS[c.activation](dense(c.hidden_dim, "lin1")(x))
    h = nn.Dropout(c.dropout)(dense(c.dim, "lin2")(h), deterministic=not train)
    return norm("output_layer_norm")(x + h)


class _Embeddings(nn.Module):
  """Word + position embeddings, layer norm, dropout."""
  config: DistilBertConfig
  init_scheme: str
  dtype: Any

  @nn.compact
  def __call__(self, input_ids, *, train: bool):
    c = self.config
    normal, _, embedding = _initializers(c, self.init_scheme)
    x = Embed(c.vocab_size, c.dim, embedding_init=embedding,
              init_scheme=self.init_scheme, dtype=self.dtype,
              name="word_embeddings")(input_ids)
    # nn.Embedding(padding_idx=...): the padding row gets no gradient.
    x = jnp.where((input_ids == c.pad_token_id)[..., None],
                  jax.lax.stop_gradient(x), x)
    length = input_ids.shape[-1]
    if c.sinusoidal_pos_embds:
      positions = jnp.asarray(
          sinusoidal_positions(c.max_position_embeddings, c.dim)[:length],
          self.dtype)
    else:
      positions = Embed(c.max_position_embeddings, c.dim,
                        embedding_init=normal,
                        init_scheme=self.init_scheme, dtype=self.dtype,
                        name="position_embeddings")(jnp.arange(length))
    x = nn.LayerNorm(LAYER_NORM_EPS, dtype=self.dtype, use_fast_variance=False,
                     name="LayerNorm")(x + positions)
    return nn.Dropout(c.dropout)(x, deterministic=not train)


class DistilBertEncoder(nn.Module):
  """DistilBERT's embeddings and transformer: token ids -> ``(B, T, dim)``.

  Called as ``(input_ids, attention_mask=None, *, train)``: ``input_ids``
  ``(B, T)`` integers, ``T ≤ max_position_embeddings``; ``attention_mask``
  ``(B, T)``, nonzero for tokens and 0 for padding (None: no padding).
  Dropout in train mode needs a ``"dropout"`` rng.
  """
  config: DistilBertConfig
  init_scheme: str = "torch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, *, train: bool):
    x = _Embeddings(self.config, self.init_scheme, self.dtype,
                    name="embeddings")(input_ids, train=train)
    mask = None if attention_mask is None else padding_mask(
        jnp.asarray(attention_mask) != 0)
    for i in range(self.config.n_layers):
      x = _Block(self.config, self.init_scheme, self.dtype,
                 name=f"layer_{i}")(x, mask, train=train)
    return x


class DistilBertClassifier(nn.Module):
  """transformers' ``DistilBertForSequenceClassification``: ids -> logits.

  ``h = distilbert(input_ids, attention_mask)[:, 0]``, then
  ``classifier(Drop(ReLU(pre_classifier(h))))`` (``seq_classif_dropout``).
  Pretrained encoder parameters (:func:`load_pretrained`) go into
  ``params["distilbert"]``.
  """
  config: DistilBertConfig
  num_classes: int
  init_scheme: str = "torch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, *, train: bool):
    c = self.config
    kernel, bias, _ = _initializers(c, self.init_scheme)
    dense = lambda n, name: Dense(n, kernel_init=kernel, bias_init=bias,
                                  init_scheme=self.init_scheme,
                                  dtype=self.dtype, name=name)
    h = DistilBertEncoder(c, self.init_scheme, self.dtype, name="distilbert")(
        input_ids, attention_mask, train=train)[:, 0]
    h = nn.relu(dense(c.dim, "pre_classifier")(h))
    h = nn.Dropout(c.seq_classif_dropout)(h, deterministic=not train)
    return dense(self.num_classes, "classifier")(h)


# -- conversion --------------------------------------------------------------
def _join(prefix: str, name: str) -> str:
  return f"{prefix}.{name}" if prefix else name


def encoder_rules(config: DistilBertConfig, torch_prefix: str = "",
                  flax_path: tuple = ()) -> list[convert.Rule]:
  """transformers' ``DistilBertModel`` state dict <-> our encoder's params.

  transformers' ``attention.{q,k,v,out}_lin`` are our ``attention/{query,
  key, value, out}``, its ``ffn.lin1/2`` our ``lin1/2``; the rest keeps its
  name (``transformer.layer.{i}`` is ``layer_{i}``). Sinusoidal position
  embeddings are skipped on import and exported as the sinusoids.

  Args:
    config: the model's configuration.
    torch_prefix: ``""`` for ``DistilBertModel``, ``"distilbert"`` inside
      the task models (``...ForSequenceClassification``, ``...ForMaskedLM``).
    flax_path: where the encoder sits in the Flax params (``("distilbert",)``
      in :class:`DistilBertClassifier`).
  """
  t = lambda name: _join(torch_prefix, name)
  f = lambda *names: tuple(flax_path) + names
  positions = (
      {"weight": convert.Leaf(None, default=sinusoidal_positions(
          config.max_position_embeddings, config.dim))}
      if config.sinusoidal_pos_embds else convert.embedding())
  rules = [
      convert.Rule(t("embeddings.word_embeddings"),
                   f("embeddings", "word_embeddings"), convert.embedding()),
      convert.Rule(t("embeddings.position_embeddings"),
                   f("embeddings", "position_embeddings"), positions),
      convert.Rule(t("embeddings.LayerNorm"), f("embeddings", "LayerNorm"),
                   convert.layer_norm()),
  ]
  for i in range(config.n_layers):
    torch_layer, flax_layer = t(f"transformer.layer.{i}"), f"layer_{i}"
    for ours, theirs in (("query", "q_lin"), ("key", "k_lin"),
                         ("value", "v_lin"), ("out", "out_lin")):
      rules.append(convert.Rule(f"{torch_layer}.attention.{theirs}",
                                f(flax_layer, "attention", ours),
                                convert.dense()))
    for ours, theirs in (("lin1", "ffn.lin1"), ("lin2", "ffn.lin2")):
      rules.append(convert.Rule(f"{torch_layer}.{theirs}", f(flax_layer, ours),
                                convert.dense()))
    for name in ("sa_layer_norm", "output_layer_norm"):
      rules.append(convert.Rule(f"{torch_layer}.{name}", f(flax_layer, name),
                                convert.layer_norm()))
  return rules


def classifier_rules(config: DistilBertConfig) -> list[convert.Rule]:
  """``DistilBertForSequenceClassification`` <-> our classifier."""
  return encoder_rules(config, "distilbert", ("distilbert",)) + [
      convert.Rule(name, (name,), convert.dense())
      for name in ("pre_classifier", "classifier")]


def _read_weights(directory: Path) -> dict[str, np.ndarray]:
  """The checkpoint's tensors, name -> numpy array."""
  if (directory / "model.safetensors").is_file():
    from safetensors.numpy import load_file
    return load_file(directory / "model.safetensors")
  index = directory / "model.safetensors.index.json"
  if index.is_file():
    from safetensors.numpy import load_file
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return {k: v for shard in shards
            for k, v in load_file(directory / shard).items()}
  if (directory / "pytorch_model.bin").is_file():
    try:
      import torch
    except ImportError as e:
      raise MissingPretrainedError(
          f"{directory} holds pytorch_model.bin, which needs torch to read "
          f"({one_line(e)}); install torch, or convert it to model.safetensors"
          " on a machine that has it") from e
    state = torch.load(directory / "pytorch_model.bin", map_location="cpu",
                       weights_only=True)
    return {k: v.detach().float().numpy() if v.is_floating_point()
            else v.numpy() for k, v in state.items()}
  raise MissingPretrainedError(
      f"{directory} holds none of {', '.join(WEIGHT_FILES)}")


def _encoder_tensors(state: Mapping[str, np.ndarray]) -> dict:
  """The encoder's tensors, without the task models' ``distilbert.`` prefix.

  Heads (``vocab_transform``, ``vocab_projector``, ``pre_classifier``, ...)
  and the ``position_ids`` buffer of older checkpoints are dropped.
  """
  prefix = ("distilbert." if any(k.startswith("distilbert.") for k in state)
            else "")
  return {k[len(prefix):]: v for k, v in state.items()
          if k.startswith(prefix) and not k.endswith("position_ids")}


def load_pretrained(path: str | os.PathLike) -> tuple[DistilBertConfig, dict]:
  """Reads a local checkpoint: ``(config, encoder params)``.

  Args:
    path: a directory with ``config.json`` and ``model.safetensors`` (or
      ``model.safetensors.index.json`` and its shards, or
      ``pytorch_model.bin``, read with torch if installed), or a hub name
      found by :func:`locate_pretrained`. ``DistilBertModel`` checkpoints
      and the task models' (``distilbert.`` prefix, heads ignored) both work.

  Returns:
    The configuration and the encoder's parameters (float32 numpy arrays),
    as :class:`DistilBertEncoder` (and ``params["distilbert"]`` of
    :class:`DistilBertClassifier`) holds them.

  Raises:
    MissingPretrainedError: no such checkpoint here.
    convert.ConversionError: its tensors do not fit the configuration.
  """
  directory = Path(locate_pretrained(path))
  config = config_from_json(directory)
  state = {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating)
           else v for k, v in _read_weights(directory).items()}
  tensors = _encoder_tensors(state)
  table = tensors.get("embeddings.position_embeddings.weight")
  if config.sinusoidal_pos_embds and table is not None and not np.allclose(
      table, sinusoidal_positions(*table.shape), atol=1e-5):
    raise convert.ConversionError(
        f"{directory}: sinusoidal_pos_embds is set but its position "
        "embeddings are not the sinusoids (trained?); this model keeps them "
        "fixed")
  model = DistilBertEncoder(config)
  ids = jnp.zeros((1, 1), jnp.int32)
  template = jax.eval_shape(
      lambda: model.init(jax.random.key(0), ids, train=False))
  params = convert.torch_to_flax(tensors, encoder_rules(config),
                                 template=template)
  return config, params["params"]


def locate_pretrained(name_or_path: str | os.PathLike,
                      cache_dir: Optional[str | os.PathLike] = None, *,
                      download: bool = False) -> str:
  """The local directory of a DistilBERT checkpoint (:func:`hub.locate
  <optbench_jax.models.hub.locate>`, downloading it if missing and
  ``download``; ``distilbert-base-uncased`` also lives in the cache as
  ``distilbert/distilbert-base-uncased``)."""
  return hub.locate(name_or_path, cache_dir, organisation="distilbert",
                    download=download)


# -- the sentiment model -------------------------------------------------------
def config_for(info) -> DistilBertConfig:
  """The checkpoint's configuration, or distilbert-base's with the trained
  vocabulary's size (``--pretrained none``)."""
  directory = info.stats.get("pretrained")
  config = (config_from_json(directory) if directory else
            DistilBertConfig(vocab_size=int(info.stats["vocab_size"])))
  length = int(info.stats.get("max_length", 0))
  if length > config.max_position_embeddings:
    raise OptBenchError(f"--max-length {length} exceeds DistilBERT's "
                        f"{config.max_position_embeddings} positions")
  return config


def vocabulary(corpus, max_size: int, pretrained: Optional[str]):
  """The checkpoint's WordPiece vocabulary; without one (``--pretrained
  none``), a WordPiece vocabulary trained on the training split."""
  if pretrained:
    return text.pretrained_vocabulary(pretrained)
  return text.wordpiece_vocabulary(corpus, max_size)


register(ModelSpec(
    name="distilbert_sentiment", task="sentiment_analysis",
    factory=lambda info, init_scheme: DistilBertClassifier(
        config_for(info), info.num_classes, init_scheme),
    example_info=DatasetInfo(
        name="example", task="sentiment_analysis", num_classes=2,
        input_shape=(128,), stats={"vocab_size": 30522, "max_length": 128}),
    description="pretrained DistilBERT (--pretrained, default "
    "distilbert-base-uncased from the local HF cache) + classification "
    "head",
    torch_twin=Twin("optbench_jax.reference.torch_text.distilbert_sentiment"),
    conversion=lambda info: classifier_rules(config_for(info)),
    vocabulary=vocabulary,
    # --width only from scratch (--pretrained none): dim a multiple of heads.
    widths={"config.dim": DistilBertConfig.n_heads, "config.hidden_dim": 1},
    pretrained=Pretrained(
        default="distilbert-base-uncased", locate=locate_pretrained,
        load=lambda directory: {"distilbert": load_pretrained(directory)[1]})))
