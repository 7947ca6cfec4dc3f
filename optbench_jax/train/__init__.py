"""Training: the compiled program (``program``, ``epoch``, ``state``,
``evaluation``, ``optimizer``, ...) and the host's side of runs (settings,
the plan, ``run``, ``resume``, checkpoints, plots). Task- and
optimizer-agnostic; campaigns of runs are ``optbench_jax.campaign``."""
from optbench_jax.train.plan import Plan, make_plan, plan_runs
from optbench_jax.train.program import Hyper, Program, TrainState
from optbench_jax.train.run import run_one, train_runs
from optbench_jax.train.settings import CampaignConfig, RunConfig

__all__ = ["CampaignConfig", "Hyper", "Plan", "Program", "RunConfig",
           "TrainState", "make_plan", "plan_runs", "run_one", "train_runs"]
