"""The campaign report on small finished campaigns.

A synthetic campaign (no training: run files written by the test with known
values) of 2 configurations × 3 optimizers × 3 seeds, one diverged run and
one unfinished run, checks every table and figure, the numbers against the
per-run values, and shard-merged trees; one real campaign (digits,
cnn_scratch, 2 optimizers × 2 seeds × 1 epoch) checks the report on what the
engine writes (marked slow: 62 s on the 2-core CI machine, 59 s of it
training and compiling; the report itself 2.9 s).

Measured on that machine: the synthetic report (18 runs, 20 figures) takes
3–4 s to write; the whole file without the slow test 17 s. The figures were
looked at (band plots, per-optimizer plots, profiles, time-to-target curves):
the tests check that each one is a drawn image, not only that it exists.
"""
import csv
import json
import math
import os
import re
import shutil
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from optbench_jax.analysis import report, statistics  # noqa: E402
from optbench_jax.analysis.report import ranking, render, tables  # noqa: E402
from optbench_jax.analysis.report import runs as report_runs  # noqa: E402
from optbench_jax.errors import OptBenchError  # noqa: E402
from optbench_jax.campaign import runner as campaign_lib  # noqa: E402
from optbench_jax.train import settings  # noqa: E402

EPOCHS, SEEDS = 3, (0, 1, 2)
ACC = ("image_classification", "toy", "cnn")       # accuracy, higher better
PPL = ("text_generation", "toytext", "lstm")       # perplexity, lower better
ACC_NAME, PPL_NAME = "/".join(ACC), "/".join(PPL)
# Per-optimizer levels: accuracy = level + 0.05·epoch + 0.01·seed + jitter;
# perplexity = level / epoch + seed + 10·jitter.
ACC_LEVEL = {"adam": 0.6, "sgd": 0.5, "lion": 0.55}
PPL_LEVEL = {"adam": 60.0, "sgd": 45.0, "lion": 90.0}
JITTER = {"adam": (0.0, 0.004, -0.002), "sgd": (0.003, 0.0, 0.001),
          "lion": (0.0, -0.005, 0.0)}
OPTIMIZERS = tuple(ACC_LEVEL)
LR = {"adam": 0.001, "sgd": 0.01, "lion": 0.0003}
DIVERGED = (ACC, "lion", 2)        # diverges at epoch 2
UNFINISHED = (PPL, "adam", 1)      # stopped after 2 of 3 epochs
EPOCH_TIME = {"adam": 1.0, "sgd": 0.5, "lion": 1.5}
# Cumulative counts of the histories: 10 steps per epoch, lion (as if it
# were a two-pass method) 2 gradient evaluations per step.
STEPS, GRADS_PER_STEP = 10, {"adam": 1, "sgd": 1, "lion": 2}


def _metric(config, optimizer, seed, epoch):
  jitter = JITTER[optimizer][seed]
  if config == ACC:
    return ACC_LEVEL[optimizer] + 0.05 * epoch + 0.01 * seed + jitter
  return PPL_LEVEL[optimizer] / epoch + seed + 10 * jitter


def _val_loss(optimizer, seed, epoch):
  return 2.0 / epoch + 0.1 * seed + ACC_LEVEL[optimizer] + JITTER[
      optimizer][seed]


def _history(config, optimizer, seed, epochs=EPOCHS, diverge_at=None):
  primary = "accuracy" if config == ACC else "perplexity"
  records = []
  for epoch in range(1, epochs + 1):
    counts = {"steps": STEPS * epoch,
              "grad_evals": STEPS * epoch * GRADS_PER_STEP[optimizer],
              "hvps": 0}
    if epoch == diverge_at:
      records.append({"epoch": epoch, "train_loss": None, "val_loss": None,
                      primary: None, "train_time_s": EPOCH_TIME[optimizer],
                      "eval_time_s": 0.1, **counts, "status": "diverged"})
      break
    records.append({"epoch": epoch,
                    "train_loss": 2.5 / epoch + 0.05 * seed,
                    "val_loss": _val_loss(optimizer, seed, epoch),
                    primary: _metric(config, optimizer, seed, epoch),
                    "train_time_s": EPOCH_TIME[optimizer],
                    "eval_time_s": 0.1, **counts, "status": "ok"})
  return records


def _write_run(root, config, optimizer, seed, lr_dir=False, lr=None):
  primary, higher = (("accuracy", True) if config == ACC
                     else ("perplexity", False))
  diverge_at = 2 if (config, optimizer, seed) == DIVERGED else None
  unfinished = (config, optimizer, seed) == UNFINISHED
  history = _history(config, optimizer, seed,
                     epochs=2 if unfinished else EPOCHS,
                     diverge_at=diverge_at)
  meta = {"task": config[0], "dataset": config[1], "model": config[2],
          "optimizer": optimizer, "seed": seed,
          "learning_rate": lr or LR[optimizer],
          "epochs": EPOCHS, "primary_metric": primary,
          "higher_is_better": higher, "optimizer_family": "test",
          "device": {"platform": "cpu", "kind": "cpu", "count": 1},
          "versions": {"optbench_jax": "0.1.0", "jax": "test"},
          "git_commit": "abc123", "compile_time_s": 2.0, "runs_in_program": 3}
  if unfinished:
    meta["status"] = "running"
  else:
    meta.update(status="diverged" if diverge_at else "completed",
                epochs_run=len(history), total_runtime_s=2.0 + sum(
                    h["train_time_s"] + h["eval_time_s"] for h in history))
    if not diverge_at and config == ACC:
      meta["test_metrics"] = {"accuracy": history[-1]["accuracy"] - 0.02,
                              "loss": 0.5}
  run_dir = os.path.join(root, *config, optimizer)
  if lr_dir:
    run_dir = os.path.join(run_dir, f"lr_{lr or LR[optimizer]:g}")
  run_dir = os.path.join(run_dir, f"seed_{seed}")
  os.makedirs(run_dir)
  for name, content in (("run_metadata.json", meta),
                        ("history.json", history)):
    with open(os.path.join(run_dir, name), "w") as f:
      json.dump(content, f)
  return run_dir


def _write_png(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig, ax = plt.subplots(figsize=(3, 2))
  ax.plot([0, 1], [1, 0])
  fig.savefig(path)
  plt.close(fig)


def write_campaign(root, seeds=SEEDS, configs=(ACC, PPL)):
  for config in configs:
    for optimizer in OPTIMIZERS:
      for seed in seeds:
        _write_run(root, config, optimizer, seed)


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _row(rows, **where):
  (row,) = [r for r in rows if all(r[k] == v for k, v in where.items())]
  return row


def _completed_values(config, optimizer, best):
  """Per-run best primary metric of the completed seeds, by hand."""
  values = []
  for seed in SEEDS:
    if (config, optimizer, seed) in (DIVERGED, UNFINISHED):
      continue
    values.append(best(_metric(config, optimizer, seed, e)
                       for e in range(1, EPOCHS + 1)))
  return values


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("campaign"))
  write_campaign(root)
  run_dir = os.path.join(root, *ACC, "adam", "seed_0")
  _write_png(os.path.join(run_dir, "analysis", "landscape1d.png"))
  _write_png(os.path.join(root, *ACC, "analysis",
                          "landscape1d_all_runs.png"))
  start = time.perf_counter()
  path = report.write_report(root)
  return root, path, time.perf_counter() - start


def _tables(out):
  found = []
  for root, _, files in os.walk(os.path.join(out, "tables")):
    found += [os.path.relpath(os.path.join(root, f), out) for f in files]
  return sorted(found)


def test_report_writes_every_table_and_figure(campaign):
  root, path, _ = campaign
  out = os.path.join(root, "report")
  assert path == os.path.join(out, "report.md")
  per_config = [f"tables/{c}/{t}.{e}" for c in (ACC_NAME, PPL_NAME)
                for t in ("summary", "pairwise") for e in ("csv", "tex")]
  per_config += [f"tables/{ACC_NAME}/test_metrics.{e}" for e in ("csv", "tex")]
  shared = [f"tables/{t}.{e}" for t in (
      "overview", "ranking", "performance_profile", "time_to_target",
      "diverged_and_unfinished", "runs") for e in ("csv", "tex")]
  assert _tables(out) == sorted(per_config + shared)

  text = open(path).read()
  links = re.findall(r"\]\(([^)]+)\)", text)
  images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
  assert all(not os.path.isabs(link) for link in links)
  assert all(os.path.isfile(os.path.join(out, link)) for link in links)
  assert {link for link in links if link.startswith("tables/")} == set(
      per_config + shared)
  expected = {"figures/performance_profile.png", "figures/time_to_target.png",
              f"figures/{ACC_NAME}/analysis/adam/seed_0/landscape1d.png",
              f"figures/analysis/{ACC_NAME}/landscape1d_all_runs.png"}
  for config, primary in ((ACC_NAME, "accuracy"), (PPL_NAME, "perplexity")):
    expected |= {f"figures/{config}/{primary}_all_optimizers.png",
                 f"figures/{config}/val_loss_all_optimizers.png"}
    expected |= {f"figures/{config}/{o}/{n}" for o in OPTIMIZERS
                 for n in (f"{primary}_and_val_loss.png",
                           "train_vs_val_loss.png")}
  assert set(images) == expected
  for image in images:
    pixels = matplotlib.image.imread(os.path.join(out, image))
    # A drawn figure, not an empty canvas.
    assert pixels.shape[0] >= 150 and pixels.shape[1] >= 200
    assert float(np.std(pixels[..., :3])) > 0.05, image

  for section in ("## What was run", "## Methods", f"## {ACC_NAME}",
                  f"## {PPL_NAME}", "### Test metrics", "### Training curves",
                  "### Pairwise comparisons", "## Ranking across",
                  "## Performance profiles and time to target",
                  "## Diverged and unfinished runs", "## All runs"):
    assert section in text, section
  assert "paired t-test" in text and "Holm" in text and "Student-t" in text
  assert "Dolan & Moré 2002" in text and "0.95 × the best result" in text


def test_markdown_and_csv_tables_have_the_same_rows(campaign):
  root, path, _ = campaign
  out = os.path.join(root, "report")
  text = open(path).read()
  for link in re.findall(r"\[csv\]\(([^)]+)\)", text):
    rows = _read_csv(os.path.join(out, link))
    block = text[text.index(link):].split("\n\n")[1]
    lines = block.splitlines()
    assert lines[1].startswith("| ---")
    assert len(lines) - 2 == len(rows), link
    tex = open(os.path.join(out, link[:-3] + "tex")).read()
    assert tex.count(r"\\") == len(rows) + 1  # header + rows
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
      assert rule in tex
    body = tex.split(r"\toprule")[1]
    assert not re.search(r"(?<!\\)_", body), link   # underscores escaped
    assert tex.isascii(), link   # ±, –, ↑ … written as LaTeX commands


def test_summary_numbers_equal_the_per_run_values(campaign):
  root, path, _ = campaign
  out = os.path.join(root, "report")
  text = open(path).read()
  for config, best in ((ACC, max), (PPL, min)):
    rows = _read_csv(os.path.join(out, "tables", *config, "summary.csv"))
    for optimizer in OPTIMIZERS:
      values = _completed_values(config, optimizer, best)
      row = _row(rows, optimizer=optimizer)
      n = len(values)
      mean = float(np.mean(values))
      half = stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n)
      assert int(row["n_completed"]) == n
      assert float(row["best_primary_mean"]) == pytest.approx(mean, rel=1e-12)
      assert float(row["best_primary_high"]) - float(
          row["best_primary_low"]) == pytest.approx(2 * half, rel=1e-9)
      assert float(row["best_primary_n"]) == n
      # Validation loss falls every epoch: the best is the last epoch's.
      val = [_val_loss(optimizer, s, EPOCHS) for s in SEEDS
             if (config, optimizer, s) not in (DIVERGED, UNFINISHED)]
      assert float(row["best_val_loss_mean"]) == pytest.approx(np.mean(val))
      # The validation loss still falls by more than 1 % at the last
      # epoch: no run converged, and the table says so.
      assert row["convergence_epoch_mean"] == "" and row["n_converged"] == "0"
      # The Markdown shows mean ± half-width, the half-width with 2
      # significant digits and the mean to the same decimal place; the
      # best mean of the column (adam's accuracy, sgd's perplexity) bold.
      decimals = 1 - math.floor(math.log10(half))
      shown = f"{mean:.{decimals}f} ± {half:.{decimals}f}"
      if optimizer == {ACC: "adam", PPL: "sgd"}[config]:
        shown = f"**{shown}**"
      assert (f"| {optimizer} | {LR[optimizer]:g} | {n} | "
              f"{1 if (config, optimizer, 2) == DIVERGED else 0} | "
              f"{shown} |") in text
      assert (" | not converged | not converged | "
              in text.split(f"| {optimizer} | {LR[optimizer]:g} |")[1])
  tests = _read_csv(os.path.join(out, "tables", *ACC, "test_metrics.csv"))
  adam = [_metric(ACC, "adam", s, EPOCHS) - 0.02 for s in SEEDS]
  assert float(_row(tests, label="adam")["accuracy_mean"]) == pytest.approx(
      np.mean(adam))


def test_ranking_and_pairwise_tables(campaign):
  root, _, _ = campaign
  out = os.path.join(root, "report")
  ranking = {r["optimizer"]: r for r in _read_csv(
      os.path.join(out, "tables", "ranking.csv"))}
  # Accuracy: adam 1, lion 2, sgd 3. Perplexity (lower is better; adam's
  # mean over its completed seeds 0 and 2): sgd 1, adam 2, lion 3.
  assert {o: float(r["average_rank"]) for o, r in ranking.items()} == {
      "adam": 1.5, "sgd": 2.0, "lion": 2.5}
  assert {o: int(r["wins"]) for o, r in ranking.items()} == {
      "adam": 1, "sgd": 1, "lion": 0}
  pairs = _read_csv(os.path.join(out, "tables", *ACC, "pairwise.csv"))
  # adam − sgd per seed: 0.1 + jitter difference = 0.097, 0.104, 0.097;
  # paired t with df = 2: p = 1 − |t| / √(t² + 2) (closed form).
  d = [0.1 + JITTER["adam"][s] - JITTER["sgd"][s] for s in SEEDS]
  t = np.mean(d) / (np.std(d, ddof=1) / math.sqrt(3))
  adam_sgd = _row(pairs, a="adam", b="sgd")
  assert adam_sgd["test"] == "paired t"
  assert float(adam_sgd["difference"]) == pytest.approx(np.mean(d))
  assert float(adam_sgd["p"]) == pytest.approx(1 - t / math.sqrt(t**2 + 2),
                                               rel=1e-9)
  assert adam_sgd["favoured"] == adam_sgd["winner"] == "adam"
  # Holm over the three pairs: the smallest p is multiplied by 3.
  p = {(r["a"], r["b"]): float(r["p"]) for r in pairs}
  smallest = min(p, key=p.get)
  assert float(_row(pairs, a=smallest[0], b=smallest[1])["p_holm"]) == (
      pytest.approx(min(1.0, 3 * p[smallest])))
  # lion has seeds 0, 1 (seed 2 diverged): paired on those two.
  adam_lion = _row(pairs, a="adam", b="lion")
  assert adam_lion["test"] == "paired t" and adam_lion["n_a"] == "2"
  # adam's mean is higher, but Holm p = 0.052 ≥ α = 0.05: no winner, and
  # the report says so instead of naming one.
  assert float(adam_lion["p_holm"]) == pytest.approx(0.0524, abs=1e-4)
  assert adam_lion["favoured"] == "adam" and adam_lion["winner"] == ""
  text = open(os.path.join(out, "report.md")).read()
  assert ("| adam | lion | paired t | 2, 2 | 0.054 | [-0.003, 0.112] | "
          "0.0524 | 0.0524 | no significant difference |") in text
  assert "| adam | sgd | paired t | 3, 3 |" in text
  assert re.search(r"\| adam \| sgd \| paired t .* \| adam \|\n", text)
  assert "better (Holm p < 0.05)" in text


def test_time_to_target_and_profile_tables(campaign):
  root, _, _ = campaign
  out = os.path.join(root, "report")
  rows = _read_csv(os.path.join(out, "tables", "time_to_target.csv"))
  assert len(rows) == 2 * 3 * 3   # configurations × seeds × optimizers
  # Accuracy: best 0.6 + 0.15 + 0.02 − 0.002 = 0.768 (adam seed 2), target
  # 0.95 · 0.768 = 0.7296; adam seed 0 has 0.65, 0.70, 0.75: reached at
  # epoch 3 after 3 × 1 s of its program, which trained 3 runs: 1 s each.
  row = _row(rows, configuration=ACC_NAME, seed="0", optimizer="adam")
  assert float(row["target"]) == pytest.approx(0.95 * 0.768)
  assert (int(row["epoch"]), float(row["time_s"])) == (3, 1.0)
  assert (int(row["steps"]), int(row["evaluations"])) == (30, 30)
  # The diverged run never reached it.
  row = _row(rows, configuration=ACC_NAME, seed="2", optimizer="lion")
  assert row["epoch"] == "" and row["time_s"] == ""
  # Perplexity: best 45/3 + 0.03 = 15.03 (sgd seed 0), target 15.03 / 0.95
  # = 15.82; sgd seed 0 reaches it at epoch 3 (1.5 s / 3 runs), seed 1
  # (16) never.
  row = _row(rows, configuration=PPL_NAME, seed="0", optimizer="sgd")
  assert float(row["target"]) == pytest.approx(15.03 / 0.95)
  assert (int(row["epoch"]), float(row["time_s"])) == (3, 0.5)
  assert _row(rows, configuration=PPL_NAME, seed="1",
              optimizer="sgd")["epoch"] == ""
  # ρ(∞) = fraction of the 6 problems solved: sgd solves only perplexity
  # seed 0 and never reaches 0.7296 accuracy (at most 0.671).
  profile = _read_csv(os.path.join(out, "tables", "performance_profile.csv"))
  solved = {o: sum(r["epoch"] != "" for r in rows if r["optimizer"] == o) / 6
            for o in OPTIMIZERS}
  assert solved["sgd"] == pytest.approx(1 / 6)
  for optimizer in OPTIMIZERS:
    for cost in ("time", "epochs", "evaluations"):
      assert float(_row(profile, cost=cost, optimizer=optimizer)[
          "solved"]) == pytest.approx(solved[optimizer])


def test_time_based_results_say_how_times_were_measured(campaign):
  root, path, _ = campaign
  out = os.path.join(root, "report")
  text = open(path).read()
  how = ("training time per run: the wall time of the compiled program that "
         "trained N runs together (vmapped; N = 3), divided by N, summed "
         "over the epochs up to the target (compilation and evaluation "
         "excluded); one unrepeated measurement per epoch on cpu (cpu) × 1")
  assert f"Times: {how}" in text
  for name in ("performance_profile", "time_to_target"):
    caption = next(line for line in text.splitlines()
                   if f"[csv](tables/{name}.csv)" in line)
    assert how in caption, name
    tex = open(os.path.join(out, "tables", f"{name}.tex")).read()
    assert r"divided by N, summed over the epochs" in tex, name
  assert "| training time per run (s) |" in text


def test_latex_and_markdown_mark_the_best_mean_of_a_metric_column(campaign):
  root, _, _ = campaign
  out = os.path.join(root, "report")
  tex = open(os.path.join(out, "tables", *ACC, "summary.tex")).read()
  lines = {line.split(" & ")[0]: line for line in tex.splitlines()
           if line.startswith(OPTIMIZERS)}
  cells = {o: line.split(" & ") for o, line in lines.items()}
  # best accuracy (higher is better): adam's mean; best val loss (lower):
  # lion's mean (two seeds), neither a significance claim.
  assert cells["adam"][4].startswith(r"\textbf{")
  assert not any(cells[o][4].startswith(r"\textbf") for o in ("sgd", "lion"))
  assert cells["lion"][5].startswith(r"\textbf{")
  assert not any(c.startswith(r"\textbf") for c in cells["sgd"])
  assert "bold: the best mean of best accuracy, best val loss, test " \
      "accuracy, not a significance claim" in tex
  # Perplexity is lower-is-better: sgd's mean is the best.
  tex = open(os.path.join(out, "tables", *PPL, "summary.tex")).read()
  sgd = next(line for line in tex.splitlines() if line.startswith("sgd"))
  assert sgd.split(" & ")[4].startswith(r"\textbf{")
  # A column where every optimizer has the same mean (test loss 0.5) has no
  # best.
  tests = open(os.path.join(out, "tables", *ACC, "test_metrics.tex")).read()
  body = tests.split(r"\midrule")[1]
  assert "0.5000 $\\pm$ 0.0000" in body
  assert body.count(r"\textbf") == 1   # accuracy: adam


def test_not_converged_is_shown_as_such(tmp_path):
  root = str(tmp_path)
  write_campaign(root, seeds=(0, 1, 2), configs=(ACC,))
  # adam seeds 0 and 1 converge at epoch 2 (epoch 3 gains < 1 %); seed 2
  # and every other run still improve by more than 1 % at epoch 3.
  for seed in (0, 1):
    history_path = os.path.join(root, *ACC, "adam", f"seed_{seed}",
                                "history.json")
    with open(history_path) as f:
      records = json.load(f)
    records[2]["val_loss"] = records[1]["val_loss"] * 0.995
    with open(history_path, "w") as f:
      json.dump(records, f)
  path = report.write_report(root)
  text = open(path).read()
  rows = _read_csv(os.path.join(root, "report", "tables", *ACC,
                                "summary.csv"))
  adam = _row(rows, optimizer="adam")
  assert (adam["n_converged"], float(adam["convergence_epoch_mean"])) == (
      "2", 2.0)
  assert float(adam["time_to_convergence_s_mean"]) == 2 * EPOCH_TIME["adam"]
  adam_line = next(line for line in text.splitlines()
                   if line.startswith("| adam | 0.001 | 3 |"))
  assert "| 2 ± 0 (2 of 3 converged) | 2.0 ± 0.0 (2 of 3 converged) |" in (
      adam_line)
  sgd_line = next(line for line in text.splitlines()
                  if line.startswith("| sgd | 0.01 | 3 |"))
  assert "| not converged | not converged |" in sgd_line
  runs = _read_csv(os.path.join(root, "report", "tables", "runs.csv"))
  assert {(r["optimizer"], r["seed"]): r["converged"] for r in runs
          if r["state"] == "completed"}[("adam", "2")] == "False"
  assert (f"| {ACC_NAME} | adam | 0 | 0.001 | completed |" in text
          and f"| {ACC_NAME} | adam | 2 | 0.001 | completed |" in text)
  every_run = text[text.index("## All runs"):]
  seed2 = next(line for line in every_run.splitlines()
               if f"| {ACC_NAME} | adam | 2 |" in line)
  assert "| not converged | not converged |" in seed2
  seed0 = next(line for line in every_run.splitlines()
               if f"| {ACC_NAME} | adam | 0 |" in line)
  assert "| 2 | 2.0 |" in seed0


def test_diverged_and_unfinished_runs_are_listed(campaign):
  root, path, _ = campaign
  out = os.path.join(root, "report")
  rows = _read_csv(os.path.join(out, "tables", "diverged_and_unfinished.csv"))
  assert [(r["configuration"], r["optimizer"], r["seed"], r["state"])
          for r in rows] == [(ACC_NAME, "lion", "2", "diverged"),
                             (PPL_NAME, "adam", "1", "unfinished")]
  assert rows[0]["diverged_at_epoch"] == "2"
  assert (rows[1]["epochs_recorded"], rows[1]["epochs"]) == ("2", "3")
  runs = _read_csv(os.path.join(out, "tables", "runs.csv"))
  assert len(runs) == 2 * 3 * 3
  assert {r["state"] for r in runs} == {"completed", "diverged",
                                        "unfinished"}
  text = open(path).read()
  assert f"| {ACC_NAME} | lion | 2 | 0.0003 | diverged | 2 / 3 | 2 |" in text
  assert f"| {PPL_NAME} | adam | 1 | 0.001 | unfinished | 2 / 3 | – |" in text


def test_shard_merged_tree_is_reported_completely(tmp_path):
  # Two shards wrote disjoint seeds of one configuration; shard 0 also left
  # its own partial summary.csv, which the report must not use.
  shard0, shard1, merged = (str(tmp_path / n) for n in ("s0", "s1", "m"))
  write_campaign(shard0, seeds=(0,), configs=(ACC,))
  write_campaign(shard1, seeds=(1, 2), configs=(ACC,))
  with open(os.path.join(shard0, *ACC, "summary.csv"), "w") as f:
    f.write("task,optimizer,best_primary\nimage_classification,adam,0.1\n")
  for shard in (shard0, shard1):
    shutil.copytree(shard, merged, dirs_exist_ok=True)
  config_dir = os.path.join(merged, *ACC)
  path = report.write_report(config_dir, str(tmp_path / "out"))
  assert path == str(tmp_path / "out" / "report.md")
  rows = _read_csv(str(tmp_path / "out" / "tables" / ACC_NAME /
                       "summary.csv"))
  adam = _row(rows, optimizer="adam")
  assert int(adam["n_completed"]) == 3
  assert float(adam["best_primary_mean"]) == pytest.approx(
      np.mean(_completed_values(ACC, "adam", max)))
  assert int(_row(rows, optimizer="lion")["n_diverged"]) == 1
  assert len(_read_csv(str(tmp_path / "out" / "tables" / "runs.csv"))) == 9


def test_learning_rate_grid_runs_are_labelled_and_ranked_at_their_best(
    tmp_path):
  root = str(tmp_path)
  for seed in (0, 1):
    _write_run(root, ACC, "adam", seed, lr_dir=True)
    _write_run(root, ACC, "sgd", seed, lr_dir=True)
  for seed in (0, 1):   # a second, worse learning rate of adam
    run_dir = _write_run(root, ACC, "adam", seed, lr_dir=True, lr=0.01)
    path = os.path.join(run_dir, "history.json")
    with open(path) as f:
      records = json.load(f)
    for r in records:
      r["accuracy"] -= 0.3
    with open(path, "w") as f:
      json.dump(records, f)
  configs = report_runs.group_runs(report_runs.read_runs(root))
  (config,) = configs
  assert list(config.groups) == ["adam lr=0.001", "adam lr=0.01", "sgd"]
  assert ranking.best_groups(config)["adam"][0] == "adam lr=0.001"
  opts = report.Options(ci_method="bootstrap")
  table = tables.summary_table(config, opts)
  cell = table.cells[0][4]   # adam lr=0.001, best accuracy
  assert re.fullmatch(r"\S+ \[\S+, \S+\]", cell), cell
  values = [_metric(ACC, "adam", s, EPOCHS) for s in (0, 1)]
  ci = statistics.mean_ci(values, method="bootstrap")
  # Half-width 0.007: 2 significant digits, 4 decimals for every number.
  assert (ci.high - ci.low) / 2 == pytest.approx(0.007)
  assert cell == (f"{ci.mean:.4f} [{ci.low:.4f}, {ci.high:.4f}]")


def test_latex_escaping():
  assert render.latex_escape("sgd_momentum & 50% {x}") == (
      r"sgd\_momentum \& 50\% \{x\}")
  assert render.latex_escape("0.5 ± 0.1") == r"0.5 $\pm$ 0.1"


@pytest.mark.parametrize("make, message", [
    (lambda p: str(p / "absent"), "is not a directory"),
    (lambda p: str(p), "no run_metadata.json"),
])
def test_a_directory_without_runs_is_a_one_line_error(tmp_path, make,
                                                      message):
  with pytest.raises(OptBenchError, match=message):
    report.write_report(make(tmp_path))


@pytest.mark.slow
def test_report_on_a_real_tiny_campaign(tmp_path):
  start = time.perf_counter()
  campaign_lib.run_campaign(settings.CampaignConfig(
      task="image_classification", dataset="digits", model="cnn_scratch",
      optimizers=["adam", "sgd_momentum"], seeds=[0, 1], epochs=1,
      batch_size=64, max_samples=128, output_dir=str(tmp_path), quiet=True,
      compile_cache="off"))
  trained = time.perf_counter() - start
  path = report.write_report(str(tmp_path))
  out = os.path.dirname(path)
  rows = _read_csv(os.path.join(out, "tables", "image_classification",
                                "digits", "cnn_scratch", "summary.csv"))
  for optimizer in ("adam", "sgd_momentum"):
    best = []
    for seed in (0, 1):
      run_dir = tmp_path / "image_classification" / "digits" / \
          "cnn_scratch" / optimizer / f"seed_{seed}"
      history = json.loads((run_dir / "history.json").read_text())
      best.append(max(h["accuracy"] for h in history))
    row = _row(rows, optimizer=optimizer)
    assert int(row["n_completed"]) == 2
    assert float(row["best_primary_mean"]) == pytest.approx(np.mean(best))
  text = open(path).read()
  images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
  assert len(images) == 2 + 2 * 2 + 2
  assert all(os.path.isfile(os.path.join(out, i)) for i in images)
  print(f"training {trained:.1f} s, report "
        f"{time.perf_counter() - start - trained:.1f} s")


def test_damaged_run_files_are_listed_as_unreadable(tmp_path):
  root = str(tmp_path)
  write_campaign(root, seeds=(0,), configs=(ACC,))
  damaged = os.path.join(root, *ACC, "sgd", "seed_0", "run_metadata.json")
  with open(damaged, "w") as f:
    f.write('{"task": "image_cl')          # killed while writing
  runs = report_runs.read_runs(root)
  assert [r.state for r in runs] == ["completed", "completed", "unreadable"]
  table = tables.problems_table(runs, root)
  assert [row["state"] for row in table.csv_rows] == ["unreadable"]
  assert table.csv_rows[0]["run_dir"] == os.path.join(*ACC, "sgd", "seed_0")
  (config,) = report_runs.group_runs(runs)
  assert list(config.groups) == ["adam", "lion"]


@pytest.mark.parametrize("kwargs, message", [
    ({"ci_method": "normal"}, "unknown confidence-interval method"),
    ({"confidence": 95}, "confidence must be in"),
    ({"target_fraction": 1.5}, "target fraction"),
])
def test_bad_report_options_are_one_line_errors(campaign, kwargs, message):
  root, _, _ = campaign
  with pytest.raises(OptBenchError, match=message):
    report.write_report(root, **kwargs)


def test_a_killed_report_is_cleaned_up_and_an_unwritable_output_is_an_error(
    tmp_path):
  root = str(tmp_path / "campaign")
  write_campaign(root, seeds=(0,), configs=(ACC,))
  out = tmp_path / "campaign" / "report"
  # A killed report leaves temporary files inside atomic writes.
  for name in (".tmp-a", "tables/.tmp-b", f"figures/{ACC_NAME}/.tmp-c"):
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_text("partial")
  report.write_report(root)
  left = [f for _, _, files in os.walk(out) for f in files
          if f.startswith(".tmp-")]
  assert not left and (out / "report.md").is_file()
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(OptBenchError, match="cannot write the report into"):
    report.write_report(root, str(blocker / "report"))


def test_defaults_vs_tuned_ranks_and_their_correlation(tmp_path, monkeypatch):
  """A tuned campaign (tuning.csv beside its runs) reported with
  ``defaults_dir``: each optimizer's rank at its defaults and tuned, and
  the rank correlation, by hand."""
  tuned, defaults = str(tmp_path / "tuned"), str(tmp_path / "defaults")
  write_campaign(tuned, configs=(ACC,))
  with open(os.path.join(tuned, *ACC, "tuning.csv"), "w") as f:
    f.write("optimizer,trial,selected,status,learning_rate,hyperparameters,"
            "best_primary\n" + "".join(
                f"{o},0,True,completed,{LR[o]},,{ACC_LEVEL[o]}\n"
                for o in OPTIMIZERS))
  # At its defaults SGD is the best: order sgd, adam, lion (ranks 1, 2,
  # 3); tuned: adam, lion, sgd (1, 2, 3).
  monkeypatch.setitem(ACC_LEVEL, "sgd", 0.7)
  write_campaign(defaults, configs=(ACC,))
  monkeypatch.undo()
  path = report.write_report(tuned, defaults_dir=defaults)
  rows = _read_csv(os.path.join(tuned, "report", "tables",
                                f"{ACC_NAME}/defaults_vs_tuned.csv"))
  ranks = {r["optimizer"]: (float(r["rank_default"]), float(r["rank_tuned"]))
           for r in rows}
  assert ranks == {"adam": (2, 1), "lion": (3, 2), "sgd": (1, 3)}
  # Pairs (adam, sgd) and (sgd, lion) swap, (adam, lion) does not:
  # τ = (1 − 2) / 3; ρ = 1 − 6·(1 + 4 + 1) / (3·(9 − 1)) = −0.5.
  text = open(path).read()
  assert "Kendall's τ -0.33, Spearman's ρ -0.50 over 3 optimizers" in text
  other = str(tmp_path / "other")
  write_campaign(other, seeds=(0,), configs=(PPL,))
  with pytest.raises(OptBenchError, match="holds none of the"):
    report.write_report(tuned, str(tmp_path / "r2"), defaults_dir=other)
