"""TensorFlow Datasets read from a local ``data_dir`` (not downloaded).

A :class:`TFDSSource` names a prepared TFDS dataset (``mnist``,
``imdb_reviews/plain_text``) and how its splits and features map onto ours.
:meth:`TFDSSource.load` looks for ``<data_dir>/<name>/<version>/`` (the
newest version present) where ``data_dir`` is ``--data-dir`` when given, else
``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (TFDS's own default), and
opens it with ``tfds.builder_from_directory``: a read-only builder that has
no download code at all (what ``tfds.data_source(name, data_dir=...,
download=False)`` does for a prepared dataset, without needing the dataset's
builder code to be registered).

Reading needs only ``tensorflow-datasets`` (an optional extra, ``data``; it
brings ``array_record`` on Linux) and Pillow, not TensorFlow, when the
dataset was prepared in the ``array_record`` format (``tfds build NAME
--file_format array_record``): examples come from ``builder.as_data_source``.
TFDS's default format, ``tfrecord``, is read with ``tf.data`` and so needs
TensorFlow; without it, such a copy is reported as unusable in the error.
``tensorflow_datasets`` is imported only when a prepared copy exists.

A source marked ``download=True`` is its dataset's download path
(:class:`TFDSDownload`): a missing copy is made by TFDS itself,
``tfds.builder(name, data_dir=...).download_and_prepare()`` in the
``array_record`` format (its downloader, checksums and progress bars),
under the cache's lock, then read as any prepared copy and checked against
the split sizes the TFDS catalog publishes. Preparing a dataset whose
features are encoded images (``tfds.features.Image``) needs TensorFlow:
without it the download stops in one line that says so.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib.util
import logging
import os
import re
import sys
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from optbench_jax.data import download as download_lib
from optbench_jax.data.hf import (INSTALL_HINT, Loaded, SizeMismatchError,
                                  format_sizes, stack)
from optbench_jax.errors import MissingDataError, one_line

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_CHUNK = 4096  # examples decoded per __getitems__ call


def default_data_dir() -> str:
  """TFDS's default: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR")
                            or os.path.join("~", "tensorflow_datasets"))


def data_dir_for(data_dir: Optional[str]) -> str:
  """``--data-dir`` when given, else TFDS's default."""
  if data_dir:
    return os.path.abspath(os.path.expanduser(data_dir))
  return default_data_dir()


def prepared_versions(root: str, name: str) -> list[str]:
  """``<root>/<name>/<version>`` folders holding a prepared dataset, oldest
  first."""
  found = [p for p in glob.glob(os.path.join(root, name, "*"))
           if _VERSION.match(os.path.basename(p))
           and os.path.exists(os.path.join(p, "dataset_info.json"))]
  return sorted(found, key=lambda p: tuple(
      int(x) for x in os.path.basename(p).split(".")))


def tfds_installed() -> bool:
  return importlib.util.find_spec("tensorflow_datasets") is not None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """Hides absl's warnings (e.g. "OpenCV is not installed") for a block."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


CATALOG = "https://www.tensorflow.org/datasets/catalog"
# Retries of one file by TFDS's downloader (its own default is 10, with
# exponential backoff: minutes before a server in trouble or no network is
# reported).
RETRIES = 2


@contextlib.contextmanager
def _bounded_retries() -> Iterator[None]:
  """TFDS's downloader retries a file :data:`RETRIES` times in the block
  (its module constant ``MAX_RETRIES``, read at each request)."""
  from tensorflow_datasets.core.download import downloader
  saved = downloader.MAX_RETRIES
  downloader.MAX_RETRIES = RETRIES
  try:
    yield
  finally:
    downloader.MAX_RETRIES = saved


@dataclasses.dataclass(frozen=True)
class TFDSSource:
  """A TFDS dataset, read only from a local ``data_dir``.

  Attributes:
    name: the TFDS name, with its config if any (``"imdb_reviews/plain_text"``).
    splits: our split name -> the dataset's split name.
    columns: our column name -> the dataset's top-level feature name.
    sizes: the dataset's split name -> the number of examples the TFDS
      catalog publishes (checked after a download, and on every read of a
      copy this source downloads).
    download: this source is its dataset's download path
      (:class:`TFDSDownload`).
  """
  name: str
  splits: Mapping[str, str] = dataclasses.field(
      default_factory=lambda: {"train": "train", "test": "test"})
  columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
  sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
  download: bool = False

  def looked_in(self, data_dir: Optional[str]) -> str:
    """Where :meth:`load` looks, in words, for messages."""
    path = os.path.join(data_dir_for(data_dir), self.name)
    return f"no prepared {self.name} at {path}"

  def fill_hint(self, data_dir: Optional[str]) -> str:
    """How to fill the data_dir, on a machine with internet access."""
    root = data_dir_for(data_dir)
    return (f"tfds build {self.name} --data_dir DIR --file_format array_record"
            f" then copy DIR's contents into {root}"
            + ("" if data_dir else " (or pass --data-dir DIR)"))

  def load(self, name: str, data_dir: Optional[str] = None) -> Loaded:
    """Reads the newest prepared version found.

    Args:
      name: our name of the dataset (for messages).
      data_dir: ``--data-dir``, or None for TFDS's default.

    Returns:
      ``(splits, source, class_names)`` as :meth:`HFSource.load` does.

    Raises:
      MissingDataError: no prepared copy, or one that cannot be read here
        (TFDS not installed, ``tfrecord`` without TensorFlow, ...).
      SizeMismatchError: a copy whose split sizes are not the published
        :attr:`sizes`.
    """
    root = data_dir_for(data_dir)
    versions = prepared_versions(root, self.name)
    problem = ""
    if not tfds_installed():
      problem = f"tensorflow-datasets is not installed ({INSTALL_HINT})"
      if versions:
        problem = f"found {versions[-1]} but {problem}"
    elif versions:
      try:
        loaded = self._read(versions[-1])
      except Exception as e:  # pylint: disable=broad-except
        problem = f"found {versions[-1]} but could not read it ({one_line(e)})"
      else:
        self.check_sizes(name, loaded.provenance["split_sizes"], versions[-1])
        return loaded
    note = f"; {problem}" if problem else ""
    raise MissingDataError(
        f"TensorFlow Datasets: {self.looked_in(data_dir)}{note}. To fill it, "
        f"on a machine with internet: {self.fill_hint(data_dir)}")

  def check_sizes(self, name: str, found: Mapping[str, int], path: str
                  ) -> None:
    """A one-line :class:`SizeMismatchError` when ``found`` (split ->
    examples) disagrees with the published :attr:`sizes` (none: no check)."""
    published = dict(self.sizes)
    if not published or {s: found.get(s) for s in published} == published:
      return
    raise SizeMismatchError(
        f"dataset {name!r}: the copy of TFDS {self.name} in {path} has "
        f"{format_sizes({s: found.get(s, 0) for s in published})} examples, "
        f"but the TFDS catalog publishes {format_sizes(published)}; delete it "
        f"to prepare it again")

  def _read(self, path: str) -> Loaded:
    import tensorflow_datasets as tfds
    with _quiet():
      builder = tfds.builder_from_directory(path)
      missing = [s for s in self.splits.values()
                 if s not in builder.info.splits]
      if missing:
        raise ValueError(f"no split {', '.join(missing)} (has "
                         f"{', '.join(builder.info.splits)})")
      file_format = builder.info.file_format
      random_access = getattr(type(file_format), "with_random_access", None)
      if random_access is not None and file_format in random_access():
        splits = {ours: self._from_data_source(builder.as_data_source(theirs))
                  for ours, theirs in self.splits.items()}
      elif importlib.util.find_spec("tensorflow") is not None:
        splits = {ours: self._from_tf_data(tfds, builder, theirs)
                  for ours, theirs in self.splits.items()}
      else:
        fmt = getattr(file_format, "value", file_format)
        raise ValueError(
            f"it is in the {fmt} format, which needs TensorFlow to read (pip "
            f"install tensorflow), or rebuild it with --file_format "
            f"array_record")
    names = {}
    for ours, theirs in self._columns(builder).items():
      class_names = _class_names(builder.info.features[theirs])
      if class_names:
        names[ours] = class_names
    found = {theirs: _count(splits[ours])
             for ours, theirs in self.splits.items()}
    return Loaded(splits, path, names, {
        "tfds_name": self.name, "version": os.path.basename(path),
        "split_sizes": found})

  def _columns(self, builder) -> Mapping[str, str]:
    return self.columns or {k: k for k in builder.info.features.keys()}

  def _from_data_source(self, source) -> dict[str, np.ndarray]:
    examples: list[dict[str, Any]] = []
    for start in range(0, len(source), _CHUNK):
      keys = list(range(start, min(start + _CHUNK, len(source))))
      if hasattr(source, "__getitems__"):
        examples.extend(source.__getitems__(keys))
      else:
        examples.extend(source[k] for k in keys)
    columns = self.columns or {k: k for k in (examples[0] if examples else {})}
    return {ours: _to_numpy([e[theirs] for e in examples])
            for ours, theirs in columns.items()}

  def _from_tf_data(self, tfds, builder, split: str) -> dict[str, np.ndarray]:
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return {ours: _to_numpy(list(data[theirs]))
            for ours, theirs in self._columns(builder).items()}


def _count(arrays: dict[str, np.ndarray]) -> int:
  return len(next(iter(arrays.values()))) if arrays else 0


def _to_numpy(values: list[Any]) -> np.ndarray:
  """Arrays stack; bytes become str; anything else is an object array."""
  values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
  if values and isinstance(values[0], np.ndarray) and values[0].ndim > 0:
    return stack(values)
  if values and isinstance(values[0], (str, dict, list)):
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
  return np.asarray(values)


def _class_names(feature: Any) -> Optional[list[str]]:
  while hasattr(feature, "feature"):  # Sequence of class labels
    feature = feature.feature
  names = getattr(feature, "names", None)
  return list(names) if names else None


@dataclasses.dataclass(frozen=True)
class TFDSDownload(download_lib.Download):
  """A dataset that TFDS downloads and prepares (module docstring).

  Attributes:
    source: its TFDS source (``download=True``).
  """
  source: TFDSSource

  @property
  def origin(self) -> str:
    """Where it downloads from: the TFDS dataset."""
    return f"TFDS {self.source.name}"

  @property
  def label(self) -> str:
    """The source, in words (``data list``)."""
    return self.origin

  @property
  def published(self) -> Mapping[str, int]:
    """The split sizes the TFDS catalog publishes."""
    return self.source.sizes

  @property
  def card(self) -> str:
    """The dataset's page in the TFDS catalog."""
    return f"{CATALOG}/{self.source.name.split('/')[0]}"

  def cache_root(self, data_dir: Optional[str] = None) -> str:
    return data_dir_for(data_dir)

  def cached(self, data_dir: Optional[str] = None) -> list[str]:
    """The newest prepared copy, if any."""
    return prepared_versions(data_dir_for(data_dir), self.source.name)[-1:]

  def fetch(self, data_dir: Optional[str] = None, *, offline: bool = False
            ) -> dict:
    """Makes sure a checked copy is prepared; returns its provenance (and
    ``path``, ``downloaded``), as
    :meth:`~optbench_jax.data.download.HubDownload.fetch` does.

    Raises:
      MissingDataError: TFDS not installed, or missing and the network
        forbidden.
      DownloadError: the download or the preparation failed (one line).
      SizeMismatchError: the copy has other split sizes than published.
    """
    root = data_dir_for(data_dir)
    if not tfds_installed():
      raise MissingDataError(f"{self.what}: TensorFlow Datasets downloads "
                             f"it, and tensorflow-datasets is not installed "
                             f"({INSTALL_HINT})")
    found = self.cached(data_dir)
    if found:
      return self._checked(found[0], downloaded=False)
    reason = download_lib.refusal(offline)
    if reason:
      raise MissingDataError(
          f"{self.what} is not prepared in {root} and {reason}; prepare it "
          f"where the network is allowed (python -m optbench_jax data "
          f"prepare --dataset {self.name})")
    key = "tfds__" + self.source.name.replace("/", "__")
    with download_lib.cache_lock(root, key, self.what):
      found = self.cached(data_dir)
      if found:   # prepared by another process meanwhile
        return self._checked(found[0], downloaded=False)
      self._prepare(root)
      found = self.cached(data_dir)
      if not found:
        raise download_lib.DownloadError(
            f"{self.what}: TFDS prepared {self.source.name} but no copy is "
            f"in {root}")
      return self._checked(found[0], downloaded=True)

  def _prepare(self, root: str) -> None:
    import tensorflow_datasets as tfds
    try:
      # TFDS prints its progress on stdout: it goes to stderr, beside the
      # progress bars, so stdout holds only the command's results.
      with (_quiet(), _bounded_retries(),
            contextlib.redirect_stdout(sys.stderr)):
        builder = tfds.builder(self.source.name, data_dir=root,
                               file_format="array_record")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False))
    except ModuleNotFoundError as e:
      # TFDS re-raises it from the feature encoder with its own message.
      if ((e.name or "").split(".")[0] == "tensorflow"
          or "No module named 'tensorflow'" in str(e)):
        raise download_lib.DownloadError(
            f"{self.what}: TFDS needs TensorFlow to prepare "
            f"{self.source.name} (it encodes its images): pip install "
            f"tensorflow-cpu, or prepare it on another machine (python -m "
            f"optbench_jax data prepare) and copy {root}") from None
      raise download_lib.DownloadError(
          f"{self.what}: preparing {self.source.name} with TFDS failed "
          f"({one_line(e, 160)})") from None
    except Exception as e:  # pylint: disable=broad-except
      raise download_lib.DownloadError(
          f"{self.what}: downloading and preparing {self.source.name} with "
          f"TFDS into {root} failed ({one_line(e, 160)}); run again to "
          f"resume") from None

  def _checked(self, path: str, downloaded: bool) -> dict:
    import tensorflow_datasets as tfds
    with _quiet():
      info = tfds.builder_from_directory(path).info
    found = {split: info.splits[split].num_examples for split in info.splits}
    self.source.check_sizes(self.name, found, path)
    return {"tfds_name": self.source.name, "version": os.path.basename(path),
            "split_sizes": found, "published_sizes": dict(self.published),
            "path": path, "downloaded": downloaded}
