"""Sharpness along training: the Hessian's top eigenvalue and trace.

A part of :class:`~optbench_jax.engine.program.Program` (it owns the
compiled ``sharpness`` built from the method here). With
``--track-sharpness EVERY`` the host measures, every ``EVERY`` epochs and
for every run of the program at once (vmapped), the Hessian of the
training loss at the run's parameters on one fixed batch (the first
``--eval-batch-size`` training examples, unaugmented, the model in
evaluation mode: no dropout, batch norm's running statistics):

* ``sharpness`` — the top eigenvalue ``λ_max``: the largest Ritz value of
  :data:`LANCZOS_ITERATIONS` Lanczos steps with full reorthogonalisation
  (:func:`optbench_jax.nn.lanczos.lanczos`) from a Gaussian start;
  ``sharpness_residual`` bounds its error: ``|β_m s_m|`` (``s`` the Ritz
  vector in the Krylov basis), ``‖H y − θ y‖`` of its Ritz pair, so some
  eigenvalue lies within it (Parlett, The Symmetric Eigenvalue Problem,
  Thm 11.4.2);
* ``hessian_trace`` — Hutchinson's ``(1/P) Σ_p z_pᵀ H z_p`` over
  :data:`TRACE_PROBES` Rademacher probes, with its standard error
  ``hessian_trace_stderr`` (``s/√P``).

Gradient descent with step ``η`` on a quadratic is stable while
``λ_max < 2/η`` (Cohen et al. 2021, "Gradient Descent on Neural Networks
Typically Occurs at the Edge of Stability", ICLR); the campaign plot draws
both. One measurement costs ``LANCZOS_ITERATIONS + TRACE_PROBES``
Hessian-vector products on the batch (not counted in the run's
``grad_evals`` / ``hvps``, which count training only) and holds a basis
of ``LANCZOS_ITERATIONS`` parameter-sized vectors per run.
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optbench_jax.engine import distributed
from optbench_jax.engine.state import TrainState
from optbench_jax.nn import lanczos
from optbench_jax.transforms import hvp

LANCZOS_ITERATIONS = 20
TRACE_PROBES = 10


class Sharpness:
  """The sharpness measurement of ``Program`` (which supplies ``task``,
  ``info``, ``apply`` and the jitted ``sharpness`` built from
  :meth:`_sharpness`)."""

  def measure_sharpness(self, state: TrainState, batch, keys) -> dict:
    """The runs' measurements (on the host, a leading axis of runs) and
    ``sharpness_time_s``: the measurement's wall time, compilation apart
    (compiled ahead of time on the first call)."""
    compiled = getattr(self, "_compiled_sharpness", None)
    if compiled is None:
      compiled = self.sharpness.lower(state, batch, keys).compile()
      self._compiled_sharpness = compiled
    start = time.perf_counter()
    values = distributed.to_host(compiled(state, batch, keys))
    seconds = time.perf_counter() - start
    return {**values, "sharpness_time_s": np.full((self.runs,), seconds)}

  def _sharpness(self, state: TrainState, batch, key) -> dict:
    batch = self.task.preprocess(batch, self.info)

    def loss(params):
      outputs = self.apply({"params": params, **state.model_state},
                           *self.task.model_inputs(batch), train=False)
      loss_sum, count = self.task.loss(outputs, batch, 0.0)
      return loss_sum / jnp.maximum(count, 1.0)

    flat, unravel = ravel_pytree(state.params)
    matvec = lambda x: ravel_pytree(hvp(loss, state.params, unravel(x)))[
        0].astype(flat.dtype)
    iterations = min(LANCZOS_ITERATIONS, flat.size)
    k_lanczos, k_trace = jax.random.split(key)
    alphas, betas, _ = lanczos.lanczos(matvec, flat.size, flat.dtype,
                                       iterations, k_lanczos)
    values, vectors = jnp.linalg.eigh(lanczos.tridiagonal(alphas, betas))

    def quadratic_form(probe_key):
      z = jax.random.rademacher(probe_key, flat.shape, flat.dtype)
      return z @ matvec(z)

    forms = jax.lax.map(quadratic_form,
                        jax.random.split(k_trace, TRACE_PROBES))
    return {"sharpness": values[-1],
            "sharpness_residual": jnp.abs(betas[iterations - 1]
                                          * vectors[-1, -1]),
            "sharpness_iterations": jnp.asarray(iterations),
            "hessian_trace": forms.mean(),
            "hessian_trace_stderr": forms.std(ddof=1) / math.sqrt(
                TRACE_PROBES),
            "hessian_trace_probes": jnp.asarray(TRACE_PROBES)}
