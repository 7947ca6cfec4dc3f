"""Projected training time of the measurable part of the thesis campaign.

The campaign (``CAMPAIGN``) trains every (task, dataset, model) with every
optimizer and seed. The part projected here: the tasks whose datasets are in
``CAMPAIGN_DATASETS``, × every registered model of the task, at the measured
rate of the model (at its own example input shape, whatever the dataset's).
Sequential: every run alone, at ``jax_epoch`` steps/s. Vmapped: one program
per optimizer with its seeds as runs (different optimizers cannot share a
program); with R = ``--vmap-runs`` ≥ seeds the time lies between ``lower``
(a seeds-run program reaches the measured R-run run-steps/s; run throughput
grows with the runs, so this is optimistic) and ``upper`` (a seeds-run
program step takes as long as an R-run one; pessimistic, it does less work).
"""
from __future__ import annotations

import math

from optbench_jax import models, tasks

# The thesis campaign: 8 tasks × 2 datasets × 2 models × 16 optimizers,
# 20 epochs each, 3 seeds.
CAMPAIGN = {"tasks": 8, "datasets_per_task": 2, "models_per_task": 2,
            "optimizers": 16, "epochs": 20, "seeds": 3}
# Per task: its campaign datasets (name, label, training examples, shape).
CAMPAIGN_DATASETS = {
    "image_classification": (("mnist", "MNIST", 60_000, (28, 28, 1)),
                             ("cifar10", "CIFAR-10", 50_000, (32, 32, 3))),
}


def shape_text(shape) -> str:
  return "x".join(str(d) for d in shape)


def model_shape(task, name) -> list:
  return list(models.get(task, name).example_info.input_shape)


def projected_row(row, r, batch, c) -> dict:
  """``row`` with the projected times at the measured rates ``r``."""
  seeds, optimizers = c["seeds"], c["optimizers"]
  steps_per_epoch = math.ceil(row["train_examples"] / batch)
  run_steps = c["epochs"] * steps_per_epoch
  row.update({
      "status": "projected", "batch_size": batch,
      "rate_input_shape": r["input_shape"],
      "rate_shape_matches_dataset": (r["input_shape"]
                                     == row["dataset_input_shape"]),
      "steps_per_epoch": steps_per_epoch, "steps_per_run": run_steps,
      "sequential_s": row["runs"] * run_steps / r["jax_epoch_steps_per_s"]})
  if "jax_vmap_run_steps_per_s" in r:
    vmap_runs = r["vmap_runs"]
    row.update({"vmap_programs": optimizers, "vmap_runs_per_program": seeds,
                "vmap_measured_runs": vmap_runs})
    estimate = row["runs"] * run_steps / r["jax_vmap_run_steps_per_s"]
    if vmap_runs >= seeds:
      row["vmapped_lower_s"] = estimate
      row["vmapped_upper_s"] = (optimizers * run_steps
                                / r["jax_vmap_steps_per_s"])
    else:
      row["vmapped_estimate_s"] = estimate
  return row


def total(selected) -> dict:
  done = [r for r in selected if r["status"] == "projected"]
  out = {"runs": sum(r["runs"] for r in done),
         "complete": len(done) == len(selected)}
  for key in ("sequential_s", "vmapped_lower_s", "vmapped_upper_s",
              "vmapped_estimate_s"):
    if done and all(key in r for r in done):
      out[key] = sum(r[key] for r in done)
  return out


def project(results, args) -> dict:
  c = CAMPAIGN
  seeds, optimizers, epochs = c["seeds"], c["optimizers"], c["epochs"]
  runs_per_combo = optimizers * seeds
  total_runs = (c["tasks"] * c["datasets_per_task"] * c["models_per_task"]
                * runs_per_combo)
  measured = {r["model"]: r for r in results
              if r.get("status") == "measured"
              and "jax_epoch_steps_per_s" in r}
  projected_tasks = [t for t in CAMPAIGN_DATASETS if t in tasks.TASKS]
  rows, matched, scope, shapes = [], [], [], []
  for task in projected_tasks:
    names = models.names_for(task)
    datasets = CAMPAIGN_DATASETS[task]
    scope.append(f"{task} on " + " and ".join(
        f"{label} ({n:,} train)" for _, label, n, _ in datasets)
        + " x " + ", ".join(names))
    for name in names:
      shape = model_shape(task, name)
      same = [label for _, label, _, s in datasets if list(s) == shape]
      shapes.append(f"{name} {shape_text(shape)}"
                    + "".join(f" = {label}" for label in same))
    for dataset, label, n, shape in datasets:
      for name in names:
        row = {"task": task, "dataset": dataset, "train_examples": n,
               "dataset_input_shape": list(shape), "model": name,
               "runs": runs_per_combo}
        if name in measured:
          projected_row(row, measured[name], args.batch_size, c)
        else:
          row["status"] = "not projected: model not measured in this run"
        rows.append(row)
        if model_shape(task, name) == list(shape):
          matched.append(row)
  labels = {d[0]: d[1] for task in projected_tasks
            for d in CAMPAIGN_DATASETS[task]}
  other = [r for r in rows if r not in matched]
  registered = set(tasks.TASKS.names())
  other_tasks = c["tasks"] - len(set(projected_tasks) & registered)
  other_runs = (other_tasks * c["datasets_per_task"] * c["models_per_task"]
                * runs_per_combo)
  pairs = ", ".join(f"{r['model']}/{labels[r['dataset']]}" for r in matched)
  assumptions = [
      f"campaign: {c['tasks']} tasks x {c['datasets_per_task']} datasets x "
      f"{c['models_per_task']} models x {optimizers} optimizers x {epochs} "
      f"epochs x {seeds} seeds = {total_runs} runs; projected here: "
      f"{'; '.join(scope)} = {len(rows) * runs_per_combo} runs",
      "training steps only, at the measured steady-state rates: no "
      "evaluation, compilation, data loading, checkpoints or host work "
      "between epochs; the full training splits (the engine's 10 % "
      "validation hold-out is ignored)",
      f"batch {args.batch_size} (this run's --batch-size) for every run",
      "optimizer cost differences ignored: every optimizer is assumed to "
      "step as fast as the measured SGD+momentum (second-order and "
      "two-pass optimizers are slower)",
      f"each model's rate is measured at its own benchmark input shape "
      f"({', '.join(shapes)}) and used for every dataset of its task: the "
      f"combinations marked * ("
      + ", ".join(f"{r['model']} on {labels[r['dataset']]}" for r in other)
      + f") use a rate measured at another shape; 'total' covers all "
      f"{len(rows)} combinations, 'matched pairs' only {pairs} (each at "
      f"its measured shape)",
      f"sequential: the {runs_per_combo} runs of a (dataset, model) one after "
      f"another at the single-run scanned-epoch rate (jax_epoch)",
      f"vmapped: the {runs_per_combo} runs grouped by optimizer, one program "
      f"of {seeds} seeds per optimizer ({optimizers} programs); only the "
      f"--vmap-runs R program was measured: lower = {seeds}-run programs "
      f"reach the measured R-run run-steps/s (optimistic), upper = a "
      f"{seeds}-run program step takes as long as the measured R-run program "
      f"step (pessimistic; needs R >= {seeds}); with R < {seeds} a single "
      f"estimate at the R-run run-steps/s",
  ]
  return {"campaign": dict(c, total_runs=total_runs), "rows": rows,
          "totals": total(rows), "totals_matched_pairs": total(matched),
          "assumptions": assumptions,
          "not_projected": [{
              "what": f"the {other_tasks} other tasks of the campaign "
                      f"({other_runs} runs)",
              "reason": "not projected: models not implemented"}]}
