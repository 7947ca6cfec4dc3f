"""``python -m optbench_jax analyze``: landscapes and Hessian spectra of
finished runs.

Given a run directory, or any directory above runs (a configuration of a
campaign: one run per optimizer, seed and learning rate), each run is
rebuilt from its checkpoint and metadata (:mod:`.restore`) and analysed at
its final evaluation parameters on a fixed subset of a split:

* ``landscape1d``: the loss along the straight line from the initial to
  the final parameters (and, with ``compare``, from this run's final
  parameters to another run's);
* ``landscape2d``: the loss surface around the final parameters along two
  random filter-normalised directions, with the run's path (initial
  parameters and every kept epoch checkpoint) projected onto the plane;
* ``hessian``: the top eigenvalues, the trace and the spectral density of
  the loss's Hessian.

Each run's results go to ``<run>/analysis/`` (JSON with the numbers and
every setting used, PNG figures); for a directory of several runs the
cross-run figures (every optimizer's 1-D path, every optimizer's density)
go to ``<dir>/analysis/``. Every random draw (directions, probes) comes from
``seed``. :func:`analyze` returns what it computed (:class:`Analysis`: per
run the results and their headline numbers — λ_max, the trace with its
standard error, the barrier of the 1-D path — and where the files went).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Optional, Sequence

import jax
import numpy as np

from optbench_jax import flags, store
from optbench_jax.analysis import directions, figures, hessian, landscape
from optbench_jax.analysis import restore
from optbench_jax.errors import OptBenchError
from optbench_jax.flags import setting

ANALYSES = ("landscape1d", "landscape2d", "hessian")
OUTPUT = store.ANALYSIS


@dataclasses.dataclass(frozen=True)
class Analysed:
  """One analysed run: its label, where its files went (``out_dir``) and
  the results :func:`analyze_run` returned (as written to the JSON
  files), with their headline numbers (None when not computed)."""
  run_dir: str
  label: str
  out_dir: str
  results: dict

  @property
  def lambda_max(self) -> Optional[float]:
    """The Hessian's largest eigenvalue."""
    top = self.results.get("hessian", {}).get("top_eigenvalues") or [None]
    return top[0]

  @property
  def trace(self) -> Optional[tuple[float, float]]:
    """The Hessian's trace and its standard error (Hutchinson)."""
    spectrum = self.results.get("hessian")
    return None if spectrum is None else (spectrum["trace"],
                                          spectrum["trace_stderr"])

  @property
  def barrier(self) -> Optional[float]:
    """The barrier of the initial → final path
    (:func:`~optbench_jax.analysis.landscape.barrier`)."""
    curve = self.results.get("landscape1d", {}).get("curves", {}).get(
        landscape.INITIAL_TO_FINAL)
    return None if curve is None else landscape.barrier(curve["alphas"],
                                                        curve["losses"])


@dataclasses.dataclass(frozen=True)
class Analysis:
  """What :func:`analyze` did: the runs, and the directory of the cross-run
  figures (None for a single run)."""
  runs: list
  shared_dir: Optional[str] = None


def parse_what(text: str) -> list[str]:
  names = [w.strip() for w in text.split(",") if w.strip()]
  unknown = [w for w in names if w not in ANALYSES]
  if unknown or not names:
    raise OptBenchError(f"unknown analysis {', '.join(unknown) or '(none)'}; "
                        f"valid: {', '.join(ANALYSES)} (comma-separated)")
  return list(dict.fromkeys(names))


def _analyses(text: str) -> Optional[str]:
  try:
    parse_what(text)
  except OptBenchError as e:
    return str(e)
  return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Selection:
  """Which runs ``analyze`` analyses, and what: the command's flags that
  are not recorded with the results."""
  run_dir: str = setting(help="a run directory, or a directory above runs "
                         "(every run below it, plus cross-run figures)",
                         check=flags.existing_directory)
  what: str = setting(",".join(ANALYSES), "comma-separated: "
                      f"{', '.join(ANALYSES)} (default: all)",
                      check=_analyses)
  seeds: Optional[Sequence[int]] = setting(
      None, "only the runs of these seeds (comma-separated; default: every "
      "run)", parse=flags.number_list(int, "--seeds"),
      check=flags.each(flags.seed_value))
  compare_run: Optional[str] = setting(
      None, "landscape1d also from the final parameters to this run's (same "
      "task, dataset and model; default: none)",
      check=flags.existing_directory)
  data_dir: Optional[str] = setting(
      None, "where the run's dataset cache lives (default: the data "
      "libraries' own caches, as run's --data-dir)", check=flags.directory)
  offline: bool = setting(
      False, "never download: a dataset or checkpoint missing from the "
      "local cache is an error (as run's --offline)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
  """What ``analyze`` computes and on which data (recorded with each
  result); every field is a flag, checked by :func:`check`."""
  split: str = setting("train", "the split whose first --samples examples "
                       "define the loss",
                       choices=lambda: restore.SPLITS)
  samples: int = setting(1024, "examples in the fixed evaluation subset",
                         check=flags.at_least(1))
  bn: str = setting("running", "batch norm: the final running statistics "
                    "(eval mode) or each batch's own",
                    choices=lambda: restore.BN_MODES)
  points_1d: int = setting(landscape.INTERPOLATION_POINTS,
                           "points on the 1-D path", check=flags.at_least(2))
  points_2d: int = setting(21, "grid points per axis of the surface",
                           check=flags.at_least(2))
  span: float = setting(landscape.SURFACE_SPAN, "the surface covers "
                        "[-span, span]² in units of the filter-normalised "
                        "directions", check=flags.positive_finite)
  top_k: int = setting(5, "top Hessian eigenvalues", check=flags.at_least(1))
  top_iterations: int = setting(
      hessian.TOP_ITERATIONS, "Lanczos iterations of the top eigenvalues "
      "(at least --top-k)", check=flags.at_least(1))
  iterations: int = setting(hessian.SLQ_ITERATIONS, "Lanczos iterations per "
                            "spectral-density probe", check=flags.at_least(1))
  probes: int = setting(hessian.SLQ_PROBES, "stochastic Lanczos quadrature "
                        "probes", check=flags.at_least(1))
  trace_probes: int = setting(
      hessian.TRACE_PROBES, "Hutchinson probes of the trace (at least 2: "
      "its standard error)", check=flags.at_least(2))
  seed: int = setting(0, "seed of directions and probes",
                      check=flags.seed_value)
  batch_size: Optional[int] = setting(
      None, "evaluation batch size (default: the run's evaluation batch "
      "size)", check=flags.at_least(1))


def check(selection: Selection, options: Options) -> None:
  """``analyze``'s flags, pure (one-line errors naming the flag), before
  any run is loaded."""
  flags.check(selection)
  flags.check(options)
  if options.top_iterations < options.top_k:
    raise OptBenchError(f"--top-iterations {options.top_iterations} is "
                        f"smaller than --top-k {options.top_k}: Lanczos "
                        f"gives at most one eigenvalue per iteration")


def find_runs(directory: str, seeds: Optional[Sequence[int]] = None
              ) -> list[str]:
  """``directory`` itself if it is a run, else every run below it
  (``store.find_runs``); only runs of ``seeds`` when given."""
  if not os.path.isdir(directory):
    raise OptBenchError(f"--run-dir {directory}: no such directory")
  found = [d for d in store.find_runs(directory, flag="--run-dir")
           if store.is_run_dir(d)]
  if not found:
    raise OptBenchError(f"--run-dir {directory} holds no run (no "
                        f"{store.METADATA} below it)")
  if seeds is not None:
    found = [d for d in found if store.read_run(d).metadata.get("seed")
             in set(seeds)]
    if not found:
      raise OptBenchError(f"{directory} holds no run of seed(s) "
                          f"{', '.join(map(str, seeds))}")
  return found


def _finite_list(values) -> list:
  return [float(v) if math.isfinite(float(v)) else None
          for v in np.asarray(values, np.float64).ravel()]


def _grid(values) -> list:
  return [_finite_list(row) for row in np.asarray(values, np.float64)]


def _keys(seed: int):
  """Independent keys of the analyses (never one key for two draws)."""
  k2d, k_top, k_trace, k_density = jax.random.split(jax.random.key(seed), 4)
  return {"landscape2d": k2d, "top": k_top, "trace": k_trace,
          "density": k_density}


def _settings(run: restore.Run, options: Options) -> dict:
  return {"run_dir": run.run_dir, "optimizer": run.config.optimizer,
          "learning_rate": run.config.learning_rate, "seed": run.config.seed,
          **dataclasses.asdict(options)}


def analyze_run(run: restore.Run, what: Sequence[str], options: Options,
                compare: Optional[restore.Run] = None,
                out_dir: Optional[str] = None) -> dict:
  """Runs the analyses ``what`` on one run; returns their results (also
  written to ``out_dir``, default ``<run>/analysis``)."""
  out_dir = out_dir or os.path.join(run.run_dir, OUTPUT)
  store.remove_partial_writes(out_dir)  # what a killed analyze left
  state = run.state()
  final = run.eval_params(state)
  loss_fn = jax.jit(run.loss_function(
      state.model_state, split=options.split, samples=options.samples,
      batch_size=options.batch_size, bn=options.bn))
  keys = _keys(options.seed)
  title = f"{run.config.model} on {run.config.dataset}: {run.label}"
  results = {}

  if "landscape1d" in what:
    t0 = time.perf_counter()
    curves = {landscape.INITIAL_TO_FINAL: landscape.interpolate(
        loss_fn, run.initial_params(), final, points=options.points_1d)}
    if compare is not None:
      curves[f"final → {compare.config.optimizer} final"] = (
          landscape.interpolate(loss_fn, final, compare.final_params(),
                                points=options.points_1d))
    result = {"settings": _settings(run, options), "curves": {
        label: {"alphas": _finite_list(a), "losses": _finite_list(l)}
        for label, (a, l) in curves.items()},
              "seconds": time.perf_counter() - t0}
    store.write_json(os.path.join(out_dir, "landscape1d.json"), result)
    figures.plot_interpolation(
        curves, os.path.join(out_dir, "landscape1d.png"), title=title)
    results["landscape1d"] = result

  if "landscape2d" in what:
    t0 = time.perf_counter()
    d1, d2 = directions.random_directions(keys["landscape2d"], final, n=2)
    epochs, path = run.trajectory()
    projection = landscape.project_trajectory(path, final, d1, d2)
    moved = np.asarray(projection.residual)[[
        any(np.any(a != b) for a, b in zip(jax.tree.leaves(p),
                                           jax.tree.leaves(final)))
        for p in path]]
    results["landscape2d"] = _surface(
        "landscape2d", out_dir, run, options, t0, loss_fn, final, (d1, d2),
        projection.coords, epochs,
        f"{title}\nrandom filter-normalised plane (the path lies "
        f"{100 * (moved.mean() if moved.size else 0):.0f} % off it)",
        span=options.span, off_plane=_finite_list(projection.residual))
    if len(path) >= 3:
      t0 = time.perf_counter()
      pca = directions.pca_directions(path, final)
      coords = landscape.project_trajectory(path, final, pca.d1,
                                            pca.d2).coords
      results["landscape2d_pca"] = _surface(
          "landscape2d_pca", out_dir, run, options, t0, loss_fn, final,
          (pca.d1, pca.d2), coords, epochs,
          f"{title}\nplane of the path's principal directions "
          f"({100 * pca.explained.sum():.0f} % of its squared length)",
          axes=[_covering(column, options.points_2d)
                for column in np.asarray(coords).T],
          explained=_finite_list(pca.explained))

  if "hessian" in what:
    t0 = time.perf_counter()
    top = hessian.top_eigenvalues(loss_fn, final, options.top_k, keys["top"],
                                  iterations=options.top_iterations)
    tr, stderr = hessian.trace(loss_fn, final, keys["trace"],
                               probes=options.trace_probes,
                               return_stderr=True)
    grid, density = hessian.spectral_density(
        loss_fn, final, keys["density"], iterations=options.iterations,
        probes=options.probes)
    result = {"settings": _settings(run, options),
              "top_eigenvalues": _finite_list(top),
              "trace": float(tr), "trace_stderr": float(stderr),
              "density": {"grid": _finite_list(grid),
                          "density": _finite_list(density)},
              "seconds": time.perf_counter() - t0}
    store.write_json(os.path.join(out_dir, "hessian.json"), result)
    figures.plot_densities({run.label: (grid, density)},
                           os.path.join(out_dir, "hessian_density.png"),
                           title=title)
    results["hessian"] = result
  return results


def _covering(values, points: int):
  """A grid over ``values`` and 0 with a 20 % margin, containing 0."""
  lo, hi = min(values.min(), 0.0), max(values.max(), 0.0)
  margin = 0.2 * max(hi - lo, 1e-12)
  return landscape.grid((lo - margin, hi + margin), points, (0.0,), "range")


def _surface(name: str, out_dir: str, run: restore.Run, options: Options,
             t0: float, loss_fn, center, plane, coords, epochs, title,
             *, span=None, axes=None, **extra) -> dict:
  """One plane's surface (``plane``: its two directions): computed on
  ``axes`` (or ``span``), written as
  ``<name>.json`` and ``<name>.png`` with the path drawn on it."""
  xs, ys = axes if axes is not None else (None, None)
  xs, ys, losses = landscape.surface(
      loss_fn, center, *plane, xs=xs, ys=ys,
      span=span if span is not None else options.span,
      points=options.points_2d)
  coords = np.asarray(coords)
  result = {"settings": _settings(run, options), "xs": _finite_list(xs),
            "ys": _finite_list(ys), "losses": _grid(losses),
            "trajectory": {"epochs": epochs, "xy": _grid(coords)}, **extra,
            "seconds": time.perf_counter() - t0}
  store.write_json(os.path.join(out_dir, f"{name}.json"), result)
  figures.plot_surface(xs, ys, losses, os.path.join(out_dir, f"{name}.png"),
                       trajectory=coords, title=title)
  return result


def analyze(selection: Selection, options: Options, *, log=print
            ) -> Analysis:
  """The ``analyze`` command: every run ``selection`` names, analysed as
  ``options`` say (both checked first, before any run is loaded); returns
  the results and where they went."""
  check(selection, options)
  what, directory = parse_what(selection.what), selection.run_dir
  compare, data_dir = selection.compare_run, selection.data_dir
  run_dirs = find_runs(directory, selection.seeds)
  other = (restore.load_run(compare, data_dir=data_dir,
                            offline=selection.offline)
           if compare is not None else None)
  analysed, per_run = [], {}
  for run_dir in run_dirs:
    run = restore.load_run(run_dir, data_dir=data_dir,
                           offline=selection.offline)
    if other is not None and (other.config.task, other.config.dataset,
                              other.config.model) != (
        run.config.task, run.config.dataset, run.config.model):
      raise OptBenchError("--compare-run must be a run of the same task, "
                          "dataset and model")
    log(f"analysing {run_dir} ({', '.join(what)})")
    per_run[run.label] = analyze_run(run, what, options, compare=other)
    analysed.append(Analysed(run.run_dir, run.label,
                             os.path.join(run.run_dir, OUTPUT),
                             per_run[run.label]))
  shared = (_cross_run_figures(directory, per_run) if len(run_dirs) > 1
            else None)
  return Analysis(analysed, shared)


def _curve(result: dict, label: str):
  values = result["curves"][label]
  return (np.asarray(values["alphas"], float),
          np.asarray([np.nan if v is None else v for v in values["losses"]]))


def _cross_run_figures(directory: str, per_run: dict) -> str:
  out_dir = os.path.join(directory, OUTPUT)
  store.remove_partial_writes(out_dir)
  paths = [r for r in per_run.values() if "landscape1d" in r]
  if paths:
    figures.plot_interpolation(
        {label: _curve(r["landscape1d"], landscape.INITIAL_TO_FINAL)
         for label, r in per_run.items() if "landscape1d" in r},
        os.path.join(out_dir, "landscape1d_all_runs.png"),
        title="initial → final parameters")
  densities = {label: (np.asarray(r["hessian"]["density"]["grid"], float),
                       np.asarray(r["hessian"]["density"]["density"], float))
               for label, r in per_run.items() if "hessian" in r}
  if densities:
    figures.plot_densities(densities,
                           os.path.join(out_dir, "hessian_density_all_runs.png"),
                           title="Hessian eigenvalue density")
  return out_dir
