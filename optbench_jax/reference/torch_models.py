"""Generic PyTorch helpers for model twins (equivalence tests, benchmarks).

The models' twins live in this package's ``torch_*`` modules, reached
through their registry entries' ``torch_twin(info)``
(``optbench_jax.models.get(task, name).torch_twin``); this module holds
what twins and their users share: PyTorch-style batch norm settings and
``state_dict`` <-> numpy helpers for :mod:`optbench_jax.nn.convert`.

This module imports torch; nothing in the ``optbench_jax`` package imports
it at import time, so torch stays a test and benchmark dependency.
"""
from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-5
BN_MOMENTUM = 0.1   # PyTorch's convention; Flax momentum 0.9


def batch_norm_2d(channels: int) -> nn.BatchNorm2d:
  """The twin of ``nn.layers.BatchNorm(momentum=0.9, epsilon=1e-5)``."""
  return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def state_dict_numpy(model: nn.Module) -> dict:
  """``model.state_dict()`` as numpy copies (for ``convert.torch_to_flax``)."""
  return {k: v.detach().cpu().numpy().copy()
          for k, v in model.state_dict().items()}


def load_numpy_state_dict(model: nn.Module, state_dict: dict) -> nn.Module:
  """Loads numpy arrays (e.g. ``convert.flax_to_torch``) into ``model``."""
  model.load_state_dict({k: torch.tensor(v) for k, v in state_dict.items()},
                        strict=True)
  return model


def grads_numpy(model: nn.Module) -> dict:
  """``{name: param.grad}`` as numpy arrays, for every trainable parameter."""
  return {k: p.grad.detach().cpu().numpy().copy()
          for k, p in model.named_parameters() if p.grad is not None}


def run_packed(rnn: nn.Module, x: torch.Tensor, mask: torch.Tensor):
  """``rnn`` (``nn.LSTM``/``nn.GRU``, ``batch_first``) over right-padded
  ``x`` ``(B, T, D)`` as packed sequences, each row as long as its
  ``mask``'s sum (at least 1): ``(outputs (B, T, ·), zero at padding; the
  final state)``, the semantics of the recurrent layers' masks."""
  packed = nn.utils.rnn.pack_padded_sequence(
      x, mask.sum(1).clamp(min=1).cpu(), batch_first=True,
      enforce_sorted=False)
  out, state = rnn(packed)
  out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                            total_length=x.shape[1])
  return out, state
