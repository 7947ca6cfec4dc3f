"""Analyses of trained runs: loss landscapes, Hessian spectra, statistics
across seeds and campaigns, and reports.

Each module works from Python on plain functions and pytrees
(``loss_fn(params) -> scalar``); ``restore`` rebuilds a finished run's model,
data and parameters from its directory for ``python -m optbench_jax
analyze``.
"""
