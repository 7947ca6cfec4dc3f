"""On-demand downloads, through the library that owns each dataset.

A dataset registered from the Hugging Face Hub (:class:`HubDownload`) that
is not in the local cache is downloaded by ``datasets.load_dataset(hub_id,
config, cache_dir=..., revision=...)`` itself (its progress bars, its
Arrow cache, its own locks), into ``--data-dir`` or the standard cache, and
then read through the cache like any other copy (``data/hf.py``), its split
sizes checked against the dataset card's. Pretrained checkpoints go the
same way through ``huggingface_hub.snapshot_download``
(``models/hub.py``). Nothing here speaks HTTP itself.

* **Offline.** ``--offline`` and the libraries' own ``HF_DATASETS_OFFLINE``
  / ``HF_HUB_OFFLINE`` forbid the network (:func:`refusal`): a missing copy
  is the cache's one-line message.
* **Unreachable.** Before a download, one request asks the Hub for the
  repository's current commit (:func:`hub_commit`), with the Hub client's
  own timeout (``HF_HUB_ETAG_TIMEOUT``) and no retries: no network, a
  missing repository or a server in trouble is one line at once, not a
  stack of retries. The commit is then downloaded, and recorded.
* **Loading scripts.** A repository that is a loading script
  (``<name>.py``), which ``datasets`` 4.0 and later refuse to run, is
  refused in one line from the same request (:func:`refuse_loading_script`).
* **Concurrent jobs** (shards, Ray workers) that miss the same dataset take
  a file lock in the cache (:func:`cache_lock`): one downloads, the others
  wait (saying so) and then read its copy. ``datasets`` prepares into a
  ``.incomplete`` folder renamed when complete, which is never read.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Any, Iterator, Optional

from optbench_jax.data.hf import (INSTALL_HINT, OFFLINE_ENV, HFSource,
                                  cache_dir_for, cache_entry_name,
                                  cached_entries)
from optbench_jax.errors import MissingDataError, OptBenchError, one_line

_TRUE = ("1", "ON", "YES", "TRUE")
LOCKS = ".optbench_locks"  # the folder of lock files inside a cache


class DownloadError(OptBenchError):
  """A download that could not be made (one line: what, from where, why)."""


def refusal(offline: bool = False) -> Optional[str]:
  """Why the network may not be used (``--offline``, or the variable set),
  or None when it may."""
  if offline:
    return "--offline is set"
  for var in OFFLINE_ENV:
    if os.environ.get(var, "").upper() in _TRUE:
      return f"{var}={os.environ[var]} is set"
  return None


def endpoint() -> str:
  """The Hub the libraries talk to (``$HF_ENDPOINT``, else huggingface.co)."""
  from huggingface_hub import constants
  return constants.ENDPOINT


def hub_commit(what: str, repo_id: str, repo_type: str) -> Any:
  """The repository's info (``.sha``: its current commit; ``.siblings``)
  from one request, or a one-line :class:`DownloadError`.

  Args:
    what: the thing wanted, for the message (``dataset 'imdb'``).
    repo_id: the Hub repository.
    repo_type: ``"dataset"`` or ``"model"``.
  """
  from huggingface_hub import HfApi, constants, errors
  api = HfApi(endpoint=endpoint())
  call = api.dataset_info if repo_type == "dataset" else api.model_info
  try:
    return call(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
  except errors.RepositoryNotFoundError:
    raise DownloadError(
        f"{what}: the Hub at {endpoint()} has no {repo_type} {repo_id} (or "
        f"it is private or gated)") from None
  except errors.HfHubHTTPError as e:
    status = e.response.status_code if e.response is not None else "?"
    raise DownloadError(
        f"{what}: the Hub at {endpoint()} answered HTTP {status} for "
        f"{repo_id}; try again later, or prepare it on another machine "
        f"(python -m optbench_jax data prepare) and copy the cache") from None
  except Exception as e:  # pylint: disable=broad-except
    # No network, DNS, TLS, a timeout: the HTTP client's own exception types.
    raise DownloadError(
        f"{what}: cannot reach the Hugging Face Hub at {endpoint()} "
        f"({one_line(e, 120)}); connect this machine, or fill the cache on "
        f"one with internet (python -m optbench_jax data prepare) and copy "
        f"it here") from None


def refuse_loading_script(what: str, repo_id: str, info: Any,
                          version: str) -> None:
  """A one-line :class:`DownloadError` when the dataset repository is a
  loading script (``<name>.py`` at its root, e.g. ``bbaaaa/iwslt14-de-en``):
  ``datasets`` 4.0 dropped scripts, and ``load_dataset`` refuses such a
  repository only after its metadata requests; refused here before any."""
  script = repo_id.rsplit("/", 1)[-1] + ".py"
  files = {getattr(s, "rfilename", None) for s in (info.siblings or ())}
  if script in files:
    raise DownloadError(
        f"{what}: the Hub repository {repo_id} is a loading script "
        f"({script}), which datasets {version} does not run (scripts were "
        f"dropped in datasets 4.0); prepare it with datasets<4 on another "
        f"machine and copy the cache (--data-dir)")


@contextlib.contextmanager
def cache_lock(cache_dir: str, key: str, what: str) -> Iterator[None]:
  """An exclusive lock on ``key`` in ``cache_dir`` (a file lock, freed by
  the system if its holder dies); says on stderr when it waits for
  another process."""
  import filelock
  folder = os.path.join(cache_dir, LOCKS)
  lock = filelock.FileLock(os.path.join(folder, f"{key}.lock"))
  try:
    os.makedirs(folder, exist_ok=True)
    try:
      lock.acquire(blocking=False)
    except filelock.Timeout:
      print(f"waiting for another process preparing {what} (lock "
            f"{lock.lock_file})", file=sys.stderr, flush=True)
      lock.acquire()
  except OSError as e:
    raise DownloadError(f"{what}: cannot lock the cache {cache_dir} to "
                        f"download into it ({one_line(e, 160)})") from None
  try:
    yield
  finally:
    lock.release()


def _import_datasets(what: str):
  try:
    import datasets
  except ImportError:
    raise MissingDataError(f"{what}: downloading it needs the 'datasets' "
                           f"package ({INSTALL_HINT})") from None
  return datasets


@dataclasses.dataclass(frozen=True)
class Download:
  """A dataset's download path (``DatasetSpec.download``): :class:`HubDownload`
  or :class:`~optbench_jax.data.tfds.TFDSDownload`. Each has ``origin``
  (where it downloads from), ``label``, ``card``, ``published`` (the split sizes its source publishes),
  ``cache_root(data_dir)``, ``cached(data_dir)`` and ``fetch(data_dir,
  offline=...)``.

  Attributes:
    name: our name of the dataset.
  """
  name: str

  @property
  def what(self) -> str:
    return f"dataset {self.name!r}"


@dataclasses.dataclass(frozen=True)
class HubDownload(Download):
  """A dataset that downloads from the Hugging Face Hub.

  Attributes:
    source: its Hub source; its first hub id is the one downloaded.
  """
  source: HFSource

  @property
  def origin(self) -> str:
    """Where it downloads from: the hub id."""
    return self.source.hub_id

  @property
  def label(self) -> str:
    """The source, in words (``data list``): hub id (config)."""
    config = self.source.config
    return self.origin + (f" ({config})" if config else "")

  @property
  def published(self):
    """The split sizes its dataset card publishes."""
    return self.source.sizes

  @property
  def card(self) -> str:
    """Where :attr:`published` is published."""
    return self.source.card

  def cache_root(self, data_dir: Optional[str] = None) -> str:
    return cache_dir_for(data_dir)

  def cached(self, data_dir: Optional[str] = None) -> list[str]:
    """The prepared cache entries of this dataset (any of its hub ids)."""
    cache = cache_dir_for(data_dir)
    return [e for h in self.source.hub_ids for e in cached_entries(cache, h)]

  def fetch(self, data_dir: Optional[str] = None, *, offline: bool = False
            ) -> dict:
    """Makes sure a checked copy is in the cache; returns its provenance
    (and ``path``, ``downloaded``).

    A cached copy is checked, not downloaded again; a missing one is
    downloaded under :func:`cache_lock` unless :func:`refusal` says no
    (a process that waited for the lock reads the copy made meanwhile).

    Args:
      data_dir: ``--data-dir``, or None for the standard cache.
      offline: ``--offline``.

    Raises:
      MissingDataError: missing and the network forbidden.
      DownloadError: the download failed (one line).
      SizeMismatchError: the copy has other split sizes than published.
    """
    cache = cache_dir_for(data_dir)
    hub_id = self.source.hub_id
    datasets = _import_datasets(self.what)
    found = self._cached_copy(datasets, cache)
    if found is not None:   # no lock needed to read (a read-only cache)
      return found
    reason = refusal(offline)
    if reason:
      raise MissingDataError(
          f"{self.what} is not in the cache {cache} and {reason}; prepare "
          f"it where the network is allowed (python -m optbench_jax data "
          f"prepare --dataset {self.name})")
    with cache_lock(cache, cache_entry_name(hub_id), self.what):
      found = self._cached_copy(datasets, cache)
      if found is not None:   # prepared by another process meanwhile
        return found
      info = hub_commit(self.what, hub_id, "dataset")
      refuse_loading_script(self.what, hub_id, info, datasets.__version__)
      commit = info.sha
      try:
        datasets.load_dataset(hub_id, self.source.config, cache_dir=cache,
                              revision=commit)
      except Exception as e:  # pylint: disable=broad-except
        raise DownloadError(
            f"{self.what}: downloading {hub_id} (revision {commit}) into "
            f"{cache} failed ({one_line(e, 160)}); run again to resume"
        ) from None
      return self._checked(datasets, hub_id, cache, downloaded=True)

  def _cached_copy(self, datasets, cache: str) -> Optional[dict]:
    for hub_id in self.source.hub_ids:
      if cached_entries(cache, hub_id):
        return self._checked(datasets, hub_id, cache, downloaded=False)
    return None

  def _checked(self, datasets, hub_id: str, cache: str, downloaded: bool
               ) -> dict:
    """The provenance of the cached copy, its sizes checked."""
    path = os.path.join(cache, cache_entry_name(hub_id))
    try:
      dataset = self.source.open_cache(datasets, hub_id, cache)
    except Exception as e:  # pylint: disable=broad-except
      raise DownloadError(
          f"{self.what}: found {path} but could not read it "
          f"({one_line(e, 160)}); delete it to download it again") from None
    provenance = self.source.check_sizes(self.name, dataset, hub_id, path)
    return {**provenance, "path": path, "downloaded": downloaded}
