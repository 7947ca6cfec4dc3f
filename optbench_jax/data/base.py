"""Datasets: one registry keyed by (task, name), fixed-shape numpy splits.

A loader returns a :class:`RawDataset` (a training split, an optional test
split, and :class:`DatasetInfo`); :func:`load` attaches the dataset's
augmentation from its registry entry; :func:`prepare` caps the training
split (``--max-samples``) and holds out a validation split fixed by the
split seed. Statistics of the training split (e.g. normalisation) are the
task's business (``Task.fit``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import numpy as np

from optbench_jax.data import download as download_lib
from optbench_jax.errors import MissingDataError, OptBenchError
from optbench_jax.registry import Registry

Arrays = dict[str, np.ndarray]  # each value has the examples on axis 0


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a task and a model need to know about a dataset.

  Attributes:
    name: the dataset name as users type it.
    task: the task it belongs to.
    num_classes: number of classes (classification, segmentation, tagging).
    input_shape: shape of one example's main input (e.g. ``(28, 28, 1)``).
    source: where it was loaded from (a path, a package, ``"synthetic"``).
    extra: task-specific facts (vocabulary size, class names, ...).
    stats: statistics of the training split the task computed
      (``Task.fit``), e.g. per-channel ``mean`` and ``std``.
    augment: ``augment(batch, key) -> batch``, the dataset's random training
      augmentation on the device (from its :class:`DatasetSpec`), or None.
    provenance: where the copy read came from (hub id, revision, split
      sizes found), recorded in the run metadata; empty when unknown.
  """
  name: str
  task: str
  num_classes: int = 0
  input_shape: tuple = ()
  source: str = ""
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  stats: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  augment: Optional[Callable[[Mapping, Any], dict]] = dataclasses.field(
      default=None, compare=False)
  provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RawDataset:
  """What a loader returns: whole splits as numpy arrays."""
  train: Arrays
  test: Optional[Arrays]
  info: DatasetInfo


@dataclasses.dataclass
class Splits:
  """The splits a run uses: train (capped), validation (held out), test."""
  train: Arrays
  val: Arrays
  test: Optional[Arrays]
  info: DatasetInfo


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A registry entry.

  ``load(data_dir)`` returns a :class:`RawDataset`; it raises
  :class:`~optbench_jax.errors.MissingDataError` naming the files it looked
  for when the data is not cached locally. ``augment(batch, key) -> batch``
  is the random training augmentation (on the device, inside jit; see
  ``data/augment.py``), None for none. ``defaults`` are the dataset's values
  of run settings left unset (``{"max_length": 384}``: SQuAD contexts).
  ``download`` fills the local cache through the library that owns the
  dataset (a :class:`~optbench_jax.data.download.HubDownload`), None for a
  dataset that is never downloaded (bundled, packaged, synthetic).
  """
  name: str
  task: str
  load: Callable[[Optional[str]], RawDataset]
  augment: Optional[Callable[[Mapping, Any], dict]] = None
  description: str = ""
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  download: Optional[Any] = None


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register(spec: DatasetSpec) -> DatasetSpec:
  return DATASETS.register(f"{spec.task}/{spec.name}", spec)


def names_for(task: str) -> list[str]:
  return [s.name for _, s in DATASETS.items() if s.task == task]


def get(task: str, name: str) -> DatasetSpec:
  key = f"{task}/{name}"
  if key in DATASETS:
    return DATASETS.get(key)
  owners = [s.task for _, s in DATASETS.items() if s.name == name]
  where = f" (it belongs to task {owners[0]!r})" if owners else ""
  raise OptBenchError(
      f"unknown dataset {name!r} for task {task!r}{where}. "
      f"Valid choices: {', '.join(names_for(task))}.")


def load(task: str, name: str, data_dir: Optional[str] = None, *,
         offline: bool = False) -> RawDataset:
  """Loads a registered dataset, its augmentation attached to its info.

  A dataset missing from the local cache is downloaded first (its
  :attr:`DatasetSpec.download`), unless ``offline`` or the libraries' own
  ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` forbid the network; the copy is
  then read through the cache as any other.

  Raises:
    MissingDataError: not cached and not downloadable (or not allowed to).
    OptBenchError: a download that failed, or a copy whose split sizes are
      not the published ones (one line each).
  """
  spec = get(task, name)
  try:
    raw = spec.load(data_dir)
  except MissingDataError as missing:
    if spec.download is None:
      raise
    refusal = download_lib.refusal(offline)
    if refusal:
      raise MissingDataError(f"{str(missing).rstrip('.')}; not downloaded: "
                             f"{refusal}.") from None
    spec.download.fetch(data_dir)
    raw = spec.load(data_dir)
  return dataclasses.replace(raw, info=dataclasses.replace(
      raw.info, augment=spec.augment))


def fetch(task: str, name: str, data_dir: Optional[str] = None, *,
          offline: bool = False) -> dict:
  """Makes sure a dataset is in the local cache (downloading it if it may)
  and checked; returns its provenance (``data prepare``).

  Raises:
    MissingDataError: not cached and not downloadable (or not allowed to).
    OptBenchError: as :func:`load`.
  """
  spec = get(task, name)
  if spec.download is None:
    raw = spec.load(data_dir)
    return {"source": raw.info.source, **raw.info.provenance}
  return spec.download.fetch(data_dir, offline=offline)


def num_examples(arrays: Arrays) -> int:
  return len(next(iter(arrays.values())))


def take(arrays: Arrays, index: np.ndarray) -> Arrays:
  return {k: v[index] for k, v in arrays.items()}


def prepare(raw: RawDataset, *, seed: int, max_samples: Optional[int] = None,
            val_fraction: float = 0.1) -> Splits:
  """Caps and splits; deterministic given ``seed`` (the split seed).

  The validation split is a random ``val_fraction`` of the training split,
  drawn with ``seed``; ``max_samples`` then caps what is left for training.
  """
  n = num_examples(raw.train)
  if n < 2:
    raise OptBenchError(f"dataset {raw.info.name!r} has {n} training examples")
  order = np.random.default_rng(seed).permutation(n)
  n_val = max(1, int(round(n * val_fraction)))
  val, train = take(raw.train, order[:n_val]), take(raw.train, order[n_val:])
  if max_samples is not None:
    if max_samples < 1:
      raise OptBenchError("--max-samples must be positive")
    train = take(train, np.arange(min(max_samples, num_examples(train))))
  return Splits(train=train, val=val, test=raw.test, info=raw.info)
