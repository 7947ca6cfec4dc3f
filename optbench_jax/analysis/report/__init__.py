"""The campaign report: Markdown, the same tables as CSV and LaTeX, figures.

:func:`write_report` rebuilds everything from the per-run files
(``run_metadata.json`` + ``history.json``, read through
:mod:`optbench_jax.store`) it finds anywhere under the campaign directory —
the output root with many configurations, one configuration, or a tree
merged from ``--shard`` parts — never from the campaign's aggregate files
(``summary.csv``, ``seeds.csv``), which a shard writes for its own part
only. It writes into ``<campaign_dir>/report/``:

* ``report.md``: what was run (configurations, optimizers, seeds, epochs,
  devices, versions), the statistical methods, per configuration the
  cross-optimizer table in the source benchmark's layout (optimizer, best
  primary metric, best validation loss, convergence epoch, time to
  convergence, total time; mean ± confidence interval over seeds), test
  metrics, training curves and pairwise comparisons; the ranking across
  configurations; performance profiles and time-to-target curves; diverged
  and unfinished runs. Links are relative: the folder can be moved.
* ``tables/**/*.csv`` (full precision) and ``tables/**/*.tex`` (booktabs).
* ``figures/``: per configuration the cross-optimizer primary metric and
  validation loss (mean over seeds with a shaded confidence band), per
  optimizer the dual-axis metric / validation-loss plot and the train vs
  validation loss plot of the mean over seeds
  (:func:`optbench_jax.train.plots.run_plots`), copies of the runs' own
  analysis figures (``<run>/analysis/*.png``), and across the campaign the
  performance profiles and time-to-target curves.

Statistics over seeds use the completed runs; a diverged run is counted and
listed as diverged, an unfinished one (no final status, or a history shorter
than ``epochs_run``) as unfinished. Methods:
:mod:`optbench_jax.analysis.statistics`; the convergence rule:
:mod:`optbench_jax.train.outputs`.

One module per job: :mod:`.runs` (runs with their summary rows, grouped
into configurations), :mod:`.options` (the statistical choices),
:mod:`.tables` (per-configuration and campaign tables), :mod:`.ranking`
(comparisons across configurations), :mod:`.render` (Markdown, LaTeX and
CSV of a table), :mod:`.figures`, :mod:`.document` (``report.md``).
"""
from optbench_jax.analysis.report.document import write_report
from optbench_jax.analysis.report.options import Options

__all__ = ["Options", "write_report"]
