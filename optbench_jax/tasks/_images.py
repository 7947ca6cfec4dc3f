"""What the image tasks share: statistics of the split, normalisation."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from optbench_jax.data.augment import to_unit
from optbench_jax.data.base import Splits


def with_stats(splits: Splits, **stats) -> Splits:
  """``splits`` with ``stats`` added to ``splits.info.stats``."""
  return dataclasses.replace(splits, info=dataclasses.replace(
      splits.info, stats={**splits.info.stats, **stats}))


def normalized_images(batch, info) -> dict:
  """``batch["image"]`` in [0, 1], then standardised with the per-channel
  ``mean`` and ``std`` of ``info.stats`` (when present)."""
  image = to_unit(batch["image"])
  if "mean" in info.stats:
    image = (image - jnp.asarray(info.stats["mean"], jnp.float32)
             ) / jnp.asarray(info.stats["std"], jnp.float32)
  return {**batch, "image": image}
