"""``python -m optbench_jax data {prepare,list}``: datasets before a campaign.

* ``data prepare --dataset imdb,sst2``: downloads what is missing (through
  ``datasets``, see ``data/download.py``, or TFDS, ``data/tfds.py``) and
  checks every copy against the split sizes its source publishes, once,
  before a sharded or Ray campaign starts; concurrent preparations of one
  cache download once.
* ``data list``: every registered dataset, where it comes from, and whether
  it is prepared: where, and its size on disk.
"""
from __future__ import annotations

import argparse
import difflib
import os
from typing import Optional

from optbench_jax.data import base
from optbench_jax.data import hf as hf_lib
from optbench_jax.errors import OptBenchError

ALL = "all"


def add_parser(subparsers) -> None:
  """Adds ``data`` and its sub-commands to the CLI's sub-parsers."""
  data = subparsers.add_parser(
      "data", help="prepare (download and check) datasets before a "
      "campaign; list them")
  commands = data.add_subparsers(dest="data_command", required=True,
                                 parser_class=type(data))
  prepare = commands.add_parser(
      "prepare", help="download what is missing and check every copy "
      "against its published split sizes")
  prepare.add_argument(
      "--dataset", required=True,
      help="comma-separated dataset names (task/name where a name belongs "
      f"to several tasks), or '{ALL}': every downloadable dataset")
  prepare.add_argument("--offline", action="store_true",
                       help="check the cache only, never download")
  listing = commands.add_parser(
      "list", help="every dataset: source, prepared or not, where, size")
  for parser in (prepare, listing):
    parser.add_argument("--data-dir", default=None,
                        help="the dataset cache (default: each library's "
                        "standard one, as for run)")


def main(args: argparse.Namespace) -> int:
  if args.data_command == "prepare":
    return prepare(named(args.dataset), args.data_dir, args.offline)
  return list_datasets(args.data_dir)


def named(text: str) -> list[base.DatasetSpec]:
  """The registry entries ``--dataset`` names, checked before anything is
  downloaded (unknown or ambiguous names are one-line errors)."""
  specs = [s for _, s in base.DATASETS.items()]
  if text.strip() == ALL:
    return [s for s in specs if s.download is not None]
  chosen = []
  for name in (n.strip() for n in text.split(",") if n.strip()):
    if "/" in name:
      chosen.append(base.get(*name.split("/", 1)))
      continue
    found = [s for s in specs if s.name == name]
    if not found:
      names = sorted({s.name for s in specs})
      close = difflib.get_close_matches(name, names, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise OptBenchError(f"unknown dataset {name!r}.{hint} Valid choices: "
                          f"{', '.join(names)}.")
    if len(found) > 1:
      raise OptBenchError(
          f"--dataset {name!r} belongs to several tasks; name one of "
          f"{', '.join(f'{s.task}/{s.name}' for s in found)}")
    chosen.append(found[0])
  if not chosen:
    raise OptBenchError("--dataset is empty")
  return chosen


def prepare(specs: list[base.DatasetSpec], data_dir: Optional[str],
            offline: bool) -> int:
  """Fetches and checks each dataset; one line each."""
  for spec in specs:
    found = base.fetch(spec.task, spec.name, data_dir, offline=offline)
    sizes = hf_lib.format_sizes(found.get("split_sizes") or {})
    if spec.download is None:
      print(f"{spec.name}: no download needed ({found.get('source')})")
      continue
    verb = "downloaded" if found["downloaded"] else "cached"
    what = (f"{found['hub_id']} at revision {found['revision']}"
            if "hub_id" in found else
            f"TFDS {found['tfds_name']} {found['version']}")
    print(f"{spec.name}: {verb} {what}, {sizes} (the published sizes), in "
          f"{found['path']}")
  return 0


def list_datasets(data_dir: Optional[str]) -> int:
  """Prints every registered dataset: its source (hub id and config, the
  split sizes its card publishes), prepared or not, its size on disk and
  where it is (or would be downloaded to)."""
  rows = [("dataset", "source", "published sizes", "state", "size", "where")]
  for key, spec in base.DATASETS.items():
    if spec.download is None:
      rows.append((key, "package or generated", "-", "no download", "-",
                   "-"))
      continue
    download = spec.download
    sizes = " / ".join(f"{n:,}" for n in download.published.values()) or "-"
    entries = download.cached(data_dir)
    if entries:
      size = _size(sum(map(disk_usage, entries)))
      rows.append((key, download.label, sizes, "prepared", size,
                   os.path.dirname(entries[0])))
    else:
      rows.append((key, download.label, sizes, "missing", "-",
                   download.cache_root(data_dir)))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
  for row in rows:
    print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
  return 0


def disk_usage(path: str) -> int:
  """Bytes of the files under ``path``."""
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


def _size(n: int) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1024 or unit == "GB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
