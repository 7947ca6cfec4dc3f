"""Run metadata: package versions, device, git commit."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Optional

import jax

from optbench_jax import xla_cpu

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
