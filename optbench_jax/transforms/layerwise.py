"""Layer-wise trust-ratio methods: LARS and LAMB (optax compositions).

Both rescale each tensor's update by a *trust ratio* ``‖θ‖ / ‖u‖``, by
default on every tensor, as ``optax.lars``, ``optax.lamb`` and
``pytorch_optimizer.Lamb``. The run setting ``exclude_bias_norm`` (or the
``trust_ratio_mask`` / weight-decay mask keywords) restricts ratio and decay
to tensors with ndim ≥ 2, as ``pytorch_optimizer.LARS`` always does.

Update rules (``η`` learning rate, ``λ`` weight decay, ``μ`` momentum)::

  lars:  u = g + λθ,   r = η_tc ‖θ‖ / ‖u‖  (masked tensors),
         v = μ v + η r u,   θ −= v          (You, Gitman & Ginsburg 2017)
  lamb:  r_t = m̂ / (√v̂ + ε) + λθ,   θ −= η ‖θ‖/‖r_t‖ r_t   (masked tensors)
                                             (You et al. 2020)

``lars`` is ``optax.lars``: its weight decay is the coupled L2 term ``g + λθ``
before the trust ratio (``‖g + λθ‖`` in the ratio's denominator; the paper
writes ``‖g‖ + λ‖θ‖``: the two agree for ``λ = 0``, and ours is LARS on the
L2-regularised loss). ``lamb`` is ``optax.lamb``'s chain with a trust-ratio
mask; its weight decay is decoupled (added after the Adam ratio, as in the
paper).
"""
from typing import Any, Optional

import optax

from optbench_jax.transforms import search
from optbench_jax.transforms.base import OptimizerSpec, configure, register


register(OptimizerSpec(
    name="lars", factory=configure(optax.lars), family="gd", default_lr=1.0,
    weight_decay="coupled",
    masks={"weight_decay": "weight_decay_mask",
           "trust_ratio": "trust_ratio_mask"},
    paper="You, Gitman & Ginsburg 2017, Large Batch Training of Convolutional "
          "Networks (arXiv:1708.03888)",
    reference="pytorch_optimizer.LARS"))


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    mask: Optional[Any] = None,
    trust_ratio_mask: Any = True,
) -> optax.GradientTransformation:
  """``optax.lamb`` with a ``trust_ratio_mask`` (tensors given the ratio)."""
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
      optax.add_decayed_weights(weight_decay, mask),
      optax.masked(optax.scale_by_trust_ratio(), trust_ratio_mask),
      optax.scale_by_learning_rate(learning_rate))


register(OptimizerSpec(
    name="lamb", factory=lamb, family="adaptive", default_lr=1e-3,
    weight_decay="decoupled",
    masks={"weight_decay": "mask", "trust_ratio": "trust_ratio_mask"},
    optax_function=optax.lamb,
    search_space=search.algoperf(
        "lamb", learning_rate=(1e-4, 1e-2, "log"),
        b1=(5e-2, 0.3, "log", True), weight_decay=(1e-3, 1.0, "log")),
    paper="You et al. 2020, Large Batch Optimization for Deep Learning: "
          "Training BERT in 76 minutes (ICLR)",
    reference="pytorch_optimizer.Lamb"))
