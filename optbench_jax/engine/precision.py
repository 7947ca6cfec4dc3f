"""Compute precision: the model's activations and matmuls in bf16 or fp32.

With ``--precision bf16`` the model computes in bfloat16 through its ``dtype``
field; parameters, gradients, optimizer state, losses and metrics stay
float32 (outputs and mutated collections are cast back to float32).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from optbench_jax.errors import OptBenchError

PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def with_compute_dtype(model: nn.Module, precision: str) -> nn.Module:
  """The model computing in ``precision`` (its parameters stay float32)."""
  if precision not in PRECISIONS:
    raise OptBenchError(f"unknown --precision {precision!r}; valid: "
                        f"{', '.join(PRECISIONS)}")
  if precision == "fp32":
    return model
  if "dtype" not in {f.name for f in dataclasses.fields(model)}:
    raise OptBenchError(f"model {type(model).__name__} has no compute dtype "
                        f"field, so --precision {precision} cannot apply")
  return model.clone(dtype=PRECISIONS[precision])


def to_float32(tree):
  """Low-precision floating leaves → float32 (losses, metrics, statistics)."""
  def cast(x):
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and (
        jnp.finfo(x.dtype).bits < 32):
      return x.astype(jnp.float32)
    return x
  return jax.tree.map(cast, tree)
