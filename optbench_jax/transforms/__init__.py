"""Optimizers as Optax transformations, one registry.

Every module in this package registers its optimizers when imported (a
``register(OptimizerSpec(...))`` line per optimizer); this package imports
them all, so adding an optimizer is one new module.

>>> from optbench_jax import transforms
>>> tx = transforms.make("adam", learning_rate=1e-3)
>>> "adam" in transforms.available()
True
"""
import importlib
import pkgutil

from optbench_jax.transforms.base import (
    EXTRAS, FAMILIES, MASK_ROLES, OPTIMIZERS, RUN_AXIS, WEIGHT_DECAY_MODES,
    OptimizerSpec, any_run, available, configure, default_weight_decay,
    exclude_bias_norm_mask, get, make, missing_extra, register,
    sequential_on_cpu)
from optbench_jax.transforms.cost import COSTS, step_cost
from optbench_jax.transforms.extras import build_extras, hvp

_NOT_OPTIMIZERS = {"base", "cost", "extras", "kfac_layers", "test_functions"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
  if _module not in _NOT_OPTIMIZERS and not _module.startswith("_"):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["COSTS", "EXTRAS", "FAMILIES", "MASK_ROLES", "OPTIMIZERS", "RUN_AXIS",
           "WEIGHT_DECAY_MODES", "OptimizerSpec", "any_run", "available",
           "build_extras", "configure", "default_weight_decay",
           "exclude_bias_norm_mask", "get", "hvp",
           "make", "missing_extra", "register", "sequential_on_cpu",
           "step_cost"]
