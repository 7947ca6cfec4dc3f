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

Random batches (``Task.random_batch``, for tests and benchmarks) skip the
tokenisation: they are already-encoded, right-padded ids
(:func:`random_ids`), and ``Task.encoded_info`` gives the statistics
``fit`` would have stored for them (:func:`encoded_info`).
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

from optbench_jax import store
from optbench_jax.data import text
from optbench_jax.data.base import DatasetInfo, Splits
from optbench_jax.errors import OptBenchError
from optbench_jax.tasks.base import RandomGenerator, random_integers

# The generation vocabularies' specials (``text.GENERATION_SPECIALS``) and
# their first ordinary id.
BOS_ID = text.GENERATION_SPECIALS.index(text.BOS)
EOS_ID = text.GENERATION_SPECIALS.index(text.EOS)
FIRST_GENERATION_ID = len(text.GENERATION_SPECIALS)


def require_config(config: Any, model: Any, task: str) -> Any:
  """The run's resolved settings and the model's text needs, or a
  one-line error saying how to get them."""
  if (config is None or getattr(config, "max_length", None) is None
      or model is None):
    raise OptBenchError(
        f"task {task} fits its vocabulary for a model: fit the splits with "
        f"optbench_jax.workload.Workload(...).fit(splits, config) on the "
        f"run's resolved settings (train.plan)")
  return config


def _digest(parts: Sequence[Any], corpus: Iterable[Any]) -> str:
  h = hashlib.sha256(json.dumps(list(parts), default=str).encode())
  for item in corpus:
    h.update(json.dumps(item, ensure_ascii=False).encode())
    h.update(b"\0")
  return h.hexdigest()


def fit_vocabulary(config: Any, model: Any, corpus: Sequence[text.Text],
                   cache_dir: Optional[str]
                   ) -> tuple[text.Vocabulary, Optional[str]]:
  """The model's vocabulary for ``corpus`` (the training texts), built by
  ``model`` (a :class:`~optbench_jax.tasks.base.TextModel`) and cached as
  ``store.VOCABULARY`` in ``cache_dir`` under a digest of everything it
  depends on.

  Returns:
    ``(vocabulary, pretrained directory or None)``.
  """
  directory = model.pretrained_dir
  corpus = [c if isinstance(c, str) else list(c) for c in corpus]
  key = _digest([config.task, config.dataset, config.model,
                 config.vocab_size, directory], corpus)
  path = os.path.join(cache_dir, store.VOCABULARY) if cache_dir else None
  cached = _read_cached(path, key)
  if cached is not None:
    return cached, directory
  vocabulary = model.build_vocabulary(corpus, config.vocab_size, directory)
  if path is not None:
    store.write_text(path, json.dumps({"key": key, "vocabulary": json.loads(
        vocabulary.to_json())}))
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


def sequence_length(info: DatasetInfo) -> int:
  """The input sequence length of ``info``: its ``max_length`` statistic,
  else its input shape's."""
  return int(info.stats.get("max_length", info.input_shape[0]))


def encoded_info(info: DatasetInfo, **stats) -> DatasetInfo:
  """``info`` with what a text task's ``fit`` stores for encoded data: the
  vocabulary sizes ``info`` has, ``max_length`` and ``stats``."""
  return dataclasses.replace(info, stats={
      **info.stats, "max_length": sequence_length(info), **stats})


def random_ids(rng: RandomGenerator, n: int, length: int, vocab_size: int,
               min_length: int = 1) -> np.ndarray:
  """``(n, length)`` int32 ids in ``[1, vocab_size)``, right-padded with
  ``PAD_ID`` to a uniform random length in ``[min_length, length]`` per
  row."""
  lengths = random_integers(rng, min_length, length + 1, n)
  ids = random_integers(rng, 1, vocab_size, (n, length)).astype(np.int32)
  ids[np.arange(length)[None, :] >= lengths[:, None]] = text.PAD_ID
  return ids
