"""Run settings, declared once.

Every setting is one field of a frozen dataclass, declared with
:func:`~optbench_jax.flags.setting`: its default, its help text, how the
command line parses it, its check and whether it changes a run's numbers.
The command line's ``run`` flags are generated from these fields
(``flags.add_flags``), the run metadata is their ``asdict``, and
:func:`check` validates them, in one place, for the command line and the
Python API alike. The generic part is ``optbench_jax/flags.py``'s; this
module adds the run's: the classes, the task's defaults and the checks
that need the registries.

* :class:`Protocol`: what every run of a campaign shares (the fair
  protocol: task, data, model, epochs, schedule, ...).
* :class:`RunConfig`: a protocol plus what varies between the runs of a
  campaign: the optimizer, its learning rate and the seed.
* :class:`CampaignConfig`: a protocol plus how a campaign chooses its runs
  (optimizers, seeds, learning rates) and where it writes them.

Task defaults (``scheduler``, ``grad_clip``, ``label_smoothing`` left at
``None``) and a run's optimizer's default ``weight_decay`` are resolved by
:func:`resolve` into concrete values before a run starts, so the metadata
records what was used.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from optbench_jax import flags, store
from optbench_jax.errors import OptBenchError
# The generic part (the declaration, value checks, parsers and flag names)
# is optbench_jax/flags.py's; these names stay the run settings' API too.
from optbench_jax.flags import (  # pylint: disable=unused-import
    MAX_SEED, all_of, at_least, auto_int, directory, fields, flag_of,
    fraction, non_negative, not_empty, number_list, optional_int,
    positive_finite, seed_value, setting)


def label_smoothing(value) -> Optional[str]:
  if value is not None and not 0.0 <= value < 1.0:
    return f"must be in [0, 1) (got {value})"
  return None


def cache_directory(value) -> Optional[str]:
  """``--compile-cache``: ``off``, or a directory (not a file)."""
  return None if value == "off" else directory(value)


def name_values(text: str) -> dict[str, float]:
  overrides = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    name, sep, value = item.partition("=")
    try:
      if not sep:
        raise ValueError
      overrides[name.strip()] = float(value)
    except ValueError:
      raise ValueError(f"--lr-overrides expects name=lr,... "
                       f"(got {item!r})") from None
  return overrides


def _schedulers():
  from optbench_jax.engine import schedules
  return schedules.SCHEDULERS


def _precisions():
  from optbench_jax.engine import precision
  return tuple(precision.PRECISIONS)


def _inits():
  from optbench_jax import models
  return models.INITS


DATA_PLACEMENTS = ("auto", "device", "host")
# Settings that only some tasks have: ``None`` resolves to the dataset's
# default, else the task's ``default_<name>``; a task whose default is None
# refuses a value.
TASK_SETTINGS = ("max_length", "vocab_size", "target_length", "beam_size",
                 "length_penalty")
LR_POLICIES = ("per-optimizer", "fixed")
TUNING = ("none", "random", "grid")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Protocol:
  """The settings every run of a campaign shares."""
  task: str = setting(help="the task (python -m optbench_jax list)")
  dataset: str = setting(help="a dataset of the task")
  model: str = setting(help="a model of the task")
  epochs: int = setting(20, "epochs per run", check=at_least(1))
  batch_size: int = setting(128, "training batch size", check=at_least(1))
  eval_batch_size: Optional[int] = setting(
      None, "evaluation batch size, capped at the split's size (default: "
      "the task's: 512, 64 for tasks with vocabulary-sized outputs)",
      parse=optional_int, check=at_least(1), numeric=False)
  max_samples: Optional[int] = setting(
      None, "cap on the training split's raw examples (language "
      "modelling: documents, before they are cut into sequences; "
      "run_metadata.json's max_samples_unit says which; default: none, "
      "the whole split)", parse=optional_int,
      check=at_least(1))
  split_seed: int = setting(
      0, "seed of the train/validation split, independent of the run seeds "
      "(a campaign's seeds all use the same split)", check=seed_value)
  val_fraction: float = setting(0.1, "share of the training data held out "
                                "for validation", check=fraction)
  scheduler: Optional[str] = setting(
      None, "cosine, plateau or none (default: the task's)",
      choices=_schedulers)
  warmup_steps: int = setting(0, "linear learning-rate warmup steps",
                              check=non_negative)
  grad_clip: Optional[float] = setting(
      None, "global-norm clipping (default: the task's; 0 = off)",
      check=non_negative)
  label_smoothing: Optional[float] = setting(
      None, "label smoothing of the training loss (default: the task's)",
      check=label_smoothing)
  weight_decay: Optional[float] = setting(
      None, "weight decay of every optimizer, decoupled or coupled as its "
      "registry entry says (default: each optimizer's own, its PyTorch "
      "reference's: 0, AdamW 1e-2)", check=non_negative)
  exclude_bias_norm: bool = setting(
      False, "exclude biases and normalisation scales (1-D tensors) from "
      "weight decay and from LARS/LAMB trust ratios (default: every tensor, "
      "as the source protocol)")
  init: str = setting("torch", "parameter initialisation: torch (PyTorch's "
                      "defaults, as the source benchmark) or flax",
                      choices=_inits)
  precision: str = setting("fp32", "fp32 or bf16 (bfloat16 compute, float32 "
                           "parameters and optimizer state)",
                           choices=_precisions)
  eval_every: int = setting(1, "evaluate on the validation split every N "
                            "epochs (and after the last)", check=at_least(1))
  eval_max_samples: Optional[int] = setting(
      None, "evaluate on the first N validation examples only (default: every "
      "validation example; the test split: --test-max-samples)",
      parse=optional_int, check=at_least(1))
  test_max_samples: Optional[int] = setting(
      None, "evaluate the final model on the first N test examples only "
      "(default: all; for quick tries, the test metrics then describe N "
      "examples, n_test in the metadata)", parse=optional_int,
      check=at_least(1))
  devices: Optional[int] = setting(
      None, "data-parallel over this many local devices (default: all)",
      parse=auto_int, check=at_least(1), numeric=False)
  data_placement: str = setting(
      "auto", "auto, device (epoch gathered inside the compiled program) or "
      "host (streamed with prefetching)", choices=lambda: DATA_PLACEMENTS,
      numeric=False)
  max_length: Optional[int] = setting(
      None, "text tasks: tokens kept per text (QA: per context), longer "
      "texts truncated (default: the dataset's or the task's)",
      parse=optional_int, check=at_least(1))
  vocab_size: Optional[int] = setting(
      None, "text tasks: cap on the vocabulary built from the training "
      "split, special tokens included (default: the task's)",
      parse=optional_int, check=at_least(3))
  target_length: Optional[int] = setting(
      None, "sequence-to-sequence tasks: target tokens kept (and decoded) "
      "per example (default: the dataset's or the task's)",
      parse=optional_int, check=at_least(1))
  beam_size: Optional[int] = setting(
      None, "generation tasks: beam size of decoding, 1 = greedy (default: "
      "the task's)", parse=optional_int, check=at_least(1))
  length_penalty: Optional[float] = setting(
      None, "generation tasks: GNMT length-penalty exponent of beam search "
      "(default: the task's)", check=non_negative)
  pretrained: Optional[str] = setting(
      None, "models with pretrained weights: a local directory or a Hugging "
      "Face hub name found in the local cache, or 'none' for random "
      "initialisation (default: the model's)", check=not_empty)
  width: float = setting(
      1.0, "model size: a multiplier of the model's channel and hidden "
      "widths (1 = the source's size; e.g. 0.25 for quick tries); models "
      "with pretrained weights need --pretrained none", check=positive_finite)
  track_sharpness: Optional[int] = setting(
      None, "every N epochs, measure the Hessian's top eigenvalue (Lanczos) "
      "and trace (Hutchinson) on a fixed training batch, for every run, "
      "into its history (default: never; cost in the docs' outputs page)",
      parse=optional_int, check=at_least(1))
  divergence_factor: Optional[float] = setting(
      None, "also mark a run diverged (and stop it) when its training or "
      "validation loss exceeds this multiple of its first epoch's training "
      "loss (default: only NaN/inf losses diverge)", check=positive_finite)
  checkpoint: bool = setting(True, "Orbax checkpoints every epoch",
                             flag=None, numeric=False)
  keep_checkpoints: int = setting(
      2, "epoch checkpoints kept per run, 0 = all (the optimizer's path on "
      "a loss surface: analyze --what landscape2d)", check=non_negative,
      numeric=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig(Protocol):
  """One run: the protocol, the optimizer, its learning rate and the seed."""
  optimizer: str = setting(flag=None)
  learning_rate: float = setting(flag=None)
  seed: int = setting(0, flag=None, check=seed_value)
  optimizer_hyperparameters: Mapping[str, Any] = setting(
      flag=None, factory=dict)
  traced_hyperparameters: Sequence[str] = setting(
      flag=None, factory=tuple)
  trial: Optional[int] = setting(None, flag=None, numeric=False)

  @property
  def traced_values(self) -> dict[str, float]:
    """The values of the traced hyperparameters (tuning's continuous
    dimensions, injected per run: ``engine/optimizer.py``)."""
    return {k: self.weight_decay if k == "weight_decay"
            else self.optimizer_hyperparameters[k]
            for k in self.traced_hyperparameters}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CampaignConfig(Protocol):
  """A campaign: the protocol and how it chooses and stores its runs."""
  optimizers: Any = setting("all", "'all' or a comma-separated list")
  seed: int = setting(0, "the seed of a single run (see --seeds)",
                      check=seed_value)
  seeds: Optional[Sequence[int]] = setting(
      None, "several seeds, e.g. 0,1,2 (overrides --seed; default: none, "
      "the one --seed); the runs of one optimizer train together in one "
      "program",
      parse=number_list(int, "--seeds"))
  lr_policy: str = setting("per-optimizer", "per-optimizer (registry "
                           "defaults) or fixed (--lr)",
                           choices=lambda: LR_POLICIES)
  lr: Optional[float] = setting(None, "the learning rate of "
                                "--lr-policy fixed (default: none; that "
                                "policy needs it)", check=positive_finite)
  lr_overrides: Mapping[str, float] = setting(
      help="per-optimizer learning rates: name=lr,... (default: none, "
      "the policy's)", parse=name_values,
      factory=dict)
  lr_grid: Optional[Sequence[float]] = setting(
      None, "train every optimizer at each of these learning rates, e.g. "
      "1e-4,3e-4,1e-3 (one compiled program; default: none, one learning "
      "rate per optimizer)",
      parse=number_list(float, "--lr-grid"))
  tune: str = setting(
      "none", "none (each optimizer at its learning rate), random (--trials "
      "quasi-random points of each optimizer's search space, AlgoPerf) or "
      "grid (--trials learning rates log-spaced over its range, DeepOBS); "
      "the trial best on validation is re-run on --seeds",
      choices=lambda: TUNING)
  trials: Optional[int] = setting(
      None, "trials per optimizer of --tune random|grid (default: none; "
      "tuning needs it)", check=at_least(1))
  tune_seed: int = setting(
      100, "the seed of every trial (initialisation, data order) and of the "
      "quasi-random points; --seeds must not contain it",
      check=seed_value)
  runs_per_program: Optional[int] = setting(
      None, "at most this many runs (seeds x LRs) in one program; 'auto' "
      "(default) fits them to device memory", parse=auto_int,
      check=at_least(1), numeric=False)
  output_dir: str = setting("results", "where results are written",
                            check=all_of(not_empty, directory),
                            numeric=False)
  data_dir: Optional[str] = setting(
      None, "dataset cache directory (HF datasets / TFDS; default: their "
      "own caches)", check=directory, numeric=False)
  offline: bool = setting(
      False, "never download: a dataset or checkpoint missing from the "
      "local cache is an error (as with HF_HUB_OFFLINE=1)", numeric=False)
  resume: bool = setting(False, "skip finished runs, continue unfinished "
                         "ones from their last checkpoint", numeric=False)
  overwrite: bool = setting(
      False, "train the campaign's runs again from the start, replacing "
      "the results on disk (without it, a campaign refuses to write over "
      "runs it finds; see --resume)", numeric=False)
  quiet: bool = setting(False, "no progress bars", numeric=False)
  compile_cache: Optional[str] = setting(
      None, "persistent XLA compilation cache directory (default: "
      "~/.cache/optbench_jax/xla or $OPTBENCH_COMPILE_CACHE; 'off' "
      "disables)", check=cache_directory, numeric=False)
  num_workers: int = setting(
      0, "accepted for compatibility with the PyTorch framework; data are "
      "batched on the device, so unused", numeric=False)

  @property
  def seed_list(self) -> list[int]:
    return list(self.seeds) if self.seeds else [self.seed]


def protocol_of(config: Protocol) -> dict:
  """The protocol's settings of ``config`` (a run or a campaign)."""
  return {f.name: getattr(config, f.name) for f in dataclasses.fields(Protocol)}


def numeric_settings(cls=RunConfig) -> list[str]:
  """Names of the settings that change a run's numbers."""
  return [f.name for f in dataclasses.fields(cls) if f.metadata["numeric"]]


def differences(stored: Mapping[str, Any], config) -> list[str]:
  """``"flag old → new"`` for every setting that changes a run's numbers
  and differs between a run's stored metadata and ``config`` (a setting
  added since the run was stored counts as its default)."""
  out = []
  for field in dataclasses.fields(config):
    if not field.metadata["numeric"]:
      continue
    new = store.as_json(getattr(config, field.name))
    old = stored.get(field.name, _default_of(field))
    if old != new:
      name = flag_of(field) or field.name.replace("_", " ")
      out.append(f"{name} {old!r} → {new!r}")
  return out


def _default_of(field: dataclasses.Field) -> Any:
  """What a run stored before ``field`` existed had: its default (a
  required field: nothing recorded)."""
  if field.default is not dataclasses.MISSING:
    return store.as_json(field.default)
  if field.default_factory is not dataclasses.MISSING:
    return store.as_json(field.default_factory())
  return "(not recorded)"


def resolve(config) -> Any:
  """``config`` with the defaults of its task, dataset and model in place of
  ``None``: scheduler, clipping, label smoothing (the task's), the
  :data:`TASK_SETTINGS` (the dataset's, else the task's) and the pretrained
  weights (the model's); a run's weight decay (its optimizer's, see
  ``transforms.default_weight_decay``; a campaign keeps ``None``: each of
  its optimizers its own). Called by ``train/plan.py`` only: once for a
  campaign and once for each of its runs, from the settings given (resolving
  twice is not the same: ``grad_clip`` 0 resolves to None)."""
  from optbench_jax import data, models, tasks, transforms
  task = tasks.get(config.task)
  dataset = data.get(config.task, config.dataset)
  model = models.get(config.task, config.model)
  clip = task.default_grad_clip if config.grad_clip is None else config.grad_clip
  pretrained = config.pretrained
  if pretrained is None and model.pretrained is not None:
    pretrained = model.pretrained.default
  per_run = {}
  if isinstance(config, RunConfig) and config.weight_decay is None:
    per_run["weight_decay"] = transforms.default_weight_decay(
        config.optimizer, **config.optimizer_hyperparameters)
  return dataclasses.replace(
      config, scheduler=config.scheduler or task.default_scheduler,
      eval_batch_size=config.eval_batch_size or task.default_eval_batch_size,
      grad_clip=clip or None,
      label_smoothing=(task.default_label_smoothing
                       if config.label_smoothing is None
                       else config.label_smoothing),
      pretrained=pretrained, **per_run,
      **{name: (getattr(config, name) if getattr(config, name) is not None
                else dataset.defaults.get(name,
                                          getattr(task, f"default_{name}")))
         for name in TASK_SETTINGS})


def check(config) -> None:
  """Validates ``config`` (any of the three classes); one-line errors.

  Pure: names against the registries, every field against its declared
  choices and checks, and the combinations that cannot work — no device,
  no file, no data. Called once, by ``train/plan.py``, which adds what
  needs the machine (devices) or the whole campaign (optimizers, learning
  rates, the output directory).
  """
  from optbench_jax import data, models, tasks, transforms
  tasks.get(config.task)
  data.get(config.task, config.dataset)
  models.get(config.task, config.model)
  flags.check(config)
  task = tasks.get(config.task)
  for name in TASK_SETTINGS:
    if getattr(config, name) is not None and getattr(
        task, f"default_{name}") is None:
      raise OptBenchError(f"--{name.replace('_', '-')} does not apply to "
                          f"task {config.task}")
  spec = models.get(config.task, config.model)
  if (config.pretrained not in (None, "none") and spec.pretrained is None):
    raise OptBenchError(f"--pretrained: model {config.model} has no "
                        f"pretrained weights (omit the flag or give 'none')")
  problem = spec.width_error(config.width, config.pretrained)
  if problem:
    raise OptBenchError(f"--width: {problem}")
  if isinstance(config, RunConfig):
    transforms.get(config.optimizer)
    if positive_finite(config.learning_rate):
      raise OptBenchError(f"the learning rate "
                          f"{positive_finite(config.learning_rate)}")
  if isinstance(config, CampaignConfig):
    _check_campaign(config)


def _check_campaign(cfg: CampaignConfig) -> None:
  """The campaign's own settings (optimizer names are the plan's)."""
  for name, lr in cfg.lr_overrides.items():
    if positive_finite(lr):
      raise OptBenchError(f"--lr-overrides {name}={lr}: the learning rate "
                          f"{positive_finite(lr)}")
  if cfg.lr_grid is not None:
    if not cfg.lr_grid or any(positive_finite(lr) for lr in cfg.lr_grid):
      raise OptBenchError("--lr-grid needs positive finite learning rates, "
                          "e.g. 1e-4,3e-4,1e-3")
    if cfg.lr is not None or cfg.lr_overrides:
      raise OptBenchError("--lr-grid replaces --lr and --lr-overrides; give "
                          "one of them")
    if len(set(cfg.lr_grid)) != len(cfg.lr_grid):
      raise OptBenchError("--lr-grid repeats a learning rate")
  seeds = cfg.seed_list
  if cfg.tune == "none":
    if cfg.trials is not None:
      raise OptBenchError("--trials needs --tune random or --tune grid")
  else:
    if cfg.trials is None:
      raise OptBenchError(f"--tune {cfg.tune} needs --trials N")
    given = [flag for flag, value in (
        ("--lr-grid", cfg.lr_grid), ("--lr", cfg.lr),
        ("--lr-overrides", cfg.lr_overrides)) if value]
    if given:
      raise OptBenchError(f"--tune {cfg.tune} chooses the learning rates; "
                          f"omit {', '.join(given)}")
    if cfg.tune_seed in seeds:
      raise OptBenchError(
          f"--seeds contains --tune-seed {cfg.tune_seed}: the selected "
          f"trial is re-run on seeds the trials did not use; give other "
          f"--seeds or another --tune-seed")
  if len(set(seeds)) != len(seeds):
    raise OptBenchError("--seeds repeats a seed")
  bad = [s for s in seeds if seed_value(s)]
  if bad:
    raise OptBenchError(f"--seeds: {bad[0]} {seed_value(bad[0])}")
  if cfg.resume and cfg.overwrite:
    raise OptBenchError("--resume continues the runs on disk and "
                        "--overwrite replaces them; give one of them")
