"""Wrapper family: Lookahead around any registered optimizer, and Ranger.

Lookahead (Zhang et al. 2019) keeps *slow* weights ``φ`` beside the training
(*fast*) weights ``θ``. The base optimizer moves ``θ``; every ``k`` steps the
slow weights move a fraction ``α`` towards the fast ones and the fast weights
restart from there::

  θ_{t+1} = θ_t + u_t,           u_t = base_update(g_t)
  if (t + 1) mod k == 0:  φ ← φ + α (θ_{t+1} − φ);  θ_{t+1} ← φ

Ranger (Wright 2019) is Lookahead (k = 6, α = 0.5) around RAdam (Liu et al.
2020) with gradient centralisation (Yong et al. 2020)::

  g̃ = g − mean_{fan-in}(g)                      (tensors with ndim ≥ 2)
  m = β1 m + (1−β1) g̃,  v = β2 v + (1−β2) g̃²
  ρ_t = ρ_∞ − 2 t β2^t / (1 − β2^t),  ρ_∞ = 2 / (1 − β2) − 1
  if ρ_t ≥ 5:  u = −η r_t / (1 − β1^t) · m / (sqrt(v) + ε)
               r_t = sqrt((1−β2^t) (ρ_t−4)(ρ_t−2) ρ_∞ / ((ρ_∞−4)(ρ_∞−2) ρ_t))
  else:        u = −η m / (1 − β1^t)                 (SGD with momentum)

Why not ``optax.lookahead``: it needs the parameters to be a
``LookaheadParams(fast, slow)`` pair, while our engine (and any user's loop)
holds plain parameters. :func:`lookahead` keeps the slow weights in its state
instead and returns plain updates; the merged update of a synchronisation step
is the one derived in ``optax._src.lookahead._lookahead_update``. Extra
arguments are forwarded to the base optimizer.

Evaluation uses the **slow** weights (``prepare_for_eval`` returns them): they
are the iterate Lookahead commits to (the fast weights are an exploratory
k-step excursion), as optax's ``LookaheadParams`` and pytorch_optimizer's
``Lookahead.backup_and_load_cache`` recommend. Right after a synchronisation
step both coincide.

Why not ``optax.centralize`` / ``optax.scale_by_radam`` for Ranger:
``optax.centralize`` removes the mean over every axis but the *first*, which
is the output axis of PyTorch's ``(out, in, kh, kw)`` layout but the *input*
axis of Flax's ``(in, out)`` / ``(kh, kw, in, out)`` kernels; gradient
centralisation centres each output unit's fan-in, i.e. the mean over every
axis but the *last* in Flax (:func:`centralize_fan_in`; identical to
pytorch_optimizer's ``centralize_gradient`` after the layout transpose).
Caveat: tensors whose last axis is not the output axis are also centred over
their leading axes: a Flax ``Embed`` table ``(vocab, features)`` is centred
over the vocabulary (PyTorch centres each token's row), and a
``DenseGeneral`` kernel with several output axes (attention's
``(features, heads, head_dim)``) over ``(features, heads)``; pass
``use_gc=False`` where that matters. ``optax.scale_by_radam`` adds ε to
``sqrt(v̂)`` (the bias-corrected moment) whereas Ranger (Wright's code and
pytorch_optimizer) adds it to ``sqrt(v)``; with Ranger's ε = 1e-5 the two
differ by ~1e-4 relative (more for small gradients) over the first
hundreds of steps, so
:func:`scale_by_ranger_radam` reproduces Ranger's placement.

Reference quirk: pytorch_optimizer 4.1's ``Ranger`` defaults to
``degenerated_to_sgd=False``, with which its first ~5 steps (ρ_t < 5) move
*up* the gradient (step size ``−lr``). Wright's Ranger takes SGD-with-momentum
steps there, and so do we; the tests compare against
``Ranger(degenerated_to_sgd=True)``.

Weight decay: ``lookahead`` hands ``--weight-decay`` (and
``exclude_bias_norm``) to its base optimizer, which applies it in its own mode
(coupled for SGD/Adam, decoupled for AdamW): registry mode ``"base"``.
``ranger`` decays decoupled (``θ ← θ − η λ θ``, pytorch_optimizer's
``weight_decouple=True``), every tensor unless the run sets
``exclude_bias_norm`` (or ``mask`` is given).

This module also holds :func:`make_base`, which the other wrappers (SAM, GSAM,
SVRG) use to build their base optimizer by name.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optbench_jax.errors import OptBenchError
from optbench_jax.transforms.base import OptimizerSpec, get, make, register


# ---------------------------------------------------------------------------
# Helpers shared by the wrappers (SAM, GSAM, SVRG import them).
# ---------------------------------------------------------------------------

def make_base(wrapper: str, base: str, learning_rate: Any,
              weight_decay: float = 0.0, exclude_bias_norm: bool = False,
              hyperparameters: Optional[Mapping[str, Any]] = None,
              provides: Iterable[str] = ()
              ) -> optax.GradientTransformationExtraArgs:
  """Builds the registered optimizer ``base`` for the wrapper ``wrapper``.

  Weight decay is applied once, by the base in its own registry mode (the
  wrapper is registered with ``weight_decay="base"``).

  Args:
    wrapper: the wrapper's registry name (for error messages).
    base: the registry name of the base optimizer.
    learning_rate: the learning rate (or schedule) given to the base.
    weight_decay: passed to the base.
    exclude_bias_norm: passed to the base.
    hyperparameters: keywords of the base (overriding its defaults).
    provides: extras the wrapper forwards to the base; a base needing any
      other extra is refused (the engine builds only the wrapper's ``needs``).

  Raises:
    OptBenchError: unknown base, a base needing extras the wrapper does not
      supply, or a base with its own evaluation/epoch hooks.
  """
  spec = get(base)
  missing = set(spec.needs) - set(provides)
  if missing:
    raise OptBenchError(
        f"optimizer {wrapper!r} cannot wrap {base!r}: {base!r} needs the "
        f"extra(s) {sorted(missing)}, which {wrapper!r} does not supply")
  if spec.prepare_for_eval is not None or spec.epoch_start is not None:
    raise OptBenchError(
        f"optimizer {wrapper!r} cannot wrap {base!r}: {base!r} has its own "
        f"evaluation or epoch hooks")
  return make(base, learning_rate, weight_decay=weight_decay,
              exclude_bias_norm=exclude_bias_norm,
              **dict(hyperparameters or {}))


def find_state(opt_state: Any, state_type: type) -> Any:
  """Returns the ``state_type`` node inside a (nested) optimizer state.

  Found by name with ``optax.tree.get`` (a ``KeyError`` if there are several).
  """
  found = optax.tree.get(opt_state, state_type.__name__,
                         filtering=lambda _, x: isinstance(x, state_type))
  if found is None:
    raise OptBenchError(
        f"no {state_type.__name__} in this optimizer state; was it built by "
        f"the matching optimizer?")
  return found


def replace_state(opt_state: Any, state_type: type,
                  fn: Callable[[Any], Any]) -> Any:
  """``opt_state`` with its ``state_type`` node ``s`` replaced by ``fn(s)``."""
  new = fn(find_state(opt_state, state_type))
  return optax.tree.set(opt_state,
                        lambda _, x: isinstance(x, state_type),
                        **{state_type.__name__: new})


def _counter_dtype_float(count: jax.Array) -> jax.Array:
  """The step count as the default float type (float64 under x64)."""
  return jnp.asarray(count, dtype=float)


# ---------------------------------------------------------------------------
# Lookahead.
# ---------------------------------------------------------------------------

class LookaheadState(NamedTuple):
  """State of :func:`lookahead`.

  Attributes:
    count: number of updates taken (int32).
    slow: the slow weights ``φ`` (params' dtypes).
    fast_state: the base optimizer's state.
  """
  count: jax.Array
  slow: Any
  fast_state: Any


def lookahead(fast_optimizer: optax.GradientTransformation,
              sync_period: int = 5, slow_step_size: float = 0.5
              ) -> optax.GradientTransformationExtraArgs:
  """Lookahead around ``fast_optimizer``, on plain parameters.

  Args:
    fast_optimizer: the base ("inner") optimizer; its updates move the fast
      weights (extra arguments are forwarded to it).
    sync_period: ``k``, fast steps between synchronisations (≥ 1).
    slow_step_size: ``α``, the fraction of the way the slow weights move.

  Returns:
    A transformation whose updates take the fast weights to their next value
    (to the new slow weights on synchronisation steps). ``update`` needs
    ``params``. Updates must be applied unmodified.

  References:
    Zhang et al., `Lookahead Optimizer: k steps forward, 1 step back
    <https://arxiv.org/abs/1907.08610>`_, NeurIPS 2019.
  """
  if sync_period < 1:
    raise ValueError("lookahead: sync_period must be >= 1")
  fast = optax.with_extra_args_support(fast_optimizer)

  def init_fn(params):
    return LookaheadState(count=jnp.zeros([], jnp.int32),
                          slow=jax.tree.map(jnp.asarray, params),
                          fast_state=fast.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("lookahead: update() needs params")
    fast_updates, fast_state = fast.update(updates, state.fast_state, params,
                                           **extra_args)
    count = optax.safe_increment(state.count)
    sync = (count % sync_period) == 0
    # last = θ_t + u_t − φ; synchronising: φ += α last, θ_{t+1} = φ_new.
    last = jax.tree.map(lambda p, u, s: p + u - s, params, fast_updates,
                        state.slow)
    slow = jax.tree.map(
        lambda s, d: jnp.where(sync, s + (slow_step_size * d).astype(s.dtype),
                               s), state.slow, last)
    new_updates = jax.tree.map(
        lambda u, d: jnp.where(
            sync, u - ((1.0 - slow_step_size) * d).astype(u.dtype), u),
        fast_updates, last)
    return new_updates, LookaheadState(count=count, slow=slow,
                                       fast_state=fast_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def slow_weights(params: Any, opt_state: Any) -> Any:
  """``prepare_for_eval`` hook: the slow weights, in the params' structure."""
  del params
  return find_state(opt_state, LookaheadState).slow


def lookahead_by_name(learning_rate: optax.ScalarOrSchedule,
                      sync_period: int = 5, slow_step_size: float = 0.5,
                      base: str = "adam",
                      base_hyperparameters: Optional[Mapping[str, Any]] = None,
                      weight_decay: float = 0.0,
                      exclude_bias_norm: bool = False
                      ) -> optax.GradientTransformationExtraArgs:
  """:func:`lookahead` around the registered optimizer ``base``.

  Args:
    learning_rate: the base's learning rate.
    sync_period: ``k``.
    slow_step_size: ``α``.
    base: the registry name of the base optimizer.
    base_hyperparameters: keywords of the base.
    weight_decay: handed to the base (its own mode).
    exclude_bias_norm: handed to the base.
  """
  inner = make_base("lookahead", base, learning_rate, weight_decay,
                    exclude_bias_norm, base_hyperparameters)
  return lookahead(inner, sync_period, slow_step_size)


# ---------------------------------------------------------------------------
# Ranger: gradient centralisation + RAdam (Ranger's ε) + Lookahead.
# ---------------------------------------------------------------------------

def centralize_fan_in(conv_only: bool = False) -> optax.GradientTransformation:
  """Gradient centralisation for Flax layouts.

  Subtracts from each output unit's gradient its mean over the unit's fan-in:
  the mean over every axis but the last (Flax's ``(in, out)`` Dense and
  ``(..., in, out)`` Conv kernels), for tensors with ``ndim >= 2`` (``>= 4``,
  2-D conv kernels, when ``conv_only``). Vectors (biases, norm scales) are left
  alone.

  References:
    Yong et al., `Gradient Centralization: A New Optimization Technique for
    Deep Neural Networks <https://arxiv.org/abs/2004.01461>`_, ECCV 2020.
  """
  min_ndim = 4 if conv_only else 2

  def centre(g):
    if g.ndim < min_ndim:
      return g
    acc = jnp.promote_types(g.dtype, jnp.float32)
    mean = jnp.mean(g.astype(acc), axis=tuple(range(g.ndim - 1)),
                    keepdims=True)
    return (g.astype(acc) - mean).astype(g.dtype)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(centre, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def scale_by_ranger_radam(b1: float = 0.95, b2: float = 0.999,
                          eps: float = 1e-5, threshold: float = 5.0
                          ) -> optax.GradientTransformation:
  """Rectified Adam with ε added to ``sqrt(v)`` (Ranger's placement).

  ``r_t / (1 − β1^t) · m / (sqrt(v) + ε)`` when ``ρ_t ≥ threshold``, else
  ``m / (1 − β1^t)`` (see the module docstring). The state is optax's
  ``ScaleByAdamState``.

  References:
    Liu et al., `On the Variance of the Adaptive Learning Rate and Beyond
    <https://arxiv.org/abs/1908.03265>`_, ICLR 2020.
  """
  ro_inf = 2.0 / (1.0 - b2) - 1.0

  def init_fn(params):
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=optax.tree.zeros_like(params),
                                  nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    t = _counter_dtype_float(count)
    b2t = b2 ** t
    ro = ro_inf - 2.0 * t * b2t / (1.0 - b2t)
    rectified = ro >= threshold
    safe_ro = jnp.where(rectified, ro, ro_inf)  # keep sqrt's argument > 0
    r = jnp.sqrt((1.0 - b2t) * (safe_ro - 4.0) / (ro_inf - 4.0)
                 * (safe_ro - 2.0) / safe_ro * ro_inf / (ro_inf - 2.0))
    bc1 = 1.0 - b1 ** t

    def leaf(m, v):
      adaptive = (r / bc1).astype(m.dtype) * m / (jnp.sqrt(v) + eps)
      sgd = m / bc1.astype(m.dtype)
      return jnp.where(rectified, adaptive, sgd)

    return (jax.tree.map(leaf, mu, nu),
            optax.ScaleByAdamState(count=count, mu=mu, nu=nu))

  return optax.GradientTransformation(init_fn, update_fn)


def ranger(learning_rate: optax.ScalarOrSchedule = 1e-3, b1: float = 0.95,
           b2: float = 0.999, eps: float = 1e-5, threshold: float = 5.0,
           sync_period: int = 6, slow_step_size: float = 0.5,
           use_gc: bool = True, gc_conv_only: bool = False,
           weight_decay: float = 0.0, mask: Any = None
           ) -> optax.GradientTransformationExtraArgs:
  """Ranger: Lookahead(RAdam) with gradient centralisation.

  Args:
    learning_rate: η.
    b1, b2, eps, threshold: RAdam's β1, β2, ε (added to ``sqrt(v)``) and the
      rectification threshold on ρ_t.
    sync_period, slow_step_size: Lookahead's k and α.
    use_gc, gc_conv_only: gradient centralisation of tensors with ndim ≥ 2
      (ndim ≥ 4 if ``gc_conv_only``), see :func:`centralize_fan_in`.
    weight_decay: decoupled weight decay λ (``θ ← θ − η λ θ``).
    mask: which tensors are decayed (None: all).

  References:
    Wright, `New Deep Learning Optimizer, Ranger: Synergistic combination of
    RAdam + LookAhead for the best of both
    <https://github.com/lessw2020/Ranger-Deep-Learning-Optimizer>`_, 2019.
  """
  inner = optax.chain(
      centralize_fan_in(gc_conv_only) if use_gc else optax.identity(),
      scale_by_ranger_radam(b1, b2, eps, threshold),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))
  return lookahead(inner, sync_period, slow_step_size)


register(OptimizerSpec(
    name="lookahead", factory=lookahead_by_name, family="wrapper",
    default_lr=1e-3, weight_decay="base",
    paper="Zhang et al. 2019, Lookahead Optimizer: k steps forward, 1 step "
          "back (NeurIPS)",
    reference="pytorch_optimizer.Lookahead(torch.optim.Adam, k=5, alpha=0.5)",
    prepare_for_eval=slow_weights))

register(OptimizerSpec(
    name="ranger", factory=ranger, family="wrapper", default_lr=1e-3,
    weight_decay="decoupled", masks={"weight_decay": "mask"},
    paper="Wright 2019, Ranger: RAdam + LookAhead (+ Gradient Centralization, "
          "Yong et al. 2020)",
    reference="pytorch_optimizer.Ranger(degenerated_to_sgd=True)",
    prepare_for_eval=slow_weights))
