"""The report's runs: stored runs with their summary rows, grouped into
configurations (task, dataset, model) and optimizer labels.

Finding and reading run directories is the run store's job
(:func:`optbench_jax.store.find_runs`, :func:`optbench_jax.store.read_run`);
this module adds what the report computes from each: its summary row
(:func:`optbench_jax.train.outputs.summarize`) and its label.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from optbench_jax import store
from optbench_jax.errors import OptBenchError
from optbench_jax.train import outputs


@dataclasses.dataclass
class Run:
  """A :class:`~optbench_jax.store.StoredRun` with its summary row (empty
  for an unreadable run or one without primary metric) and its optimizer
  label in the report (set by :func:`group_runs`)."""
  stored: store.StoredRun
  row: dict = dataclasses.field(default_factory=dict)
  label: str = ""

  @property
  def run_dir(self) -> str:
    return self.stored.run_dir

  @property
  def metadata(self) -> dict:
    return self.stored.metadata

  @property
  def history(self) -> list:
    return self.stored.history

  @property
  def state(self) -> str:
    """``completed``, ``diverged``, ``unfinished`` or ``unreadable``."""
    return self.stored.state

  @property
  def problem(self) -> Optional[str]:
    """For an unreadable run, what is damaged, paths relative to the run's
    directory (``history damaged: history.json: <why>``); else None."""
    problem = self.stored.problem
    return problem and problem.replace(
        os.path.join(self.run_dir, ""), "")

  @property
  def seed(self) -> int:
    return self.stored.seed

  @property
  def configuration(self) -> str:
    return self.stored.configuration


def summarized(stored: store.StoredRun) -> Run:
  """``stored`` with its summary row (none for an unreadable run: its
  numbers are in no table or statistic)."""
  meta = stored.metadata
  if (stored.state == "unreadable" or "primary_metric" not in meta
      or "higher_is_better" not in meta):
    return Run(stored)
  return Run(stored, outputs.summarize(stored.history, meta,
                                       bool(meta["higher_is_better"])))


def _inside(path: str, directory: str) -> bool:
  path, directory = os.path.realpath(path), os.path.realpath(directory)
  return os.path.commonpath([path, directory]) == directory


def read_runs(campaign_dir: str, exclude: Sequence[str] = ()) -> list[Run]:
  """Every run below ``campaign_dir`` (or ``campaign_dir`` itself if it is
  one), in path order, leaving out those inside ``exclude`` (the report's
  own folder). One-line errors for a directory that is absent or holds no
  run."""
  return [summarized(store.read_run(path))
          for path in store.find_runs(campaign_dir, flag="--campaign-dir")
          if not any(_inside(path, d) for d in exclude)]


def completed(runs: Sequence[Run]) -> list[Run]:
  return [r for r in runs if r.state == "completed"]


@dataclasses.dataclass
class Configuration:
  """The runs of one (task, dataset, model), grouped by optimizer label
  (``"adam"``, or ``"adam lr=0.001"`` when the optimizer has several
  learning rates)."""
  name: str
  primary: str
  higher_is_better: bool
  runs: list
  groups: dict = dataclasses.field(default_factory=dict)

  @property
  def task(self) -> str:
    return self.runs[0].metadata["task"]

  @property
  def dataset(self) -> str:
    return self.runs[0].metadata["dataset"]

  @property
  def model(self) -> str:
    return self.runs[0].metadata["model"]

  @property
  def primary_label(self) -> str:
    """The primary metric with its direction: ``accuracy ↑``."""
    return f"{self.primary} {'↑' if self.higher_is_better else '↓'}"


def _label(meta: dict, several_lrs: bool) -> str:
  if several_lrs:
    return f"{meta['optimizer']} lr={float(meta['learning_rate']):g}"
  return str(meta["optimizer"])


def group_runs(runs: Sequence[Run]) -> list[Configuration]:
  """Readable runs by configuration (sorted) and optimizer label (in order
  of optimizer, learning rate and seed); sets each run's label."""
  by_name: dict = {}
  for run in runs:
    if run.state != "unreadable":
      by_name.setdefault(run.configuration, []).append(run)
  configurations = []
  for name in sorted(by_name):
    members = by_name[name]
    directions = {(r.metadata.get("primary_metric"),
                   r.metadata.get("higher_is_better")) for r in members}
    if len(directions) != 1 or None in next(iter(directions)):
      raise OptBenchError(
          f"{name}: the runs disagree on (or lack) primary_metric / "
          f"higher_is_better: {sorted(map(str, directions))}")
    primary, higher = next(iter(directions))
    lrs: dict = {}
    for r in members:
      lrs.setdefault(r.metadata.get("optimizer"), set()).add(
          r.metadata.get("learning_rate"))
    config = Configuration(name, primary, bool(higher), members)
    for r in sorted(members, key=lambda r: (str(r.metadata.get("optimizer")),
                                            r.metadata.get("learning_rate")
                                            or 0.0, r.seed)):
      r.label = _label(r.metadata, len(lrs[r.metadata.get("optimizer")]) > 1)
      config.groups.setdefault(r.label, []).append(r)
    configurations.append(config)
  return configurations
