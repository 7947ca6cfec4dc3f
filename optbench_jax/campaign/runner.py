"""A campaign: one (task, dataset, model) trained with several optimizers.

Loads and splits the data once, runs every optimizer under the same protocol
(same data, split, epochs, schedule), and writes per campaign
``summary.csv`` (one row per run), ``epochs.csv`` (long format), with several
seeds ``seeds.csv`` (mean, standard deviation and 95 % Student-t confidence
interval over seeds per optimizer and learning rate) and the two
cross-optimizer plots under ``<output_dir>/<task>/<dataset>/<model>/``.
A diverged run is recorded as such and the campaign goes on.

A campaign can be trained in parts: ``run_campaign(cfg, optimizers=[...])``
trains some of its optimizers (one work unit of ``train/dispatch.py``: a
``--shard`` of an experiment script, a Ray task), and the campaign files
are always rewritten from every finished run of the configuration found on
disk (``finished_runs``), under a file lock on the campaign directory
(``campaign_lock``). Parts trained by different processes into one output
directory (a shared file system) thus leave the files a single process
training everything leaves.

Seeds (``seeds``) and learning-rate grids (``lr_grid``) of one optimizer are
trained together in one compiled program (see ``run.train_runs``). The
train/validation split is drawn once, from ``split_seed`` (independent of
the run seeds, so a campaign can be extended by more seeds later); the seeds
vary initialisation, data order, augmentation and dropout.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Optional, Sequence

import jax
from tqdm.auto import tqdm

from optbench_jax import data, tasks, transforms
from optbench_jax.errors import OptBenchError
from optbench_jax.train import distributed, outputs, plots, settings
from optbench_jax.train import run as run_lib
from optbench_jax.train.run import run_dir_for, run_label
from optbench_jax.train.settings import CampaignConfig, RunConfig


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
  """The grid if one is given, else the optimizer's one resolved LR."""
  if cfg.lr_grid:
    return [float(lr) for lr in cfg.lr_grid]
  return [resolve_learning_rate(cfg, optimizer)]


def resolve_learning_rate(cfg: CampaignConfig, optimizer: str) -> float:
  if optimizer in cfg.lr_overrides:
    return float(cfg.lr_overrides[optimizer])
  if cfg.lr_policy == "fixed":
    if cfg.lr is None:
      raise OptBenchError("--lr-policy fixed needs --lr")
    return float(cfg.lr)
  if cfg.lr is not None:
    raise OptBenchError("--lr is used with --lr-policy fixed; for one "
                        "optimizer use --lr-overrides name=lr")
  return transforms.get(optimizer).default_lr


def validate(cfg: CampaignConfig) -> list[str]:
  """Checks names, values and combinations before anything heavy runs."""
  settings.check(cfg)
  return resolve_optimizers(cfg.optimizers)


def run_config(cfg: CampaignConfig, optimizer: str, *,
               seed: Optional[int] = None,
               learning_rate: Optional[float] = None) -> RunConfig:
  """One run of the campaign, with the task's defaults resolved."""
  rc = RunConfig(
      **settings.protocol_of(cfg), optimizer=optimizer,
      learning_rate=(resolve_learning_rate(cfg, optimizer)
                     if learning_rate is None else learning_rate),
      seed=cfg.seed_list[0] if seed is None else seed)
  return settings.resolve(rc, tasks.get(cfg.task))


def run_configs(cfg: CampaignConfig, optimizer: str
                ) -> list[tuple[RunConfig, str, str]]:
  """``(config, directory, label)`` of every run of one optimizer."""
  lr_dir, seed_dir = bool(cfg.lr_grid), len(cfg.seed_list) > 1
  runs = []
  for lr in learning_rates(cfg, optimizer):
    for seed in cfg.seed_list:
      rc = run_config(cfg, optimizer, seed=seed, learning_rate=lr)
      runs.append((rc, run_dir_for(cfg.output_dir, rc, lr_dir=lr_dir,
                                   seed_dir=seed_dir),
                   run_label(rc, lr_dir=lr_dir, seed_dir=seed_dir)))
  return runs


def default_compile_cache() -> str:
  return os.environ.get("OPTBENCH_COMPILE_CACHE", os.path.join(
      os.path.expanduser("~"), ".cache", "optbench_jax", "xla"))


def enable_compile_cache(path: str) -> None:
  """Persistent XLA compilation cache: identical programs compile once.

  A campaign re-creates the same programs (resumed runs, repeated seeds,
  repeated campaigns); with the cache they are loaded instead of compiled.
  ``"off"`` disables it.
  """
  if path == "off":
    return
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def campaign_dir(cfg: CampaignConfig) -> str:
  return os.path.join(cfg.output_dir, cfg.task, cfg.dataset, cfg.model)


LOCK_FILE = ".campaign.lock"


@contextlib.contextmanager
def campaign_lock(cfg: CampaignConfig):
  """An exclusive lock on the campaign directory (``fcntl.flock`` on
  :data:`LOCK_FILE`), held while the directory's shared files are cleaned,
  fitted or rewritten, so that processes training other optimizers of the
  same configuration at the same time (``--shard``, Ray) never delete each
  other's partial writes, and the last one to rewrite the aggregates reads
  every run finished before it. Nothing collective happens inside."""
  out_dir = campaign_dir(cfg)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, LOCK_FILE), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield out_dir
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def load_splits(cfg: CampaignConfig):
  """The campaign's data: loaded, split with ``split_seed``, capped at
  ``max_samples`` and fitted by the task (vocabularies cached in the
  campaign directory), once for all of its optimizers."""
  task = tasks.get(cfg.task)
  prepared = data.prepare(
      data.load(cfg.task, cfg.dataset, cfg.data_dir), seed=cfg.split_seed,
      max_samples=cfg.max_samples, val_fraction=cfg.val_fraction)
  with campaign_lock(cfg) as out_dir:
    outputs.remove_partial_writes(out_dir)
    return task.fit(prepared, settings.resolve(cfg, task), cache_dir=out_dir)


def finished_runs(cfg: CampaignConfig) -> list[tuple[str, list, dict]]:
  """``(label, history, metadata)`` of every finished run of the campaign
  on disk, in the campaign's order (optimizers, then learning rates, then
  seeds): runs trained by this process or by any other (another shard, a
  Ray worker, an earlier invocation). A run whose stored settings differ
  from the campaign's in anything that changes its numbers is not the
  campaign's and is left out."""
  found = []
  for optimizer in resolve_optimizers(cfg.optimizers):
    for rc, run_dir, label in run_configs(cfg, optimizer):
      finished = run_lib.read_finished(run_dir)
      if finished is not None and not settings.differences(finished[1], rc):
        found.append((label, *finished))
  return found


def write_aggregates(cfg: CampaignConfig, *, plots_too: bool = True
                     ) -> list[dict]:
  """Rewrites ``summary.csv`` (and ``seeds.csv`` with several seeds) and,
  with ``plots_too``, ``epochs.csv`` and the cross-optimizer plots, from
  :func:`finished_runs`; returns the summary rows."""
  task = tasks.get(cfg.task)
  if not os.path.isdir(campaign_dir(cfg)):
    return []  # nothing trained yet (e.g. its data could not be loaded)
  with campaign_lock(cfg) as out_dir:
    runs = finished_runs(cfg)
    rows = [outputs.summarize(history, meta, task.higher_is_better)
            for _, history, meta in runs]
    outputs.write_csv(os.path.join(out_dir, "summary.csv"), rows,
                      outputs.SUMMARY_COLUMNS)
    if len(cfg.seed_list) > 1:
      outputs.write_csv(os.path.join(out_dir, "seeds.csv"),
                        outputs.over_seeds(rows), outputs.SEED_COLUMNS)
    if plots_too:
      long_rows = [r for _, history, meta in runs
                   for r in outputs.long_format(history, meta)]
      epoch_columns = list(dict.fromkeys(k for r in long_rows for k in r))
      outputs.write_csv(os.path.join(out_dir, "epochs.csv"), long_rows,
                        epoch_columns)
      plots.campaign_plots({label: history for label, history, _ in runs},
                           task.primary_metric,
                           f"{cfg.model} on {cfg.dataset}", out_dir)
  return rows


def run_campaign(cfg: CampaignConfig,
                 optimizers: Optional[Sequence[str]] = None, *,
                 splits=None) -> list[dict]:
  """Trains the campaign's optimizers, or the subset ``optimizers`` of them
  (one shard's share); returns the summary rows of the runs trained here.

  The campaign files (``summary.csv``, ``seeds.csv``, ``epochs.csv``, the
  plots) are rewritten from every finished run of the configuration on
  disk (:func:`write_aggregates`), so after the last subset finishes they
  are those of the whole campaign, whichever process trained each part.
  ``splits``: the data from :func:`load_splits`, to share it between calls.
  """
  everything = validate(cfg)
  selected = everything if optimizers is None else list(optimizers)
  outside = [o for o in selected if o not in everything]
  if outside:
    raise OptBenchError(f"{', '.join(outside)} is not among the campaign's "
                        f"optimizers ({', '.join(everything)})")
  enable_compile_cache(cfg.compile_cache or default_compile_cache())
  task = tasks.get(cfg.task)
  if splits is None:
    splits = load_splits(cfg)
  rows = []
  quiet = cfg.quiet or not distributed.is_primary()
  bar = tqdm(selected, desc="runs", disable=quiet, dynamic_ncols=True)
  for optimizer in bar:
    bar.set_description(f"run {optimizer}")
    runs = run_configs(cfg, optimizer)
    epochs = tqdm(total=cfg.epochs * len(runs), desc=optimizer, leave=False,
                  disable=quiet, dynamic_ncols=True)

    def on_epoch(index, record, epochs=epochs, runs=runs):
      epochs.update(1)
      epochs.set_postfix({"run": runs[index][2], task.primary_metric:
                          record.get(task.primary_metric),
                          "val_loss": record["val_loss"]})

    results = run_lib.train_runs(
        [r[0] for r in runs], splits, [r[1] for r in runs],
        resume=cfg.resume, on_epoch=on_epoch,
        max_together=cfg.runs_per_program)
    epochs.close()
    rows.extend(outputs.summarize(history, meta, task.higher_is_better)
                for history, meta in results)
    write_aggregates(cfg, plots_too=False)
  bar.close()
  write_aggregates(cfg)
  return rows
