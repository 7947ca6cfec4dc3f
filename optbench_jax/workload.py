"""A workload: one (task, dataset, model), as AlgoPerf's ``Workload``.

The workload owns the one path by which data reach a run::

  load (the dataset's loader) → prepare (split with ``split_seed``, cap at
  ``max_samples``) → fit (the task's preprocessing or vocabulary, for the
  model, cached in the campaign directory)

— ``analyze`` and the benchmarks call :meth:`Workload.splits`, the
campaign its steps (:meth:`prepare`, then :meth:`fit`, to check the split
data against its plan in between), so a run is never fitted twice or
differently.
It hands the task what the task needs of the model (the model's
vocabulary builder and pretrained directory, :meth:`text_model`) so tasks
never look models up, builds the model and loads its pretrained weights,
and makes the random batches of tests and benchmarks
(:meth:`random_batch`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import numpy as np

from optbench_jax import data, models, tasks
from optbench_jax.data.base import DatasetInfo, RawDataset, Splits
from optbench_jax.tasks.base import TextModel


@dataclasses.dataclass(frozen=True)
class Workload:
  """One (task, dataset, model) of the registries (names as users type
  them; unknown names are one-line errors from the registries)."""
  task_name: str
  dataset: str
  model: str

  @classmethod
  def of(cls, config: Any) -> "Workload":
    """The workload of a run or campaign configuration."""
    return cls(config.task, config.dataset, config.model)

  @functools.cached_property
  def task(self) -> tasks.Task:
    return tasks.get(self.task_name)

  @functools.cached_property
  def dataset_spec(self) -> data.DatasetSpec:
    return data.get(self.task_name, self.dataset)

  @functools.cached_property
  def model_spec(self) -> models.ModelSpec:
    return models.get(self.task_name, self.model)

  # -- data --------------------------------------------------------------------
  def load(self, data_dir: Optional[str] = None, *,
           offline: bool = False) -> RawDataset:
    """The whole dataset, downloaded first if missing and not ``offline``
    (the loader's errors name what is missing)."""
    return data.load(self.task_name, self.dataset, data_dir, offline=offline)

  @staticmethod
  def prepare(raw: RawDataset, protocol: Any) -> Splits:
    """Train / validation / test: the validation share drawn with the
    protocol's ``split_seed``, the training split capped at
    ``max_samples``."""
    return data.prepare(raw, seed=protocol.split_seed,
                        max_samples=protocol.max_samples,
                        val_fraction=protocol.val_fraction)

  def text_model(self, protocol: Any) -> Optional[TextModel]:
    """What a text task needs of the model: its vocabulary builder and
    the local directory of its pretrained weights (None: not a text
    model)."""
    spec = self.model_spec
    if spec.vocabulary is None:
      return None
    directory = None
    if spec.pretrained is not None and protocol.pretrained not in (None,
                                                                   "none"):
      directory = spec.pretrained.locate(protocol.pretrained)
    return TextModel(build_vocabulary=spec.vocabulary,
                     pretrained_dir=directory)

  def fit(self, splits: Splits, protocol: Any,
          cache_dir: Optional[str] = None) -> Splits:
    """The task's preprocessing fitted on the training split (statistics,
    or the model's vocabulary, cached in ``cache_dir``)."""
    return self.task.fit(splits, protocol, cache_dir=cache_dir,
                         model=self.text_model(protocol))

  def splits(self, protocol: Any, *, data_dir: Optional[str] = None,
             cache_dir: Optional[str] = None,
             raw: Optional[RawDataset] = None,
             offline: bool = False) -> Splits:
    """load → prepare → fit: the data of every run of ``protocol`` (a
    resolved run or campaign configuration); ``raw``: an already loaded
    dataset. A missing dataset or pretrained checkpoint is downloaded
    first unless ``offline``."""
    raw = self.load(data_dir, offline=offline) if raw is None else raw
    prepared = self.prepare(raw, protocol)
    self.fetch_pretrained(protocol, offline=offline)
    return self.fit(prepared, protocol, cache_dir)

  def fetch_pretrained(self, protocol: Any, *, offline: bool = False
                       ) -> Optional[str]:
    """The directory of the pretrained checkpoint ``protocol`` names,
    downloaded first if missing and not ``offline`` (None: no checkpoint)."""
    spec = self.model_spec.pretrained
    if spec is None or protocol.pretrained in (None, "none"):
      return None
    return spec.locate(protocol.pretrained, download=not offline)

  # -- model -------------------------------------------------------------------
  def build_model(self, info: DatasetInfo, init: str = "torch",
                  width: float = 1.0):
    """The model for ``info`` (``init``: INITS; ``width``: ``--width``)."""
    return self.model_spec.build(info, init=init, width=width)

  def pretrained(self, protocol: Any) -> Optional[Any]:
    """The pretrained weights the run starts from, or None."""
    hub = self.model_spec.pretrained
    if hub is None or protocol.pretrained in (None, "none"):
      return None
    return hub.load(hub.locate(protocol.pretrained))

  # -- tests and benchmarks ----------------------------------------------------
  def example_info(self) -> DatasetInfo:
    """The model's typical dataset info (shapes, classes, vocabulary)."""
    return self.model_spec.example_info

  def random_batch(self, n: int, rng: np.random.RandomState,
                   info: Optional[DatasetInfo] = None) -> dict:
    """``n`` random host examples of the task's layout for the model
    (``info``: the model's :meth:`example_info` unless given)."""
    return self.task.random_batch(info or self.example_info(), n, rng)
