"""Learning-rate schedules of the benchmark protocol.

The step's learning rate is ``base_lr × shape(step) × plateau_scale``:

* ``cosine``: linear warmup from 0 over ``warmup_steps``, then cosine decay to
  0 over the remaining steps of the run (the vision default).
* ``plateau``: constant after warmup; ``plateau_scale`` is multiplied by
  ``PLATEAU_FACTOR`` when the validation loss has not improved by a relative
  ``PLATEAU_RTOL`` for ``PLATEAU_PATIENCE`` epochs
  (``optax.contrib.reduce_on_plateau``, updated once per epoch with the
  validation loss; PyTorch's ``ReduceLROnPlateau(factor=0.5, patience=2)``;
  the NLP default).
* ``none``: constant after warmup.

``base_lr`` and the plateau scale are traced values of the train state, so a
learning-rate grid compiles once.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax

SCHEDULERS = ("cosine", "plateau", "none")
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2
PLATEAU_RTOL = 1e-4


def shape(kind: str, total_steps: int, warmup_steps: int = 0):
  """Returns ``step -> multiplier`` of the base learning rate."""
  if kind not in SCHEDULERS:
    raise ValueError(f"unknown scheduler {kind!r}")
  warmup_steps = min(int(warmup_steps), max(total_steps - 1, 0))
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=1.0, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, 1), end_value=0.0)
  if warmup_steps:
    return optax.linear_schedule(0.0, 1.0, warmup_steps)
  return lambda step: jnp.ones((), jnp.float32)


def plateau() -> optax.GradientTransformationExtraArgs:
  """The epoch-level reduce-on-plateau rule (update it with ``value=val_loss``)."""
  return optax.contrib.reduce_on_plateau(
      factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE, rtol=PLATEAU_RTOL,
      accumulation_size=1)
