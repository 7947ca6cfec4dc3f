"""Flax models, one registry; every module here registers its models.

A module is one model family, built from :mod:`optbench_jax.nn` (and
:mod:`optbench_jax.kernels`) and registered in :mod:`.base`; the PyTorch
twins of the models live in :mod:`optbench_jax.reference`.
"""
import importlib
import pkgutil

from optbench_jax.models.base import (
    INITS, MODELS, ModelSpec, Pretrained, get, names_for, register)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
  if _module != "base" and not _module.startswith("_"):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["INITS", "MODELS", "ModelSpec", "Pretrained", "get", "names_for", "register"]
