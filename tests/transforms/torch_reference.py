"""Step-by-step comparison of an optax transformation with a PyTorch optimizer.

The one harness of the equivalence tests: both optimizers start from the same
parameters (a dict of numpy arrays), are fed the same gradients, step after
step, and the parameters are compared after every step. Everything runs in
float64 (call it with ``jax.enable_x64(True)`` active, e.g. the ``x64``
fixture). Two ways to drive it:

* :func:`compare` (:func:`run_torch`, :func:`run_optax`): given gradients or a
  loss closure, parameters in the same layout on both sides;
* :func:`run_against_torch`: both sides differentiate the same loss
  (:func:`loss`, written once for jnp and torch) on the same mini-batches,
  with parameters in Flax layout here and PyTorch layout there
  (:class:`TorchSide`), and ours receives the extras the engine would build
  (two-pass, Hessian-vector and variance-reduced methods).

Gradients are given as one of

* a sequence ``[{name: array}, ...]`` (one dict per step), or
* a function ``grads(step, params) -> {name: array}`` evaluated on *each
  side's own current parameters* (numpy float64), so the loop is closed as in
  training; :func:`noisy_quadratic` builds one;
* for methods that evaluate the loss themselves, a pair of loss functions
  (``torch_loss(tensors) -> scalar``, ``jax_loss(params) -> scalar``): PyTorch
  gets a closure that re-evaluates the loss and sets ``.grad``; our side gets
  the gradient and, through ``extras(params)``, whatever it ``needs``.

The error of one tensor at one step is the relative max-norm error
``max|ours − ref| / max|ref|`` (``max|ours − ref|`` if the reference is 0);
:func:`compare` returns, per step, the maximum over the tensors.

Example::

    errors = compare(lambda t: torch.optim.Adam(t.values(), lr=0.1),
                     optax.adam(0.1), params, noisy_quadratic(params), 25)
    assert errors.max() <= 1e-10
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from optbench_jax import transforms

Params = dict[str, np.ndarray]
GradFn = Callable[[int, Params], Params]
Grads = Union[Sequence[Params], GradFn]
ArrayMap = Callable[[str, np.ndarray], np.ndarray]

# The shapes every equivalence test uses by default: a weight matrix, a bias
# and a 3-D tensor (conv-like), so that 1-D and ≥2-D handling are both hit.
DEFAULT_SHAPES = {"w": (3, 4), "b": (4,), "k": (2, 3, 3)}


def _identity(name: str, x: np.ndarray) -> np.ndarray:
  del name
  return x


def make_params(seed: int = 0, shapes: Mapping[str, tuple] = None,
                scale: float = 1.0) -> Params:
  """Random float64 parameters ``{name: array}`` (normal, times ``scale``)."""
  rng = np.random.default_rng(seed)
  shapes = DEFAULT_SHAPES if shapes is None else shapes
  return {k: scale * rng.standard_normal(s) for k, s in shapes.items()}


def noisy_quadratic(params: Params, seed: int = 1, noise: float = 0.1,
                    curvature: tuple[float, float] = (0.5, 2.0)) -> GradFn:
  """``grad(step, p) = h ⊙ (p − p*) + noise_step``: a noisy diagonal quadratic.

  ``h`` is drawn per element from ``curvature``, ``p*`` and the noise are
  fixed by ``seed`` (the noise is drawn per step and cached, so both sides
  see the same sequence whatever the order of calls).
  """
  rng = np.random.default_rng(seed)
  h = {k: rng.uniform(*curvature, v.shape) for k, v in params.items()}
  target = {k: rng.standard_normal(v.shape) for k, v in params.items()}
  cache: dict[int, Params] = {}

  def grad(step: int, p: Params) -> Params:
    if step not in cache:
      r = np.random.default_rng([seed, step])
      cache[step] = {k: noise * r.standard_normal(v.shape)
                     for k, v in params.items()}
    return {k: h[k] * (p[k] - target[k]) + cache[step][k] for k in p}

  return grad


def _grads_at(grads: Grads, step: int, params: Params) -> Params:
  if callable(grads):
    return grads(step, params)
  return grads[step]


def run_torch(make_optimizer: Callable[[dict[str, torch.Tensor]],
                                       torch.optim.Optimizer],
              params: Params, steps: int, grads: Optional[Grads] = None,
              loss: Optional[Callable[[dict[str, torch.Tensor]],
                                      torch.Tensor]] = None,
              to_torch: ArrayMap = _identity,
              from_torch: ArrayMap = _identity) -> list[Params]:
  """Runs a PyTorch optimizer; returns the parameters after each step.

  Args:
    make_optimizer: ``tensors -> optimizer`` where ``tensors`` is the dict of
      float64 leaf tensors (build parameter groups from it by name).
    params: the initial parameters.
    steps: number of steps.
    grads: the gradients (sequence or ``grads(step, params)``), or None when
      ``loss`` is given.
    loss: ``loss(tensors) -> scalar`` for optimizers that take a closure.
    to_torch, from_torch: per-tensor layout maps (e.g. a transpose) between
      our layout and the reference's; gradients are mapped too.

  PyTorch's default dtype is float64 while it runs.
  """
  # References that allocate scalar accumulators with torch.tensor([0.0])
  # (D-Adaptation, Prodigy) would otherwise keep them in float32.
  previous_dtype = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64)
  try:
    return _run_torch(make_optimizer, params, steps, grads, loss, to_torch,
                      from_torch)
  finally:
    torch.set_default_dtype(previous_dtype)


def _run_torch(make_optimizer, params, steps, grads, loss, to_torch,
               from_torch):
  tensors = {k: torch.tensor(to_torch(k, np.asarray(v, np.float64)),
                             dtype=torch.float64, requires_grad=True)
             for k, v in params.items()}
  opt = make_optimizer(tensors)
  ours = lambda: {k: from_torch(k, t.detach().numpy().copy())
                  for k, t in tensors.items()}
  trajectory = []
  for step in range(steps):
    if loss is not None:
      def closure():
        opt.zero_grad()
        value = loss(tensors)
        value.backward()
        return value
      opt.step(closure)
    else:
      g = _grads_at(grads, step, ours())
      for k, t in tensors.items():
        t.grad = torch.tensor(to_torch(k, np.asarray(g[k], np.float64)),
                              dtype=torch.float64)
      opt.step()
    trajectory.append(ours())
  return trajectory


def run_optax(tx: optax.GradientTransformation, params: Params, steps: int,
              grads: Optional[Grads] = None,
              loss: Optional[Callable[[Any], jax.Array]] = None,
              extras: Optional[Callable[[Any], dict]] = None,
              jit: bool = True, return_state: bool = False):
  """Runs ``tx`` from ``params``; returns the parameters after each step.

  Args:
    tx: the transformation (``update(g, state, params, **extras)``).
    params: the initial parameters.
    steps: number of steps.
    grads: the gradients (sequence or ``grads(step, params)``), or None when
      ``loss`` is given (then ``jax.grad(loss)`` is used).
    loss: ``loss(params) -> scalar`` on jnp arrays.
    extras: ``extras(params) -> dict`` of keyword extras for ``update``
      (e.g. ``build_extras(spec.needs, ...)``).
    jit: jit the step.
    return_state: also return the final optimizer state (and the final
      parameters as jnp arrays): ``(trajectory, (params, state))``.
  """
  if not jnp.zeros((), jnp.float64).dtype == jnp.float64:
    raise RuntimeError("run_optax needs float64: use jax.enable_x64(True)")
  p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
  state = tx.init(p)

  def step_fn(g, state, p):
    kwargs = extras(p) if extras is not None else {}
    updates, state = tx.update(g, state, p, **kwargs)
    return optax.apply_updates(p, updates), state

  if jit:
    step_fn = jax.jit(step_fn)
  grad_of_loss = jax.jit(jax.grad(loss)) if loss is not None else None
  trajectory = []
  for step in range(steps):
    if grad_of_loss is not None:
      g = grad_of_loss(p)
    else:
      numpy_params = {k: np.asarray(v) for k, v in p.items()}
      g = {k: jnp.asarray(v, jnp.float64)
           for k, v in _grads_at(grads, step, numpy_params).items()}
    p, state = step_fn(g, state, p)
    trajectory.append({k: np.asarray(v) for k, v in p.items()})
  if return_state:
    return trajectory, (p, state)
  return trajectory


def relative_error(ours: Any, ref: Any) -> float:
  """``max|ours − ref| / max|ref|`` (absolute if ``ref`` is all zeros).

  The one relative error of the tests. For dicts of arrays: the maximum over
  ``ref``'s keys.
  """
  if isinstance(ref, Mapping):
    return max(relative_error(ours[k], ref[k]) for k in ref)
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    raise ValueError(f"shape mismatch {ours.shape} vs {ref.shape}")
  scale = np.max(np.abs(ref)) if ref.size else 0.0
  err = np.max(np.abs(ours - ref)) if ref.size else 0.0
  return float(err / scale) if scale > 0 else float(err)


def step_errors(ours: Sequence[Params], ref: Sequence[Params],
                names: Optional[Sequence[str]] = None) -> np.ndarray:
  """Per step, the maximum error over the tensors ``names`` (default all)."""
  if len(ours) != len(ref):
    raise ValueError(f"{len(ours)} steps vs {len(ref)}")
  out = []
  for a, b in zip(ours, ref):
    keys = list(b) if names is None else list(names)
    out.append(max(relative_error(a[k], b[k]) for k in keys))
  return np.asarray(out)


def compare(make_optimizer, tx, params: Params, grads: Optional[Grads],
            steps: int, *, torch_loss=None, jax_loss=None, extras=None,
            names: Optional[Sequence[str]] = None,
            to_torch: ArrayMap = _identity,
            from_torch: ArrayMap = _identity, jit: bool = True) -> np.ndarray:
  """Runs both sides and returns the per-step maximum relative errors.

  Every step's parameters are compared (not only the last). All the
  arguments are those of :func:`run_torch` and :func:`run_optax`; ``names``
  restricts the comparison to some tensors.
  """
  ref = run_torch(make_optimizer, params, steps, grads=grads, loss=torch_loss,
                  to_torch=to_torch, from_torch=from_torch)
  ours = run_optax(tx, params, steps, grads=grads, loss=jax_loss,
                   extras=extras, jit=jit)
  errors = step_errors(ours, ref, names)
  if not np.all(np.isfinite(errors)):
    raise AssertionError(f"non-finite errors: {errors}")
  return errors


def moved(trajectory: Sequence[Params], params: Params) -> float:
  """How far the last parameters are from the initial ones (relative max-norm).

  Equivalence tests assert this is not tiny, so that agreement is not the
  trivial agreement of two optimizers that do nothing.
  """
  return relative_error(trajectory[-1], params)


# ---------------------------------------------------------------------------
# Same loss in both frameworks (Flax layout here, PyTorch layout there).

# A matrix, a bias, a 3-D tensor and a 2-D conv kernel (Flax layout).
LOSS_SHAPES = {"w": (3, 4), "b": (4,), "t": (2, 3, 3), "k": (2, 2, 3, 2)}
BATCH = 6


def to_torch_layout(x):
  """Flax (*spatial, in, out) -> PyTorch (out, in, *spatial)."""
  n = x.ndim
  return x if n < 2 else np.transpose(x, (n - 1, n - 2) + tuple(range(n - 2)))


def from_torch_layout(t):
  n = t.dim()
  return t if n < 2 else t.permute(*range(2, n), 1, 0)


def loss(p, batch, xp):
  """A smooth non-convex loss written once for jnp and torch."""
  x, x4, y = batch
  h = xp.tanh(x @ p["w"] + p["b"])
  z = xp.tanh(xp.einsum("ni,kij->nkj", x, p["t"]))
  c = xp.tanh(xp.einsum("nabc,abcd->nd", x4, p["k"]))
  pred = 0.5 * h.sum(-1) + 0.3 * z.sum((1, 2)) + 0.7 * c.sum(-1)
  return ((pred - y) ** 2).mean()


def initial_params(seed=0):
  rng = np.random.default_rng(seed)
  return {k: 0.5 * rng.normal(size=s) for k, s in LOSS_SHAPES.items()}


def batches(steps, seed=1):
  rng = np.random.default_rng(seed)
  return [(rng.normal(size=(BATCH, 3)), rng.normal(size=(BATCH, 2, 2, 3)),
           rng.normal(size=BATCH)) for _ in range(steps)]


class TorchSide:
  """Parameters in PyTorch layout and the gradient of the same loss."""

  def __init__(self, params0):
    self.names = list(LOSS_SHAPES)
    self.tensors = [torch.tensor(to_torch_layout(params0[k]),
                                 requires_grad=True) for k in self.names]

  def loss(self, batch):
    p = {k: from_torch_layout(t) for k, t in zip(self.names, self.tensors)}
    return loss(p, tuple(torch.tensor(b) for b in batch), torch)

  def backward(self, batch):
    for t in self.tensors:
      t.grad = None
    value = self.loss(batch)
    value.backward()
    return value

  def params(self, tensors=None):
    tensors = self.tensors if tensors is None else tensors
    return {k: from_torch_layout(t.detach()).numpy()
            for k, t in zip(self.names, tensors)}


def ours_step(tx, needs=frozenset(), jit=True):
  """One step of ours on a batch, with the extras the engine would build."""
  def step(params, state, batch, key):
    loss_fn = lambda p: (loss(p, batch, jnp), None)
    value, grads = jax.value_and_grad(lambda p: loss_fn(p)[0])(params)
    extras = transforms.build_extras(needs, loss_fn, value=value, key=key,
                                     params=params)
    updates, state = tx.update(grads, state, params, **extras)
    return optax.apply_updates(params, updates), state
  return jax.jit(step) if jit else step


def plain_torch_step(opt, side, batch, t, key):
  del t, key
  side.backward(batch)
  opt.step()


def run_against_torch(tx, torch_opt_fn, steps=25, jit=True, on_step=None,
                      needs=frozenset(), torch_step=plain_torch_step,
                      tol=1e-10, params0=None):
  """Runs ours and the reference side by side; returns the max rel. error.

  Asserts every step's error is at most ``tol``. ``torch_step(opt, side,
  batch, t, key)`` takes one reference step (``key`` is the PRNG key ours
  received, for aligning random probes); ``on_step(t, params, state, side,
  opt)`` may check more after each step.
  """
  params0 = initial_params() if params0 is None else params0
  data = batches(steps)
  side = TorchSide(params0)
  opt = torch_opt_fn(side.tensors)
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(params)
  step = ours_step(tx, needs, jit=jit)
  worst = 0.0
  for t, batch in enumerate(data):
    key = jax.random.key(t)
    params, state = step(params, state, tuple(map(jnp.asarray, batch)), key)
    torch_step(opt, side, batch, t, key)
    err = relative_error(params, side.params())
    assert err <= tol, f"step {t + 1}: relative error {err:.3g}"
    if on_step is not None:
      on_step(t, params, state, side, opt)
    worst = max(worst, err)
  chex.assert_tree_all_finite(params)
  return worst


def extras_step(tx, needs, loss_fn):
  """``step(params, state, key)``: one update of ``tx`` on ``loss_fn`` (which
  returns ``(loss, aux)``), with the extras ``needs`` lists."""

  def step(params, state, key):
    value, grads = jax.value_and_grad(lambda p: loss_fn(p)[0])(params)
    extras = transforms.build_extras(needs, loss_fn, value=value, key=key,
                                     params=params)
    updates, state = tx.update(grads, state, params, **extras)
    return optax.apply_updates(params, updates), state

  return step


def assert_same_with_and_without_jit(tx, needs=frozenset(), steps=3,
                                     prepare=None):
  """Eager and jitted updates agree (a cheap loss keeps eager mode fast).

  ``prepare(state, params, loss)`` may edit the initial state (SVRG's
  epoch_start).
  """
  params = {k: jnp.asarray(v) for k, v in initial_params().items()}
  loss_fn = lambda p: (sum(jnp.sum(jnp.sin(x) ** 2 + 0.1 * x ** 4)
                           for x in jax.tree.leaves(p)), None)
  step = extras_step(tx, needs, loss_fn)

  results = []
  for run in (jax.jit(step), step):
    p, state = params, tx.init(params)
    if prepare is not None:
      state = prepare(state, p, loss_fn)
    for t in range(steps):
      p, state = run(p, state, jax.random.key(t))
    results.append(p)
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-12)
  assert relative_error(results[0], params) > 1e-4  # the optimizer moved
