"""What an optimizer's step costs, counted on the device.

Each step of the engine evaluates the mini-batch gradient once. An optimizer
that evaluates more declares it in its registry entry
(``OptimizerSpec.cost``): ``cost(keywords, before, after)`` returns the
evaluations the step made *beyond* the engine's gradient, as traced values
of the step just taken — read from the optimizer's state where they vary (a
periodic Hessian refresh, the iterations of a line search) — so that the
engine counts what the program ran, not a nominal rate. ``keywords`` are
the optimizer's resolved keywords (registry defaults and the run's), and
``before`` / ``after`` its state before and after the update.

Counters (:data:`COSTS`), per step and per run:

``grad_evals``      forward + backward passes of a mini-batch loss: the
                    engine's gradient (1 per step), SAM's and GSAM's
                    perturbed gradient, SVRG's snapshot gradient, each
                    value-and-gradient evaluation of a line search, K-FAC's
                    gradient with respect to the layer outputs.
``hvps``            Hessian-vector products (forward over reverse; one
                    Hutchinson probe is one product).
``forward_passes``  forward passes of the model that are neither of the
                    above (K-FAC's capture of the layer inputs).

Full-gradient passes (SVRG's snapshot gradient at the start of each epoch)
are not per step: the engine, which runs them, adds one ``grad_evals`` per
batch of the pass.

The engine trains runs under ``jax.vmap`` (one run too). There, a
``lax.cond`` whose predicate differs per run computes both branches: the
engine's own periodic conditions are made common to the runs
(``transforms.any_run``), but optax's zoom line search chooses per run, so
each of its iterations evaluates twice (counted so). A ``lax.while_loop``
runs until every run's loop is done; a run's count is the iterations its
own search made (lanes that finished are computed and discarded).
``tests/train/test_cost.py`` checks every declaration against a loss that
counts its own calls.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from optbench_jax.transforms.base import get, over_runs

COSTS = ("grad_evals", "hvps", "forward_passes")
# ``cost(keywords, before, after) -> {counter: count}`` of one step.
Cost = Callable[[Mapping[str, Any], Any, Any], Mapping[str, Any]]


def find(state: Any, state_type: type) -> Optional[Any]:
  """The ``state_type`` node of an optimizer state (None when absent; a
  ``KeyError`` if there are several), found as
  :func:`~optbench_jax.transforms.lookahead.find_state` finds it."""
  return optax.tree.get(state, state_type.__name__,
                        filtering=lambda _, x: isinstance(x, state_type))


def due(count: jax.Array, period: int) -> jax.Array:
  """1 when a refresh every ``period`` steps ran at step ``count`` (the
  state's count *before* the update), else 0."""
  if period == 1:
    return jnp.ones(jnp.shape(count), jnp.float32)
  return (count % period == 0).astype(jnp.float32)


def added(*counts: Mapping[str, Any]) -> dict[str, Any]:
  """The counters of several declarations, summed by name."""
  total: dict[str, Any] = {}
  for c in counts:
    for k, v in c.items():
      if k not in COSTS:
        raise ValueError(f"unknown cost counter {k!r} (known: {COSTS})")
      total[k] = total.get(k, 0) + v
  return total


def keywords_of(name: str, keywords: Optional[Mapping[str, Any]] = None
                ) -> dict[str, Any]:
  """Optimizer ``name``'s keywords: its registry defaults and ``keywords``."""
  return {**get(name).hyperparameters, **dict(keywords or {})}


def extra(name: str, keywords: Mapping[str, Any], before: Any,
          after: Any) -> dict[str, Any]:
  """What optimizer ``name`` declares beyond the engine's gradient."""
  declare = get(name).cost
  return added(declare(keywords, before, after)) if declare else {}


def of_base(keywords: Mapping[str, Any], before: Any, after: Any
            ) -> dict[str, Any]:
  """A wrapper's base optimizer's declaration (``keywords["base"]`` with
  ``keywords["base_hyperparameters"]``), for wrappers to add to their own."""
  base = keywords["base"]
  return extra(base, keywords_of(base, keywords.get("base_hyperparameters")),
               before, after)


def step_cost(name: str, keywords: Optional[Mapping[str, Any]] = None
              ) -> Callable[[Any, Any], dict[str, jax.Array]]:
  """``count(before, after) -> {counter: float32 scalar}``: every counter of
  :data:`COSTS` for one step of optimizer ``name`` with ``keywords``,
  the engine's gradient included."""
  resolved = keywords_of(name, keywords)

  def count(before: Any, after: Any) -> dict[str, jax.Array]:
    counts = added({"grad_evals": 1}, extra(name, resolved, before, after))
    return {k: jnp.asarray(counts.get(k, 0), jnp.float32) for k in COSTS}

  return count


def zoom_linesearch_evaluations(state: Any) -> Any:
  """Value-and-gradient evaluations of optax's zoom line search in the step
  that produced ``state`` (0 without that line search): one per iteration;
  two inside the engine's ``vmap`` over runs, where the iteration's
  ``lax.cond`` between searching and zooming into the interval has a
  batched predicate, so both branches (each evaluating) run."""
  found = find(state, optax.ScaleByZoomLinesearchState)
  if found is None:
    return 0
  per_iteration = 2 if over_runs() else 1
  return per_iteration * jnp.asarray(found.info.num_linesearch_steps,
                                     jnp.float32)
