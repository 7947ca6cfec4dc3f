"""What the image tasks share: statistics of the split, normalisation,
random images."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from optbench_jax.data.augment import to_unit
from optbench_jax.data.base import DatasetInfo
from optbench_jax.tasks.base import (RandomGenerator, random_integers,
                                     with_stats)

__all__ = ["normalized_images", "random_images", "with_stats"]


def random_images(info: DatasetInfo, n: int, rng: RandomGenerator
                  ) -> np.ndarray:
  """``(n, *info.input_shape)`` uniform uint8 images."""
  return random_integers(rng, 0, 256, (n, *info.input_shape), dtype=np.uint8)


def normalized_images(batch, info) -> dict:
  """``batch["image"]`` in [0, 1], then standardised with the per-channel
  ``mean`` and ``std`` of ``info.stats`` (when present)."""
  image = to_unit(batch["image"])
  if "mean" in info.stats:
    image = (image - jnp.asarray(info.stats["mean"], jnp.float32)
             ) / jnp.asarray(info.stats["std"], jnp.float32)
  return {**batch, "image": image}
