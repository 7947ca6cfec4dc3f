"""The benchmark's plots (matplotlib, PNG), drawn on bare
:class:`matplotlib.figure.Figure` objects (Agg, no pyplot state).

Per run: the primary metric and the validation loss on two y-axes; train vs
validation loss. Per campaign: the primary metric of every optimizer; the
validation loss of every optimizer; the primary metric against what the
runs spent — gradient evaluations plus Hessian-vector products
(:mod:`~optbench_jax.transforms.cost`) and training seconds; with
``--track-sharpness``, each optimizer's sharpness against ``2/η``.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import jax
from matplotlib import ticker
from matplotlib.figure import Figure

from optbench_jax import store


def _epochs(history):
  return [h["epoch"] for h in history]


def _series(history, key):
  return [h.get(key) if h.get(key) is not None else float("nan")
          for h in history]


def run_plot_paths(primary: str, run_dir: str) -> list[str]:
  """The files :func:`run_plots` writes."""
  return [os.path.join(run_dir, f"{primary}_and_val_loss.png"),
          os.path.join(run_dir, "train_vs_val_loss.png")]


def save(fig: Figure, path: str) -> None:
  """Saves atomically (a kill leaves no truncated image)."""
  with store.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=100, format="png")


def run_plots(history: Sequence[dict], primary: str, title: str,
              run_dir: str) -> list[str]:
  if jax.process_index() != 0:  # --distributed: process 0 writes
    return []
  epochs = _epochs(history)
  paths = run_plot_paths(primary, run_dir)
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  ax.plot(epochs, _series(history, primary), "o-", color="tab:blue")
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_ylabel(primary, color="tab:blue")
  twin = ax.twinx()
  twin.plot(epochs, _series(history, "val_loss"), "s--", color="tab:red")
  twin.set_ylabel("validation loss", color="tab:red")
  ax.set_title(title)
  fig.tight_layout()
  save(fig, paths[0])

  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  ax.plot(epochs, _series(history, "train_loss"), "o-", label="train")
  ax.plot(epochs, _series(history, "val_loss"), "s--", label="validation")
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_ylabel("loss")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  save(fig, paths[1])
  return paths


def plot_run(run_dir: str, rc, primary: str,
             history: Sequence[dict]) -> list[str]:
  """:func:`run_plots` of the run ``rc`` (a ``RunConfig``), titled by its
  optimizer, model and dataset."""
  return run_plots(history, primary,
                   f"{rc.optimizer} — {rc.model} on {rc.dataset}", run_dir)


def campaign_plots(histories: Mapping[str, Sequence[dict]], primary: str,
                   title: str, out_dir: str, *,
                   bands: Optional[Mapping[str, Mapping[str, tuple]]] = None
                   ) -> list[str]:
  """The primary metric and the validation loss of every optimizer.

  ``bands``: ``{label: {key: (epochs, low, high)}}``, a shaded band around
  a curve (the report's confidence interval over seeds, ``histories``
  then holding the mean over seeds).
  """
  if jax.process_index() != 0:  # --distributed: process 0 writes
    return []
  paths = []
  for key, label, name in ((primary, primary, f"{primary}_all_optimizers.png"),
                           ("val_loss", "validation loss",
                            "val_loss_all_optimizers.png")):
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for optimizer, history in histories.items():
      line, = ax.plot(_epochs(history), _series(history, key), marker=".",
                      label=optimizer)
      band = (bands or {}).get(optimizer, {}).get(key)
      if band is not None:
        ax.fill_between(*band, color=line.get_color(), alpha=0.2,
                        linewidth=0)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.legend(fontsize="small", ncol=2 if len(histories) > 8 else 1)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, name))
    save(fig, paths[-1])
  if all(_counted(h) for h in histories.values()):
    paths.append(os.path.join(out_dir, f"{primary}_vs_cost.png"))
    save(cost_figure(histories, primary, title), paths[-1])
  if any(h.get("sharpness") is not None for history in histories.values()
         for h in history):
    paths.append(os.path.join(out_dir, "sharpness.png"))
    save(sharpness_figure(histories, title), paths[-1])
  return paths


def sharpness_figure(histories: Mapping[str, Sequence[dict]],
                     title: str) -> Figure:
  """Each optimizer's top Hessian eigenvalue (``--track-sharpness``, solid)
  and ``2/η`` of its learning rate at that epoch (dashed, same colour):
  gradient descent on a quadratic is stable while ``λ_max < 2/η``."""
  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  for optimizer, history in histories.items():
    measured = [h for h in history if h.get("sharpness") is not None]
    if not measured:
      continue
    line, = ax.plot(_epochs(measured), _series(measured, "sharpness"),
                    marker=".", label=optimizer)
    ax.plot(_epochs(measured),
            [2 / h["learning_rate"] if h.get("learning_rate") else
             float("nan") for h in measured], "--", color=line.get_color())
  ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_ylabel("top Hessian eigenvalue (solid); 2/η (dashed)")
  ax.set_title(title)
  ax.legend(fontsize="small", ncol=2 if len(histories) > 8 else 1)
  fig.tight_layout()
  return fig


def _counted(history: Sequence[dict]) -> bool:
  return bool(history) and all(
      h.get(k) is not None for h in history for k in COST_AXES[0][0])


# x-axes of :func:`cost_figure`: the summed cumulative history keys, label.
COST_AXES = ((("grad_evals", "hvps"),
              "gradient evaluations + Hessian-vector products"),
             (("cumulative_train_time_s",),
              "training seconds (compilation excluded)"))


def cost_figure(histories: Mapping[str, Sequence[dict]], primary: str,
                title: str) -> Figure:
  """The primary metric of every optimizer against its cumulative
  evaluations and training seconds (a run trained beside others in one
  program shares that program's seconds)."""
  fig = Figure(figsize=(12, 4.5))
  axes = fig.subplots(1, len(COST_AXES), sharey=True)
  for ax, (keys, label) in zip(axes, COST_AXES):
    for optimizer, history in histories.items():
      spent = [sum(h.get(k) or 0 for k in keys) for h in history]
      ax.plot(spent, _series(history, primary), marker=".", label=optimizer)
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(primary)
  axes[-1].legend(fontsize="small", ncol=2 if len(histories) > 8 else 1)
  fig.suptitle(title)
  fig.tight_layout()
  return fig
