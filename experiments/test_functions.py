"""Trajectories of the registered optimizers on 2-D test functions.

Runs every optimizer of ``optbench_jax.transforms.available()`` (or those
named by ``--optimizers``) from each function's start point for ``--steps``
steps and draws the trajectories on contour plots, one PNG per function (a
grid with one panel per optimizer), ``<function>.json`` with every run
and its trajectory, and ``summary.json`` with each run's final value,
distance to the nearest global minimiser and status::

  python experiments/test_functions.py --list
  python experiments/test_functions.py --steps 300 \\
      --functions rosenbrock,beale,shubert --optimizers adam,sgd,shampoo \\
      --output-dir results/test_functions

Like the other scripts it resumes by default: run again into the same
``--output-dir``, it keeps the runs recorded in ``<function>.json`` and
computes the missing ones (other settings are refused; ``--no-resume``
computes every run again). Bad input prints one line and exits with status
2 before anything is computed.

Extras are supplied exactly as the training engine does
(``transforms.build_extras`` with the function as the "mini-batch loss", a
fresh PRNG key per step). Optimizers whose needs a 2-D function cannot meet
are handled honestly:

* ``kfac_stats`` (K-FAC) needs Dense/Conv layer statistics; a function of a
  point has no layers, so those optimizers are skipped, with the reason in
  their panel and in the summary.
* ``full_grad`` (SVRG-like snapshots): the function is deterministic, so the
  "full-data gradient" is its exact gradient; the optimizer's
  ``epoch_start`` hook receives it every ``--epoch-steps`` steps (an "epoch").

The learning rate is each optimizer's registry default unless
``--learning-rate`` is given: those defaults are tuned for networks, and
several optimizers diverge on Rosenbrock's steep walls with them (or barely
move in a few hundred steps). ``--tune-lr`` runs each optimizer at its default
times 0.01, 0.1, 1, 10 and 100 and keeps the lowest final value (five runs
per panel; the panel's title shows the learning rate kept). A run that
produces a non-finite point or leaves the plot by more than 100 times its size
is stopped and marked "diverged". The point drawn is the one the optimizer
would be evaluated at (``prepare_for_eval``: Schedule-Free's average,
Lookahead's slow weights), otherwise the iterate.

The script exits with status 1 if any optimizer raised an error (it is
reported and the other optimizers still run).
"""
import dataclasses
import functools
import math
import os
import sys
import traceback
from typing import Optional

import matplotlib.colors
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

import jax
import jax.numpy as jnp
import optax

from optbench_jax import flags, store, transforms
from optbench_jax.errors import OptBenchError
from optbench_jax.flags import setting
from optbench_jax.transforms import test_functions

TUNING_FACTORS = (0.01, 0.1, 1.0, 10.0, 100.0)
UNMET_NEEDS = {
    "kfac_stats": "needs per-layer statistics (kfac_stats) of Dense/Conv "
                  "layers; a 2-D function has no layers",
}


def run_optimizer(name: str, function: test_functions.Function2D, steps: int,
                  learning_rate: float | None = None, epoch_steps: int = 10,
                  seed: int = 0) -> dict:
  """Runs one optimizer; returns its trajectory and status."""
  spec = transforms.get(name)
  lr = spec.default_lr if learning_rate is None else learning_rate
  unmet = [UNMET_NEEDS[n] for n in sorted(spec.needs) if n in UNMET_NEEDS]
  if unmet:
    return {"status": "skipped", "reason": "; ".join(unmet),
            "learning_rate": lr, "trajectory": []}

  tx = transforms.make(name, learning_rate=lr)
  needs = tuple(n for n in sorted(spec.needs) if n != "full_grad")
  loss_fn = lambda p: (function.fn(p), None)
  eval_point = spec.prepare_for_eval or (lambda params, state: params)
  key = jax.random.PRNGKey(seed)

  @functools.partial(jax.jit, static_argnums=3)
  def run_chunk(params, state, first_step, length):
    def step(carry, t):
      params, state = carry
      value, grad = jax.value_and_grad(function.fn)(params)
      extras = transforms.build_extras(
          needs, loss_fn, value=value, key=jax.random.fold_in(key, t),
          params=params)
      updates, state = tx.update(grad, state, params, **extras)
      params = optax.apply_updates(params, updates)
      return (params, state), eval_point(params, state)
    (params, state), points = jax.lax.scan(
        step, (params, state), first_step + jnp.arange(length))
    return params, state, points

  params = jnp.asarray(function.start, jnp.float32)
  state = tx.init(params)
  (x0, x1), (y0, y1) = function.domain
  limit = 100 * max(x1 - x0, y1 - y0)
  # Optimizers with an epoch hook run epoch by epoch, the others in one scan.
  chunk = epoch_steps if "full_grad" in spec.needs else steps
  trajectory = [np.asarray(params, np.float64)[None]]
  status, t = "ok", 0
  while t < steps:
    length = min(chunk, steps - t)
    if "full_grad" in spec.needs:
      state = spec.epoch_start(state, params, jax.grad(function.fn)(params))
    params, state, points = run_chunk(params, state, t, length)
    points = np.asarray(points, np.float64)
    bad = ~np.all(np.isfinite(points), axis=1) | (
        np.max(np.abs(np.nan_to_num(points, nan=np.inf)), axis=1) > limit)
    if bad.any():
      first_bad = int(np.argmax(bad))
      trajectory.append(points[:first_bad])
      status = f"diverged at step {t + first_bad + 1}"
      break
    trajectory.append(points)
    t += length
  trajectory = np.concatenate(trajectory)
  last = trajectory[-1]
  final = float(function.fn(jnp.asarray(last)))
  distance = min(math.dist(last, m) for m in function.minimizers)
  return {"status": status, "learning_rate": lr, "final_value": final,
          "distance_to_minimizer": distance, "steps_run": len(trajectory) - 1,
          "trajectory": trajectory.tolist()}


def tune_and_run(name: str, function: test_functions.Function2D, steps: int,
                 epoch_steps: int = 10, seed: int = 0,
                 factors=TUNING_FACTORS) -> dict:
  """Runs ``name`` at its default learning rate times each of ``factors``.

  Returns the run with the lowest final value among those that did not
  diverge (the default's run if all diverged), with ``tried`` listing every
  learning rate and its final value or status.
  """
  default = transforms.get(name).default_lr
  first = run_optimizer(name, function, steps, default, epoch_steps, seed)
  if first["status"] == "skipped":
    return first
  runs = [first if f == 1.0 else
          run_optimizer(name, function, steps, default * f, epoch_steps, seed)
          for f in factors]
  ok = [r for r in runs if r["status"] == "ok"]
  best = (min(ok, key=lambda r: r["final_value"]) if ok
          else runs[list(factors).index(1.0)])
  best = dict(best)
  best["tried"] = {f"{r['learning_rate']:g}": (
      r["final_value"] if r["status"] == "ok" else r["status"]) for r in runs}
  return best


def _grid(function: test_functions.Function2D, n: int = 300):
  (x0, x1), (y0, y1) = function.domain
  xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
  xx, yy = np.meshgrid(xs, ys)
  points = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], axis=1))
  zz = np.asarray(jax.vmap(function.fn)(points)).reshape(xx.shape)
  if function.log_levels:
    shifted = zz - function.minimum
    low = max(float(np.min(shifted[shifted > 0])), 1e-3)
    levels = np.logspace(math.log10(low), math.log10(float(shifted.max())),
                         25)
    return xx, yy, shifted, levels
  return xx, yy, zz, 30


def plot_function(function: test_functions.Function2D, results: dict,
                  path: str, steps: int) -> None:
  """One panel per optimizer: contours, trajectory, start and minima."""
  xx, yy, zz, levels = _grid(function)
  norm = (matplotlib.colors.LogNorm(vmin=levels[0], vmax=levels[-1])
          if function.log_levels else None)
  names = list(results)
  ncols = min(len(names), 5)
  nrows = math.ceil(len(names) / ncols)
  fig = Figure(figsize=(3.4 * ncols + 1.0, 3.4 * nrows + 0.6),
               layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False)
  (x0, x1), (y0, y1) = function.domain
  minima = [m for m in function.minimizers
            if x0 <= m[0] <= x1 and y0 <= m[1] <= y1]
  for ax in axes.ravel()[len(names):]:
    ax.axis("off")
  for ax, name in zip(axes.ravel(), names):
    result = results[name]
    filled = ax.contourf(xx, yy, zz, levels=levels, cmap="viridis",
                         alpha=0.85, norm=norm)
    ax.contour(xx, yy, zz, levels=levels, colors="white", linewidths=0.3,
               alpha=0.5, norm=norm)
    ax.plot(*zip(*minima), "*", color="gold", markeredgecolor="black",
            markersize=12, zorder=3)
    ax.plot(*function.start, "o", color="black", markersize=5, zorder=3)
    if result["trajectory"]:
      path_xy = np.asarray(result["trajectory"])
      ax.plot(path_xy[:, 0], path_xy[:, 1], "-", color="red", linewidth=1.5,
              zorder=2)
      ax.plot(path_xy[-1, 0], path_xy[-1, 1], "o", color="red",
              markersize=4, zorder=3)
    if result["status"] == "ok":
      subtitle = f"f = {result['final_value']:.3g}"
      last_x, last_y = result["trajectory"][-1]
      if not (x0 <= last_x <= x1 and y0 <= last_y <= y1):
        subtitle += " (ends off the plot)"
    elif result["status"] == "skipped":
      subtitle = "skipped"
      ax.text(0.5, 0.5, "skipped:\n" + _wrap(result["reason"], 30),
              transform=ax.transAxes, ha="center", va="center", fontsize=7,
              bbox={"facecolor": "white", "alpha": 0.85})
    else:
      subtitle = result["status"]
    ax.set_title(f"{name} (lr {result['learning_rate']:g})\n{subtitle}",
                 fontsize=9)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.tick_params(labelsize=7)
  label = ("f(x, y) − min f" if function.log_levels else "f(x, y)")
  ticks = (matplotlib.ticker.LogLocator() if function.log_levels else None)
  fig.colorbar(filled, ax=axes, shrink=0.5, label=label, ticks=ticks)
  fig.suptitle(f"{function.name}: {steps} steps from {function.start} "
               "(black dot); ★ global minima; red: trajectory", fontsize=12)
  fig.savefig(path, dpi=100)


def _wrap(text: str, width: int) -> str:
  words, lines, line = text.split(), [], ""
  for word in words:
    if line and len(line) + 1 + len(word) > width:
      lines.append(line)
      line = word
    else:
      line = f"{line} {word}".strip()
  return "\n".join(lines + [line])


def _optimizer_names(text: str) -> Optional[str]:
  unknown = [n for n in _names(text) if n not in transforms.available()]
  if unknown:
    return (f"names unknown optimizer(s) {', '.join(unknown)} (see "
            f"python -m optbench_jax list)")
  return None


def _function_names(text: str) -> Optional[str]:
  try:
    if not [test_functions.get(f) for f in _names(text)]:
      return "is empty"
  except OptBenchError as e:
    return str(e)
  return None


def _names(text: str) -> list[str]:
  return [n.strip() for n in text.split(",") if n.strip()]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
  """This script's flags; of the experiment scripts' shared flags
  (``experiment.Shared``) those that apply to a run that is not a campaign:
  ``--optimizers``, ``--output-dir``, ``--resume``, ``--quiet``,
  ``--list``."""
  optimizers: str = setting("all", "'all' (every registered optimizer) or "
                            "a comma-separated list",
                            check=lambda t: None if t == "all"
                            else _optimizer_names(t))
  functions: str = setting(",".join(test_functions.FUNCTIONS),
                           "comma-separated test functions",
                           check=_function_names)
  steps: int = setting(500, "optimizer steps from the start point",
                       check=flags.at_least(1))
  learning_rate: Optional[float] = setting(
      None, "one learning rate for every optimizer (default: each "
      "optimizer's registry default)", check=flags.positive_finite)
  tune_lr: bool = setting(False, "per optimizer and function, try the "
                          "learning rate times 0.01, 0.1, 1, 10, 100 and keep "
                          "the run with the lowest final value")
  epoch_steps: int = setting(10, "steps per 'epoch' for optimizers that need "
                             "the full gradient at each epoch start",
                             check=flags.at_least(1))
  seed: int = setting(0, "seed of the optimizers' random draws",
                      check=flags.seed_value)
  output_dir: str = setting("results/test_functions", "where the figures, "
                            "summary.json and each function's runs "
                            "(<function>.json) are written",
                            check=flags.all_of(flags.not_empty,
                                               flags.directory))
  resume: bool = setting(True, "keep the runs of <function>.json in "
                         "--output-dir and compute only the missing ones "
                         "(default); --no-resume computes every run again")
  quiet: bool = setting(False, "no line per run")
  list_only: bool = setting(False, "print the functions and optimizers, "
                            "then exit", flag="--list")

  @property
  def recorded(self) -> dict:
    """What a run's numbers depend on besides the function and optimizer."""
    return {"steps": self.steps, "learning_rate": self.learning_rate,
            "tune_lr": self.tune_lr, "epoch_steps": self.epoch_steps,
            "seed": self.seed}


def parse_args(argv=None) -> Options:
  """The checked options (one-line errors, before anything is computed)."""
  parser = flags.Parser(prog=f"python {os.path.relpath(__file__)}",
                        description=__doc__.split("\n\n")[0])
  flags.add_flags(parser, Options)
  args = parser.parse_args(flags.attach_values(
      sys.argv[1:] if argv is None else list(argv), parser))
  options = flags.from_args(Options, args)
  flags.check(options)
  return options


def _previous(options: Options, functions) -> dict:
  """``{function: {optimizer: result}}`` kept from ``<function>.json``
  (with ``--resume``); refuses a file computed with other settings."""
  kept = {}
  for function in functions:
    path = os.path.join(options.output_dir, f"{function.name}.json")
    if not options.resume or not os.path.exists(path):
      continue
    stored = store.read_json(path)
    changed = [f"{k} {stored['settings'].get(k)!r} → {v!r}"
               for k, v in options.recorded.items()
               if stored["settings"].get(k) != v]
    if changed:
      raise OptBenchError(
          f"--resume: {path} was computed with other settings "
          f"({'; '.join(changed)}); give the same, --no-resume to compute "
          f"every run again, or a new --output-dir")
    kept[function.name] = {name: r for name, r in stored["runs"].items()
                           if not r["status"].startswith("error")}
  return kept


def _run(options: Options, name: str, function) -> dict:
  if options.tune_lr:
    return tune_and_run(name, function, options.steps, options.epoch_steps,
                        options.seed)
  return run_optimizer(name, function, options.steps, options.learning_rate,
                       options.epoch_steps, options.seed)


def main(argv=None) -> int:
  try:
    options = parse_args(argv)
    names = (list(transforms.available()) if options.optimizers == "all"
             else _names(options.optimizers))
    functions = [test_functions.get(f) for f in _names(options.functions)]
    if options.list_only:
      print(f"functions: {', '.join(f.name for f in functions)}")
      for name in names:
        spec = transforms.get(name)
        unmet = [n for n in spec.needs if n in UNMET_NEEDS]
        print(f"  {name:22s} lr {spec.default_lr:g}"
              + (f", skipped ({', '.join(unmet)})" if unmet else ""))
      return 0
    previous = _previous(options, functions)
  except OptBenchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  summary, failed = {}, []
  for function in functions:
    results = dict(previous.get(function.name, {}))
    for name in names:
      if name in results:
        continue
      try:
        results[name] = _run(options, name, function)
      except Exception as e:  # reported, and the others still run
        traceback.print_exc()
        failed.append(f"{function.name}/{name}")
        results[name] = {"status": f"error: {type(e).__name__}",
                         "reason": str(e), "trajectory": [],
                         "learning_rate": options.learning_rate
                         or transforms.get(name).default_lr}
      r = results[name]
      detail = (f"f={r['final_value']:.4g} "
                f"dist={r['distance_to_minimizer']:.3g}"
                if r["status"] == "ok" else r.get("reason", ""))
      if not options.quiet:
        print(f"{function.name:10s} {name:22s} lr={r['learning_rate']:<8g} "
              f"{r['status']:24s} {detail}")
    store.write_json(os.path.join(options.output_dir,
                                  f"{function.name}.json"),
                     {"settings": options.recorded, "runs": results})
    path = os.path.join(options.output_dir, f"{function.name}.png")
    plot_function(function, results, path, options.steps)
    print(f"wrote {path}")
    summary[function.name] = {
        name: {k: v for k, v in r.items() if k != "trajectory"}
        for name, r in results.items()}
  store.write_json(os.path.join(options.output_dir, "summary.json"), summary)
  if failed:
    print(f"errors in: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
