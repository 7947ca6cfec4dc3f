"""Adaptive (per-coordinate) first-order methods, backed by optax.

Notation: ``g_t`` the gradient, ``η`` the learning rate, ``t`` the 1-based step,
``x̂ = x / (1 − β^t)`` a bias-corrected moment, ``λ`` the weight decay.

========== ================================================================
adam       m = β1 m + (1−β1) g,  v = β2 v + (1−β2) g²,
           θ −= η m̂ / (√v̂ + ε)                    (Kingma & Ba 2015)
adamw      θ −= η (m̂ / (√v̂ + ε) + λ θ)           (Loshchilov & Hutter 2019)
amsgrad    v̄_t = max(v̄_{t−1}, v̂_t),  θ −= η m̂ / (√v̄ + ε)  (Reddi et al.
           2018; optax takes the maximum of the *bias-corrected* v̂, PyTorch
           of the raw v and corrects afterwards: see below)
rmsprop    v = ρ v + (1−ρ) g²,  θ −= η g / (√v + ε)   (Tieleman & Hinton 2012)
adagrad    s = s + g²,  θ −= η g / √(s + ε)           (Duchi et al. 2011)
adadelta   v = ρ v + (1−ρ) g²,  Δ = √(u + ε)/√(v + ε) g,  u = ρ u + (1−ρ) Δ²,
           θ −= η Δ                                   (Zeiler 2012)
adafactor  factored v ≈ r c^T / mean(r) (rows r, columns c of the EMA of g²,
           β2_t = 1 − t^−0.8), u = g/√v clipped to RMS ≤ 1,
           θ −= ρ_t max(ε2, RMS(θ)) u,  ρ_t = min(η, 1/√t)
           (Shazeer & Stern 2018, relative step size)
adabelief  s = β2 s + (1−β2)(g − m)² + ε,  θ −= η m̂ / (√ŝ + ε)
           (Zhuang et al. 2020)
radam      ρ_t = ρ∞ − 2tβ2^t/(1−β2^t); if ρ_t ≥ 5: θ −= η r_t m̂ /(√v̂ + ε)
           else θ −= η m̂                              (Liu et al. 2020)
lion       θ −= η (sign(β1 m + (1−β1) g) + λ θ),  m = β2 m + (1−β2) g
           (Chen et al. 2023)
yogi       v = v − (1−β2) sign(v − g²) g²,  θ −= η m̂ / (√v̂ + ε)
           (Zaheer et al. 2018)
adan       m = β1 m + (1−β1) g,  d = β2 d + (1−β2)(g_t − g_{t−1}),
           n = β3 n + (1−β3)(g + β2 (g_t − g_{t−1}))²,
           θ = (θ − η (m̂ + β2 d̂)/(√n̂ + ε)) / (1 + η λ)  (Xie et al. 2022)
========== ================================================================

Weight decay (``make(..., weight_decay=λ)``) follows the thesis protocol:
coupled L2 (``g + λθ`` before the optimizer, as PyTorch's ``weight_decay``)
for adam, amsgrad, rmsprop, adagrad, adadelta, radam and yogi; decoupled for
adamw, lion, adabelief (the authors' default ``weight_decouple=True``),
adafactor (PyTorch's ``θ ← θ (1 − ηλ)``) and adan (the paper's proximal
``θ / (1 + ηλ)``). Every tensor is decayed unless the run sets
``exclude_bias_norm`` (or a mask keyword is given: ``mask``, or
``weight_decay_mask`` where optax names it so). Without λ each uses its
reference's default: 0, but 1e-2 for adamw (``torch.optim.AdamW``).

Agreement with the PyTorch references (``tests/transforms/test_first_order.py``
checks every one step by step in float64):

* adam, adamw, rmsprop, adadelta, adabelief, lion, yogi: the same rule, same
  hyperparameter names up to PyTorch's ``betas=(b1, b2)``, ``alpha=decay``
  (RMSprop), ``weight_decouple`` (pytorch_optimizer).
* adagrad: optax adds ε inside the square root, PyTorch outside; with ε = 0
  both are ``g / √s``. Our defaults are ``initial_accumulator_value=0``
  (PyTorch's) and ``eps=0``: optax guards ``s = 0`` (update 0) and
  ``|g|/√s ≤ 1`` since ``s ≥ g²``, so no ε is needed, whereas an ε of
  PyTorch's size (1e-10) *inside* the root would change the update of a
  coordinate by ``ε/(2s)`` (2e-7 relative for |g| = 0.02). PyTorch's own
  ``ε = 1e-10`` outside changes it by ``ε/√s``.
* radam: optax's denominator is ``√v̂ + ε``, PyTorch's ``(√v + ε)/√(1 − β2^t)``
  (ε not bias-corrected); identical for ε = 0.
* amsgrad: optax keeps ``max_s v̂_s`` (bias-corrected), PyTorch
  ``max_s v_s / (1 − β2^t)``; identical while v̂ does not decrease. The
  maximum itself is checked against PyTorch with
  ``bias_correction_nu=False``, ε = 0 and the learning rate multiplied by
  ``√(1 − β2^t)``.
* adafactor: composed from optax's pieces exactly as ``optax.adafactor``, with
  three changes so that it is the paper's (and ``torch.optim.Adafactor``'s)
  rule: the relative step ``min(η, 1/√t)``, every matrix factored
  (``min_dim_size_to_factor=1``; optax's default 128 factors only large
  matrices) and the decay ``1 − t^−0.8`` computed in the parameters'
  precision (optax computes it in float32).
* adan: **in-house**. ``optax.adan`` (0.2.8) weights the gradient difference
  by ``1 − b2`` where the paper and the official code use ``b2`` (0.08 instead
  of 0.92 by default; optax PR #1715), so it is not Adan; ``scale_by_adan``
  below is the paper's Algorithm 1 with the official bias corrections, reusing
  optax's state type.
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from optbench_jax.transforms import search
from optbench_jax.transforms.base import OptimizerSpec, configure, register

_MaskOrFn = Any


def _lr_fn(learning_rate: optax.ScalarOrSchedule) -> Callable[[Any], Any]:
  """A learning rate as a function of the 0-based step count."""
  if callable(learning_rate):
    return learning_rate
  return lambda count: learning_rate


# ---------------------------------------------------------------------------
# Adam family (optax aliases).

register(OptimizerSpec(
    name="adam", factory=configure(optax.adam), family="adaptive",
    default_lr=1e-3, weight_decay="coupled",
    paper="Kingma & Ba 2015, Adam: A Method for Stochastic Optimization (ICLR)",
    reference="torch.optim.Adam"))

register(OptimizerSpec(
    name="adamw", factory=configure(optax.adamw), family="adaptive",
    default_lr=1e-3, weight_decay="decoupled", masks={"weight_decay": "mask"},
    default_weight_decay=1e-2,  # torch.optim.AdamW's (optax.adamw's: 1e-4)
    search_space=search.algoperf(
        "adamw", learning_rate=(1e-4, 1e-2, "log"),
        b1=(2e-2, 0.5, "log", True), weight_decay=(5e-3, 1.0, "log")),
    paper="Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization "
          "(ICLR)",
    reference="torch.optim.AdamW"))

register(OptimizerSpec(
    name="amsgrad", factory=configure(optax.amsgrad), family="adaptive",
    default_lr=1e-3, weight_decay="coupled",
    paper="Reddi, Kale & Kumar 2018, On the Convergence of Adam and Beyond "
          "(ICLR)",
    reference="torch.optim.Adam(amsgrad=True)"))

register(OptimizerSpec(
    name="rmsprop",
    factory=configure(optax.rmsprop, decay=0.99, eps_in_sqrt=False),
    family="adaptive", default_lr=1e-3, weight_decay="coupled",
    paper="Tieleman & Hinton 2012, Lecture 6.5 - RMSProp (COURSERA)",
    reference="torch.optim.RMSprop"))

register(OptimizerSpec(
    name="adagrad",
    factory=configure(optax.adagrad, initial_accumulator_value=0.0, eps=0.0),
    family="adaptive", default_lr=1e-2, weight_decay="coupled",
    paper="Duchi, Hazan & Singer 2011, Adaptive Subgradient Methods for Online "
          "Learning and Stochastic Optimization (JMLR)",
    reference="torch.optim.Adagrad"))

register(OptimizerSpec(
    name="adadelta", factory=configure(optax.adadelta), family="adaptive",
    default_lr=1.0, weight_decay="coupled",
    masks={"weight_decay": "weight_decay_mask"},
    paper="Zeiler 2012, ADADELTA: An Adaptive Learning Rate Method "
          "(arXiv:1212.5701)",
    reference="torch.optim.Adadelta"))


# ---------------------------------------------------------------------------
# Adafactor: optax's building blocks, configured as the paper.


def _decay_rate_pow(step: jax.Array, exponent: float) -> jax.Array:
  """``β2_t = 1 − t^−exponent`` for the 0-based ``step``, in the default float.

  ``optax.adafactor`` computes this in float32, which alone limits agreement
  with a float64 reference to ~1e-7; here it follows the enabled precision.
  """
  return 1.0 - (step + 1.0) ** (-exponent)


def adafactor(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float = 0.0,
    weight_decay_mask: Optional[_MaskOrFn] = None,
    *,
    relative_step: bool = True,
    min_dim_size_to_factor: int = 1,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: Optional[float] = 1.0,
    momentum: Optional[float] = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: Optional[float] = None,
    eps: float = 1e-30,
    factored: bool = True,
) -> optax.GradientTransformation:
  """Adafactor (Shazeer & Stern 2018) with the paper's relative step size.

  The update for a matrix parameter ``θ`` with gradient ``g``::

    R_t = β2_t R + (1 − β2_t) mean_cols(g² + ε1),
    C_t = β2_t C + (1 − β2_t) mean_rows(g² + ε1),   β2_t = 1 − t^−0.8
    u = g / √(R C^T / mean(R)),   u ← u / max(1, RMS(u) / d)
    θ ← θ − ρ_t max(ε2, RMS(θ)) u − η λ θ,   ρ_t = min(η, 1/√t)

  (vectors keep an unfactored EMA of ``g²``). This is ``optax.adafactor``'s
  chain (all its keywords accepted) with the relative step ``ρ_t``
  (``relative_step=True``), every tensor with ≥ 2 dimensions factored
  (``min_dim_size_to_factor=1``) and decoupled weight decay scaled by ``η``
  as in ``torch.optim.Adafactor`` (``weight_decay``; optax's unscaled
  ``weight_decay_rate`` is also accepted).

  Args:
    learning_rate: ``η``, the cap of the relative step (paper: 1e-2).
    weight_decay: ``λ`` (decoupled, multiplied by ``η``).
    weight_decay_mask: which leaves are decayed (both decays).
    relative_step: use ``ρ_t = min(η, 1/√t)`` rather than ``η``.
    min_dim_size_to_factor: factor only if the two largest dimensions are at
      least this large.
    decay_rate: ``c`` in ``β2_t = 1 − t^−c``.
    decay_offset: steps subtracted from ``t`` in ``β2_t``.
    multiply_by_parameter_scale: scale by ``max(ε2, RMS(θ))`` (ε2 = 1e-3).
    clipping_threshold: ``d`` (None: no update clipping).
    momentum: optional EMA of the updates (the paper uses none).
    dtype_momentum: dtype of that EMA.
    weight_decay_rate: optax's decoupled decay, not multiplied by ``η``.
    eps: ``ε1`` added to ``g²``.
    factored: factor the second moment of matrices.
  """
  lr = _lr_fn(learning_rate)
  if relative_step:
    step_size = lambda count: jnp.minimum(lr(count),
                                          1.0 / jnp.sqrt(count + 1.0))
  else:
    step_size = lr
  tx = [optax.scale_by_factored_rms(
      factored=factored, decay_rate=decay_rate, step_offset=decay_offset,
      min_dim_size_to_factor=min_dim_size_to_factor, epsilon=eps,
      decay_rate_fn=_decay_rate_pow)]
  if clipping_threshold is not None:
    tx.append(optax.clip_by_block_rms(clipping_threshold))
  tx.append(optax.scale_by_learning_rate(step_size, flip_sign=False))
  if multiply_by_parameter_scale:
    tx.append(optax.scale_by_param_block_rms())
  if momentum is not None:
    tx.append(optax.ema(momentum, debias=False,
                        accumulator_dtype=dtype_momentum))
  if weight_decay:
    tx.append(optax.add_decayed_weights(
        lambda count: lr(count) * weight_decay, weight_decay_mask))
  if weight_decay_rate is not None:
    tx.append(optax.add_decayed_weights(weight_decay_rate, weight_decay_mask))
  tx.append(optax.scale(-1.0))
  return optax.chain(*tx)


register(OptimizerSpec(
    name="adafactor", factory=adafactor, family="adaptive", default_lr=1e-2,
    weight_decay="decoupled", masks={"weight_decay": "weight_decay_mask"},
    optax_function=optax.adafactor,
    paper="Shazeer & Stern 2018, Adafactor: Adaptive Learning Rates with "
          "Sublinear Memory Cost (ICML)",
    reference="torch.optim.Adafactor"))


# ---------------------------------------------------------------------------
# AdaBelief, RAdam, Lion, Yogi.


def adabelief(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    mask: Optional[_MaskOrFn] = None,
) -> optax.GradientTransformation:
  """``optax.adabelief`` with decoupled weight decay (the authors' default).

  ``θ −= η (m̂ / (√ŝ + ε) + λ θ)`` with ``s = β2 s + (1−β2)(g − m)² + ε_root``
  (``optax.scale_by_belief``).
  """
  return optax.chain(
      optax.scale_by_belief(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                            nesterov=nesterov),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))


register(OptimizerSpec(
    name="adabelief", factory=adabelief, family="adaptive", default_lr=1e-3,
    weight_decay="decoupled", masks={"weight_decay": "mask"},
    optax_function=optax.adabelief,
    paper="Zhuang et al. 2020, AdaBelief Optimizer: Adapting Stepsizes by the "
          "Belief in Observed Gradients (NeurIPS)",
    reference="pytorch_optimizer.AdaBelief"))

register(OptimizerSpec(
    name="radam", factory=configure(optax.radam), family="adaptive",
    default_lr=1e-3, weight_decay="coupled",
    paper="Liu et al. 2020, On the Variance of the Adaptive Learning Rate and "
          "Beyond (ICLR)",
    reference="torch.optim.RAdam"))

register(OptimizerSpec(
    name="lion", factory=configure(optax.lion), family="adaptive",
    default_lr=1e-4, weight_decay="decoupled", masks={"weight_decay": "mask"},
    paper="Chen et al. 2023, Symbolic Discovery of Optimization Algorithms "
          "(NeurIPS)",
    reference="pytorch_optimizer.Lion"))

register(OptimizerSpec(
    name="yogi", factory=configure(optax.yogi), family="adaptive",
    default_lr=1e-2, weight_decay="coupled",
    paper="Zaheer et al. 2018, Adaptive Methods for Nonconvex Optimization "
          "(NeurIPS)",
    reference="pytorch_optimizer.Yogi"))


# ---------------------------------------------------------------------------
# Adan (in-house: optax.adan mis-weights the gradient difference).


def scale_by_adan(
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> optax.GradientTransformation:
  """Rescales updates by the Adan rule (Xie et al. 2022, Algorithm 1).

  With ``Δ_t = g_t − g_{t−1}`` (``Δ_1 = 0``) and the code's convention that
  ``b`` is the decay (the paper's ``1 − β``)::

    m = b1 m + (1 − b1) g,   d = b2 d + (1 − b2) Δ,
    n = b3 n + (1 − b3) (g + b2 Δ)²,
    u = (m̂ + b2 d̂) / (√(n̂ + ε_root) + ε)

  with the bias corrections of the official implementation. (optax 0.2.8's
  ``scale_by_adan`` uses ``1 − b2`` for the two weights of ``Δ``.)

  Args:
    b1: decay of the gradient EMA.
    b2: decay of the gradient-difference EMA (and the Nesterov weight).
    b3: decay of the squared-term EMA.
    eps: added to the denominator.
    eps_root: added inside the square root.
  """

  def init_fn(params):
    zeros = lambda: optax.tree.zeros_like(params)
    return optax.ScaleByAdanState(m=zeros(), v=zeros(), n=zeros(), g=zeros(),
                                  t=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    g = updates
    diff = optax.tree.where(state.t == 0, optax.tree.zeros_like(g),
                            optax.tree.sub(g, state.g))
    m = optax.tree.update_moment(g, state.m, b1, 1)
    v = optax.tree.update_moment(diff, state.v, b2, 1)
    nesterov = optax.tree.add_scale(g, b2, diff)
    n = optax.tree.update_moment_per_elem_norm(nesterov, state.n, b3, 2)
    t = optax.safe_increment(state.t)
    m_hat = optax.tree.bias_correction(m, b1, t)
    v_hat = optax.tree.bias_correction(v, b2, t)
    n_hat = optax.tree.bias_correction(n, b3, t)
    updates = jax.tree.map(
        lambda mh, vh, nh: (mh + b2 * vh) / (jnp.sqrt(nh + eps_root) + eps),
        m_hat, v_hat, n_hat)
    return updates, optax.ScaleByAdanState(m=m, v=v, n=n, g=g, t=t)

  return optax.GradientTransformation(init_fn, update_fn)


def adan(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    mask: Optional[_MaskOrFn] = None,
) -> optax.GradientTransformation:
  """Adan with the paper's proximal weight decay.

  ``θ ← (θ − η u) / (1 + η λ)`` on decayed leaves and ``θ ← θ − η u`` on the
  others, i.e. the update ``−η (u + λ θ) / (1 + η λ)`` (masked) then ``−η u``.
  """
  lr = _lr_fn(learning_rate)
  proximal = optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_schedule(
          lambda count: 1.0 / (1.0 + lr(count) * weight_decay)))
  return optax.chain(
      scale_by_adan(b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root),
      optax.masked(proximal, mask) if mask is not None else proximal,
      optax.scale_by_learning_rate(learning_rate))


register(OptimizerSpec(
    name="adan", factory=adan, family="adaptive", default_lr=1e-3,
    weight_decay="decoupled", masks={"weight_decay": "mask"},
    paper="Xie et al. 2022, Adan: Adaptive Nesterov Momentum Algorithm for "
          "Faster Optimizing Deep Models (arXiv:2208.06677; TPAMI 2024)",
    reference="pytorch_optimizer.Adan"))
