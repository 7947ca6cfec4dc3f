"""Run metadata: package versions, device, git commit, dataset facts."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Any, Mapping, Optional

import jax
import numpy as np

from optbench_jax import xla_cpu
from optbench_jax.data import text

PACKAGES = ("optbench_jax", "jax", "jaxlib", "flax", "optax", "chex",
            "orbax-checkpoint", "numpy")


def package_versions() -> dict[str, Optional[str]]:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def device_description() -> dict:
  """The devices, and the XLA flags they ran with (``xla_cpu``'s defaults
  included: they change which convolution kernels run)."""
  devices = jax.devices()
  return {"platform": devices[0].platform, "kind": devices[0].device_kind,
          "count": len(devices), "host": platform.node(),
          "python": platform.python_version(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "xla_cpu_defaults": xla_cpu.applied()}


def git_commit() -> Optional[str]:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here,
                         capture_output=True, text=True, timeout=5)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None if out.returncode == 0 else None


# A dataset fact with more entries than this (the references of every
# evaluation example, a token table) is described, not copied.
MAX_LISTED = 32


def describe_stats(stats: Mapping[str, Any]) -> dict:
  """The dataset's facts (``DatasetInfo.stats``) as the metadata records
  them: numbers, strings and short lists as they are; a vocabulary by its
  size; a long list by its length.
  """
  out = {}
  for name, value in stats.items():
    if value is None or isinstance(value, (bool, int, float, str)):
      out[name] = value
    elif isinstance(value, (np.ndarray, np.generic, jax.Array)):
      array = np.asarray(value)
      out[name] = (array.tolist() if array.size <= MAX_LISTED
                   else {"shape": list(array.shape),
                         "dtype": str(array.dtype)})
    elif isinstance(value, text.Vocabulary):
      out[name] = {"vocabulary_size": value.size}
    elif isinstance(value, (list, tuple)):
      out[name] = (list(value) if len(value) <= MAX_LISTED and all(
          isinstance(v, (bool, int, float, str)) for v in value)
                   else {"entries": len(value)})
    else:
      out[name] = type(value).__name__
  return out

