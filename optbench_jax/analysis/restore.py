"""A finished run rebuilt from its directory, for analyses.

:func:`load_run` reads ``run_metadata.json`` (every setting of the run),
loads and splits the data exactly as the campaign did (same dataset, split
seed, cap, validation share, fitted preprocessing or vocabulary), builds the
model and the optimizer's program, and restores parameters from the run's
Orbax checkpoints: the initial parameters (``checkpoints/initial``) and the
state at the end of every epoch still kept (the last two by default, all
with ``--keep-checkpoints 0``).

:meth:`Run.loss_function` turns the run into the ``loss_fn(params) ->
scalar`` that :mod:`~optbench_jax.analysis.landscape` and
:mod:`~optbench_jax.analysis.hessian` take: the run's training objective
(the task's loss with the run's label smoothing, padding masked, no dropout)
averaged over a fixed evaluation subset — the first ``samples`` examples of
a split, in the split's order — with batch normalisation in one of two
stated forms:

* ``bn="running"`` (default): evaluation mode, normalised by the final
  checkpoint's running statistics, held fixed for every parameter vector
  (as Li et al. 2018's code evaluates its surfaces, ``net.eval()``);
* ``bn="batch"``: training-mode normalisation by each evaluation batch's
  own statistics (no running statistics involved), the loss the optimizer
  actually differentiated.

Models without batch normalisation give the same loss either way.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from optbench_jax import data as data_lib
from optbench_jax import store
from optbench_jax.errors import OptBenchError
from optbench_jax.train import checkpoint as checkpoint_lib
from optbench_jax.engine.epoch import batches
from optbench_jax.train.plan import stored_run
from optbench_jax.train.run import RunSetup
from optbench_jax.train.settings import RunConfig
from optbench_jax.engine.state import TrainState, run_slice
from optbench_jax.transforms.base import RUN_AXIS

BN_MODES = ("running", "batch")
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Run:
  """A run rebuilt for analysis (one run: no leading run axis)."""
  run_dir: str
  config: RunConfig
  metadata: dict
  setup: RunSetup
  program: Any
  template: TrainState

  @property
  def task(self):
    return self.setup.task

  @property
  def label(self) -> str:
    rc = self.config
    return f"{rc.optimizer} (lr {rc.learning_rate:g}, seed {rc.seed})"

  def _checkpoints(self) -> checkpoint_lib.Checkpoints:
    return checkpoint_lib.Checkpoints(self.run_dir, keep=0)

  def epochs(self) -> list[int]:
    """Epochs with a checkpoint, in order."""
    if not os.path.isdir(store.epoch_checkpoints(self.run_dir)):
      return []
    manager = self._checkpoints()
    try:
      return sorted(manager.epochs())
    finally:
      manager.close()

  def state(self, epoch: Optional[int] = None) -> TrainState:
    """The train state at the end of ``epoch`` (default: the last kept)."""
    kept = self.epochs()
    if not kept:
      raise OptBenchError(f"{self.run_dir} has no epoch checkpoints (was it "
                          f"trained with checkpoints off, or not yet?)")
    epoch = kept[-1] if epoch is None else epoch
    if epoch not in kept:
      raise OptBenchError(f"{self.run_dir} has no checkpoint of epoch "
                          f"{epoch} (kept: {kept})")
    manager = self._checkpoints()
    try:
      return manager.restore(epoch, self.template)
    except store.DamagedFile as e:
      raise OptBenchError(f"damaged checkpoint {e}; epoch {epoch} of this "
                          f"run cannot be analysed (train the run again to "
                          f"rewrite it)") from None
    finally:
      manager.close()

  def eval_params(self, state: TrainState):
    """The parameters evaluation uses (``prepare_for_eval``: Schedule-Free's
    average, Lookahead's slow weights; otherwise the iterate)."""
    stacked = jax.tree.map(lambda x: x[None], state)
    return run_slice(jax.vmap(self.program.eval_params,
                              axis_name=RUN_AXIS)(stacked), 0)

  def final_params(self):
    return self.eval_params(self.state())

  def initial_params(self):
    heals = ("`run --resume` with the run's settings writes them again (a "
             "function of the seed)")
    if not os.path.isdir(store.initial_checkpoint(self.run_dir)):
      raise OptBenchError(f"{self.run_dir} has no initial parameters "
                          f"(checkpoints/initial); {heals}")
    try:
      return checkpoint_lib.restore_initial(self.run_dir,
                                            self.template.params)
    except store.DamagedFile as e:
      raise OptBenchError(f"damaged initial parameters {e}; {heals}"
                          ) from None

  def trajectory(self) -> tuple[list[int], list]:
    """(epochs, parameters): the initial parameters (epoch 0) and the
    evaluation parameters of every kept epoch checkpoint."""
    epochs, points = [0], [self.initial_params()]
    for epoch in self.epochs():
      epochs.append(epoch)
      points.append(self.eval_params(self.state(epoch)))
    return epochs, points

  def split(self, name: str) -> dict:
    if name not in SPLITS:
      raise OptBenchError(f"unknown split {name!r}; valid: "
                          f"{', '.join(SPLITS)}")
    arrays = getattr(self.setup.splits, name)
    if arrays is None or not data_lib.num_examples(arrays):
      raise OptBenchError(f"the run's dataset has no {name} split")
    return arrays

  def loss_function(self, model_state: Any, *, split: str = "train",
                    samples: int = 1024, batch_size: Optional[int] = None,
                    bn: str = "running") -> Callable:
    """``loss_fn(params) -> scalar``: the run's training objective on the
    first ``samples`` examples of ``split`` (module docstring).

    The subset is summed batch by batch inside one ``lax.scan`` (padded and
    masked), so the function is jit-, vmap- and jvp-able; ``model_state``
    supplies the running statistics for ``bn="running"`` (usually the final
    checkpoint's: ``run.state().model_state``).

    Args:
      model_state: the non-parameter collections (``batch_stats``) the
        model is applied with; ``{}`` for models without any.
      split: ``"train"``, ``"val"`` or ``"test"`` (the run's own split,
        fitted preprocessing applied).
      samples: how many of the split's first examples define the loss
        (capped at the split's size).
      batch_size: examples per scanned batch (default: the run's
        evaluation batch size); changes memory, not the value.
      bn: ``"running"`` (batch norm with ``model_state``'s running
        statistics, eval mode) or ``"batch"`` (each batch's own statistics).

    Returns:
      ``loss_fn(params) -> scalar``, the mean loss over the subset, for
      parameters with the structure of ``run.initial_params()``.
    """
    if bn not in BN_MODES:
      raise OptBenchError(f"unknown batch-norm mode {bn!r}; valid: "
                          f"{', '.join(BN_MODES)}")
    if samples < 1:
      raise OptBenchError(f"samples must be at least 1 (got {samples})")
    arrays = self.split(split)
    n = min(samples, data_lib.num_examples(arrays))
    subset = {k: jnp.asarray(v[:n]) for k, v in arrays.items()}
    size = min(batch_size or self.setup.hyper.eval_batch_size, n)
    index, mask = batches(n, size, None)
    task, info, program = self.task, self.setup.splits.info, self.program
    smoothing = self.config.label_smoothing or 0.0
    collections = [c for c in model_state if c == "batch_stats"]

    def loss_fn(params):
      def body(totals, xs):
        idx, m = xs
        batch = task.preprocess({**{k: v[idx] for k, v in subset.items()},
                                 "mask": m}, info)
        variables = {"params": params, **model_state}
        inputs = task.model_inputs(batch)
        if bn == "batch" and collections:
          out, _ = program.apply(variables, *inputs, train=True,
                                 mutable=collections)
        else:
          out = program.apply(variables, *inputs, train=False)
        loss_sum, count = task.loss(out, batch, smoothing)
        return (totals[0] + loss_sum, totals[1] + count), None

      zero = jnp.zeros((), jnp.float32)
      (total, count), _ = jax.lax.scan(body, (zero, zero), (index, mask))
      return total / jnp.maximum(count, 1.0)

    return loss_fn


def load_run(run_dir: str, *, data_dir: Optional[str] = None,
             offline: bool = False) -> Run:
  """Rebuilds the run in ``run_dir`` (module docstring); one-line errors for
  a directory that is not a run, damaged metadata or missing data. The
  run's settings go through the plan's edge (``stored_run``) and its data
  through the workload's one path, as when it was trained (a missing
  dataset or checkpoint downloaded first, unless ``offline``)."""
  path = os.path.join(run_dir, store.METADATA)
  try:
    metadata = store.read_json_if_intact(path, dict)
  except store.DamagedFile as e:
    raise OptBenchError(f"damaged run metadata: {e}") from None
  if metadata is None:
    raise OptBenchError(f"{run_dir} is not a run directory (no "
                        f"{store.METADATA})")
  spec = stored_run(metadata, run_dir)
  rc = spec.config
  splits = spec.workload.splits(rc, data_dir=data_dir,
                                cache_dir=store.campaign_dir_above(
                                    run_dir, rc.task, rc.dataset, rc.model),
                                offline=offline)
  setup = RunSetup(rc, splits)
  program = setup.program(1)
  # The structure (optimizer NamedTuples, zero-size leaves) that the
  # checkpoints' leaves are restored into: the run's own initial state.
  template = run_slice(program.initial_state(
      [rc.seed], [rc.learning_rate], setup.example), 0)
  return Run(run_dir=os.path.abspath(run_dir), config=rc, metadata=metadata,
             setup=setup, program=program, template=template)
