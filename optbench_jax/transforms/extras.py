"""Builds the extra arguments that optimizers declare in ``OptimizerSpec.needs``.

The training engine and the tests call :func:`build_extras` with a loss
closure over the current mini-batch; it returns exactly the extras asked for,
so nothing unused is traced. See :mod:`optbench_jax.transforms.base` for the
meaning of each name.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import jax

from optbench_jax.kernels.convolution import forward_mode_autodiff

LossFn = Callable[[Any], tuple[jax.Array, Any]]  # params -> (loss, aux)


def hvp(loss: Callable[[Any], jax.Array], params: Any, v: Any) -> Any:
  """Hessian-vector product ``H v`` by forward-over-reverse differentiation.

  Traced inside :func:`kernels.convolution.forward_mode_autodiff`, so that
  the CPU convolutions (whose reverse mode is hand-written) support the
  forward pass over the gradient.
  """
  with forward_mode_autodiff():
    return jax.jvp(jax.grad(loss), (params,), (v,))[1]


def build_extras(needs: Iterable[str], loss_fn: LossFn, *,
                 value: Optional[jax.Array] = None,
                 key: Optional[jax.Array] = None,
                 kfac_stats_fn: Optional[Callable[[Any], Any]] = None,
                 params: Any = None) -> dict[str, Any]:
  """Returns ``{name: extra}`` for each name in ``needs``.

  Args:
    needs: extra names (a subset of ``transforms.EXTRAS``; ``full_grad`` is
      handled by the epoch hook and ignored here).
    loss_fn: ``params -> (loss, aux)`` on the current mini-batch.
    value: the loss already computed at ``params`` (for ``value``).
    key: a fresh PRNG key (for ``key``).
    kfac_stats_fn: ``params -> kfac_stats`` (for ``kfac_stats``).
    params: the current parameters (for ``kfac_stats``).
  """
  scalar_loss = lambda p: loss_fn(p)[0]
  extras: dict[str, Any] = {}
  for name in needs:
    if name == "value":
      extras["value"] = value if value is not None else scalar_loss(params)
    elif name == "value_fn":
      extras["value_fn"] = scalar_loss
    elif name == "grad_fn":
      extras["grad_fn"] = lambda p: jax.value_and_grad(scalar_loss)(p)
    elif name == "hvp_fn":
      extras["hvp_fn"] = lambda p, v: hvp(scalar_loss, p, v)
    elif name == "key":
      if key is None:
        raise ValueError("build_extras: 'key' needed but no key given")
      extras["key"] = key
    elif name == "kfac_stats":
      if kfac_stats_fn is None:
        raise ValueError("build_extras: 'kfac_stats' needed but the model "
                         "does not capture layer statistics")
      extras["kfac_stats"] = kfac_stats_fn(params)
    elif name == "full_grad":
      continue
    else:
      raise ValueError(f"build_extras: unknown extra {name!r}")
  return extras
