"""Float64 step-by-step equivalence of the optax.contrib entries with PyTorch.

Same protocol as ``test_first_order.py``: the default (3, 4), (4,), (2, 3, 3)
parameters, the noisy quadratic fed to both sides at their own parameters,
``STEPS`` steps, parameters compared after every step, 1e-10 relative error
unless a stated difference of definition forces another check.
"""
import functools

import chex
import numpy as np
import optax
import pytest
import pytorch_optimizer as po
import torch
from pytorch_optimizer.optimizer.muon import base as po_muon_base

from optbench_jax.transforms import get, make
from tests.transforms import torch_reference as ref
from tests.transforms.test_first_order import STEPS, TOL, WD, _check, _groups


@pytest.fixture
def problem(x64):
  del x64
  params = ref.make_params(0)
  return params, ref.noisy_quadratic(params)


def _run(name, torch_opt, ours, problem, tol=TOL, **kwargs):
  params, grads = problem
  traj = ref.run_optax(ours, params, STEPS, grads=grads)
  theirs = ref.run_torch(torch_opt, params, STEPS, grads, **kwargs)
  assert ref.moved(traj, params) > 1e-3, name
  errors = ref.step_errors(traj, theirs)
  _check(name, errors, tol)
  return traj, theirs


# ---------------------------------------------------------------------------
# Muon.


@pytest.fixture
def float64_newton_schulz(monkeypatch):
  """Runs the reference's Newton–Schulz iteration in float64, not bfloat16.

  ``pytorch_optimizer.Muon`` (like ``torch.optim.Muon``) casts the matrix to
  bfloat16 for the iteration, which alone makes it ~1e-2 off any float64
  computation. Its function takes the dtype as an argument; only that
  argument changes here.
  """
  monkeypatch.setattr(
      po_muon_base, "zero_power_via_newton_schulz_5",
      functools.partial(po_muon_base.zero_power_via_newton_schulz_5,
                        dtype=torch.float64))


def _to_torch(name, x):
  """Our kernels are (inputs..., out), PyTorch's (out, inputs...)."""
  del name
  return np.moveaxis(x, -1, 0) if x.ndim >= 2 else x


def _from_torch(name, x):
  del name
  return np.moveaxis(x, 0, -1) if x.ndim >= 2 else x


def _muon_reference(lr, nesterov, eps, wd=0.0):
  def make_optimizer(t):
    return po.Muon(
        [dict(params=[v for v in t.values() if v.ndim >= 2], use_muon=True,
              lr=lr, momentum=0.95, nesterov=nesterov, weight_decay=wd),
         dict(params=[v for v in t.values() if v.ndim < 2], use_muon=False,
              lr=lr, betas=(0.9, 0.999), eps=eps, weight_decay=0.0)],
        weight_decouple=True)
  return make_optimizer


@pytest.mark.usefixtures("float64_newton_schulz")
def test_muon_without_nesterov(problem):
  # Mapping: beta ↔ momentum, (adam_b1, adam_b2) ↔ adamw betas, learning
  # rate ↔ lr and adamw_lr, eps ↔ adamw_eps; the Muon scale
  # √max(1, fan_out/fan_in) ↔ the reference's √max(1, out/in) on the
  # transposed layout; decoupled decay on the matrices ↔ weight_decouple.
  # optax bias-corrects the momentum, the reference does not: a positive
  # factor that the Frobenius normalisation before Newton–Schulz removes
  # exactly when ε = 0 (optax X/(‖X‖+ε), the reference X/max(‖X‖, 1e-7)).
  _run("muon(nesterov=False, eps=0, wd)",
       _muon_reference(0.05, nesterov=False, eps=0.0, wd=WD),
       make("muon", 0.05, weight_decay=WD, nesterov=False, eps=0.0),
       problem, to_torch=_to_torch, from_torch=_from_torch)


@pytest.mark.usefixtures("float64_newton_schulz")
def test_muon_default_eps(problem):
  # With ε = 1e-8 the normalisation differs by a relative ~ε/‖X‖: a looser
  # bound of 1e-8 for that documented reason.
  _run("muon(nesterov=False, eps=1e-8)",
       _muon_reference(0.05, nesterov=False, eps=1e-8),
       make("muon", 0.05, nesterov=False), problem, tol=1e-8,
       to_torch=_to_torch, from_torch=_from_torch)


@pytest.mark.usefixtures("float64_newton_schulz")
def test_muon_nesterov_differs_by_bias_correction(problem):
  # Default nesterov=True: optax orthogonalises
  #   β m_t/(1−β^{t+1}) + (1−β) g_t/(1−β^t),
  # the reference β m_t + (1−β) g_t. The two blends weigh the gradient
  # differently while β^t is not small, so no hyperparameter maps one onto
  # the other (and the bias gets optax's Nesterov AdamW where the reference
  # uses AdamW). Looser check on the matrices: the orthogonalised steps have
  # the same length and nearly the same direction, so the trajectories stay
  # within 1e-2 (measured ~3e-3) but do differ.
  params, grads = problem
  ours = ref.run_optax(make("muon", 0.05, eps=0.0), params, STEPS, grads)
  theirs = ref.run_torch(_muon_reference(0.05, nesterov=True, eps=0.0),
                         params, STEPS, grads, to_torch=_to_torch,
                         from_torch=_from_torch)
  errors = ref.step_errors(ours, theirs, names=["w", "k"])
  _check("muon(nesterov=True, matrices; bias-corrected blend)", errors,
         tol=1e-2)
  assert errors.max() > 1e-6  # the difference is real


# ---------------------------------------------------------------------------
# Schedule-Free AdamW.


@pytest.mark.parametrize("warmup", [None, 5])
def test_schedule_free_adamw(problem, warmup):
  # betas=(b1, b2), warmup_steps ↔ warmup_steps (lr·t/warmup for t <
  # warmup, for both the z step and the averaging weight γ_t²), r = 0,
  # weight_lr_power = 2; decay at y (coupled into the normalised gradient)
  # on the matrices ↔ weight_decay on that group. The reference adds 1e-15
  # under the root (√(v̂ + 1e-15) + ε): ~1e-13 relative here.
  params, grads = problem
  holder = []

  def reference(t):
    holder.append(po.ScheduleFreeAdamW(
        _groups(t, WD), lr=0.05, betas=(0.9, 0.999), eps=1e-8,
        warmup_steps=warmup or 0))
    return holder[0]

  traj, (p, state) = ref.run_optax(
      make("schedule_free_adamw", 0.05, weight_decay=WD, warmup_steps=warmup,
           exclude_bias_norm=True),
      params, STEPS, grads, return_state=True)
  theirs = ref.run_torch(reference, params, STEPS, grads)
  assert ref.moved(traj, params) > 1e-3
  _check(f"schedule_free_adamw(warmup={warmup}, wd)",
         ref.step_errors(traj, theirs))
  # The evaluation parameters x (the spec's prepare_for_eval) ↔ .eval().
  holder[0].eval()
  # The groups reorder the tensors; the three shapes are distinct.
  by_shape = {tuple(t.shape): t.detach().numpy()
              for g in holder[0].param_groups for t in g["params"]}
  x_ref = {k: by_shape[v.shape] for k, v in params.items()}
  x_ours = get("schedule_free_adamw").prepare_for_eval(p, state)
  errors = np.array([max(ref.relative_error(np.asarray(x_ours[k]), x_ref[k])
                         for k in params)])
  _check(f"schedule_free_adamw eval params(warmup={warmup})", errors,
         steps=1)
  assert ref.relative_error(np.asarray(x_ours["w"]), traj[-1]["w"]) > 1e-4
  # prepare_for_eval also finds the state inside a chain (e.g. with clipping).
  chained = (optax.clip_by_global_norm(1.0).init(p), state)
  chex.assert_trees_all_close(
      get("schedule_free_adamw").prepare_for_eval(p, chained), x_ours)


# ---------------------------------------------------------------------------
# ADOPT, AdEMAMix.


def test_adopt(problem):
  # Clipping: optax calls clip_value_fn(count) with count = t − 1 at step t
  # (the paper's c_t = t^¼ for the t-th update after the initialisation
  # step); the reference calls clip_lambda(step) with step = t, so
  # clip_lambda = (step − 1)^¼. Coupled decay ↔ weight_decouple=False.
  _run("adopt(wd)",
       lambda t: po.ADOPT(_groups(t, WD), lr=0.05, betas=(0.9, 0.9999),
                          eps=1e-6, weight_decouple=False,
                          clip_lambda=lambda step: (step - 1) ** 0.25),
       make("adopt", 0.05, weight_decay=WD, exclude_bias_norm=True), problem)


@pytest.mark.parametrize("t_alpha_beta3", [None, 10])
def test_ademamix(problem, t_alpha_beta3):
  # betas=(b1, b2, b3), alpha, t_alpha_beta3 (10 < STEPS: the schedules
  # saturate mid-run), decoupled decay ↔ weight_decouple=True.
  _run(f"ademamix(T={t_alpha_beta3}, wd)",
       lambda t: po.AdEMAMix(_groups(t, WD), lr=0.05,
                             betas=(0.9, 0.999, 0.9999), alpha=5.0,
                             t_alpha_beta3=t_alpha_beta3, eps=1e-8,
                             weight_decouple=True),
       make("ademamix", 0.05, weight_decay=WD, t_alpha_beta3=t_alpha_beta3,
            exclude_bias_norm=True),
       problem)


# ---------------------------------------------------------------------------
# Learning-rate-free methods.


def test_prodigy(problem):
  # estim_lr0 ↔ d0 (1e-3 so that 25 steps move); optax always scales the
  # step by √(1−β2^t)/(1−β1^t) ↔ bias_correction=True; β3 = √β2 on both;
  # decoupled decay on every tensor (optax has no mask) ↔ one group,
  # weight_decouple=True.
  _run("prodigy(d0=1e-3, wd)",
       lambda t: po.Prodigy(t.values(), lr=1.0, betas=(0.9, 0.999), d0=1e-3,
                            bias_correction=True, weight_decay=WD,
                            weight_decouple=True, eps=1e-8),
       make("prodigy", 1.0, weight_decay=WD, estim_lr0=1e-3), problem)


def test_dadapt_adamw(problem):
  # estim_lr0 ↔ d0; bias_correction=True as for Prodigy; decoupled decay on
  # every tensor ↔ weight_decouple=True.
  _run("dadapt_adamw(d0=1e-3, wd)",
       lambda t: po.DAdaptAdam(t.values(), lr=1.0, betas=(0.9, 0.999),
                               d0=1e-3, bias_correction=True, weight_decay=WD,
                               weight_decouple=True, eps=1e-8),
       make("dadapt_adamw", 1.0, weight_decay=WD, estim_lr0=1e-3), problem)


def test_madgrad(problem):
  # Same names; coupled decay ↔ weight_decouple=False. Both use lr + ε.
  # optax.contrib.madgrad computes λ_k = (η + ε)√(k+1) in float32 whatever
  # the parameters' precision (jnp.sqrt of the int32 count, times a Python
  # float), a relative ~3e-8 error in λ_k; the step s/∛G scales as λ^⅔:
  # a looser bound of 1e-7 for that documented reason.
  _run("madgrad(wd)",
       lambda t: po.MADGRAD(_groups(t, WD), lr=0.05, momentum=0.9, eps=1e-6,
                            weight_decouple=False),
       make("madgrad", 0.05, weight_decay=WD, exclude_bias_norm=True), problem,
       tol=1e-7)


def _dog_paper(params, grads, steps, r_rel, eps=1e-8, wd=0.0):
  """Ivgi et al. 2023, Algorithm 1 with r_ε = r_rel (1 + ‖x0‖), numpy."""
  x0 = {k: v.copy() for k, v in params.items()}
  x = {k: v.copy() for k, v in params.items()}
  norm = lambda t: np.sqrt(sum(np.sum(v ** 2) for v in t.values()))
  rbar, gsum, out = r_rel * (1.0 + norm(x0)), eps, []
  for step in range(steps):
    g = grads(step, x)
    g = {k: g[k] + wd * x[k] for k in g}
    rbar = max(rbar, norm({k: x[k] - x0[k] for k in x}))
    gsum += norm(g) ** 2
    x = {k: x[k] - rbar / np.sqrt(gsum) * g[k] for k in x}
    out.append({k: v.copy() for k, v in x.items()})
  return out


@pytest.mark.parametrize("wd", [0.0, WD])
def test_dog_against_the_paper(problem, wd):
  # DoG has no pytorch_optimizer counterpart: the always-run check is the
  # paper's Algorithm 1 (η_t = max_i ‖x_i − x0‖ / √(Σ‖g_i‖² + ε)) in numpy.
  # Coupled decay on every tensor (the default), as the authors'
  # weight_decay.
  params, grads = problem
  ours = ref.run_optax(
      make("dog", 1.0, weight_decay=wd, init_step=("heuristic", 1e-4)),
      params, STEPS, grads)
  assert ref.moved(ours, params) > 1e-3
  _check(f"dog(wd={wd}, vs paper Algorithm 1 in numpy)",
         ref.step_errors(ours, _dog_paper(params, grads, STEPS, 1e-4, wd=wd)))


@pytest.mark.parametrize("wd", [0.0, WD])
def test_dog_against_the_authors_package(problem, wd):
  # The authors' dog-optimizer package (a test-only dependency): reps_rel ↔
  # init_step=("heuristic", reps_rel).
  dog = pytest.importorskip("dog")
  _run(f"dog(wd={wd}, vs dog.DoG)",
       lambda t: dog.DoG(t.values(), reps_rel=1e-4, lr=1.0, weight_decay=wd,
                         eps=1e-8),
       make("dog", 1.0, weight_decay=wd, init_step=("heuristic", 1e-4)),
       problem)
