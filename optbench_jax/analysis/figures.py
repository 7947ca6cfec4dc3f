"""The figures of the analyses, drawn on bare ``matplotlib.figure.Figure``
objects (Agg, no pyplot state) and saved atomically through the run store:

* :func:`plot_interpolation`: 1-D loss curves (``landscape.interpolate``);
* :func:`plot_surface`: a 2-D surface with the projected trajectory
  (``landscape.surface``, ``landscape.project_trajectory``);
* :func:`plot_densities`: Hessian eigenvalue densities
  (``hessian.spectral_density``).

Non-finite losses (diverging regions) are masked.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import numpy as np
from matplotlib import colors, patches, ticker
from matplotlib.figure import Figure

from optbench_jax import store
from optbench_jax.errors import OptBenchError


def _save(fig: Figure, path: str) -> None:
  """Saves atomically (a kill leaves no truncated image). The figures are
  bare :class:`matplotlib.figure.Figure` objects: Agg, no pyplot state."""
  with store.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110, format="png")


def _log_scale(values: np.ndarray, decades: float = 2.0) -> bool:
  """True when the finite values are all positive and span ≥ ``decades``."""
  finite = values[np.isfinite(values)]
  return bool(finite.size and finite.min() > 0
              and finite.max() / finite.min() >= 10**decades)


def plot_interpolation(curves: Mapping[str, tuple[Any, Any]], path: str,
                       title: Optional[str] = None, *,
                       endpoints: tuple[str, str] = ("α = 0", "α = 1"),
                       ylabel: str = "loss") -> str:
  """Draws 1-D interpolation curves (:func:`interpolate`) into one PNG.

  Args:
    curves: ``{label: (alphas, losses)}``, e.g. one curve per optimizer from
      its initial to its final parameters, or one between two optimizers.
    path: the PNG file.
    title: the figure's title.
    endpoints: names of the dashed lines at α = 0 and α = 1 (e.g.
      ``("init", "final")`` or two optimizers' names).
    ylabel: the y-axis label.

  Non-finite losses are left out (gaps in the curve); the y-axis is
  logarithmic when the finite losses are positive and span two decades or
  more.

  Returns:
    ``path``.
  """
  if not curves:
    raise OptBenchError("plot_interpolation needs at least one curve")
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.subplots()
  every = []
  for label, (alphas, losses) in curves.items():
    alphas = np.asarray(alphas, np.float64)
    losses = np.asarray(losses, np.float64)
    if alphas.shape != losses.shape or alphas.ndim != 1:
      raise OptBenchError(f"curve {label!r}: alphas {alphas.shape} and "
                          f"losses {losses.shape} must be equal 1-D shapes")
    every.append(losses)
    ax.plot(alphas, np.ma.masked_invalid(losses), marker=".", markersize=4,
            label=label)
  every = np.concatenate(every)
  if _log_scale(every):
    ax.set_yscale("log")
  for alpha, name in zip((0.0, 1.0), endpoints):
    ax.axvline(alpha, color="grey", linestyle="--", linewidth=0.8)
    ax.annotate(name, (alpha, 1.0), xycoords=("data", "axes fraction"),
                xytext=(3, -12), textcoords="offset points", fontsize="small",
                color="dimgrey")
  ax.set_xlabel("α   (θ = (1 − α) θ₀ + α θ₁)")
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small", ncol=2 if len(curves) > 6 else 1)
  fig.tight_layout()
  _save(fig, path)
  return path


def plot_surface(xs: Any, ys: Any, losses: Any, path: str, *,
                 trajectory: Optional[Any] = None,
                 title: Optional[str] = None, log: Optional[bool] = None,
                 levels: int = 30) -> str:
  """Draws a :func:`surface` as filled contours with contour lines.

  Args:
    xs, ys: the grid coordinates ``[nx]``, ``[ny]``.
    losses: ``[ny, nx]``.
    path: the PNG file.
    trajectory: optional ``[n, 2]`` plane coordinates of checkpoints
      (:func:`project_trajectory`'s ``coords``), drawn in order with a marker
      per checkpoint; the first is ringed. The axes show the grid only:
      choose the surface's ``span`` to cover the trajectory.
    title: the figure's title.
    log: colour by ``log10(loss)``; default when the finite losses are
      positive and span two decades or more.
    levels: the number of filled contour levels.

  Non-finite losses (a diverging region) are masked and left grey. The
  center (0, 0) is marked with a star.

  Returns:
    ``path``.
  """
  xs = np.asarray(xs, np.float64)
  ys = np.asarray(ys, np.float64)
  z = np.asarray(losses, np.float64)
  if xs.ndim != 1 or ys.ndim != 1 or z.shape != (len(ys), len(xs)):
    raise OptBenchError(f"losses must have shape (len(ys), len(xs)) = "
                        f"({len(np.atleast_1d(ys))}, {len(np.atleast_1d(xs))})"
                        f", got {z.shape}")
  if log is None:
    log = _log_scale(z)
  finite = np.isfinite(z) & ((z > 0) if log else True)
  fig = Figure(figsize=(6.4, 5.6))
  ax = fig.subplots()
  ax.set_facecolor("lightgrey")
  if finite.sum() >= 2 and np.ptp(z[finite]) > 0:
    shown = np.log10(np.where(finite, z, 1.0)) if log else z
    shown = np.ma.masked_array(shown, ~finite)
    bounds = ticker.MaxNLocator(nbins=levels).tick_values(shown.min(),
                                                          shown.max())
    filled = ax.contourf(xs, ys, shown, levels=bounds, cmap="viridis")
    lines = ax.contour(xs, ys, shown, levels=bounds[::3], colors="white",
                       linewidths=0.6, alpha=0.8,
                       negative_linestyles="solid")
    ax.clabel(lines, lines.levels[::2], fontsize=7, fmt="%.3g")
    bar = fig.colorbar(filled, ax=ax)
    bar.set_label("log₁₀ loss" if log else "loss")
  elif finite.any():
    ax.pcolormesh(xs, ys, np.ma.masked_array(z, ~finite), shading="nearest",
                  norm=colors.Normalize(), cmap="viridis")
  ax.plot([0.0], [0.0], marker="*", markersize=14, color="red",
          markeredgecolor="black", linestyle="none", label="θ*")
  if trajectory is not None:
    t = np.asarray(trajectory, np.float64)
    if t.ndim != 2 or t.shape[1] != 2:
      raise OptBenchError(f"trajectory must have shape (n, 2), got {t.shape}")
    ax.plot(t[:, 0], t[:, 1], marker="o", markersize=4, color="orangered",
            markeredgecolor="black", linewidth=1.2, label="checkpoints")
    ax.plot(t[:1, 0], t[:1, 1], marker="o", markersize=10,
            markerfacecolor="none", markeredgecolor="orangered",
            linestyle="none", label="first checkpoint")
  handles, _ = ax.get_legend_handles_labels()
  if not finite.all():
    label = ("non-finite loss" if np.all(finite | ~np.isfinite(z))
             else "non-finite or ≤ 0 loss")
    handles.append(patches.Patch(color="lightgrey", label=label))
  ax.set_xlim(xs.min(), xs.max())
  ax.set_ylim(ys.min(), ys.max())
  ax.set_xlabel("x  (along d₁)")
  ax.set_ylabel("y  (along d₂)")
  if title:
    ax.set_title(title)
  ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13),
            ncol=len(handles), fontsize="small", frameon=False)
  fig.tight_layout()
  _save(fig, path)
  return path


def plot_densities(densities: Mapping[str, Tuple[Any, Any]], path: str, *,
                   title: Optional[str] = None, overlay: bool = False,
                   floor: float = 1e-7) -> str:
  """Writes a PNG of eigenvalue densities, one panel per name (optimizer).

  Args:
    densities: ``{name: (grid, density)}``, e.g. from
      :func:`spectral_density`.
    path: the PNG to write (atomically).
    title: the figure's title.
    overlay: all densities in one panel instead of one panel each.
    floor: the log-scale y axis starts at ``floor`` times the largest
      density (the Gaussian tails would otherwise reach 1e-300).

  Returns:
    ``path``.
  """
  if not densities:
    raise OptBenchError("plot_densities needs at least one density.")
  if not 0 < floor < 1:
    raise OptBenchError(f"floor must lie in (0, 1), got {floor}.")
  curves = {}
  for name, pair in densities.items():
    grid, density = (np.asarray(a, np.float64) for a in pair)
    if grid.ndim != 1 or grid.shape != density.shape:
      raise OptBenchError(f"density {name!r}: grid {grid.shape} and density "
                          f"{density.shape} must be 1-D of the same length.")
    if not np.all(np.isfinite(density)) or not density.max() > 0:
      raise OptBenchError(f"density {name!r} is not finite and positive.")
    curves[name] = grid, density
  panels = 1 if overlay else len(curves)
  columns = min(panels, 3)
  rows = -(-panels // columns)
  size = (7, 4.5) if overlay else (4.5 * columns + 0.5, 3.4 * rows + 0.6)
  fig = Figure(figsize=size)
  axes = fig.subplots(rows, columns, squeeze=False)
  top = max(d.max() for _, d in curves.values())
  for i, (name, (grid, density)) in enumerate(curves.items()):
    ax = axes.flat[0 if overlay else i]
    ax.semilogy(grid, np.maximum(density, floor * top), label=name, lw=1.2)
  for ax in list(axes.flat)[:panels]:
    ax.set_ylim(floor * top, 2 * top)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.grid(True, which="major", alpha=0.3)
  if overlay:
    axes.flat[0].legend()
  else:
    for ax, name in zip(axes.flat, curves):
      ax.set_title(name)
  for ax in list(axes.flat)[panels:]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  with store.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  return path
