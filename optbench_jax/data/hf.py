"""Hugging Face datasets read from the local cache.

A :class:`HFSource` names a dataset on the Hugging Face Hub (``ylecun/mnist``)
and how its splits and columns map onto ours. :meth:`HFSource.load` looks, in
this order, for

1. the cache that ``datasets.load_dataset(hub_id, cache_dir=DIR)`` leaves
   behind (``DIR/<namespace>___<name>/<config>/<version>/<commit>/``, Arrow
   files and ``dataset_info.json``), read through ``datasets.load_dataset``
   itself in offline mode: with the Hub unreachable by construction,
   ``datasets`` resolves the id to its ``cache`` packaged module, exactly as
   with ``HF_DATASETS_OFFLINE=1``. ``DIR`` is ``--data-dir`` when given, else
   the standard location (``$HF_DATASETS_CACHE``, ``$HF_HOME/datasets``,
   ``~/.cache/huggingface/datasets``);
2. with ``--data-dir``, a folder ``<data-dir>/<name>`` written by
   ``DatasetDict.save_to_disk`` (read with ``datasets.load_from_disk``).

Columns come back as numpy arrays: ``Image`` columns decoded to ``uint8``
(stacked when all images share a shape, else an object array of arrays),
scalar columns as numeric arrays, strings and nested values as object arrays.
When nothing is cached, :meth:`HFSource.load` raises
:class:`~optbench_jax.errors.MissingDataError` at once (reading makes no
network call) naming every directory it looked in and how to fill one;
``data/download.py`` then fills the cache through ``datasets`` itself.

Every copy read is checked against the split sizes the dataset card
publishes (:attr:`HFSource.sizes`): a copy that differs (a changed Hub copy,
a wrong id, a truncated download) is refused in one line
(:class:`SizeMismatchError`), and what was read is described in
:attr:`Loaded.provenance` (hub id, revision, split sizes found).
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import os
import re
from typing import Any, Iterator, Mapping, NamedTuple, Optional

import numpy as np

from optbench_jax.errors import MissingDataError, OptBenchError, one_line

Arrays = dict[str, np.ndarray]


class Loaded(NamedTuple):
  """What a source read.

  Attributes:
    splits: our split -> our column -> array.
    source: the path it was read from.
    class_names: our column -> class names, for label columns.
    provenance: where the copy came from (``hub_id``, ``config``,
      ``revision``, ``split_sizes`` found); empty when unknown.
  """
  splits: dict[str, Arrays]
  source: str
  class_names: dict[str, list[str]]
  provenance: Optional[Mapping[str, Any]] = None


class SizeMismatchError(OptBenchError):
  """A copy of a dataset whose split sizes are not the published ones."""


def format_sizes(sizes: Mapping[str, int]) -> str:
  """``{"train": 25000, "test": 25000}`` as ``train 25,000, test 25,000``."""
  return ", ".join(f"{split} {n:,}" for split, n in sizes.items())

OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
INSTALL_HINT = "pip install 'optbench_jax[data]'"
CARDS = "https://huggingface.co/datasets"  # where dataset cards are published


def default_cache_dir() -> str:
  """The directory ``datasets`` caches in when no ``cache_dir`` is given."""
  if os.environ.get("HF_DATASETS_CACHE"):
    return os.path.expanduser(os.environ["HF_DATASETS_CACHE"])
  xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
  return os.path.join(os.path.expanduser(home), "datasets")


def cache_dir_for(data_dir: Optional[str]) -> str:
  """``--data-dir`` when given, else the standard ``datasets`` cache."""
  if data_dir:
    return os.path.abspath(os.path.expanduser(data_dir))
  return default_cache_dir()


def cache_entry_name(hub_id: str) -> str:
  """The folder ``datasets`` caches ``hub_id`` under: ``ns___name``.

  Mirrors ``datasets.naming.camelcase_to_snakecase`` on the name part, which
  is what ``datasets`` applies (hub ids are lower case in practice).
  """
  *namespace, name = hub_id.split("/")
  name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
  name = re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).lower()
  return "___".join(namespace + [name])


def cached_entries(cache_dir: str, hub_id: str) -> list[str]:
  """Prepared cache entries (``<config>/<version>/<hash>`` folders)."""
  root = os.path.join(cache_dir, cache_entry_name(hub_id))
  # ``datasets`` prepares into ``<hash>.incomplete`` and renames it when
  # done: such a folder is a killed preparation, never read.
  return sorted(p for p in glob.glob(os.path.join(root, "*", "*", "*"))
                if os.path.isdir(p) and not p.endswith(".incomplete")
                and os.path.exists(os.path.join(p, "dataset_info.json")))


@contextlib.contextmanager
def offline(datasets) -> Iterator[None]:
  """Forces ``datasets``/``huggingface_hub`` offline, quiet, for a block.

  Sets the module flags that ``HF_DATASETS_OFFLINE=1``/``HF_HUB_OFFLINE=1``
  set at import (``datasets`` checks them before any Hub request) and the
  variables themselves, and restores everything afterwards.
  """
  import huggingface_hub.constants as hub_constants
  saved_env = {k: os.environ.get(k) for k in OFFLINE_ENV}
  saved_flags = [(datasets.config, "HF_HUB_OFFLINE"),
                 (datasets.config, "HF_DATASETS_OFFLINE"),
                 (hub_constants, "HF_HUB_OFFLINE")]
  saved_values = [getattr(m, a, None) for m, a in saved_flags]
  verbosity = datasets.utils.logging.get_verbosity()
  bars = datasets.is_progress_bar_enabled()
  try:
    os.environ.update({k: "1" for k in OFFLINE_ENV})
    for module, attr in saved_flags:
      setattr(module, attr, True)
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    yield
  finally:
    for k, v in saved_env.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    for (module, attr), value in zip(saved_flags, saved_values, strict=True):
      setattr(module, attr, value)
    datasets.utils.logging.set_verbosity(verbosity)
    if bars:
      datasets.enable_progress_bars()


def _import_datasets():
  try:
    import datasets
  except ImportError:
    return None
  return datasets


@dataclasses.dataclass(frozen=True)
class HFSource:
  """A Hugging Face Hub dataset, read from local caches.

  Attributes:
    hub_ids: repository ids, preferred first (the one downloaded); later
      ones are older names whose caches are accepted too (``("ylecun/mnist",
      "mnist")``).
    config: the configuration name (``"mnist"``, ``"plain_text"``); None for
      the only one cached.
    splits: our split name -> the dataset's split name.
    columns: our column name -> the dataset's column name.
    sizes: the dataset's split name -> the number of examples its dataset
      card (:attr:`card`) publishes, for the splits read; every copy read
      must have them (empty: not checked).
  """
  hub_ids: tuple[str, ...]
  config: Optional[str] = None
  splits: Mapping[str, str] = dataclasses.field(
      default_factory=lambda: {"train": "train", "test": "test"})
  columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
  sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)

  @property
  def hub_id(self) -> str:
    return self.hub_ids[0]

  @property
  def card(self) -> str:
    """The dataset card, where :attr:`sizes` are published."""
    return f"{CARDS}/{self.hub_id}"

  def looked_in(self, name: str, data_dir: Optional[str]) -> str:
    """Where :meth:`load` looks, in words, for messages."""
    cache = cache_dir_for(data_dir)
    entries = [os.path.join(cache, cache_entry_name(h)) for h in self.hub_ids]
    where = f"no {self.hub_id} entry at {entries[0]}"
    if len(entries) > 1:
      where += f" or {', '.join(entries[1:])} (older name)"
    if data_dir:
      where += f", no save_to_disk folder {os.path.join(cache, name)}"
    return where

  def fill_hint(self, name: str, data_dir: Optional[str]) -> str:
    """How to fill the cache, on a machine with internet access."""
    cache = cache_dir_for(data_dir)
    args = repr(self.hub_id) + (f", {self.config!r}" if self.config else "")
    return (f"python -c \"import datasets; datasets.load_dataset({args}, "
            f"cache_dir='DIR')\" then copy DIR's contents into {cache}"
            + ("" if data_dir else " (or pass --data-dir DIR)")
            + f"; or save_to_disk('DIR/{name}') on the loaded DatasetDict and "
            "pass --data-dir DIR")

  def load(self, name: str, data_dir: Optional[str] = None) -> Loaded:
    """Reads the dataset from the first local copy found.

    ``datasets`` is imported only when a copy is there, so a miss is fast.

    Args:
      name: our name of the dataset (``<data-dir>/<name>`` is checked for a
        ``save_to_disk`` folder).
      data_dir: ``--data-dir``, or None for the standard cache.

    Returns:
      ``(splits, source, class_names)``: our split -> our column -> array,
      the path read, and our column -> class names of label columns.

    Raises:
      MissingDataError: no local copy (the message says where it looked,
        why a copy found could not be used, and how to fill the cache).
      SizeMismatchError: the copy found has other split sizes than
        :attr:`sizes`.
    """
    cache = cache_dir_for(data_dir)
    saved = os.path.join(cache, name)
    candidates = [(os.path.join(cache, cache_entry_name(h)), h)
                  for h in self.hub_ids if cached_entries(cache, h)]
    if data_dir and _is_saved_to_disk(saved):
      candidates.append((saved, None))
    problems = []
    datasets = _import_datasets() if candidates else None
    if candidates and datasets is None:
      problems.append(f"found {candidates[0][0]} but the 'datasets' package "
                      f"is not installed ({INSTALL_HINT})")
    elif candidates:
      for path, hub_id in candidates:
        try:
          if hub_id is None:
            return self._from_disk(datasets, path, name)
          return self._from_cache(datasets, hub_id, cache, name)
        except SizeMismatchError:
          raise
        except Exception as e:  # pylint: disable=broad-except
          problems.append(f"found {path} but could not read it "
                          f"({one_line(e)})")
    note = "".join(f"; {p}" for p in problems)
    raise MissingDataError(
        f"Hugging Face cache: {self.looked_in(name, data_dir)}{note}. To fill "
        f"it, on a machine with internet: {self.fill_hint(name, data_dir)}")

  def open_cache(self, datasets, hub_id: str, cache: str):
    """The cached ``DatasetDict`` of ``hub_id`` (memory-mapped Arrow),
    through ``datasets`` in offline mode."""
    # A local folder named like the id would take precedence in
    # load_dataset; the hf:// form goes straight to the Hub/cache resolution.
    path = hub_id if not os.path.exists(hub_id) else f"hf://datasets/{hub_id}"
    root = os.path.join(cache, cache_entry_name(hub_id))
    config = self.config if self.config and os.path.isdir(
        os.path.join(root, self.config)) else None
    with offline(datasets):
      return datasets.load_dataset(path, config, cache_dir=cache,
                                   download_mode="reuse_dataset_if_exists")

  def check_sizes(self, name: str, dataset, hub_id: Optional[str],
                  where: str) -> dict[str, Any]:
    """The provenance of ``dataset`` (a ``DatasetDict``) after checking its
    split sizes against :attr:`sizes`.

    Raises:
      SizeMismatchError: (one line) the sizes differ; names the dataset,
        the expected and found sizes, the hub id and where the copy is.
    """
    missing = [s for s in self.splits.values() if s not in dataset]
    if missing:
      raise ValueError(f"no split {', '.join(missing)} (has "
                       f"{', '.join(dataset)})")
    found = {s: dataset[s].num_rows for s in self.splits.values()}
    revision = _revision_of(dataset) if hub_id else None
    expected = {s: n for s, n in self.sizes.items() if s in found}
    if any(found[s] != n for s, n in expected.items()):
      raise SizeMismatchError(
          f"dataset {name!r}: the copy of {hub_id or self.hub_id}"
          + (f" at revision {revision}" if revision else "")
          + f" in {where} has {format_sizes(found)} examples, but its dataset"
          f" card ({self.card}) publishes {format_sizes(expected)} (a "
          f"changed Hub copy, a wrong hub id or an interrupted download); "
          f"delete {where} to "
          f"download it again")
    return {"hub_id": hub_id, "config": self.config, "revision": revision,
            "split_sizes": found, "published_sizes": dict(self.sizes)}

  def _from_cache(self, datasets, hub_id: str, cache: str, name: str
                  ) -> Loaded:
    dataset = self.open_cache(datasets, hub_id, cache)
    root = os.path.join(cache, cache_entry_name(hub_id))
    provenance = self.check_sizes(name, dataset, hub_id, root)
    return self._convert(dataset, fallback_source=root,
                         provenance=provenance)

  def _from_disk(self, datasets, path: str, name: str) -> Loaded:
    with offline(datasets):
      dataset = datasets.load_from_disk(path)
    if not isinstance(dataset, datasets.DatasetDict):
      raise ValueError(f"{path} holds one Dataset; save a DatasetDict with "
                       f"splits {', '.join(self.splits.values())}")
    provenance = self.check_sizes(name, dataset, None, path)
    return self._convert(dataset, fallback_source=path,
                         provenance=provenance)

  def _convert(self, dataset, fallback_source: str,
               provenance: Mapping[str, Any]) -> Loaded:
    splits, names, source = {}, {}, fallback_source
    for ours, theirs in self.splits.items():
      split = dataset[theirs]
      columns = self.columns or {c: c for c in split.column_names}
      absent = [c for c in columns.values() if c not in split.column_names]
      if absent:
        raise ValueError(f"split {theirs} has no column {', '.join(absent)} "
                         f"(has {', '.join(split.column_names)})")
      table = split.select_columns(list(columns.values())).with_format(
          "arrow")[:]
      splits[ours] = {k: column_to_numpy(table.column(c), split.features[c])
                      for k, c in columns.items()}
      for k, c in columns.items():
        class_names = _class_names(split.features[c])
        if class_names:
          names[k] = class_names
      if split.cache_files:
        source = os.path.dirname(split.cache_files[0]["filename"])
    return Loaded(splits, source, names, provenance)


def _revision_of(dataset) -> Optional[str]:
  """The Hub commit a cached ``DatasetDict`` was prepared from: the name
  of its cache folder (``.../<config>/<version>/<commit>/``)."""
  for split in dataset.values():
    if split.cache_files:
      return os.path.basename(os.path.dirname(
          split.cache_files[0]["filename"]))
  return None


def _is_saved_to_disk(path: str) -> bool:
  return os.path.exists(os.path.join(path, "dataset_dict.json")) or (
      os.path.exists(os.path.join(path, "state.json")))


def _class_names(feature: Any) -> Optional[list[str]]:
  while hasattr(feature, "feature"):  # Sequence / List of class labels
    feature = feature.feature
  return list(feature.names) if hasattr(feature, "names") else None


def column_to_numpy(column, feature: Any) -> np.ndarray:
  """One Arrow column (of a ``datasets`` feature type) as a numpy array."""
  import datasets
  if isinstance(feature, datasets.Image):
    return decode_images(column.to_pylist())
  if isinstance(feature, (datasets.Value, datasets.ClassLabel)):
    return column.to_numpy()
  values = column.to_pylist()
  out = np.empty(len(values), dtype=object)
  out[:] = values
  return out


def decode_images(cells: list[Any]) -> np.ndarray:
  """Decodes ``{"bytes", "path"}`` image cells with PIL, stacked if it can."""
  from PIL import Image
  images = []
  for cell in cells:
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    source = io.BytesIO(data) if data is not None else cell["path"]
    with Image.open(source) as image:
      images.append(np.asarray(image))
  return stack(images)


def stack(values: list[np.ndarray]) -> np.ndarray:
  """``np.stack`` when shapes agree, else a 1-D object array of arrays."""
  if values and all(v.shape == values[0].shape for v in values):
    return np.stack(values)
  out = np.empty(len(values), dtype=object)
  out[:] = values
  return out

