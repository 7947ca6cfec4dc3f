"""One benchmark entry: a registered model and the random data it trains on.

Every model of the model registry (``optbench_jax.models``) is an entry. Its
registry entry states the data it expects (``example_info``: input shape,
classes) and, when it has one, its PyTorch twin (``torch_twin``) and the
weight conversion (``conversion``). Its task makes random data of that shape
(``Task.random_batch``), computes their statistics (``Task.fit``) and names
its loss's PyTorch reference, which also says how PyTorch reads a batch
(``Task.reference_loss``, ``optbench_jax/reference/torch_losses.py``). A
model whose task makes no random data is reported as not implemented yet,
with the reason.

Text tasks tokenise raw text in ``Task.fit`` (vocabularies, encoding); the
benchmark skips that: their random batches are already-encoded id arrays
(right-padded, every row with at least one real token), and
``Task.encoded_info`` gives the statistics ``fit`` would have stored
(vocabulary sizes from the model's ``example_info``, the sequence lengths).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from optbench_jax import data, models, tasks
from optbench_jax.data.base import DatasetInfo
from optbench_jax.errors import OptBenchError


class NotImplementedYet(Exception):
  """The benchmark cannot measure this model; the message says why."""


@dataclasses.dataclass
class Entry:
  """A benchmark entry: a model, its random data and their statistics
  (not the library's ``optbench_jax.workload.Workload``: no dataset)."""
  spec: models.ModelSpec
  info: DatasetInfo          # example_info, with the random data's stats
  arrays: dict               # host arrays: steps × batch random examples
  task: tasks.Task
  jax: Any = None            # jax_timing.Setup, once made
  entry: Optional[str] = None  # the benchmark entry's name, e.g. gpt_small@512

  @property
  def name(self) -> str:
    return self.entry or self.spec.name

  def target_tokens(self, arrays) -> Optional[int]:
    """Real target tokens in ``arrays``; None for tasks without tokens."""
    tokens = self.task.target_tokens(arrays)
    return None if tokens is None else int(np.sum(tokens))


def registered() -> list[str]:
  """Every model of the registry, in registry order."""
  return models.MODELS.names()


def split_entry(entry: str) -> tuple[str, Optional[int]]:
  """``"gpt_small@512"`` -> ``("gpt_small", 512)``; ``"gpt_small"`` ->
  ``("gpt_small", None)``. Raises ValueError on a malformed length."""
  name, at, length = entry.partition("@")
  if not at:
    return name, None
  if not length.isdigit() or int(length) < 2:
    raise ValueError(f"{entry!r}: the sequence length after '@' must be an "
                     f"integer >= 2")
  return name, int(length)


def has_sequence_length(name: str) -> bool:
  """Whether the model's task makes encoded token data (of a chosen
  length)."""
  spec = models.MODELS.get(name)
  return tasks.get(spec.task).encoded_info(spec.example_info) is not None


def entry_error(entry: str) -> Optional[str]:
  """Why ``entry`` (``model`` or ``model@length``) is not valid, or None."""
  try:
    name, length = split_entry(entry)
  except ValueError as e:
    return str(e)
  if name not in registered():
    return f"unknown model {name!r}"
  if length is not None and not has_sequence_length(name):
    return (f"{entry!r}: '@length' applies to text models only "
            f"({name!r} is {models.MODELS.get(name).task})")
  return None


def sequence_info(example: DatasetInfo, length: Optional[int]) -> DatasetInfo:
  """The example info with every sequence length set to ``length``: the
  input (``max_length``: LM blocks, sources, contexts) and, for
  sequence-to-sequence models, the target (``target_length``)."""
  if length is None:
    return example
  stats = {**example.stats, "max_length": length}
  if "target_length" in stats:
    stats["target_length"] = length
  return dataclasses.replace(example, input_shape=(length,), stats=stats)


def make(entry: str, args) -> Entry:
  """The workload of ``entry``: a registered model's name, optionally with a
  sequence length (``gpt_small@512``); a text model without one gets
  ``--seq-len`` if given, else its example info's length."""
  name, length = split_entry(entry)
  spec = models.MODELS.get(name)
  task = tasks.get(spec.task)
  example = dataclasses.replace(spec.example_info, name="random",
                                source="random")
  encoded = task.encoded_info(example) is not None
  info = example
  if encoded:
    # Encoded random data: the statistics fit would store; fit is skipped.
    if length is None:
      length = getattr(args, "seq_len", None)
    info = task.encoded_info(sequence_info(example, length))
  try:
    arrays = task.random_batch(info, args.batch_size * args.steps,
                               np.random.RandomState(args.seed))
  except OptBenchError as e:
    raise NotImplementedYet(str(e)) from e
  if encoded:
    return Entry(spec, info, arrays, task, entry=entry)
  # The task's statistics of the training data (e.g. normalisation); the
  # example info has no augmentation, so none runs.
  splits = task.fit(data.Splits(
      train=arrays, val=data.take(arrays, np.arange(0)), test=None,
      info=example))
  return Entry(spec, splits.info, arrays, task, entry=entry)
