"""Pretrained checkpoints in the local Hugging Face hub cache.

A model with pretrained weights (``ModelSpec.pretrained``) names them by a
local directory or a hub name (``distilbert-base-uncased``,
``org/name``); :func:`locate` finds the directory, never through the
network: a directory holding ``config.json``, else the hub cache's
``models--<org>--<name>/snapshots/<revision>/`` (the revision ``refs/main``
names first). A checkpoint that is not on this machine is a one-line
:class:`MissingPretrainedError` saying where it looked and how to fill
the cache.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from optbench_jax.errors import OptBenchError

HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")   # "name" or "org/name"
CONFIG_FILE = "config.json"


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
           organisation: Optional[str] = None) -> str:
  """The local directory of a pretrained checkpoint; never the network.

  Args:
    name_or_path: a directory holding ``config.json``, or a hub name
      (``distilbert-base-uncased``, ``distilbert/distilbert-base-uncased``)
      looked up in the hub cache (:func:`hub_cache_dirs`) as
      ``models--<org>--<name>/snapshots/<revision>/``, preferring the
      revision ``refs/main`` names.
    cache_dir: the hub cache to search instead of the default ones.
    organisation: the hub organisation a legacy name (without one) moved
      to, searched under both names.

  Returns:
    The directory.

  Raises:
    MissingPretrainedError: (one line) where it looked and how to fill the
      cache.
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
  raise MissingPretrainedError(
      f"pretrained model {name!r} not found: no config.json in {path} and no "
      f"snapshot of it in the Hugging Face cache ({', '.join(map(str, dirs))});"
      f" on a machine with internet run `huggingface-cli download {name}` and "
      "copy its hub cache here (or set HF_HUB_CACHE to it), or save it with "
      f"`transformers.AutoModel.from_pretrained({name!r}).save_pretrained(DIR)`"
      " and pass DIR; or pass `--pretrained none` to train from random init")
