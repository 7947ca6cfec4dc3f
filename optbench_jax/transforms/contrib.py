"""Recent methods from ``optax.contrib``: one registry entry each.

Nothing here re-implements a rule; each entry configures the optax.contrib
transformation with its paper's defaults and adds only what the benchmark
needs (a weight-decay mask, conv kernels for Muon, the evaluation parameters
of Schedule-Free, schedules that optax leaves to the caller).

========================  ====================================================
muon                      m = β m + (1−β) g, O = NewtonSchulz5(m̃) (m̃ the
                          Nesterov blend), θ −= η (√max(1, fan_out/fan_in) O
                          + λθ) for tensors with ndim ≥ 2; AdamW (η, b1, b2)
                          for the others.     (Jordan et al. 2024)
schedule_free_adamw       z −= γ_t ĝ/(√v̂ + ε), x = (1−c_t) x + c_t z,
                          y = β1 x + (1−β1) z, c_t = γ_t²/Σγ_i²; gradients at y,
                          evaluation at x.    (Defazio et al. 2024)
adopt                     m = β1 m + (1−β1) clip(g/max(√v_{t−1}, ε), t^¼),
                          v = β2 v + (1−β2) g²,  θ −= η m
                          (Taniguchi et al. 2024)
ademamix                  θ −= η ((m̂1 + α m2)/(√v̂ + ε) + λθ), m2 a slow EMA
                          (β3); optional α/β3 warm-up schedules
                          (Pagliardini et al. 2024)
prodigy                   Adam scaled by a distance estimate d_t (D-Adaptation
                          with the Prodigy weights)  (Mishchenko & Defazio 2024)
dadapt_adamw              Adam scaled by the D-Adaptation estimate d_t
                          (Defazio & Mishchenko 2023)
dog                       η_t = max_i ‖x_i − x_0‖ / √Σ‖g_i‖²  (Ivgi et al. 2023)
madgrad                   dual averaging with cube-root scaling and momentum
                          (Defazio & Jelassi 2022)
========================  ====================================================

Hyperparameter mappings to the PyTorch references (``pytorch_optimizer``
unless stated; checked step by step in ``tests/transforms/test_contrib.py``):

* muon: ``beta`` ↔ ``momentum``, learning rate ↔ ``lr`` and ``adamw_lr``,
  (``adam_b1``, ``adam_b2``) ↔ ``adamw_betas``, ``eps`` ↔ ``adamw_eps`` (and
  the Newton–Schulz normalisation, ``X/(‖X‖+ε)`` vs the reference's
  ``X/max(‖X‖, ε)``). Kernels are laid out (inputs..., outputs) here and
  (outputs, inputs...) in PyTorch: ``fan_out/fan_in`` is the same ratio. optax
  bias-corrects the momentum (and the Nesterov blend), the reference does not:
  identical up to the normalisation for ``nesterov=False``, different for the
  default ``nesterov=True`` in early steps (see the test). Both references
  (``torch.optim.Muon``, ``pytorch_optimizer.Muon``) iterate Newton–Schulz in
  bfloat16; the test runs the reference's iteration in float64.
* schedule_free_adamw: ``b1, b2`` ↔ ``betas``; ``warmup_steps`` ↔
  ``warmup_steps`` (the reference's ``lr·t/warmup`` for both the base step and
  the averaging weights; ``optax.contrib.schedule_free_adamw`` evaluates its
  warm-up one step later in the base optimizer than in the weights, which we
  avoid by composing ``optax.contrib.schedule_free`` ourselves).
* adopt: ``clip_value_fn(count)`` with ``count = t − 1`` at step ``t`` (the
  paper's ``c_t = t^¼`` for the ``t``-th update after the initialisation
  step); the reference's ``clip_lambda(step)`` is evaluated at ``step = t``,
  i.e. ``clip_lambda = lambda step: (step − 1) ** 0.25`` reproduces ours.
* ademamix: ``(b1, b2, b3)`` ↔ ``betas``, ``alpha`` ↔ ``alpha``,
  ``t_alpha_beta3`` ↔ ``t_alpha_beta3`` (the paper's schedulers), decoupled
  decay ↔ ``weight_decouple=True``.
* prodigy, dadapt_adamw: optax always applies Adam's bias correction to the
  step size ↔ ``bias_correction=True`` (the references' default is False);
  ``estim_lr0`` ↔ ``d0``; decoupled decay ↔ ``weight_decouple=True``, applied to
  every tensor (optax offers no mask here).
* dog: ``init_step=("heuristic", r)`` ↔ the official ``dog.DoG(reps_rel=r)``;
  coupled decay as the official ``weight_decay``.
* madgrad: same names; coupled decay ↔ ``weight_decouple=False``.
  ``optax.contrib.madgrad`` computes ``λ_k = (η + ε)√(k+1)`` in float32
  (``jnp.sqrt`` of the int32 count) even for float64 parameters, which limits
  agreement with a float64 reference to ~3e-8.
* muon's ``weight_decay`` (and ``weight_decay_mask``) apply to the tensors
  Muon orthogonalises; the AdamW tensors take ``adam_weight_decay`` (optax
  offers no mask there), 0 by default, as Keller Jordan's recipe.
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from optax import contrib

from optbench_jax.transforms.base import OptimizerSpec, configure, register


def _lr_fn(learning_rate):
  if callable(learning_rate):
    return learning_rate
  return lambda count: learning_rate


# ---------------------------------------------------------------------------
# Muon.


def _muon_dimension_numbers(params: Any) -> Any:
  """Every tensor with ndim ≥ 2 is a matrix (inputs..., output); others None.

  Dense kernels ``(in, out)`` and conv kernels ``(h, w, in, out)`` are both
  orthogonalised as ``(h·w·in) × out`` matrices, as Keller Jordan's Muon and
  ``pytorch_optimizer.Muon`` flatten PyTorch's ``(out, in, h, w)``.
  (``optax.contrib.muon``'s default sends only 2-D tensors to Muon.)
  """
  def dims(p):
    if p.ndim < 2:
      return None
    return contrib.MuonDimensionNumbers(reduction_axis=tuple(range(p.ndim - 1)),
                                        output_axis=p.ndim - 1)
  return jax.tree.map(dims, params)


register(OptimizerSpec(
    name="muon",
    factory=configure(contrib.muon,
                      muon_weight_dimension_numbers=_muon_dimension_numbers),
    family="adaptive", default_lr=0.02, weight_decay="decoupled",
    masks={"weight_decay": "weight_decay_mask"},
    paper="Jordan et al. 2024, Muon: An optimizer for hidden layers in neural "
          "networks (kellerjordan.github.io/posts/muon)",
    reference="pytorch_optimizer.Muon (Newton-Schulz in float64)"))


# ---------------------------------------------------------------------------
# Schedule-Free AdamW.


def schedule_free_adamw(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float = 0.0,
    mask: Optional[Any] = None,
    warmup_steps: Optional[int] = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Schedule-Free AdamW (``optax.contrib.schedule_free`` around RMS scaling).

  The same chain as ``optax.contrib.schedule_free_adamw`` plus a weight-decay
  mask, with the learning rate ``γ_t = η_t · min(1, t / warmup_steps)`` seen
  identically by the base step (0-based count ``t − 1``) and by the averaging
  weights (which optax evaluates at the 1-based ``t``). Weight decay is
  applied at ``y``, the gradient point, as in the paper.
  """
  lr = _lr_fn(learning_rate)
  if warmup_steps:
    gamma = lambda count: lr(count) * jnp.minimum(
        1.0, (count + 1.0) / warmup_steps)
  else:
    gamma = lr
  base_optimizer = optax.chain(
      optax.scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False,
                         bias_correction=True),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(gamma))
  return contrib.schedule_free(
      base_optimizer, learning_rate=lambda step: gamma(step - 1), b1=b1,
      weight_lr_power=weight_lr_power, state_dtype=state_dtype)


def _find_schedule_free_state(opt_state: Any) -> contrib.ScheduleFreeState:
  found = optax.tree.get(
      opt_state, "ScheduleFreeState",
      filtering=lambda _, x: isinstance(x, contrib.ScheduleFreeState))
  if found is None:
    raise ValueError("no ScheduleFreeState in the optimizer state")
  return found


def schedule_free_eval_params(params: Any, opt_state: Any) -> Any:
  """The averaged iterate ``x`` to evaluate (``prepare_for_eval`` hook).

  Finds the Schedule-Free state anywhere in ``opt_state`` (e.g. inside an
  ``optax.chain`` with gradient clipping).
  """
  return contrib.schedule_free_eval_params(
      _find_schedule_free_state(opt_state), params)


register(OptimizerSpec(
    name="schedule_free_adamw", factory=schedule_free_adamw,
    family="adaptive", default_lr=2.5e-3,
    weight_decay="decoupled", masks={"weight_decay": "mask"},
    optax_function=contrib.schedule_free_adamw,
    paper="Defazio et al. 2024, The Road Less Scheduled (NeurIPS)",
    reference="pytorch_optimizer.ScheduleFreeAdamW",
    prepare_for_eval=schedule_free_eval_params))


# ---------------------------------------------------------------------------
# ADOPT, AdEMAMix.


register(OptimizerSpec(
    name="adopt", factory=configure(contrib.adopt), family="adaptive",
    default_lr=1e-3, weight_decay="coupled",
    paper="Taniguchi et al. 2024, ADOPT: Modified Adam Can Converge with Any "
          "beta2 with the Optimal Rate (NeurIPS)",
    reference="pytorch_optimizer.ADOPT"))


def ademamix(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float = 0.0,
    mask: Optional[Any] = None,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float = 0.9999,
    alpha: float = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Optional[Any] = None,
    t_alpha_beta3: Optional[int] = None,
) -> optax.GradientTransformation:
  """``optax.contrib.ademamix`` with the paper's optional α/β3 schedulers.

  With ``t_alpha_beta3 = T`` (the paper sets it to the total number of
  steps), at step ``t``: ``α_t = min(t α / T, α)`` and
  ``β3_t = min(exp(ln β1 ln β3 / ((1 − t/T) ln β3 + (t/T) ln β1)), β3)``.
  """
  if t_alpha_beta3 is not None:
    log_b1, log_b3, total = jnp.log(b1), jnp.log(b3), float(t_alpha_beta3)
    alpha_value, b3_value = alpha, b3
    # optax evaluates the schedules at the 0-based count; the paper's t = c+1.
    alpha = lambda count: jnp.minimum((count + 1.0) * alpha_value / total,
                                      alpha_value)

    def b3(count):
      frac = (count + 1.0) / total
      return jnp.minimum(
          jnp.exp(log_b1 * log_b3 / ((1.0 - frac) * log_b3 + frac * log_b1)),
          b3_value)
  return contrib.ademamix(learning_rate, b1=b1, b2=b2, b3=b3, alpha=alpha,
                          eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
                          weight_decay=weight_decay, mask=mask)


register(OptimizerSpec(
    name="ademamix", factory=ademamix, family="adaptive", default_lr=1e-3,
    weight_decay="decoupled", masks={"weight_decay": "mask"},
    optax_function=contrib.ademamix,
    paper="Pagliardini, Ablin & Grangier 2024, The AdEMAMix Optimizer: Better, "
          "Faster, Older (arXiv:2409.03137; ICLR 2025)",
    reference="pytorch_optimizer.AdEMAMix"))


# ---------------------------------------------------------------------------
# Learning-rate-free methods.

register(OptimizerSpec(
    name="prodigy", factory=configure(contrib.prodigy), family="adaptive",
    default_lr=1.0, weight_decay="decoupled",
    paper="Mishchenko & Defazio 2024, Prodigy: An Expeditiously Adaptive "
          "Parameter-Free Learner (ICML)",
    reference="pytorch_optimizer.Prodigy(bias_correction=True)"))

register(OptimizerSpec(
    name="dadapt_adamw", factory=configure(contrib.dadapt_adamw),
    family="adaptive", default_lr=1.0, weight_decay="decoupled",
    paper="Defazio & Mishchenko 2023, Learning-Rate-Free Learning by "
          "D-Adaptation (ICML)",
    reference="pytorch_optimizer.DAdaptAdam(bias_correction=True)"))

register(OptimizerSpec(
    name="dog", factory=configure(contrib.dog), family="gd", default_lr=1.0,
    weight_decay="coupled", masks={"weight_decay": "mask"},
    paper="Ivgi, Hinder & Carmon 2023, DoG is SGD's Best Friend: A "
          "Parameter-Free Dynamic Step Size Schedule (ICML)",
    reference="dog.DoG (dog-optimizer, the authors' package)"))

register(OptimizerSpec(
    name="madgrad", factory=configure(contrib.madgrad), family="adaptive",
    default_lr=1e-2, weight_decay="coupled",
    paper="Defazio & Jelassi 2022, Adaptivity without Compromise: A "
          "Momentumized, "
          "Adaptive, Dual Averaged Gradient Method for Stochastic Optimization "
          "(JMLR)",
    reference="pytorch_optimizer.MADGRAD"))
