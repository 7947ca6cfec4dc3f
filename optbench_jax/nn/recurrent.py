"""Recurrent layers (LSTM, GRU) with PyTorch's equations and parameters.

Both layers compute, per layer and direction, with ``x_t`` the layer input,
``h_{t-1}`` the previous hidden state (``h_{-1}`` the initial state, zero
unless given), σ the logistic sigmoid and ⊙ the elementwise product:

* :class:`LSTM` (Hochreiter & Schmidhuber 1997, with the forget gate of Gers
  et al. 2000), gates in the order ``i, f, g, o`` of ``torch.nn.LSTM``::

    (i_t, f_t, g_t, o_t) = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
    i_t, f_t, o_t ← σ(i_t), σ(f_t), σ(o_t);   g_t ← tanh(g_t)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)

* :class:`GRU` (Cho et al. 2014), gates in the order ``r, z, n`` of
  ``torch.nn.GRU``::

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

Variable lengths. A ``mask`` ``(B, T)`` marks the real steps, contiguous from
``t = 0`` (right padding). As PyTorch's packed sequences: a sequence's state
stops changing after its last real step, the reverse direction of a
bidirectional layer starts at each sequence's own last real step, outputs at
padded steps are zero, and the final state of the reverse direction is the
one after step ``t = 0``.

Layers. ``num_layers`` layers are stacked; layer ``k > 0`` reads the
(concatenated, for a bidirectional layer) outputs of layer ``k − 1`` after
dropout of rate ``dropout`` (``train=True`` only, from the ``"dropout"`` RNG
stream; none after the last layer), as PyTorch's ``dropout`` argument.

Parameters. Layer ``k`` has a submodule ``l{k}`` (and ``l{k}_reverse`` when
bidirectional) holding ``ih`` (a :class:`~optbench_jax.nn.layers.Dense`,
kernel ``(D_k, G·H)``, bias ``(G·H,)``) and ``hh`` (kernel ``(H, G·H)``, bias
``(G·H,)``), with ``G`` the number of gates (4 or 3) and the gates' blocks of
``H`` columns in PyTorch's order: the kernels are PyTorch's
``weight_ih_l{k}``/``weight_hh_l{k}`` transposed, the biases its
``bias_ih_l{k}``/``bias_hh_l{k}`` (see :func:`torch_rnn_rules`).

Initialisation (``init_scheme``):

* ``"torch"``: every kernel and bias uniform in ``±1/√H``, as
  ``torch.nn.LSTM``/``GRU``'s ``reset_parameters``;
* ``"flax"``: as ``flax.linen.LSTMCell``/``GRUCell``: input kernels
  LeCun-normal, recurrent kernels orthogonal per gate (each ``H × H`` block),
  biases zero.

Computation. The input projections ``W_ih x_t + b_ih`` of all steps are one
matrix product before the recurrence; the recurrence is one ``lax.scan`` over
time per layer, in which both directions of a bidirectional layer advance
together (the reverse direction reads its input with each sequence's real
prefix reversed, :func:`reverse_padded`). Everything is differentiable in
both modes (``jax.grad``, ``jax.jvp``) and batches under ``vmap``.

Curvature statistics. As :mod:`optbench_jax.nn.curvature`: ``ih`` records
its input and perturbs its output (it is a ``Dense``); ``hh`` records its
inputs ``h_{t-1}`` ``(B, T, H)`` and perturbs its outputs
``W_hh h_{t-1} + b_hh`` ``(B, T, G·H)``, both in the direction's own time
order; no-ops unless the caller asks for them.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.nn import convert
from optbench_jax.nn.curvature import KFAC_INPUTS, PERTURBATIONS
from optbench_jax.nn.layers import (Dense, Initializer, check_init,
                                    fan_in_uniform)

__all__ = ["LSTM", "GRU", "reverse_padded", "lengths_from_mask",
           "torch_rnn_rules"]


# -- sequences ---------------------------------------------------------------
def lengths_from_mask(mask: jax.Array) -> jax.Array:
  """The number of real steps ``(...,)`` of a right-padded mask ``(..., T)``."""
  return jnp.sum(jnp.asarray(mask).astype(bool), axis=-1, dtype=jnp.int32)


def reverse_padded(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """Reverses each sequence's real prefix; padded steps stay in place.

  Args:
    x: ``(B, T, ...)``.
    lengths: ``(B,)`` real steps per sequence.

  Returns:
    ``y`` with ``y[b, t] = x[b, lengths[b] − 1 − t]`` for ``t < lengths[b]``
    and ``y[b, t] = x[b, t]`` otherwise (its own inverse).
  """
  t = jnp.arange(x.shape[1])
  lengths = jnp.asarray(lengths)[:, None]
  index = jnp.where(t < lengths, lengths - 1 - t, t)
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


# -- initialisers ------------------------------------------------------------
def _per_gate(init: Initializer, gates: int) -> Initializer:
  """``init`` applied to each gate's ``(..., H)`` block of a ``(..., G·H)``."""

  def init_fn(key, shape, dtype=jnp.float32):
    block = shape[:-1] + (shape[-1] // gates,)
    keys = jax.random.split(key, gates)
    return jnp.concatenate([init(k, block, dtype) for k in keys], axis=-1)

  return init_fn


def _initializers(init_scheme: str, hidden: int, gates: int) -> dict:
  """``{"ih_kernel", "hh_kernel", "bias"}`` initialisers of the scheme."""
  if check_init(init_scheme) == "torch":
    uniform = fan_in_uniform(hidden)
    return {"ih_kernel": uniform, "hh_kernel": uniform, "bias": uniform}
  return {"ih_kernel": nn.initializers.lecun_normal(),
          "hh_kernel": _per_gate(nn.initializers.orthogonal(), gates),
          "bias": nn.initializers.zeros_init()}


# -- modules -----------------------------------------------------------------
class _Recurrent(nn.Module):
  """The recurrent weights ``W_hh`` (kernel ``(H, G·H)``) and ``b_hh``."""
  features: int
  gates: int
  kernel_init: Initializer
  bias_init: Initializer

  def setup(self):
    width = self.gates * self.features
    self.kernel = self.param("kernel", self.kernel_init,
                             (self.features, width))
    self.bias = self.param("bias", self.bias_init, (width,))

  def weights(self):
    return self.kernel, self.bias

  def perturbation(self, shape, dtype) -> Optional[jax.Array]:
    """The output perturbation ``(B, T, G·H)``, or None without one."""
    if (self.is_mutable_collection(PERTURBATIONS)
        or self.has_variable(PERTURBATIONS, "outputs")):
      return self.perturb("outputs", jnp.zeros(shape, dtype))
    return None

  def record(self, h_prev: jax.Array) -> None:
    """Sows the inputs ``h_{t-1}`` ``(B, T, H)`` when they are collected."""
    if self.is_mutable_collection(KFAC_INPUTS):
      self.sow(KFAC_INPUTS, "inputs", h_prev)


class _Direction(nn.Module):
  """One layer's parameters in one direction: ``ih`` and ``hh``."""
  features: int
  gates: int
  init_scheme: str
  dtype: Any = jnp.float32

  def setup(self):
    inits = _initializers(self.init_scheme, self.features, self.gates)
    self.ih = Dense(self.gates * self.features, kernel_init=inits["ih_kernel"],
                    bias_init=inits["bias"], init_scheme=self.init_scheme,
                    dtype=self.dtype)
    self.hh = _Recurrent(self.features, self.gates, inits["hh_kernel"],
                         inits["bias"])

  def project(self, x):
    return self.ih(x)

  def recurrent(self):
    return self.hh.weights()

  def perturbation(self, shape, dtype):
    return self.hh.perturbation(shape, dtype)

  def record(self, h_prev):
    self.hh.record(h_prev)


class _RNN(nn.Module):
  """Stacked (bi)directional recurrence; subclasses give the cell."""
  features: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  init_scheme: str = "torch"
  dtype: Any = jnp.float32   # compute dtype (parameters stay float32)

  gates = 0          # G, the blocks of H in a kernel's columns
  state_size = 1     # arrays in the carry: (h,) or (h, c)

  @staticmethod
  def cell(state: tuple, gx: jax.Array, gh: jax.Array) -> tuple:
    """The next state from ``W_ih x + b_ih`` and ``W_hh h + b_hh``."""
    raise NotImplementedError

  @nn.compact
  def __call__(self, x, mask=None, initial_state=None, *, train: bool):
    """Runs the layers over ``x``.

    Args:
      x: ``(B, T, D)`` inputs.
      mask: optional ``(B, T)`` bool or 0/1 mask of the real steps (right
        padding); None means every step is real.
      initial_state: optional, as the returned final state (``(h, c)`` for an
        LSTM, ``h`` for a GRU; each ``(num_layers · num_directions, B, H)``);
        None means zeros.
      train: whether dropout between layers is active.

    Returns:
      ``(outputs, final_state)``: ``outputs`` ``(B, T, num_directions · H)``,
      the last layer's hidden states, zero at padded steps (the forward
      direction's features first); ``final_state`` as ``initial_state``, in
      PyTorch's order (layer-major, forward before reverse), each sequence's
      state after its last real step.
    """
    batch, steps = x.shape[:2]
    directions = 2 if self.bidirectional else 1
    hidden = self.features
    lengths = (jnp.full((batch,), steps, jnp.int32) if mask is None
               else lengths_from_mask(mask))
    if initial_state is None:
      zeros = jnp.zeros((self.num_layers * directions, batch, hidden),
                        x.dtype)
      initial_state = (zeros,) * self.state_size
    elif self.state_size == 1:
      initial_state = (initial_state,)
    initial_state = tuple(jnp.asarray(s) for s in initial_state)

    finals = []
    for layer in range(self.num_layers):
      if layer > 0 and self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      cells = [_Direction(hidden, self.gates, self.init_scheme, self.dtype,
                          name=f"l{layer}{suffix}")
               for suffix in ("", "_reverse")[:directions]]
      rows = slice(layer * directions, (layer + 1) * directions)
      x, final = self._layer(cells, x, lengths,
                             tuple(s[rows] for s in initial_state))
      finals.append(final)
    final_state = tuple(jnp.concatenate([f[i] for f in finals])
                        for i in range(self.state_size))
    return x, final_state if self.state_size > 1 else final_state[0]

  def _layer(self, cells: Sequence[_Direction], x, lengths, state):
    """One layer, all its directions in one scan over time."""
    batch, steps = x.shape[:2]
    inputs = [x, reverse_padded(x, lengths)][:len(cells)]
    gx = jnp.stack([c.project(xi) for c, xi in zip(cells, inputs)])
    weights = [c.recurrent() for c in cells]
    w_hh = jnp.stack([w for w, _ in weights])            # (nd, H, G·H)
    b_hh = jnp.stack([b for _, b in weights])[:, None]   # (nd, 1, G·H)
    perturbations = [c.perturbation(gx.shape[1:], gx.dtype) for c in cells]
    dh = None if perturbations[0] is None else jnp.stack(perturbations)
    time_major = lambda a: None if a is None else jnp.moveaxis(a, 2, 0)
    valid = jnp.arange(steps)[:, None] < lengths          # (T, B)
    state = tuple(s.astype(jnp.result_type(s, gx)) for s in state)

    def step(carry, inputs):
      gx_t, dh_t, valid_t = inputs
      h = carry[0]
      gh = jnp.einsum("dbh,dhg->dbg", h, w_hh.astype(h.dtype)) + b_hh.astype(
          h.dtype)
      if dh_t is not None:
        gh = gh + dh_t.astype(h.dtype)
      new = type(self).cell(carry, gx_t.astype(h.dtype), gh)
      new = tuple(jnp.where(valid_t[:, None], n.astype(o.dtype), o)
                  for n, o in zip(new, carry))
      return new, new[0]

    final, hs = jax.lax.scan(step, state,
                             (time_major(gx), time_major(dh), valid))
    hs = jnp.moveaxis(hs, 0, 2)                           # (nd, B, T, H)
    if self.is_mutable_collection(KFAC_INPUTS):
      h_prev = jnp.concatenate([state[0][:, :, None], hs[:, :, :-1]], axis=2)
      for c, h in zip(cells, h_prev):
        c.record(h)
    outputs = [hs[0], reverse_padded(hs[1], lengths)][:len(cells)]
    outputs = jnp.concatenate(outputs, axis=-1)
    outputs = jnp.where(valid.T[:, :, None], outputs, 0)
    return outputs, final


class LSTM(_RNN):
  """Long short-term memory layers as ``torch.nn.LSTM(batch_first=True)``.

  Attributes:
    features: the hidden size ``H``.
    num_layers: stacked layers.
    bidirectional: whether each layer also runs in reverse.
    dropout: rate of dropout on the inputs of layers ``k > 0``.
    init_scheme: ``"torch"`` or ``"flax"`` (see the module docstring).

  Call: ``(outputs, (h, c)) = lstm(x, mask, initial_state, train=...)``.
  """
  gates = 4
  state_size = 2

  @staticmethod
  def cell(state, gx, gh):
    h, c = state
    i, f, g, o = jnp.split(gx + gh, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


class GRU(_RNN):
  """Gated recurrent unit layers as ``torch.nn.GRU(batch_first=True)``.

  Attributes: as :class:`LSTM`.

  Call: ``(outputs, h) = gru(x, mask, initial_state, train=...)``.
  """
  gates = 3
  state_size = 1

  @staticmethod
  def cell(state, gx, gh):
    (h,) = state
    rx, zx, nx = jnp.split(gx, 3, axis=-1)
    rh, zh, nh = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(rx + rh)
    z = jax.nn.sigmoid(zx + zh)
    n = jnp.tanh(nx + r * nh)
    return ((1 - z) * n + z * h,)


# -- conversion --------------------------------------------------------------
def _checked_gates(kind: convert.Kind, gates: int) -> convert.Kind:
  """``kind`` that checks the gate axis (PyTorch's first, Flax's last)."""

  def gate_axis(w, axis):
    if np.shape(w)[axis] % gates:
      raise convert.ConversionError(
          f"a recurrent tensor of shape {np.shape(w)} is not {gates} gates")
    return w

  return {suffix: convert.Leaf(
              leaf.collection, leaf.name,
              lambda w, leaf=leaf: leaf.to_flax(gate_axis(w, 0)),
              lambda k, leaf=leaf: leaf.to_torch(gate_axis(k, -1)))
          for suffix, leaf in kind.items()}


def torch_rnn_rules(torch_prefix: str, flax_path: Union[str, Sequence[str]],
                    num_layers: int, bidirectional: bool,
                    gates: int) -> list[convert.Rule]:
  """Rules mapping a ``torch.nn.LSTM``/``GRU`` to :class:`LSTM`/:class:`GRU`.

  ``{prefix}.weight_ih_l{k}{sfx}`` ``(G·H, D_k)`` ↔
  ``{path}/l{k}{sfx}/ih/kernel`` ``(D_k, G·H)`` (transposed, as
  :func:`optbench_jax.nn.convert.dense`), ``bias_ih_l{k}{sfx}`` ↔
  ``ih/bias``, and the same for ``hh``; ``sfx`` is ``""`` or ``"_reverse"``.
  Use with :func:`~optbench_jax.nn.convert.torch_to_flax` and
  :func:`~optbench_jax.nn.convert.flax_to_torch`. LSTMs with
  ``proj_size > 0`` are not covered.

  Args:
    torch_prefix: the module's name in the PyTorch state dict (``""`` for
      the state dict of the recurrent module itself).
    flax_path: the Flax module's path (``()`` for the layer's own variables).
    num_layers: the stacked layers.
    bidirectional: whether the layers have a reverse direction.
    gates: 4 (:attr:`LSTM.gates`) or 3 (:attr:`GRU.gates`); tensors whose
      gate axis is not a multiple raise ``ConversionError``.

  Returns:
    The list of :class:`~optbench_jax.nn.convert.Rule`.
  """
  flax_path = (flax_path,) if isinstance(flax_path, str) else tuple(flax_path)
  rules = []
  for layer in range(num_layers):
    for suffix in ("", "_reverse")[:2 if bidirectional else 1]:
      # PyTorch's order: weight_ih, weight_hh, bias_ih, bias_hh.
      for name, leaf in convert.dense().items():
        for part in ("ih", "hh"):
          kind = {f"{name}_{part}_l{layer}{suffix}": leaf}
          rules.append(convert.Rule(torch_prefix,
                                    (*flax_path, f"l{layer}{suffix}", part),
                                    _checked_gates(kind, gates)))
  return rules
