"""A campaign: one (task, dataset, model) trained with several optimizers.

It trains a :class:`~optbench_jax.train.plan.Plan` (``run_campaign`` makes
one from a ``CampaignConfig``: the Python API's edge), after
:func:`~optbench_jax.train.plan.check_store` compared the whole plan with
the results on disk.

Loads and splits the data once, runs every optimizer under the same protocol
(same data, split, epochs, schedule), and writes per campaign
``summary.csv`` (one row per run), ``epochs.csv`` (long format), with several
seeds ``seeds.csv`` (mean, standard deviation and 95 % Student-t confidence
interval over seeds per optimizer and learning rate) and the two
cross-optimizer plots under ``<output_dir>/<task>/<dataset>/<model>/``.
A diverged run is recorded as such and the campaign goes on.

A campaign can be trained in parts: ``run_campaign(cfg, optimizers=[...])``
trains some of its optimizers (one work unit of ``campaign/dispatch.py``: a
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
import warnings
from typing import Optional, Sequence

import jax
from tqdm.auto import tqdm

from optbench_jax import store
from optbench_jax.analysis import seeds as seeds_lib
from optbench_jax.campaign import tuning as tuning_lib
from optbench_jax.errors import OptBenchError
from optbench_jax.train import outputs, plots, settings
from optbench_jax.engine import distributed
from optbench_jax.train import run as run_lib
from optbench_jax.train.plan import Plan, check_data, check_store, make_plan
from optbench_jax.train.settings import CampaignConfig


def default_compile_cache() -> str:
  return os.environ.get("OPTBENCH_COMPILE_CACHE", os.path.join(
      os.path.expanduser("~"), ".cache", "optbench_jax", "xla"))


# Programs that compile faster than this are not written to the cache.
CACHE_MIN_COMPILE_TIME_S = 0.5


def enable_compile_cache(path: str) -> None:
  """Persistent XLA compilation cache: identical programs compile once.

  A campaign re-creates the same programs (resumed runs, repeated seeds,
  repeated campaigns); with the cache they are loaded instead of compiled.
  ``"off"`` disables it.
  """
  if path == "off":
    return
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    CACHE_MIN_COMPILE_TIME_S)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@contextlib.contextmanager
def campaign_lock(plan: Plan):
  """An exclusive lock on the campaign directory (``fcntl.flock`` on
  ``store.LOCK``), held while the directory's shared files are cleaned,
  fitted or rewritten, so that processes training other optimizers of the
  same configuration at the same time (``--shard``, Ray) never delete each
  other's partial writes, and the last one to rewrite the aggregates reads
  every run finished before it. Nothing collective happens inside."""
  out_dir = plan.directory
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, store.LOCK), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield out_dir
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def load_splits(plan: Plan):
  """The campaign's data, through its workload's one path (loaded, split
  with ``split_seed``, capped at ``max_samples``, fitted by the task with
  the vocabulary cached in the campaign directory), once for all of its
  optimizers; the split data are checked against the plan
  (:func:`~optbench_jax.train.plan.check_data`) before anything is fitted
  or written, and a refusal raised while fitting undoes what the fit
  wrote."""
  workload, cfg = plan.workload, plan.campaign
  prepared = workload.prepare(workload.load(cfg.data_dir,
                                            offline=cfg.offline), cfg)
  check_data(plan, prepared)
  workload.fetch_pretrained(cfg, offline=cfg.offline)
  # A refusal raised by the fit (it needs the vocabulary, which is cached
  # first) leaves the directory as it was.
  with store.unchanged_on_error(plan.directory, [store.VOCABULARY]), \
       campaign_lock(plan) as out_dir:
    store.remove_partial_writes(out_dir)
    return workload.fit(prepared, cfg, cache_dir=out_dir)


def finished_runs(plan: Plan) -> list[tuple[str, list, dict]]:
  """``(label, history, metadata)`` of every finished run of the campaign
  on disk, in the campaign's order (optimizers, then learning rates, then
  seeds): runs trained by this process or by any other (another shard, a
  Ray worker, an earlier invocation). A run whose stored settings differ
  from the campaign's in anything that changes its numbers is not the
  campaign's and is left out."""
  found = []
  for spec in tuning_lib.final_runs(plan):
    run = store.read_finished(spec.run_dir)
    if run is not None and not settings.differences(run.metadata,
                                                    spec.config):
      found.append((spec.label, run.history, run.metadata))
  return found


def write_aggregates(plan: Plan, *, plots_too: bool = True) -> list[dict]:
  """Rewrites ``summary.csv`` (and ``seeds.csv`` with several seeds) and,
  with ``plots_too``, ``epochs.csv`` and the cross-optimizer plots, from
  :func:`finished_runs`; returns the summary rows."""
  cfg = plan.campaign
  task = plan.workload.task
  if not os.path.isdir(plan.directory):
    return []  # nothing trained yet (e.g. its data could not be loaded)
  with campaign_lock(plan) as out_dir:
    runs = finished_runs(plan)
    rows = [outputs.summarize(history, meta, task.higher_is_better)
            for _, history, meta in runs]
    store.write_csv(os.path.join(out_dir, store.SUMMARY), rows,
                    outputs.SUMMARY_COLUMNS)
    if plan.several_seeds:
      store.write_csv(os.path.join(out_dir, store.SEEDS),
                      seeds_lib.over_seeds(rows), seeds_lib.SEED_COLUMNS)
    if plan.tuned:
      tuning_lib.write_files(plan, out_dir)
    if plots_too:
      long_rows = [r for _, history, meta in runs
                   for r in outputs.long_format(history, meta)]
      epoch_columns = list(dict.fromkeys(k for r in long_rows for k in r))
      store.write_csv(os.path.join(out_dir, store.EPOCHS), long_rows,
                      epoch_columns)
      plots.campaign_plots({label: history for label, history, _ in runs},
                           task.primary_metric,
                           f"{cfg.model} on {cfg.dataset}", out_dir)
  return rows


def run_campaign(cfg: CampaignConfig | Plan,
                 optimizers: Optional[Sequence[str]] = None, *,
                 splits=None) -> list[dict]:
  """Trains the campaign's optimizers, or the subset ``optimizers`` of them
  (one shard's share); returns the summary rows of the runs trained here.

  ``cfg``: a plan, or a ``CampaignConfig`` made into one
  (:func:`~optbench_jax.train.plan.make_plan`). The plan is compared with
  the store first (:func:`~optbench_jax.train.plan.check_store`), so a
  refusal comes before any file changes. The campaign files
  (``summary.csv``, ``seeds.csv``, ``epochs.csv``, the plots) are
  rewritten from every finished run of the configuration on disk
  (:func:`write_aggregates`), so after the last subset finishes they are
  those of the whole campaign, whichever process trained each part.
  ``splits``: the data from :func:`load_splits`, to share it between calls.
  """
  plan = cfg if isinstance(cfg, Plan) else make_plan(cfg)
  everything = list(plan.optimizers)
  selected = everything if optimizers is None else list(optimizers)
  outside = [o for o in selected if o not in everything]
  if outside:
    raise OptBenchError(f"{', '.join(outside)} is not among the campaign's "
                        f"optimizers ({', '.join(everything)})")
  stored = check_store(plan, selected)   # the runs on disk, read once
  cfg = plan.campaign
  enable_compile_cache(cfg.compile_cache or default_compile_cache())
  task = plan.workload.task
  if splits is None:
    splits = load_splits(plan)
  rows = []
  quiet = cfg.quiet or not distributed.is_primary()
  bar = tqdm(selected, desc="runs", disable=quiet, dynamic_ncols=True)
  for optimizer in bar:
    bar.set_description(f"run {optimizer}")
    trials = plan.trials_of(optimizer)
    epochs = tqdm(total=cfg.epochs * (len(trials) + (
        len(cfg.seed_list) if plan.tuned else len(plan.runs_of(optimizer)))),
                  desc=optimizer, leave=False, disable=quiet,
                  dynamic_ncols=True)

    def train(runs, stored, epochs=epochs):
      def on_epoch(index, record):
        epochs.update(1)
        epochs.set_postfix({"run": runs[index].label, task.primary_metric:
                            record.get(task.primary_metric),
                            "val_loss": record["val_loss"]})
      return run_lib.train_runs(
          runs, splits, resume=cfg.resume, on_epoch=on_epoch,
          max_together=cfg.runs_per_program, stored=stored)

    if plan.tuned:
      # Trials that share a program (all but traced values) train together.
      groups: list[tuple] = []
      for spec in trials:
        key = run_lib.program_key(spec.config)
        group = next((g for k, g in groups if k == key), None)
        if group is None:
          groups.append((key, [spec]))
        else:
          group.append(spec)
      for _, group in groups:
        train(group, stored)
      write_aggregates(plan, plots_too=False)   # tuning.csv
      chosen = tuning_lib.selected(plan, optimizer)
      if chosen is None:
        warnings.warn(f"{optimizer}: no trial of --tune {cfg.tune} reached a "
                      f"finite validation {task.primary_metric}; nothing to "
                      f"re-run (see {store.TUNING})")
        epochs.close()
        continue
      runs = list(plan.reruns(chosen.config))
      results = train(runs, check_store(plan, specs=runs))
    else:
      results = train(list(plan.runs_of(optimizer)), stored)
    epochs.close()
    rows.extend(outputs.summarize(history, meta, task.higher_is_better)
                for history, meta in results)
    write_aggregates(plan, plots_too=False)
  bar.close()
  write_aggregates(plan)
  return rows
