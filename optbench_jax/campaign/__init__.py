"""Campaigns: a plan's runs trained, in parts or whole, and their files.

``runner`` trains a plan's optimizers and rewrites the campaign files
(summary, epochs, seeds, plots) from every finished run on disk;
``dispatch`` splits a set of campaigns into work units (``--shard``, Ray).
This layer sits above ``train`` (the runs) and ``analysis`` (the seed
statistics of ``seeds.csv``).
"""
from optbench_jax.campaign.runner import run_campaign

__all__ = ["run_campaign"]
