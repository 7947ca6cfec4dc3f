"""Pretrained checkpoints in the Hugging Face hub cache, downloaded on demand.

A model with pretrained weights (``ModelSpec.pretrained``) names them by a
local directory or a hub name (``distilbert-base-uncased``,
``org/name``); :func:`locate` finds the directory: a directory holding
``config.json``, else the hub cache's
``models--<org>--<name>/snapshots/<revision>/`` (the revision ``refs/main``
names first). With ``download=True`` a checkpoint missing there is
downloaded by ``huggingface_hub.snapshot_download`` into the standard hub
cache (:func:`fetch`: the configuration, tokenizer and one weights file,
at the repository's current commit, under a lock), unless ``HF_HUB_OFFLINE``
forbids it. A checkpoint that is not on this machine and not downloaded is
a one-line :class:`MissingPretrainedError` saying where it looked and how
to fill the cache.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from optbench_jax.data import download as download_lib
from optbench_jax.errors import OptBenchError, one_line

HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")   # "name" or "org/name"
CONFIG_FILE = "config.json"
# What a checkpoint download fetches: the configuration and tokenizer files
# present, and the first of WEIGHTS present (not the TF/Flax/ONNX copies).
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
                    "vocab.txt")
WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class MissingPretrainedError(OptBenchError):
  """A pretrained checkpoint was asked for that is not on this machine."""


def hub_cache_dirs(cache_dir: Optional[str | os.PathLike] = None) -> list[Path]:
  """Where the Hugging Face hub cache may be, in the order searched.

  ``cache_dir`` alone if given; otherwise ``$HF_HUB_CACHE``,
  ``$HF_HOME/hub`` and ``~/.cache/huggingface/hub`` (those set, without
  repeats).
  """
  if cache_dir is not None:
    return [Path(cache_dir).expanduser()]
  candidates = [os.environ.get("HF_HUB_CACHE"),
                os.environ.get("HF_HOME") and
                os.path.join(os.environ["HF_HOME"], "hub"),
                "~/.cache/huggingface/hub"]
  dirs = []
  for c in candidates:
    if c and Path(c).expanduser() not in dirs:
      dirs.append(Path(c).expanduser())
  return dirs


def _repo_names(name: str, organisation: Optional[str]) -> list[str]:
  """Cache folder names of a hub name and its legacy/organisation alias.

  With ``organisation="distilbert"``: ``distilbert-base-uncased`` moved to
  ``distilbert/distilbert-base-uncased``; a download under either name
  serves both.
  """
  names = [name]
  if organisation and "/" not in name:
    names.append(f"{organisation}/{name}")
  elif organisation and name.startswith(f"{organisation}/"):
    names.append(name.split("/", 1)[1])
  return ["models--" + n.replace("/", "--") for n in names]


def _snapshot(repo: Path) -> Optional[Path]:
  """``refs/main``'s snapshot if it has a config, else the newest that has."""
  snapshots = repo / "snapshots"
  ref = repo / "refs" / "main"
  if ref.is_file():
    main = snapshots / ref.read_text().strip()
    if (main / CONFIG_FILE).is_file():
      return main
  if not snapshots.is_dir():
    return None
  found = [s for s in snapshots.iterdir() if (s / CONFIG_FILE).is_file()]
  return max(found, key=lambda s: s.stat().st_mtime) if found else None


def locate(name_or_path: str | os.PathLike,
           cache_dir: Optional[str | os.PathLike] = None,
           organisation: Optional[str] = None, *,
           download: bool = False) -> str:
  """The local directory of a pretrained checkpoint (downloaded if missing
  and ``download``).

  Args:
    name_or_path: a directory holding ``config.json``, or a hub name
      (``distilbert-base-uncased``, ``distilbert/distilbert-base-uncased``)
      looked up in the hub cache (:func:`hub_cache_dirs`) as
      ``models--<org>--<name>/snapshots/<revision>/``, preferring the
      revision ``refs/main`` names.
    cache_dir: the hub cache to search instead of the default ones.
    organisation: the hub organisation a legacy name (without one) moved
      to, searched under both names (and downloaded under the new one).
    download: download a hub name missing from the cache (:func:`fetch`).

  Returns:
    The directory.

  Raises:
    MissingPretrainedError: (one line) where it looked and how to fill the
      cache.
    DownloadError: (one line) the download failed.
  """
  path = Path(name_or_path).expanduser()
  if (path / CONFIG_FILE).is_file():
    return str(path)
  dirs = hub_cache_dirs(cache_dir)
  name = str(name_or_path)
  repos = (_repo_names(name, organisation) if HUB_NAME.fullmatch(name)
           else [])
  for cache in dirs:
    for repo in repos:
      snapshot = _snapshot(cache / repo)
      if snapshot is not None:
        return str(snapshot)
  refusal = download_lib.refusal()
  if download and repos and not refusal:
    return fetch(name, cache_dir, organisation)
  raise MissingPretrainedError(
      f"pretrained model {name!r} not found: no config.json in {path} and no "
      f"snapshot of it in the Hugging Face cache ({', '.join(map(str, dirs))});"
      f" on a machine with internet run `huggingface-cli download {name}` and "
      "copy its hub cache here (or set HF_HUB_CACHE to it), or save it with "
      f"`transformers.AutoModel.from_pretrained({name!r}).save_pretrained(DIR)`"
      " and pass DIR; or pass `--pretrained none` to train from random init"
      + (f" (not downloaded: {refusal})" if download and refusal else ""))


def fetch(name: str, cache_dir: Optional[str | os.PathLike] = None,
          organisation: Optional[str] = None) -> str:
  """Downloads a checkpoint with ``huggingface_hub.snapshot_download``;
  returns its snapshot directory.

  Fetches :data:`CHECKPOINT_FILES` and the first of :data:`WEIGHTS` the
  repository has, at its current commit, into ``cache_dir`` or the
  standard hub cache, under a lock (concurrent jobs download once).

  Raises:
    DownloadError: (one line) the Hub cannot be reached, has no such
      repository, or the download failed.
  """
  from huggingface_hub import constants, snapshot_download
  repo_id = (f"{organisation}/{name}" if organisation and "/" not in name
             else name)
  what = f"pretrained model {name!r}"
  cache = str(cache_dir or constants.HF_HUB_CACHE)
  with download_lib.cache_lock(cache, _repo_names(repo_id, None)[0], what):
    snapshot = _snapshot(Path(cache) / _repo_names(repo_id, None)[0])
    if snapshot is not None:   # downloaded by another process meanwhile
      return str(snapshot)
    info = download_lib.hub_commit(what, repo_id, "model")
    files = {s.rfilename for s in info.siblings or ()}
    weights = [w for w in WEIGHTS if w in files][:1]
    if not weights or CONFIG_FILE not in files:
      raise download_lib.DownloadError(
          f"{what}: {repo_id} has no {CONFIG_FILE} or no weights "
          f"({', '.join(WEIGHTS)}) on the Hub at {download_lib.endpoint()}")
    try:
      return snapshot_download(
          repo_id, revision=info.sha, cache_dir=cache,
          allow_patterns=[f for f in CHECKPOINT_FILES if f in files] + weights)
    except Exception as e:  # pylint: disable=broad-except
      raise download_lib.DownloadError(
          f"{what}: downloading {repo_id} (revision {info.sha}) into {cache} "
          f"failed ({one_line(e, 160)}); run again to resume") from None
