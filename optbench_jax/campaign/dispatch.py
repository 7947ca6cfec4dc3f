"""Work units of a set of campaigns: sharding, local and Ray execution.

A campaign's runs are independent, so a set of campaigns (an experiment
script's configurations) splits into **work units**, one per configuration
and optimizer: all the seeds and learning rates of one optimizer, which
train together in one compiled program (``run.train_runs``). A unit runs as
``runner.run_campaign(plan, [optimizer])``, which also rewrites the
configuration's campaign files from every finished run on disk, so units
may run in any order, in any process, into one output directory.

* :func:`units` lists them in a deterministic order: configurations in the
  order given, optimizers in each configuration's order.
* :func:`shard` takes the ``index``-th of ``count`` disjoint parts,
  **1-based** (``--shard 1/4`` … ``--shard 4/4``; under SLURM
  ``#SBATCH --array=1-4`` and ``--shard $SLURM_ARRAY_TASK_ID/4``). The
  units are dealt round-robin, like cards: the ``k``-th dealt (0-based) goes
  to shard ``k mod count + 1``, so shard sizes differ by one at most and
  every shard gets a share of the large and of the small configurations.
  The deal goes through the configurations in order, and through the
  optimizers of the ``c``-th configuration (0-based) starting at its
  ``c``-th optimizer (a rotation), so that an expensive optimizer (SAM,
  KFAC) does not land on the same shard in every configuration when the
  number of optimizers is a multiple of ``count``. The shards' results
  merge by directory.
* :func:`run_local` runs units one after another in this process (data
  loaded once per configuration); :func:`run_ray` hands one Ray task per
  unit to a Ray cluster (``ray.init(address=...)``), each asking for one GPU
  where the cluster has GPUs, else ``cpus_per_task`` CPUs; the workers need
  the output directory on a shared file system, and the driver rewrites the
  campaign files once from disk at the end (:func:`write_aggregates`).

A failing unit is reported (:class:`Outcome`) and the others go on.
"""
from __future__ import annotations

import dataclasses
import re
import traceback
from typing import Callable, Optional, Sequence

from optbench_jax.errors import OptBenchError, one_line
from optbench_jax.campaign import runner
from optbench_jax.train.plan import Plan

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclasses.dataclass(frozen=True)
class Unit:
  """One configuration trained with one optimizer (all its seeds and LRs).

  ``plan`` is the whole campaign (all of its optimizers): the unit trains
  ``optimizer`` and rewrites the campaign files of all of them.
  """
  name: str
  plan: Plan
  optimizer: str

  @property
  def label(self) -> str:
    return f"{self.name}/{self.optimizer}"


@dataclasses.dataclass
class Outcome:
  """What running a unit gave: its summary rows, or the error it raised."""
  unit: Unit
  rows: list = dataclasses.field(default_factory=list)
  error: Optional[str] = None

  @property
  def ok(self) -> bool:
    return self.error is None


def units(plans: Sequence[tuple[str, Plan]]) -> list[Unit]:
  """Every (configuration, optimizer) of ``plans`` (``(name, plan)``
  pairs), configurations in the given order, each one's optimizers in its
  order."""
  return [Unit(name, plan, optimizer) for name, plan in plans
          for optimizer in plan.optimizers]


def parse_shard(text: str) -> tuple[int, int]:
  """``"I/N"`` → ``(I, N)`` with ``1 ≤ I ≤ N`` (1-based)."""
  match = _SHARD.fullmatch(text or "")
  if match is None:
    raise OptBenchError(f"--shard expects I/N, the I-th of N parts counted "
                        f"from 1, e.g. 1/4 (got {text!r})")
  index, count = int(match.group(1)), int(match.group(2))
  if count < 1 or not 1 <= index <= count:
    raise OptBenchError(f"--shard {text.strip()}: I must be in 1..N and N "
                        f"at least 1 (shards count from 1: 1/{max(count, 1)} "
                        f"… {max(count, 1)}/{max(count, 1)})")
  return index, count


def deal_order(all_units: Sequence[Unit]) -> list[int]:
  """Positions in ``all_units`` in the order they are dealt to shards: the
  configurations in order, the ``c``-th one's units rotated by ``c``."""
  groups: dict = {}
  for i, unit in enumerate(all_units):
    groups.setdefault(unit.name, []).append(i)
  order = []
  for c, members in enumerate(groups.values()):
    turn = c % len(members)
    order.extend(members[turn:] + members[:turn])
  return order


def shard(all_units: Sequence[Unit], index: int, count: int) -> list[Unit]:
  """The ``index``-th (1-based) of ``count`` disjoint parts of
  ``all_units``, dealt round-robin (:func:`deal_order`), in the order of
  ``all_units``."""
  if count < 1 or not 1 <= index <= count:
    raise OptBenchError(f"shard {index}/{count}: need 1 ≤ I ≤ N")
  mine = sorted(deal_order(all_units)[index - 1::count])
  return [all_units[i] for i in mine]


def run_unit(unit: Unit, splits=None) -> list[dict]:
  """Trains one unit; returns the summary rows of its runs."""
  return runner.run_campaign(unit.plan, [unit.optimizer], splits=splits)


def _failure(e: BaseException) -> str:
  if isinstance(e, OptBenchError):
    return str(e)
  return f"{one_line(e)}\n{traceback.format_exc()}"


def run_local(todo: Sequence[Unit],
              report: Optional[Callable[[Outcome], None]] = None
              ) -> list[Outcome]:
  """Runs ``todo`` one after another in this process; the data of a
  configuration is loaded once for its consecutive units (if it cannot be
  loaded, each of them reports that error)."""
  outcomes = []
  plan, splits, load_error = None, None, None
  for unit in todo:
    outcome = Outcome(unit)
    try:
      if plan != unit.plan:
        plan, splits, load_error = unit.plan, None, None
        try:
          splits = runner.load_splits(unit.plan)
        except Exception as e:  # pylint: disable=broad-except
          load_error = _failure(e)
      if load_error is not None:
        outcome.error = load_error
      else:
        outcome.rows = run_unit(unit, splits=splits)
    except Exception as e:  # pylint: disable=broad-except
      outcome.error = _failure(e)
    outcomes.append(outcome)
    if report is not None:
      report(outcome)
  return outcomes


def _ray():
  try:
    import ray  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise OptBenchError("--backend ray needs Ray: pip install "
                        "'optbench_jax[cluster]'") from None
  return ray


def _remote_unit(unit: Unit) -> list[dict]:
  """A Ray task's body: the same library call as a local unit."""
  return run_unit(unit)


def task_resources(ray, cpus_per_task: float = 1.0) -> dict:
  """One GPU per task where the cluster has GPUs, else ``cpus_per_task``
  CPUs."""
  if ray.cluster_resources().get("GPU", 0) > 0:
    return {"num_gpus": 1}
  return {"num_cpus": cpus_per_task}


def run_ray(todo: Sequence[Unit], address: Optional[str] = None, *,
            cpus_per_task: float = 1.0,
            report: Optional[Callable[[Outcome], None]] = None
            ) -> list[Outcome]:
  """Runs ``todo`` as one Ray task each; returns their outcomes in the
  order of ``todo``. Joins the cluster at ``address`` (None: a running
  cluster Ray finds, else a new local one), unless this process has
  already called ``ray.init``."""
  ray = _ray()
  if not ray.is_initialized():
    ray.init(address=address or None)
  remote = ray.remote(_remote_unit).options(
      **task_resources(ray, cpus_per_task), max_retries=0)
  refs = {remote.remote(unit): i for i, unit in enumerate(todo)}
  outcomes: list = [None] * len(todo)
  waiting = list(refs)
  while waiting:
    done, waiting = ray.wait(waiting, num_returns=1)
    i = refs[done[0]]
    outcome = Outcome(todo[i])
    try:
      outcome.rows = ray.get(done[0])
    except ray.exceptions.RayTaskError as e:
      cause = e.cause if isinstance(e.cause, BaseException) else e
      outcome.error = (str(cause) if isinstance(cause, OptBenchError)
                       else str(e))
    except ray.exceptions.RayError as e:
      outcome.error = one_line(e)
    outcomes[i] = outcome
    if report is not None:
      report(outcome)
  write_aggregates(todo)
  return outcomes


def write_aggregates(todo: Sequence[Unit]) -> None:
  """Rewrites, from disk, the campaign files of every configuration that
  ``todo`` touches (each once)."""
  seen = []
  for unit in todo:
    if unit.plan not in seen:
      seen.append(unit.plan)
      runner.write_aggregates(unit.plan)


BACKENDS = ("local", "ray")


def run(todo: Sequence[Unit], backend: str = "local", *,
        address: Optional[str] = None, cpus_per_task: float = 1.0,
        report: Optional[Callable[[Outcome], None]] = None
        ) -> list[Outcome]:
  """Runs ``todo`` with ``backend`` (``local`` or ``ray``)."""
  if backend == "local":
    return run_local(todo, report)
  if backend == "ray":
    return run_ray(todo, address, cpus_per_task=cpus_per_task, report=report)
  raise OptBenchError(f"unknown --backend {backend!r}; valid: "
                      f"{', '.join(BACKENDS)}")
