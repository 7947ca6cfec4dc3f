"""Datasets: loaders that return fixed-shape numpy splits, one registry.

Every module in this package registers its datasets when imported; adding a
dataset is one new module (or one ``register`` line in an existing one).
"""
import importlib
import pkgutil

from optbench_jax.data.base import (DATASETS, DatasetInfo, DatasetSpec,
                                    RawDataset, Splits, get, names_for,
                                    load, num_examples, prepare, register,
                                    take)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
  if _module != "base" and not _module.startswith("_"):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["DATASETS", "DatasetInfo", "DatasetSpec", "RawDataset", "Splits",
           "get", "load", "names_for", "num_examples", "prepare", "register", "take"]
