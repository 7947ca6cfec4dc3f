"""What the text tasks share: the model's vocabulary, cached beside the runs,
and host-side references for scores computed on text.

A text task's ``fit`` asks the model's registry entry how its inputs are
tokenised (``ModelSpec.vocabulary``), builds that vocabulary from the
training split (or reads a pretrained model's), caches it in the campaign
directory (``vocabulary.json``, keyed by a digest of everything it depends
on, so a resumed or repeated campaign reads it back) and encodes every split
into fixed-length id arrays.

Scores on text (SQuAD's F1 on answer strings, BLEU on detokenised text)
need each evaluated example's reference text on the host: the task gives
every example an integer ``uid`` column and keeps the texts in a
:class:`References` table in ``info.stats``; ``finalize`` looks them up by
the gathered uids.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optbench_jax import models
from optbench_jax.data import text
from optbench_jax.data.base import Splits
from optbench_jax.errors import OptBenchError

VOCABULARY_FILE = "vocabulary.json"


def require_config(config: Any, task: str) -> Any:
  if config is None or getattr(config, "max_length", None) is None:
    raise OptBenchError(
        f"task {task} fits its vocabulary for a model: call fit(splits, "
        f"config) with the run's resolved settings "
        f"(settings.resolve(config))")
  return config


def pretrained_directory(config: Any) -> Optional[str]:
  """The local directory of the run's pretrained weights, or None."""
  spec = models.get(config.task, config.model)
  if spec.pretrained is None or config.pretrained in (None, "none"):
    return None
  return spec.pretrained.resolve(config.pretrained)


def _digest(parts: Sequence[Any], corpus: Iterable[Any]) -> str:
  h = hashlib.sha256(json.dumps(list(parts), default=str).encode())
  for item in corpus:
    h.update(json.dumps(item, ensure_ascii=False).encode())
    h.update(b"\0")
  return h.hexdigest()


def fit_vocabulary(config: Any, corpus: Sequence[text.Text],
                   cache_dir: Optional[str]
                   ) -> tuple[text.Vocabulary, Optional[str]]:
  """The model's vocabulary for ``corpus`` (the training texts).

  Returns:
    ``(vocabulary, pretrained directory or None)``.
  """
  spec = models.get(config.task, config.model)
  if spec.vocabulary is None:
    raise OptBenchError(f"model {config.model} does not take text")
  directory = pretrained_directory(config)
  corpus = [c if isinstance(c, str) else list(c) for c in corpus]
  key = _digest([config.task, config.dataset, config.model,
                 config.vocab_size, directory], corpus)
  path = os.path.join(cache_dir, VOCABULARY_FILE) if cache_dir else None
  cached = _read_cached(path, key)
  if cached is not None:
    return cached, directory
  vocabulary = spec.vocabulary(corpus, config.vocab_size, directory)
  if path is not None:
    from optbench_jax.train import outputs  # the engine's atomic writes
    os.makedirs(cache_dir, exist_ok=True)
    with outputs.atomic_path(path) as tmp:
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"key": key, "vocabulary": json.loads(
            vocabulary.to_json())}, f)
  return vocabulary, directory


def _read_cached(path: Optional[str], key: str
                 ) -> Optional[text.Vocabulary]:
  if path is None or not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      blob = json.load(f)
    if blob.get("key") != key:
      return None
    return text.Vocabulary.from_json(json.dumps(blob["vocabulary"]))
  except Exception:  # pylint: disable=broad-except  (damaged: rebuilt)
    return None


class References:
  """Host-side per-example records (texts) of the evaluated splits, by uid.

  Compared by identity (it lives in ``DatasetInfo.stats``).
  """

  def __init__(self):
    self.records: list[Any] = []

  def add(self, records: Sequence[Any]) -> np.ndarray:
    """Stores ``records``; returns their uids (int32)."""
    start = len(self.records)
    self.records.extend(records)
    return np.arange(start, start + len(records), dtype=np.int32)

  def __getitem__(self, uid) -> Any:
    return self.records[int(uid)]

  def __len__(self) -> int:
    return len(self.records)


def encode_splits(splits: Splits, encode) -> Splits:
  """Every split through ``encode(arrays) -> arrays``."""
  return dataclasses.replace(
      splits, train=encode(splits.train), val=encode(splits.val),
      test=None if splits.test is None else encode(splits.test))


def token_mask(ids):
  """1 for real tokens, 0 for padding (id 0 in every vocabulary)."""
  return ids != text.PAD_ID


def token_statistics(logits, labels, example_mask, label_smoothing: float):
  """Per-token cross-entropy (label smoothing ε, PyTorch's convention) over
  the real (non-padding) ``labels`` of the real examples: ``(summed loss,
  number of tokens, number whose argmax is right)``."""
  real = token_mask(labels) * example_mask[:, None]
  logits = logits.astype(jnp.float32)
  per_token = optax.softmax_cross_entropy(logits, optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing))
  correct = (jnp.argmax(logits, -1) == labels) * real
  return jnp.sum(per_token * real), jnp.sum(real), jnp.sum(correct)
