"""What the image tasks share: statistics of the split, normalisation."""
from __future__ import annotations

import jax.numpy as jnp

from optbench_jax.data.augment import to_unit
from optbench_jax.tasks.base import with_stats

__all__ = ["normalized_images", "with_stats"]


def normalized_images(batch, info) -> dict:
  """``batch["image"]`` in [0, 1], then standardised with the per-channel
  ``mean`` and ``std`` of ``info.stats`` (when present)."""
  image = to_unit(batch["image"])
  if "mean" in info.stats:
    image = (image - jnp.asarray(info.stats["mean"], jnp.float32)
             ) / jnp.asarray(info.stats["std"], jnp.float32)
  return {**batch, "image": image}
