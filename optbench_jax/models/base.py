"""The model registry: one entry per model holds every fact about it."""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn

from optbench_jax.data.base import DatasetInfo
from optbench_jax.errors import OptBenchError
from optbench_jax.nn.convert import Rule
from optbench_jax.nn.layers import INITS, check_init
from optbench_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Twin:
  """A model's PyTorch twin, by the dotted path of the function building it.

  ``Twin("optbench_jax.reference.torch_vision.cnn_scratch")(info, **fields)``
  imports the module on the call, so that the registry never imports torch
  (a test and benchmark dependency; the twins live in
  :mod:`optbench_jax.reference`).
  """
  path: str

  def __call__(self, info: DatasetInfo, **fields) -> Any:
    module, _, name = self.path.rpartition(".")
    return getattr(importlib.import_module(module), name)(info, **fields)


def vocabulary_of(build: Callable[..., Any], **options) -> Callable[..., Any]:
  """A :attr:`ModelSpec.vocabulary` built from the training texts alone
  (``--pretrained`` ignored): ``build(corpus, max_size, **options)``, e.g.
  ``vocabulary_of(data.text.word_vocabulary, lowercase=True)``."""

  def vocabulary(corpus, max_size: int, pretrained: Optional[str]):
    del pretrained
    return build(corpus, max_size, **options)

  return vocabulary


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """Pretrained weights a model can start from (``--pretrained``).

  Attributes:
    default: the name used when ``--pretrained`` is not given (a Hugging
      Face hub name, looked up in the local cache, downloaded when missing
      unless offline).
    locate: ``(name_or_path, download=False) -> local directory``; a hub
      name missing from the cache is downloaded if ``download``; raises a
      one-line :class:`~optbench_jax.errors.OptBenchError` naming where it
      looked and how to fill the cache.
    load: ``directory -> {submodule: params}``, the top-level parameter
      submodules the checkpoint replaces after initialisation (the rest, a
      task head, keeps its per-seed random initialisation).
  """
  default: str
  locate: Callable[..., str]
  load: Callable[[str], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registry entry; :meth:`build` returns the Flax module.

  Every model is called as ``model(*inputs, train=bool)``; models with batch
  norm keep running statistics in the ``batch_stats`` collection, and dropout
  draws from the ``dropout`` RNG stream.

  Attributes:
    name: the name users type (``--model``).
    task: the task the model serves.
    factory: ``(info, init_scheme) -> nn.Module``; ``init_scheme`` is one of
      :data:`INITS` and goes to the model's ``layers`` (``init_scheme=``).
    example_info: the :class:`DatasetInfo` of the model's typical dataset
      (input shape, classes), for tests and benchmarks.
    description: one line for ``list``.
    torch_twin: ``(info, **fields) -> torch.nn.Module``, the PyTorch module
      computing the same function once given the same weights: a
      :class:`Twin`, which imports its :mod:`optbench_jax.reference` module
      (and torch, a test and benchmark dependency only) when called; None if
      there is none.
    conversion: ``info -> [convert.Rule]``, the PyTorch ``state_dict`` <->
      Flax variables mapping of the model and its twin.
    vocabulary: text models: ``(training texts, size cap, pretrained
      directory or None) -> data.text.Vocabulary``, how the model's inputs
      are tokenised (the task calls it in ``fit``); None for other models.
    pretrained: a :class:`Pretrained` if the model can start from
      pretrained weights, else None.
    widths: what ``--width`` scales: ``{field: multiple}``, the module's
      channel and hidden-size fields (an int, or a tuple whose ints are
      scaled; ``"config.dim"`` a field of a dataclass field), each
      multiplied by the width and rounded to a multiple of ``multiple``
      (e.g. the attention heads) — see :func:`scale_widths`. Empty: the
      model has one size. The PyTorch twins and conversion rules describe
      the model at width 1.
  """
  name: str
  task: str
  factory: Callable[[DatasetInfo, str], nn.Module]
  example_info: DatasetInfo
  description: str = ""
  torch_twin: Optional[Twin] = None
  conversion: Optional[Callable[[DatasetInfo], list[Rule]]] = None
  vocabulary: Optional[Callable[..., Any]] = None
  pretrained: Optional[Pretrained] = None
  widths: Mapping[str, int] = dataclasses.field(default_factory=dict)

  def build(self, info: DatasetInfo, init: str = "torch",
            width: float = 1.0) -> nn.Module:
    """The model for ``info``, initialised with scheme ``init`` (INITS),
    its :attr:`widths` multiplied by ``width`` (1: the source's size)."""
    module = self.factory(info, check_init(init))
    if width == 1:
      return module
    if not self.widths:
      raise OptBenchError(f"--width: {self.width_error(width, 'none')}")
    return scale_widths(module, self.widths, width)

  def width_error(self, width: float, pretrained: Optional[str]
                  ) -> Optional[str]:
    """Why the model cannot be built at ``width`` starting from
    ``pretrained`` (``--pretrained``; None: the model's default), or None."""
    if width == 1:
      return None
    if not self.widths:
      return f"model {self.name} has one size (no width to scale)"
    if self.pretrained is not None and pretrained != "none":
      return (f"model {self.name} starts from pretrained weights, whose "
              f"width is fixed; add --pretrained none to train it from "
              f"scratch at width {width:g}")
    return None


def _scaled(value: Any, width: float, multiple: int) -> Any:
  """An int times ``width``, rounded to a multiple of ``multiple`` (at
  least one multiple); in a tuple, each int (other entries kept)."""
  if isinstance(value, tuple):
    return tuple(_scaled(v, width, multiple)
                 if isinstance(v, int) and not isinstance(v, bool) else v
                 for v in value)
  return multiple * max(1, round(value * width / multiple))


def scale_widths(module: Any, widths: Mapping[str, int], width: float
                 ) -> Any:
  """``module`` (a Flax module or a dataclass) with every field of
  ``widths`` (:attr:`ModelSpec.widths`) multiplied by ``width``."""
  updates, nested = {}, {}
  for path, multiple in widths.items():
    head, _, rest = path.partition(".")
    if rest:
      nested.setdefault(head, {})[rest] = multiple
    else:
      updates[head] = _scaled(getattr(module, head), width, multiple)
  for head, inner in nested.items():
    updates[head] = scale_widths(getattr(module, head), inner, width)
  if isinstance(module, nn.Module):
    return module.clone(**updates)
  return dataclasses.replace(module, **updates)


MODELS: Registry[ModelSpec] = Registry("model")


def register(spec: ModelSpec) -> ModelSpec:
  return MODELS.register(spec.name, spec)


def names_for(task: str) -> list[str]:
  return [s.name for _, s in MODELS.items() if s.task == task]


def get(task: str, name: str) -> ModelSpec:
  spec = MODELS.get(name) if name in MODELS else None
  if spec is None or spec.task != task:
    where = f" (it belongs to task {spec.task!r})" if spec else ""
    raise OptBenchError(f"unknown model {name!r} for task {task!r}{where}. "
                        f"Valid choices: {', '.join(names_for(task))}.")
  return spec


__all__ = ["INITS", "MODELS", "ModelSpec", "Pretrained", "Twin", "get",
           "names_for", "register", "scale_widths", "vocabulary_of"]
