"""Flax models, one registry; every module here registers its models."""
import importlib
import pkgutil

from optbench_jax.models.base import (
    INITS, MODELS, ModelSpec, Pretrained, get, names_for, register)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
  if (_module not in ("base", "layers", "convert")
      and not _module.startswith("_")):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["INITS", "MODELS", "ModelSpec", "Pretrained", "get", "names_for", "register"]
