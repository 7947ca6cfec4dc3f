"""The task interface: everything the engine needs to know about a task.

The training engine never branches on which task it runs (as AlgoPerf's
``Workload``): it calls these methods. Batches are dicts of arrays with a
leading example axis and a ``"mask"`` entry (1.0 for real examples, 0.0 for
the padding that fills the last batch), so every batch of a run has the same
shape and the step compiles once. Sequence tasks add their own token masks.

Evaluation is split so that it accumulates exactly across batches and
devices: ``eval_outputs`` may call any model method with mutable collections
(``apply(variables, ..., method=model.decode, mutable=["cache"])``: decoding
with a key/value cache), ``eval_stats`` returns *sums* (e.g. a confusion
matrix, a summed loss) plus optional per-example arrays to gather (decoded
tokens), and ``finalize`` turns the totals into metrics on the host, where
decoding-based scores (BLEU, ROUGE, seqeval) can run.

The base class assumes nothing about the inputs: a task names its model's
inputs (``model_inputs``), computes what it needs from the training split
(``fit``, e.g. normalisation statistics), and the dataset's registry entry
supplies the training augmentation (``info.augment``).

For tests and benchmarks a task also makes random batches of its own layout
(``random_batch``; text tasks make already-encoded ids and say which
statistics ``fit`` would have stored, ``encoded_info``), counts the target
tokens of token-predicting tasks (``target_tokens``) and names its loss's
PyTorch reference (``reference_loss``, in
``optbench_jax/reference/torch_losses.py``, which imports torch; the
library never imports it).
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.data.base import DatasetInfo, Splits
from optbench_jax.errors import OptBenchError
from optbench_jax.registry import Registry

Batch = Mapping[str, jax.Array]
# apply(variables, *args, method=None, rng=None, mutable=False, **kwargs):
# Flax's ``Module.apply`` at the run's precision (outputs in float32); returns
# the outputs, or ``(outputs, mutated)`` when ``mutable`` is not False.
ApplyFn = Callable[..., Any]
# Either of numpy's random APIs (``random_integers`` draws from both).
RandomGenerator = Union[np.random.Generator, np.random.RandomState]


@dataclasses.dataclass(frozen=True)
class TextModel:
  """What a text task's ``fit`` needs of the run's model, handed to it by
  the workload (``optbench_jax/workload.py``) so tasks never look models
  up: ``build_vocabulary(corpus, max_size, pretrained_dir) -> Vocabulary``
  (the model's :attr:`~optbench_jax.models.base.ModelSpec.vocabulary`) and
  the local directory of the model's pretrained weights (None: none)."""
  build_vocabulary: Callable[..., Any]
  pretrained_dir: Optional[str] = None


class Task(abc.ABC):
  """One task of the benchmark.

  Class attributes:
    name: the name users type.
    primary_metric: the metric that ranks optimizers.
    higher_is_better: whether a larger primary metric is better.
    default_scheduler: ``"cosine"`` (vision) or ``"plateau"`` (NLP).
    default_grad_clip: global-norm clipping, or None.
    default_label_smoothing: label smoothing of the training loss.
    gathered_stats: names of ``eval_stats`` entries that are per-example
      arrays to concatenate across batches instead of summing.
    default_eval_batch_size: the evaluation batch size unless
      ``--eval-batch-size`` is given (smaller where outputs are large).
    default_max_length, default_vocab_size, default_target_length,
      default_beam_size, default_length_penalty: the task's defaults of
      these settings (None: the setting does not apply, and a value given
      is refused).
    sample_unit: what one raw example of its datasets is, which
      ``--max-samples`` counts (``"examples"``; language modelling:
      ``"documents"``, before they are cut into sequences).
    reference_loss: the dotted path of the PyTorch reference of ``loss``
      (a class of ``optbench_jax.reference.torch_losses``), resolved lazily
      by ``torch_losses.for_task``: torch stays a test and benchmark
      dependency. None: the task has none.
  """
  name: str = ""
  primary_metric: str = ""
  higher_is_better: bool = True
  default_scheduler: str = "cosine"
  default_grad_clip: Optional[float] = None
  default_label_smoothing: float = 0.0
  gathered_stats: tuple = ()
  default_eval_batch_size: int = 512
  default_max_length: Optional[int] = None
  default_vocab_size: Optional[int] = None
  default_target_length: Optional[int] = None
  default_beam_size: Optional[int] = None
  default_length_penalty: Optional[float] = None
  sample_unit: str = "examples"
  reference_loss: Optional[str] = None

  @abc.abstractmethod
  def model_inputs(self, batch: Batch) -> tuple:
    """The positional inputs of the model's ``__call__`` for ``batch``."""

  def fit(self, splits: Splits, config: Any = None,
          cache_dir: Optional[str] = None,
          model: Optional[TextModel] = None) -> Splits:
    """Fits the preprocessing on the training split, once per campaign, on
    the host: statistics (normalisation) or vocabularies, stored in
    ``splits.info.stats``; text tasks also encode every split here.
    Called by the workload (``Workload.fit``), the one path of data.

    Args:
      splits: the raw splits.
      config: the run or campaign settings (lengths, vocabulary cap).
      cache_dir: where fitted vocabularies are cached for later runs and
        resumption (the campaign directory); None to not cache.
      model: what a text task needs of the model (its vocabulary builder
        and pretrained directory); None for tasks that need nothing.
    """
    del config, cache_dir, model
    return splits

  def preprocess(self, batch: Batch, info: DatasetInfo) -> dict:
    """Deterministic on-device preprocessing (e.g. normalisation)."""
    return dict(batch)

  def augment(self, batch: Batch, key: jax.Array, info: DatasetInfo) -> dict:
    """Random training augmentation, on the device inside jit: the
    dataset's (``info.augment``, from its registry entry), if any."""
    if info.augment is None:
      return dict(batch)
    return info.augment(batch, key)

  @abc.abstractmethod
  def loss(self, outputs: Any, batch: Batch, label_smoothing: float
           ) -> tuple[jax.Array, jax.Array]:
    """Returns ``(summed loss over valid examples, number of valid examples)``.

    Padding (``batch["mask"] == 0``) contributes nothing to either.
    """

  def random_batch(self, info: DatasetInfo, n: int, rng: RandomGenerator
                   ) -> dict:
    """``n`` random host examples (numpy arrays, leading axis ``n``, no
    ``"mask"``) in the layout ``preprocess`` and ``loss`` consume: raw as
    ``fit`` takes them, or already encoded where ``encoded_info`` is not
    None. Shapes, classes and vocabulary sizes come from ``info``.
    For tests and benchmarks."""
    del info, n, rng
    raise OptBenchError(
        f"task {self.name} makes no random batches: "
        f"{type(self).__name__}.random_batch is not implemented")

  def encoded_info(self, info: DatasetInfo) -> Optional[DatasetInfo]:
    """``info`` with the statistics ``fit`` would store for data that are
    already encoded (vocabulary sizes from ``info``, sequence lengths), for
    tasks whose ``random_batch`` makes encoded ids (text): ``fit`` is then
    skipped. None: random batches are raw and ``fit`` runs on them."""
    del info
    return None

  def target_tokens(self, arrays: Mapping[str, np.ndarray]
                    ) -> Optional[np.ndarray]:
    """``(n,)`` the real (non-padding) target tokens of each example of the
    host ``arrays``, for tasks that predict tokens; None for the others."""
    del arrays
    return None

  def eval_outputs(self, apply: ApplyFn, variables: Any, batch: Batch,
                   info: DatasetInfo) -> Any:
    """Model outputs used for evaluation; generation tasks decode here
    (any model method, e.g. ``apply(variables, x, method=type(model).decode,
    mutable=["cache"])``)."""
    del info
    return apply(variables, *self.model_inputs(batch), train=False)

  @abc.abstractmethod
  def eval_stats(self, outputs: Any, batch: Batch, info: DatasetInfo
                 ) -> dict[str, jax.Array]:
    """Per-batch statistics; summed across batches except ``gathered_stats``.

    Must include ``"loss_sum"`` and ``"count"`` (the validation loss is their
    ratio).
    """

  @abc.abstractmethod
  def finalize(self, stats: Mapping[str, Any], info: DatasetInfo
               ) -> dict[str, float]:
    """Metrics from the accumulated statistics (on the host).

    Must include ``"loss"`` and ``self.primary_metric``; may include
    ``"samples"``, a short list of JSON-able records (e.g. source /
    reference / hypothesis triples) that the engine writes to the run
    directory (``samples/epoch_NNN.json``, ``samples/test.json``) instead of
    the history.
    """

TASKS: Registry[Task] = Registry("task")


def register(task: Task) -> Task:
  return TASKS.register(task.name, task)


def get(name: str) -> Task:
  return TASKS.get(name)


def with_stats(splits: Splits, **stats) -> Splits:
  """``splits`` with ``stats`` added to ``splits.info.stats``."""
  return dataclasses.replace(splits, info=dataclasses.replace(
      splits.info, stats={**splits.info.stats, **stats}))


def random_integers(rng: RandomGenerator, low: int, high: int, size=None,
                    dtype=np.int64) -> np.ndarray:
  """Uniform integers in ``[low, high)`` from either numpy random API."""
  draw = (rng.integers if isinstance(rng, np.random.Generator)
          else rng.randint)
  return draw(low, high, size, dtype=dtype)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)
