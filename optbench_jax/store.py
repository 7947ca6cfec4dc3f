"""The run store: the one owner of the on-disk format of results.

Everything the benchmark writes lives in one tree::

  <output_dir>/<task>/<dataset>/<model>/          a campaign (campaign_dir)
      summary.csv  epochs.csv  seeds.csv           campaign files
      vocabulary.json  .campaign.lock              fitted vocabulary, lock
      <optimizer>[/lr_<lr>][/seed_<s>]/            a run (run_dir)
          run_metadata.json  history.json          settings+status, epochs
          samples/epoch_NNN.json  samples/test.json  a task's decoded samples
          checkpoints/initial  checkpoints/epochs/  Orbax: initial params,
                                                   per-epoch train states
          analysis/                                ``analyze``'s files
      report/                                      ``report``'s files

This module spells every file name once, writes every file atomically
(:func:`atomic_path`: a temporary ``.tmp-*`` file renamed into place, so a
reader never sees half a file and a kill leaves only a ``.tmp-*`` file that
:func:`remove_partial_writes` deletes), says when a run is finished
(:func:`read_run`: both files intact, a finished status and one history
record per epoch run), which sample files are damaged
(:func:`damaged_samples`) and finds runs below a directory
(:func:`find_runs`).
``train``, ``analysis``, ``tasks`` (the vocabulary cache) and the campaign
runner all go through it; it imports nothing of the package but its errors.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import tempfile
from typing import Any, Iterator, Optional, Sequence

from optbench_jax.errors import OptBenchError

# -- names ---------------------------------------------------------------------
METADATA = "run_metadata.json"
HISTORY = "history.json"
SAMPLES = "samples"
CHECKPOINTS = "checkpoints"
INITIAL = "initial"           # checkpoints/initial: the initial parameters
EPOCH_CHECKPOINTS = "epochs"  # checkpoints/epochs/<epoch>: train states
TEST_SAMPLES = "test"         # samples/test.json: the test split's samples
ANALYSIS = "analysis"
REPORT = "report"
SUMMARY = "summary.csv"
EPOCHS = "epochs.csv"
SEEDS = "seeds.csv"
TRIALS = "trials"             # <campaign>/trials/<optimizer>/trial_NNN
TUNING = "tuning.csv"         # one row per trial (--tune)
BUDGET = "budget.csv"         # the best result per number of trials
BUDGET_FIGURE = "budget.png"  # ... drawn
VOCABULARY = "vocabulary.json"
LOCK = ".campaign.lock"
TMP_PREFIX = ".tmp-"
# Directories below a run or a campaign that never hold runs.
# Not searched for runs: a run's own folders, and the tuning trials (the
# campaign's results are the selected trials' re-runs; find the trials
# under <campaign>/trials).
NOT_RUNS = (CHECKPOINTS, SAMPLES, ANALYSIS, REPORT, TRIALS)

FINISHED = ("completed", "diverged")


def campaign_dir(output_dir: str, task: str, dataset: str, model: str) -> str:
  """``<output_dir>/<task>/<dataset>/<model>``."""
  return os.path.join(output_dir, task, dataset, model)


def campaign_dir_above(run_dir: str, task: str, dataset: str, model: str
                       ) -> Optional[str]:
  """The campaign directory ``<...>/<task>/<dataset>/<model>`` above
  ``run_dir`` (where the campaign's vocabulary is cached), or None if the
  run does not lie in a campaign's tree."""
  path = os.path.abspath(run_dir)
  while path != os.path.dirname(path):
    path = os.path.dirname(path)
    if path.split(os.sep)[-3:] == [task, dataset, model]:
      return path
  return None


def run_dir(output_dir: str, task: str, dataset: str, model: str,
            optimizer: str, *, learning_rate: Optional[float] = None,
            seed: Optional[int] = None) -> str:
  """``<campaign_dir>/<optimizer>[/lr_<lr>][/seed_<s>]``: ``learning_rate``
  when the campaign trains a grid, ``seed`` when it trains several seeds."""
  parts = [campaign_dir(output_dir, task, dataset, model), optimizer]
  if learning_rate is not None:
    parts.append(f"lr_{learning_rate:g}")
  if seed is not None:
    parts.append(f"seed_{seed}")
  return os.path.join(*parts)


def trial_dir(output_dir: str, task: str, dataset: str, model: str,
              optimizer: str, trial: int) -> str:
  """``<campaign_dir>/trials/<optimizer>/trial_NNN``: a tuning trial."""
  return os.path.join(campaign_dir(output_dir, task, dataset, model), TRIALS,
                      optimizer, f"trial_{trial:03d}")


def run_label(optimizer: str, *, learning_rate: Optional[float] = None,
              seed: Optional[int] = None) -> str:
  """How a run is named in plots and tables (the directory's words)."""
  label = optimizer
  if learning_rate is not None:
    label += f" lr={learning_rate:g}"
  if seed is not None:
    label += f" seed={seed}"
  return label


def is_run_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, METADATA))


def samples_path(run_dir: str, epoch: Optional[int] = None) -> str:
  """``samples/epoch_NNN.json``: a task's samples of the evaluation after
  ``epoch`` (1-based); ``samples/test.json`` (``epoch`` None): of the test
  split, after the last epoch."""
  name = TEST_SAMPLES if epoch is None else f"epoch_{epoch:03d}"
  return os.path.join(run_dir, SAMPLES, f"{name}.json")


def initial_checkpoint(run_dir: str) -> str:
  return os.path.abspath(os.path.join(run_dir, CHECKPOINTS, INITIAL))


def epoch_checkpoints(run_dir: str) -> str:
  return os.path.abspath(os.path.join(run_dir, CHECKPOINTS,
                                      EPOCH_CHECKPOINTS))


# -- atomic writes -------------------------------------------------------------
def _is_primary() -> bool:
  """Only process 0 writes when several processes train together."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index() == 0


def umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside ``path``; on success it is renamed to
  ``path`` (readers never see a partial file; a kill leaves a ``.tmp-*``
  file that :func:`remove_partial_writes` deletes), with the permissions the
  umask gives ordinary files."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX)
  os.close(fd)
  try:
    os.chmod(tmp, 0o666 & ~umask())  # as an ordinary file (mkstemp: 0600)
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically; only process 0 writes."""
  if not _is_primary():
    return
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)


def remove_partial_writes(directory: str, *, recursive: bool = False) -> None:
  """Deletes what a kill inside :func:`atomic_path` left (``.tmp-*``) in
  ``directory`` (and, with ``recursive``, in every directory below it)."""
  if not _is_primary() or not os.path.isdir(directory):
    return
  walk = os.walk(directory) if recursive else [
      (directory, [], os.listdir(directory))]
  for root, _, files in walk:
    for name in files:
      if name.startswith(TMP_PREFIX):
        try:
          os.unlink(os.path.join(root, name))
        except FileNotFoundError:
          pass  # another process cleaned it first


@contextlib.contextmanager
def unchanged_on_error(directory: str, names: Sequence[str]) -> Iterator[None]:
  """Undoes what the block wrote into ``directory`` if it raises: each file
  of ``names`` there gets its earlier bytes back (or is deleted if it did
  not exist), and the directories created on the way to ``directory`` are
  removed. A refusal that only the fitted data can raise (a QA
  ``--max-length`` that cuts every answer) thus leaves the output directory
  as it found it, although the vocabulary was cached before it."""
  created = None
  path = os.path.abspath(directory)
  while not os.path.exists(path):
    created, path = path, os.path.dirname(path)
  before = {}
  for name in names:
    file = os.path.join(directory, name)
    if os.path.isfile(file):
      with open(file, "rb") as f:
        before[file] = f.read()
    else:
      before[file] = None
  try:
    yield
  except BaseException:
    if created is not None:  # new, so nothing in it is anyone else's result
      shutil.rmtree(created, ignore_errors=True)
    else:
      for file, blob in before.items():
        if blob is None:
          if os.path.exists(file):
            os.unlink(file)
        else:
          with atomic_path(file) as tmp, open(tmp, "wb") as f:
            f.write(blob)
    raise


# -- JSON and CSV --------------------------------------------------------------
class DamagedFile(Exception):
  """A result file that exists but cannot be read (truncated, empty, or
  valid JSON of the wrong kind; a checkpoint with truncated or missing
  parts). The message is ``"<path>: <what is wrong>"``."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path, self.reason = path, reason


def _finite_or_none(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _json_safe(obj):
  if isinstance(obj, dict):
    return {k: _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  return _finite_or_none(obj)


def _describe(obj) -> str:
  """Non-JSON values (a mask function, a dtype) are written by name."""
  return getattr(obj, "__name__", None) or repr(obj)


def as_json(value: Any) -> Any:
  """``value`` as it reads back from a JSON file (tuples as lists, ...)."""
  return json.loads(json.dumps(_json_safe(value), default=_describe))


def write_json(path: str, obj: Any) -> None:
  """JSON with NaN/inf written as null (standard JSON has neither)."""
  write_text(path, json.dumps(_json_safe(obj), indent=2, default=_describe))


def read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_json_if_intact(path: str, kind: Optional[type] = None) -> Any:
  """The JSON in ``path``; None if absent; :class:`DamagedFile` if it
  cannot be parsed or (with ``kind``) is not a ``kind``."""
  if not os.path.exists(path):
    return None
  try:
    value = read_json(path)
  except (ValueError, UnicodeDecodeError) as e:
    raise DamagedFile(path, str(e)) from None
  if kind is not None and not isinstance(value, kind):
    raise DamagedFile(path, f"holds a JSON {type(value).__name__}, not a "
                      f"{kind.__name__}")
  return value


def read_history(run_dir: str) -> Optional[list]:
  """The run's history (one record, a JSON object, per epoch); None if
  absent; :class:`DamagedFile` if it is not a list of records."""
  path = os.path.join(run_dir, HISTORY)
  history = read_json_if_intact(path, list)
  if history is not None and not all(isinstance(h, dict) for h in history):
    raise DamagedFile(path, "holds a record that is not a JSON object")
  return history


def write_csv(path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(columns),
                          extrasaction="ignore")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: ("" if row.get(k) is None else row.get(k))
                     for k in columns})
  write_text(path, buffer.getvalue())


# -- runs ----------------------------------------------------------------------
@dataclasses.dataclass
class StoredRun:
  """A run directory as it is on disk.

  ``state``: ``completed`` or ``diverged`` (finished), ``unfinished`` (still
  training, or killed), or ``unreadable`` (a damaged or missing
  ``run_metadata.json``, or a damaged ``history.json``); ``problem`` then
  says which, on one line (``history damaged: <path>: <why>``).
  """
  run_dir: str
  metadata: dict
  history: list
  state: str
  problem: Optional[str] = None   # what is damaged, for ``unreadable``

  @property
  def finished(self) -> bool:
    return self.state in FINISHED

  @property
  def seed(self) -> int:
    return self.metadata.get("seed", 0)

  @property
  def configuration(self) -> str:
    return "/".join(str(self.metadata.get(k)) for k in ("task", "dataset",
                                                         "model"))


def read_run(path: str) -> StoredRun:
  """The run in ``path`` (never raises for damaged files: they make it
  ``unreadable``, with the reason in ``problem``)."""
  try:
    meta = read_json_if_intact(os.path.join(path, METADATA), dict)
  except DamagedFile as e:
    return StoredRun(path, {}, [], "unreadable", f"metadata damaged: {e}")
  try:
    history = read_history(path)
  except DamagedFile as e:
    return StoredRun(path, meta or {}, [], "unreadable",
                     f"history damaged: {e}")
  if not meta:
    return StoredRun(path, {}, history or [], "unreadable",
                     f"metadata missing: {os.path.join(path, METADATA)}: "
                     f"absent or empty")
  history = history or []
  finished = (meta.get("status") in FINISHED
              and len(history) == meta.get("epochs_run"))
  return StoredRun(path, meta, history,
                   meta["status"] if finished else "unfinished")


def read_finished(path: str) -> Optional[StoredRun]:
  """The run in ``path`` if it is finished, else None (also when a file is
  damaged: the run is then trained again)."""
  run = read_run(path)
  return run if run.finished else None


def damaged_samples(run_dir: str) -> dict[str, Optional[int]]:
  """The run's sample files that exist but cannot be read, each with the
  epoch whose evaluation wrote it (None: ``test.json``, written after the
  last epoch): ``{path: epoch}``."""
  directory = os.path.join(run_dir, SAMPLES)
  damaged = {}
  for name in sorted(os.listdir(directory)) if os.path.isdir(
      directory) else []:
    stem, ext = os.path.splitext(name)
    epoch = stem[len("epoch_"):]
    if ext != ".json" or not (stem == TEST_SAMPLES or (
        stem.startswith("epoch_") and epoch.isdigit())):
      continue
    try:
      read_json_if_intact(os.path.join(directory, name), list)
    except DamagedFile:
      damaged[os.path.join(directory, name)] = (
          None if stem == TEST_SAMPLES else int(epoch))
  return damaged


def find_runs(directory: str, *, flag: str = "directory") -> list[str]:
  """``directory`` itself if it is a run, else every run directory below it
  (one holding ``run_metadata.json`` or ``history.json``), in path order.
  One-line errors name ``flag`` when there is none."""
  if not os.path.isdir(directory):
    raise OptBenchError(f"{flag} {directory} is not a directory")
  found = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if d not in NOT_RUNS)
    if METADATA in files or HISTORY in files:
      found.append(root)
      dirs[:] = []
  if not found:
    raise OptBenchError(f"{flag} {directory} holds no run (no {METADATA} "
                        f"below it)")
  return found
