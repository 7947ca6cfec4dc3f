"""The plan: a campaign's settings resolved and checked once, at the edge.

The command line, the Python API, the experiment scripts and ``analyze``
turn what they were given into a frozen :class:`Plan` through
:func:`make_plan` (a campaign) or :func:`plan_runs` (runs given one by one,
or rebuilt from their metadata): the settings checked (``settings.check``,
pure), the task's, dataset's and model's defaults resolved
(``settings.resolve``), the optimizers and learning rates chosen, the
devices counted, and one :class:`RunSpec` per run with its directory and
label. Nothing below the plan resolves or checks again: the engine trains
what the plan says (as Flax's examples lock one config into
``train_and_evaluate``).

:func:`check_data` compares the plan with its data once they are loaded
and split, before they are fitted and before anything is trained or
written. :func:`check_store` compares the plan with the results already on
disk, for the whole campaign and before anything is loaded, trained or
written: ``--resume`` refuses runs trained with other settings, and a
campaign without ``--resume`` or ``--overwrite`` refuses to write over
runs it finds.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Optional, Sequence

from optbench_jax import data as data_lib
from optbench_jax import flags, store, transforms
from optbench_jax.data.base import Splits
from optbench_jax.errors import OptBenchError
from optbench_jax.train import settings, tuning
from optbench_jax.engine import distributed
from optbench_jax.train.settings import CampaignConfig, RunConfig
from optbench_jax.workload import Workload


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of a plan: its resolved settings, directory and label."""
  config: RunConfig
  run_dir: str
  label: str

  @property
  def workload(self) -> Workload:
    return Workload.of(self.config)


@dataclasses.dataclass(frozen=True)
class Plan:
  """A campaign, resolved: every run it trains, in the campaign's order
  (optimizers, then learning rates, then seeds). A tuned campaign
  (``--tune``) plans its trials; its runs are the selected trial's re-runs
  (:meth:`reruns`), known once the trials are trained."""
  campaign: CampaignConfig        # task defaults resolved
  optimizers: tuple[str, ...]
  runs: tuple[RunSpec, ...]
  trials: tuple[RunSpec, ...] = ()

  @property
  def tuned(self) -> bool:
    return self.campaign.tune != "none"

  def trials_of(self, optimizer: str) -> tuple[RunSpec, ...]:
    return tuple(r for r in self.trials if r.config.optimizer == optimizer)

  def reruns(self, trial: RunConfig) -> tuple[RunSpec, ...]:
    """The selected ``trial`` re-run on the campaign's seeds, where an
    untuned campaign's runs of its optimizer go."""
    c = self.campaign
    several = self.several_seeds
    out = []
    for seed in c.seed_list:
      where = {"seed": seed if several else None}
      out.append(RunSpec(
          dataclasses.replace(trial, seed=seed, trial=None),
          store.run_dir(c.output_dir, c.task, c.dataset, c.model,
                        trial.optimizer, **where),
          store.run_label(trial.optimizer, **where)))
    return tuple(out)

  @property
  def directory(self) -> str:
    c = self.campaign
    return store.campaign_dir(c.output_dir, c.task, c.dataset, c.model)

  @property
  def workload(self) -> Workload:
    return Workload.of(self.campaign)

  def runs_of(self, optimizer: str) -> tuple[RunSpec, ...]:
    return tuple(r for r in self.runs if r.config.optimizer == optimizer)

  @property
  def several_seeds(self) -> bool:
    return len(self.campaign.seed_list) > 1


# -- optimizers and learning rates --------------------------------------------
def resolve_optimizers(names: Sequence[str] | str) -> list[str]:
  """``"all"`` or names → validated registry names (in registry order)."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  if list(names) == ["all"]:
    return list(transforms.available())
  if not names:
    raise OptBenchError("--optimizers is empty; give 'all' or a comma list")
  for name in names:
    transforms.get(name)
  return list(names)


def learning_rates(cfg: CampaignConfig, optimizer: str) -> list[float]:
  """The grid if one is given, else the optimizer's one learning rate:
  ``--lr-overrides``, else ``--lr`` (``--lr-policy fixed``), else the
  registry's default."""
  if cfg.lr_grid:
    return [float(lr) for lr in cfg.lr_grid]
  if optimizer in cfg.lr_overrides:
    return [float(cfg.lr_overrides[optimizer])]
  if cfg.lr_policy == "fixed":
    if cfg.lr is None:
      raise OptBenchError("--lr-policy fixed needs --lr")
    return [float(cfg.lr)]
  if cfg.lr is not None:
    raise OptBenchError("--lr is used with --lr-policy fixed; for one "
                        "optimizer use --lr-overrides name=lr")
  return [transforms.get(optimizer).default_lr]


# -- building plans ------------------------------------------------------------
def check_output_dir(path: str, flag: str = "--output-dir") -> None:
  """The output directory can be created and written (one-line errors)."""
  message = flags.directory(path)
  if message:
    raise OptBenchError(f"{flag} {message}")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise OptBenchError(f"{flag} {path} is not writable "
                        f"({e.strerror}); give a directory you can write "
                        f"to") from None


def _check_devices(config: Any) -> None:
  devices = distributed.data_parallel_size(config.devices)
  if devices > 1 and config.batch_size % devices:
    raise OptBenchError(f"--batch-size {config.batch_size} is not divisible "
                        f"by the {devices} data-parallel devices; change it "
                        f"or --devices")


def make_plan(cfg: CampaignConfig) -> Plan:
  """The campaign ``cfg`` checked, resolved and laid out into runs; every
  error is one line, raised before any data is loaded or anything is
  compiled or written."""
  settings.check(cfg)
  optimizers = resolve_optimizers(cfg.optimizers)
  repeated = sorted({o for o in optimizers if optimizers.count(o) > 1})
  if repeated:
    raise OptBenchError(f"--optimizers repeats {', '.join(repeated)}")
  for name in cfg.lr_overrides:
    if name not in optimizers:
      raise OptBenchError(f"--lr-overrides names {name!r}, which is not in "
                          f"--optimizers ({', '.join(optimizers)})")
  grid, several = cfg.lr_grid is not None, len(cfg.seed_list) > 1
  resolved = settings.resolve(cfg)
  if cfg.tune != "none":
    _check_devices(resolved)
    return Plan(campaign=resolved, optimizers=tuple(optimizers), runs=(),
                trials=tuple(spec for optimizer in optimizers
                             for spec in _trials(cfg, optimizer)))
  runs = []
  for optimizer in optimizers:
    for lr in learning_rates(cfg, optimizer):
      if settings.positive_finite(lr):
        raise OptBenchError(f"the learning rate of {optimizer} "
                            f"{settings.positive_finite(lr)}")
      for seed in cfg.seed_list:
        # Resolved from the settings given (as the campaign; resolving twice
        # differs): the task's defaults, the optimizer's weight decay.
        rc = settings.resolve(RunConfig(
            **settings.protocol_of(cfg), optimizer=optimizer,
            learning_rate=lr, seed=seed))
        where = {"learning_rate": lr if grid else None,
                 "seed": seed if several else None}
        runs.append(RunSpec(rc, store.run_dir(
            cfg.output_dir, cfg.task, cfg.dataset, cfg.model, optimizer,
            **where), store.run_label(optimizer, **where)))
  _check_devices(resolved)
  return Plan(campaign=resolved, optimizers=tuple(optimizers),
              runs=tuple(runs))


def _trials(cfg: CampaignConfig, optimizer: str) -> list[RunSpec]:
  """The tuning trials of ``optimizer`` (``train/tuning.py``)."""
  fixed = ("weight_decay",) if cfg.weight_decay is not None else ()
  traced = tuning.traced(optimizer, cfg.tune, fixed)
  specs = []
  for k, point in enumerate(tuning.points(optimizer, cfg.tune, cfg.trials,
                                          cfg.tune_seed, fixed)):
    point = dict(point)
    lr = point.pop("learning_rate")
    protocol = settings.protocol_of(cfg)
    if "weight_decay" in point:
      protocol["weight_decay"] = point.pop("weight_decay")
    rc = settings.resolve(RunConfig(
        **protocol, optimizer=optimizer, learning_rate=lr,
        seed=cfg.tune_seed, optimizer_hyperparameters=point,
        traced_hyperparameters=traced, trial=k))
    specs.append(RunSpec(rc, store.trial_dir(
        cfg.output_dir, cfg.task, cfg.dataset, cfg.model, optimizer, k),
        f"{optimizer} trial {k}"))
  return specs


def plan_runs(configs: Sequence[RunConfig], run_dirs: Sequence[str],
              labels: Optional[Sequence[str]] = None) -> list[RunSpec]:
  """Runs given one by one (the Python API's ``train_runs``, a run rebuilt
  from its metadata): each checked and resolved, as :func:`make_plan` does
  for a campaign's."""
  specs = []
  for i, (rc, run_dir) in enumerate(zip(configs, run_dirs)):
    settings.check(rc)
    rc = settings.resolve(rc)
    _check_devices(rc)
    specs.append(RunSpec(rc, str(run_dir),
                         labels[i] if labels else rc.optimizer))
  return specs


def stored_run(metadata: dict, run_dir: str) -> RunSpec:
  """The run stored in ``run_dir`` (``analyze``), from its metadata:
  checked, and resolved only in the settings it does not record (added
  since it was trained) — the others were resolved when it was planned,
  and resolving twice is not the same (a run trained with ``--grad-clip 0``
  stores None, which a second pass would turn into the task's clipping)."""
  rc = run_config(metadata)
  settings.check(rc)
  resolved = settings.resolve(rc)
  rc = dataclasses.replace(rc, **{
      f.name: getattr(resolved, f.name) for f in dataclasses.fields(rc)
      if f.name not in metadata})
  _check_devices(rc)
  return RunSpec(rc, str(run_dir), rc.optimizer)


def run_config(metadata: dict) -> RunConfig:
  """A run's settings from its stored metadata (settings added since the
  run was trained take their defaults)."""
  fields = {f.name for f in dataclasses.fields(RunConfig)}
  values = {k: v for k, v in metadata.items() if k in fields}
  if "traced_hyperparameters" in values:   # a JSON list
    values["traced_hyperparameters"] = tuple(values["traced_hyperparameters"])
  return RunConfig(**values)


# -- the plan against the store -----------------------------------------------
def check_store(plan: Plan, optimizers: Optional[Sequence[str]] = None,
                specs: Optional[Sequence[RunSpec]] = None
                ) -> dict[str, store.StoredRun]:
  """Compares the runs and trials of ``plan`` (of ``optimizers`` only, when
  given; ``specs`` instead: a tuned campaign's re-runs, once selected) with
  what is on disk, before anything is loaded, trained or written; the
  output directory must be writable. Returns the runs it read, by
  directory (``run.train_runs`` takes them, to read each run once).

  With ``--resume``, a run whose stored settings differ in anything that
  changes its numbers is refused (the first such run is named, with every
  difference). Without ``--resume`` or ``--overwrite``, a run directory
  that already holds a run is refused: results are never replaced
  silently. A damaged ``run_metadata.json`` is no result: it is retrained.
  """
  cfg = plan.campaign
  check_output_dir(cfg.output_dir)
  chosen = [r for r in (plan.runs + plan.trials if specs is None else specs)
            if optimizers is None or r.config.optimizer in optimizers]
  found, stored = [], {}
  for spec in chosen:
    run = stored[spec.run_dir] = store.read_run(spec.run_dir)
    if not run.metadata:
      continue
    if cfg.resume:
      changed = settings.differences(run.metadata, spec.config)
      if changed:
        raise OptBenchError(
            f"--resume: {spec.run_dir} was trained with other settings "
            f"({'; '.join(changed)}); resume with the settings it was "
            f"started with, or give a new --output-dir")
    else:
      found.append(spec)
  if found and not cfg.overwrite:
    raise OptBenchError(
        f"{cfg.output_dir} already holds {len(found)} run(s) of this "
        f"campaign (e.g. {found[0].run_dir}); give --resume to continue "
        f"them, a new --output-dir, or --overwrite to train them again")
  return stored


# -- the plan against its data -------------------------------------------------
def check_data(plan: Plan, splits: Splits) -> None:
  """The plan against its data once loaded and split (``Workload.prepare``),
  before anything is fitted, trained or written: a training batch larger
  than the training split is refused."""
  cfg = plan.campaign
  n = data_lib.num_examples(splits.train)
  if cfg.batch_size > n:
    cap = (", capped by --max-samples" if cfg.max_samples == n else "")
    raise OptBenchError(
        f"--batch-size {cfg.batch_size} is larger than the training split "
        f"of {cfg.dataset}: {n} examples{cap}; give --batch-size {n} or "
        f"less")
