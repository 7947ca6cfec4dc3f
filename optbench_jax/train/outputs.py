"""Result files: atomic writes, histories, the convergence rule, summaries.

Convergence epoch (documented rule): the first epoch ``e`` after which the
validation loss never improves on the best value reached up to ``e`` by more
than ``CONVERGENCE_RTOL`` (1 %, relative), i.e. the first ``e`` with
``min(val_loss[e+1:]) >= (1 − rtol) · min(val_loss[:e+1])``. The last epoch
always qualifies, so a run that keeps improving converges at its last epoch.
Time to convergence is the training time (compilation excluded) summed up to
and including that epoch. Epochs are numbered from 1. With ``--eval-every N``
the rule runs over the evaluated epochs.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from typing import Any, Iterable, Optional, Sequence

import jax

CONVERGENCE_RTOL = 0.01
TMP_PREFIX = ".tmp-"
SUMMARY_COLUMNS = (
    "task", "dataset", "model", "optimizer", "seed", "learning_rate", "status",
    "epochs_run", "primary_metric", "best_primary", "best_primary_epoch",
    "best_val_loss", "final_primary", "final_val_loss", "test_primary",
    "convergence_epoch", "time_to_convergence_s", "train_time_s",
    "compile_time_s", "total_runtime_s", "runs_in_program")
# Per-run values summarised over seeds in ``seeds.csv``.
SEED_METRICS = ("best_primary", "final_primary", "test_primary",
                "best_val_loss", "convergence_epoch")
SEED_COLUMNS = ("task", "dataset", "model", "optimizer", "learning_rate",
                "primary_metric", "n_seeds", "n_diverged") + tuple(
                    f"{m}_{s}" for m in SEED_METRICS
                    for s in ("mean", "std", "ci95"))


@contextlib.contextmanager
def atomic_path(path: str):
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


def write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (:func:`atomic_path`).

  With several processes (``--distributed``) only process 0 writes.
  """
  if jax.process_index() != 0:
    return
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def remove_partial_writes(directory: str) -> None:
  """Deletes what a kill inside :func:`write_atomic` left (``.tmp-*``)."""
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if name.startswith(TMP_PREFIX):
      os.unlink(os.path.join(directory, name))


class DamagedFile(Exception):
  """A result file that exists but cannot be read (truncated, empty)."""


def read_json_if_intact(path: str) -> Any:
  """The JSON in ``path``; None if absent; :class:`DamagedFile` if it
  cannot be parsed."""
  if not os.path.exists(path):
    return None
  try:
    return read_json(path)
  except (ValueError, UnicodeDecodeError) as e:
    raise DamagedFile(f"{path}: {e}") from None


def as_json(value: Any) -> Any:
  """``value`` as it reads back from a JSON file (tuples as lists, ...)."""
  return json.loads(json.dumps(_json_safe(value), default=_describe))


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


def write_json(path: str, obj: Any) -> None:
  """JSON with NaN/inf written as null (standard JSON has neither)."""
  write_atomic(path, json.dumps(_json_safe(obj), indent=2, default=_describe))


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def write_csv(path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(columns),
                          extrasaction="ignore")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: ("" if row.get(k) is None else row.get(k))
                     for k in columns})
  write_atomic(path, buffer.getvalue())


def convergence_epoch(val_losses: Sequence[float],
                      rtol: float = CONVERGENCE_RTOL) -> Optional[int]:
  """1-based convergence epoch by the rule in the module docstring."""
  values = [v if v is not None and math.isfinite(v) else math.inf
            for v in val_losses]
  if not values or all(math.isinf(v) for v in values):
    return None
  for e in range(len(values)):
    best_so_far = min(values[:e + 1])
    later = min(values[e + 1:], default=math.inf)
    if later >= (1 - rtol) * best_so_far:
      return e + 1
  return len(values)


def summarize(history: Sequence[dict], metadata: dict,
              higher_is_better: bool) -> dict:
  """One summary row (the campaign's ``summary.csv``) from a run's history."""
  primary = metadata["primary_metric"]
  ok = [h for h in history if h.get("status") != "diverged"]
  row = {k: metadata.get(k) for k in ("task", "dataset", "model", "optimizer",
                                      "seed", "learning_rate")}
  row.update(status=metadata.get("status"), epochs_run=len(history),
             primary_metric=primary,
             compile_time_s=metadata.get("compile_time_s"),
             runs_in_program=metadata.get("runs_in_program"),
             total_runtime_s=metadata.get("total_runtime_s"),
             train_time_s=sum(h.get("train_time_s") or 0.0 for h in history),
             test_primary=(metadata.get("test_metrics") or {}).get(primary))
  values = [h.get(primary) for h in ok if h.get(primary) is not None]
  if values:
    pick = max if higher_is_better else min
    best = pick(values)
    row.update(best_primary=best, best_primary_epoch=next(
        h["epoch"] for h in ok if h.get(primary) == best),
               final_primary=values[-1])
  # Epochs without an evaluation (--eval-every) have no validation loss.
  val = [h.get("val_loss") for h in history if h.get("val_loss") is not None]
  finite_val = [v for v in val if math.isfinite(v)]
  if finite_val:
    row.update(best_val_loss=min(finite_val), final_val_loss=val[-1])
  evaluated = [h for h in ok if h.get("val_loss") is not None]
  conv = convergence_epoch([h["val_loss"] for h in evaluated])
  if conv is not None:
    epoch = evaluated[conv - 1]["epoch"]
    row.update(convergence_epoch=epoch, time_to_convergence_s=sum(
        h.get("train_time_s") or 0.0 for h in ok if h["epoch"] <= epoch))
  return row


def long_format(history: Iterable[dict], metadata: dict) -> list[dict]:
  """Rows of ``epochs.csv``: one per (run, epoch)."""
  keys = {k: metadata.get(k) for k in ("task", "dataset", "model", "optimizer",
                                       "seed", "learning_rate")}
  return [{**keys, **h} for h in history]


def over_seeds(rows: Sequence[dict]) -> list[dict]:
  """``seeds.csv`` rows: per (optimizer, learning rate), over seeds.

  For each metric of ``SEED_METRICS``: the mean, the sample standard
  deviation and the half-width of the two-sided 95 % Student-t confidence
  interval of the mean, ``t_{0.975, n−1} · s / √n``, over the seeds whose
  run produced the value (a diverged run has no best/final values; it is
  counted in ``n_diverged``).
  """
  from optbench_jax.analysis import statistics  # pylint: disable=import-outside-toplevel
  groups: dict = {}
  for row in rows:
    groups.setdefault((row["optimizer"], row["learning_rate"]), []).append(row)
  out = []
  for (optimizer, lr), members in groups.items():
    first = members[0]
    summary = {k: first.get(k) for k in ("task", "dataset", "model",
                                         "primary_metric")}
    summary.update(optimizer=optimizer, learning_rate=lr,
                   n_seeds=len(members), n_diverged=sum(
                       m.get("status") == "diverged" for m in members))
    for metric in SEED_METRICS:
      values = [float(m[metric]) for m in members
                if m.get(metric) not in (None, "")
                and math.isfinite(float(m[metric]))]
      if not values:
        continue
      interval = statistics.mean_ci(values, confidence=0.95, method="t")
      summary[f"{metric}_mean"] = interval.mean
      if interval.n > 1:
        summary[f"{metric}_std"] = interval.std
        summary[f"{metric}_ci95"] = interval.half_width
    out.append(summary)
  return out
