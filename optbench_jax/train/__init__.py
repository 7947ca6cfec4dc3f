"""The host's side of runs: settings, the plan, ``run`` (chunks of runs
through a compiled program, files), ``resume``, checkpoints, metadata and
plots. What is compiled is :mod:`optbench_jax.engine`; campaigns of runs
are :mod:`optbench_jax.campaign`; the files' format is
:mod:`optbench_jax.store`."""
from optbench_jax.train.plan import Plan, make_plan, plan_runs
from optbench_jax.engine.program import Hyper, Program, TrainState
from optbench_jax.train.run import run_one, train_runs
from optbench_jax.train.settings import CampaignConfig, RunConfig

__all__ = ["CampaignConfig", "Hyper", "Plan", "Program", "RunConfig",
           "TrainState", "make_plan", "plan_runs", "run_one", "train_runs"]
