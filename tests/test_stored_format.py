"""A campaign directory written before the run store existed is still read.

``tests/fixtures/campaign_v1`` was written by the code of commit 110c4c6
(before the plan / workload / store refactoring of issue 21) with::

  python -m optbench_jax run --task image_classification --dataset digits \
    --model cnn_scratch --optimizers sgd_momentum --seeds 0,1 --epochs 2 \
    --batch-size 32 --max-samples 64 --keep-checkpoints 1 \
    --output-dir tests/fixtures/campaign_v1

(its ``.campaign.lock`` removed). ``--resume``, ``analyze`` and ``report``
read it with today's code: resuming the same campaign trains nothing and
leaves every run file byte for byte as it was, ``analyze`` restores the
runs from their checkpoints, and ``report`` lists both runs as completed.
"""
import csv
import filecmp
import json
import os
import shutil

import pytest

from optbench_jax import cli

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "campaign_v1")
CONFIG = ("image_classification", "digits", "cnn_scratch")
RUN_ARGS = ["run", "--task", "image_classification", "--dataset", "digits",
            "--model", "cnn_scratch", "--optimizers", "sgd_momentum",
            "--seeds", "0,1", "--epochs", "2", "--batch-size", "32",
            "--max-samples", "64", "--keep-checkpoints", "1", "--quiet"]


@pytest.fixture
def old_campaign(tmp_path):
  out = tmp_path / "results"
  shutil.copytree(FIXTURE, out)
  return out


def _run_files(directory):
  """Every file of the runs (not the campaign files, which are rewritten)."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel.startswith("sgd_momentum" + os.sep):
        out[rel] = path
  return out


def test_resume_of_an_old_campaign_trains_nothing_and_keeps_every_run_file(
    old_campaign):
  campaign = old_campaign.joinpath(*CONFIG)
  before = _run_files(campaign)
  assert any(p.endswith("history.json") for p in before)
  # What a kill inside an atomic write leaves is removed by the resume.
  leftovers = [campaign / "sgd_momentum" / "seed_0" / ".tmp-killed",
               campaign / "sgd_momentum" / "seed_1" / "samples" / ".tmp-x"]
  for path in leftovers:
    path.parent.mkdir(exist_ok=True)
    path.write_text("{")
  assert cli.main([*RUN_ARGS, "--output-dir", str(old_campaign),
                   "--resume"]) == 0
  assert not any(path.exists() for path in leftovers)
  (campaign / "sgd_momentum" / "seed_1" / "samples").rmdir()
  after = _run_files(campaign)
  assert sorted(after) == sorted(before)
  for rel, path in before.items():
    assert filecmp.cmp(path, os.path.join(FIXTURE, *CONFIG, rel),
                       shallow=False), rel
  with open(campaign / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["optimizer"], r["seed"], r["status"]) for r in rows] == [
      ("sgd_momentum", "0", "completed"), ("sgd_momentum", "1", "completed")]


def test_analyze_restores_an_old_run(old_campaign, capsys):
  run_dir = old_campaign.joinpath(*CONFIG, "sgd_momentum", "seed_0")
  killed = run_dir / "analysis" / ".tmp-killed"   # a killed analyze's
  killed.parent.mkdir()
  killed.write_text("{")
  assert cli.main(["analyze", "--run-dir", str(run_dir), "--what",
                   "landscape1d", "--points-1d", "3", "--samples", "16"]) == 0
  result = json.loads((run_dir / "analysis" / "landscape1d.json").read_text())
  history = json.loads((run_dir / "history.json").read_text())
  (curve,) = result["curves"].values()
  assert len(curve["alphas"]) >= 3 and len(curve["losses"]) == len(
      curve["alphas"])
  assert history[-1]["epoch"] == 2
  assert not killed.exists()
  # analyze prints the path's barrier (no Hessian asked for: no λ_max) and
  # where the figures are.
  printed = capsys.readouterr().out.splitlines()
  line = next(p for p in printed if p.startswith("sgd_momentum (lr "))
  assert "barrier initial → final " in line and "λ_max" not in line
  assert f"  figures and numbers under {run_dir / 'analysis'}" in printed


def test_report_reads_an_old_campaign(old_campaign, capsys):
  assert cli.main(["report", "--campaign-dir", str(old_campaign)]) == 0
  report = (old_campaign / "report" / "report.md").read_text()
  assert "sgd_momentum" in report
  assert "| 2 / 0 / 0 |" in report  # completed / diverged / unfinished
  assert "unreadable" not in report
  capsys.readouterr()
