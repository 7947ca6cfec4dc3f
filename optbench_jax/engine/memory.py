"""Device memory: what is free, what a compiled program needs.

``train_runs`` uses these to decide how many runs share a program (the
program's footprint against ``PROGRAM_MEMORY_SHARE`` of the free memory) and
whether the splits live on the device (at most ``DATA_ON_DEVICE_SHARE`` of
it) or are streamed from the host.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import jax
import numpy as np

# Share of the free device memory the data may take and stay on the device.
DATA_ON_DEVICE_SHARE = 0.25
# Share of the free device memory a program (with its runs) may plan for.
PROGRAM_MEMORY_SHARE = 0.8


def free_device_memory(device=None) -> int:
  """Bytes free on ``device`` (accelerator) or in host RAM (CPU)."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def program_bytes(compiled) -> Optional[int]:
  """Peak device memory of a compiled program (arguments + outputs + temps)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # backend without it
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes
             - m.alias_size_in_bytes + m.temp_size_in_bytes)


def nbytes(arrays: Mapping[str, np.ndarray]) -> int:
  """Bytes of a split's arrays."""
  return int(sum(np.asarray(v).nbytes for v in arrays.values()))


def runs_that_fit(need: int, runs: int, budget: int, data_bytes: int) -> int:
  """How many runs fit ``budget`` when ``runs`` of them need ``need`` bytes
  (the data, shared by all runs, counted once); fewer than ``runs``."""
  per_run = max(1, (need - data_bytes) // runs)
  return max(1, min(runs - 1, (budget - data_bytes) // per_run))
