"""Sharpness family: SAM and GSAM, two-pass methods that call ``grad_fn``.

SAM (Foret et al. 2021) descends with the gradient taken at the worst-case
point of a ρ-ball, to first order ``θ + ε̂``::

  g = ∇L(θ),   ε̂ = ρ g / (‖g‖ + δ)
               (adaptive, ASAM: ε̂ = ρ θ² g / (‖|θ| g‖ + δ))
  g_SAM = ∇L(θ + ε̂)
  θ ← θ + base_update(g_SAM)                (base: SGD with momentum 0.9)

GSAM (Zhuang et al. 2022) also minimises the surrogate gap: it removes from
``g_SAM`` a fraction α of the component of the clean gradient ``g`` that is
orthogonal to ``g_SAM``::

  g_∥ = (⟨g, g_SAM⟩ / ‖g_SAM‖²) g_SAM,   g_⊥ = g − g_∥
  g_GSAM = g_SAM − α g_⊥

computed as pytorch_optimizer's ``GSAM.gradient_decompose`` does (with
``cos = ⟨g, g_SAM⟩ / (‖g‖‖g_SAM‖ + δ)`` and ``g_∥ = cos ‖g‖ g_SAM /
(‖g_SAM‖ + δ)``). δ = 1e-12 guards zero gradients (``eps``).

Why ``grad_fn``: ``optax.contrib.sam`` spreads SAM over *consecutive calls*
(odd calls return the ascent step, even calls the descent step), so each of
its updates sees a different point and the engine would have to know that
half of its "steps" are adversarial (two data batches per SAM step, two
schedule ticks, BatchNorm statistics updated at perturbed weights, metrics
logged at perturbed weights). Its ``opaque_mode`` avoids that but expects
``grad_fn(params, i) -> grads``. Ours takes the engine's
``grad_fn(params) -> (loss, grads)`` extra on the *same* mini-batch, so one
``update`` is one complete SAM step and the engine never knows SAM is
two-pass. We do not reuse ``optax.contrib.normalize`` for ε̂: it has no δ (a
zero gradient gives NaN) and no adaptive variant.

The gradient passed as ``updates`` sets the ascent direction; the descent
gradient comes from ``grad_fn`` and is fed to the base *unchanged*, so
transformations chained before SAM (clipping, …) affect only the ascent
direction. Put such transformations in the base instead.

Hyperparameter mapping to pytorch_optimizer 4.1:
  ``SAM(params, torch.optim.SGD, rho=ρ, adaptive=a, perturb_eps=δ, lr=η,
  momentum=μ, weight_decay=λ)`` ==
  ``make("sam", η, weight_decay=λ, rho=ρ, adaptive=a, eps=δ,
  base_hyperparameters={"momentum": μ})``.
  ``GSAM(params, SGD(lr=η, momentum=μ, weight_decay=λ), model,
  ProportionScheduler(..., max_value=ρ, min_value=ρ), alpha=α)`` (a constant
  ρ; the reference's ``rho_scheduler`` maps the LR schedule linearly onto
  [ρ_min, ρ_max], which our ``rho`` reproduces when given an optax schedule
  of the step count) == ``make("gsam", η, ..., rho=ρ, alpha=α)``.

Weight decay is handed to the base optimizer (torch's ``SGD(weight_decay)``
inside SAM), so it acts on the descent step only, as in the reference.

Precision note: pytorch_optimizer computes ``‖g‖`` for SAM and GSAM in
float32 (``get_global_gradient_norm`` casts with ``.float()``), even for
float64 tensors; ours accumulates in the gradient's dtype (at least float32).
In float64 the two agree to ~4e-9 relative as shipped, and to ~1e-15 with
that one helper computed in float64 (see the tests).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optbench_jax.transforms import cost, search
from optbench_jax.transforms.base import (OptimizerSpec, missing_extra,
                                          register)
from optbench_jax.transforms.lookahead import make_base


class SAMState(NamedTuple):
  """State of :func:`sam` and :func:`gsam`.

  Attributes:
    count: number of updates taken (int32; the argument of a ρ schedule).
    base_state: the base optimizer's state.
  """
  count: jax.Array
  base_state: Any


def _accumulated(tree: Any) -> Any:
  """``tree`` with each leaf in its dtype promoted to at least float32."""
  return jax.tree.map(
      lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree)


def _rho_at(rho: optax.ScalarOrSchedule, count: jax.Array):
  return rho(count) if callable(rho) else rho


def sam_perturbation(grads: Any, params: Any, rho: Any, adaptive: bool = False,
                     eps: float = 1e-12) -> Any:
  """ε̂ = ρ g / (‖g‖ + δ), or ρ θ² g / (‖|θ| g‖ + δ) when ``adaptive``."""
  if adaptive:
    scaled = jax.tree.map(lambda g, p: jnp.abs(p) * g, grads, params)
    norm = optax.tree.norm(_accumulated(scaled))
    return jax.tree.map(
        lambda g, p: (jnp.square(p) * g * (rho / (norm + eps))).astype(p.dtype),
        grads, params)
  norm = optax.tree.norm(_accumulated(grads))
  return jax.tree.map(lambda g, p: (g * (rho / (norm + eps))).astype(p.dtype),
                      grads, params)


def gsam_decompose(grads: Any, perturbed_grads: Any, alpha: Any,
                   eps: float = 1e-12) -> Any:
  """``g_SAM − α g_⊥``: ``g_⊥`` is ``g``'s part orthogonal to ``g_SAM``."""
  grads32, perturbed32 = _accumulated(grads), _accumulated(perturbed_grads)
  inner = optax.tree.vdot(grads32, perturbed32)
  new_norm = optax.tree.norm(perturbed32)
  old_norm = optax.tree.norm(grads32)
  cosine = inner / (new_norm * old_norm + eps)
  parallel_scale = cosine * old_norm / (new_norm + eps)
  return jax.tree.map(
      lambda g, gp: (gp - alpha * (g - parallel_scale * gp)).astype(gp.dtype),
      grads, perturbed_grads)


def _two_pass(name: str, base_optimizer: optax.GradientTransformation,
              rho: optax.ScalarOrSchedule, adaptive: bool, eps: float,
              alpha: Any = None) -> optax.GradientTransformationExtraArgs:
  base_tx = optax.with_extra_args_support(base_optimizer)

  def init_fn(params):
    return SAMState(count=jnp.zeros([], jnp.int32),
                    base_state=base_tx.init(params))

  def update_fn(updates, state, params=None, *, grad_fn=None, **extra_args):
    if grad_fn is None:
      raise missing_extra(name, "grad_fn")
    if params is None:
      raise ValueError(f"{name}: update() needs params")
    rho_t = _rho_at(rho, state.count)
    perturbation = sam_perturbation(updates, params, rho_t, adaptive, eps)
    perturbed = jax.tree.map(jnp.add, params, perturbation)
    _, perturbed_grads = grad_fn(perturbed)
    if alpha is None:
      descent = perturbed_grads
    else:
      descent = gsam_decompose(updates, perturbed_grads, alpha, eps)
    new_updates, base_state = base_tx.update(
        descent, state.base_state, params, grad_fn=grad_fn, **extra_args)
    return new_updates, SAMState(count=optax.safe_increment(state.count),
                                 base_state=base_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sam(base_optimizer: optax.GradientTransformation,
        rho: optax.ScalarOrSchedule = 0.05, adaptive: bool = False,
        eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
  """Sharpness-Aware Minimization as one transformation.

  Args:
    base_optimizer: applied to the gradient at the perturbed point.
    rho: ρ, the radius of the neighbourhood (a float or a schedule of the
      step count).
    adaptive: ASAM's parameter-scaled perturbation (Kwon et al. 2021).
    eps: δ in the normalisation.

  Returns:
    A transformation whose ``update(grads, state, params, grad_fn=...)`` calls
    ``grad_fn(params + ε̂) -> (loss, grads)`` once.

  References:
    Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
    Generalization <https://arxiv.org/abs/2010.01412>`_, ICLR 2021.
  """
  return _two_pass("sam", base_optimizer, rho, adaptive, eps)


def gsam(base_optimizer: optax.GradientTransformation,
         rho: optax.ScalarOrSchedule = 0.05, alpha: float = 0.1,
         adaptive: bool = False, eps: float = 1e-12
         ) -> optax.GradientTransformationExtraArgs:
  """Surrogate-Gap Guided SAM as one transformation.

  Args:
    base_optimizer: applied to ``g_SAM − α g_⊥``.
    rho: ρ (a float, or a schedule of the step count: the paper keeps ρ_t
      proportional to the learning rate).
    alpha: α, the weight of the surrogate-gap (orthogonal) component.
    adaptive: ASAM-style parameter-scaled perturbation.
    eps: δ in the normalisations.

  References:
    Zhuang et al., `Surrogate Gap Minimization Improves Sharpness-Aware
    Training <https://arxiv.org/abs/2203.08065>`_, ICLR 2022.
  """
  return _two_pass("gsam", base_optimizer, rho, adaptive, eps, alpha)


def _perturbed_gradient_cost(keywords, before, after):
  """One more gradient evaluation per step (at ``θ + ε̂``), and the base's."""
  return cost.added({"grad_evals": 1}, cost.of_base(keywords, before, after))


def sam_by_name(learning_rate: optax.ScalarOrSchedule,
                rho: optax.ScalarOrSchedule = 0.05, adaptive: bool = False,
                eps: float = 1e-12, base: str = "sgd_momentum",
                base_hyperparameters: Optional[Mapping[str, Any]] = None,
                weight_decay: float = 0.0, exclude_bias_norm: bool = False
                ) -> optax.GradientTransformationExtraArgs:
  """:func:`sam` around the registered optimizer ``base``.

  ``weight_decay`` and ``exclude_bias_norm`` go to the base (the descent
  step), ``base_hyperparameters`` are its keywords.
  """
  inner = make_base("sam", base, learning_rate, weight_decay,
                    exclude_bias_norm, base_hyperparameters,
                    provides=("grad_fn",))
  return sam(inner, rho, adaptive, eps)


def gsam_by_name(learning_rate: optax.ScalarOrSchedule,
                 rho: optax.ScalarOrSchedule = 0.05, alpha: float = 0.1,
                 adaptive: bool = False, eps: float = 1e-12,
                 base: str = "sgd_momentum",
                 base_hyperparameters: Optional[Mapping[str, Any]] = None,
                 weight_decay: float = 0.0, exclude_bias_norm: bool = False
                 ) -> optax.GradientTransformationExtraArgs:
  """:func:`gsam` around the registered optimizer ``base`` (as
  :func:`sam_by_name`)."""
  inner = make_base("gsam", base, learning_rate, weight_decay,
                    exclude_bias_norm, base_hyperparameters,
                    provides=("grad_fn",))
  return gsam(inner, rho, alpha, adaptive, eps)


register(OptimizerSpec(
    name="sam", factory=sam_by_name, family="sharpness", default_lr=0.01,
    weight_decay="base",
    needs=frozenset({"grad_fn"}), cost=_perturbed_gradient_cost,
    # AlgoPerf's SAM wraps AdamW: its learning-rate range is not this
    # entry's (SGD with momentum); its ρ choices are.
    search_space={**search.default_space(0.01),
                  **search.algoperf("sam", rho=[0.01, 0.02, 0.05])},
    paper="Foret et al. 2021, Sharpness-Aware Minimization for Efficiently "
          "Improving Generalization (ICLR)",
    reference="pytorch_optimizer.SAM(base_optimizer=torch.optim.SGD, "
              "momentum=0.9)"))

register(OptimizerSpec(
    name="gsam", factory=gsam_by_name, family="sharpness", default_lr=0.01,
    weight_decay="base",
    needs=frozenset({"grad_fn"}), cost=_perturbed_gradient_cost,
    paper="Zhuang et al. 2022, Surrogate Gap Minimization Improves "
          "Sharpness-Aware Training (ICLR)",
    reference="pytorch_optimizer.GSAM(SGD(momentum=0.9), constant rho via "
              "ProportionScheduler)"))
