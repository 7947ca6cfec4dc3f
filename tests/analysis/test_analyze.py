"""``analyze`` on finished runs: the run rebuilt from its directory, and the
command end to end.

The restored run is checked against what training recorded: the loss over
the whole validation split at the final checkpoint equals the history's
last ``val_loss`` (same data, split, preprocessing, model and parameters;
tolerance 1e-5 relative, float32 sums in another order), and the initial
parameters equal a freshly initialised state of the same seed (bitwise).
"""
import csv
import json

import jax
import numpy as np
import pytest

from optbench_jax import cli
from optbench_jax.analysis import analyze, landscape, report, restore
from optbench_jax.analysis.report import render
from optbench_jax.campaign import runner as campaign
from optbench_jax.train import settings
from optbench_jax.engine.state import run_slice

EPOCHS = 2


@pytest.fixture(scope="module")
def campaign_dir(tmp_path_factory):
  """digits / cnn_scratch, two optimizers, every epoch's checkpoint kept."""
  out = tmp_path_factory.mktemp("analyze")
  campaign.run_campaign(settings.CampaignConfig(
      task="image_classification", dataset="digits", model="cnn_scratch",
      optimizers=["adam", "sgd_momentum"], epochs=EPOCHS, batch_size=64,
      max_samples=256, keep_checkpoints=0, output_dir=str(out), quiet=True,
      compile_cache="off"))
  return out / "image_classification" / "digits" / "cnn_scratch"


def test_restored_run_reproduces_the_recorded_validation_loss(campaign_dir):
  run = restore.load_run(str(campaign_dir / "adam"))
  assert run.config.optimizer == "adam" and run.config.keep_checkpoints == 0
  assert run.epochs() == list(range(1, EPOCHS + 1))
  state = run.state()
  loss_fn = jax.jit(run.loss_function(state.model_state, split="val",
                                      samples=10**6))
  history = json.loads((campaign_dir / "adam" / "history.json").read_text())
  recorded = history[-1]["val_loss"]
  assert abs(float(loss_fn(run.final_params())) - recorded) <= 1e-5 * recorded
  # a model without batch norm: both batch-norm modes are the same loss
  batch_mode = jax.jit(run.loss_function(state.model_state, split="val",
                                         samples=10**6, bn="batch"))
  assert float(batch_mode(run.final_params())) == float(
      loss_fn(run.final_params()))


def test_restored_initial_parameters_are_the_seeds(campaign_dir):
  run = restore.load_run(str(campaign_dir / "sgd_momentum"))
  fresh = run_slice(run.program.initial_state(
      [run.config.seed], [run.config.learning_rate], run.setup.example), 0)
  jax.tree.map(np.testing.assert_array_equal, run.initial_params(),
               fresh.params)
  epochs, path = run.trajectory()
  assert epochs == [0, 1, 2] and len(path) == 3


def test_analyze_command_writes_every_result(campaign_dir, capsys):
  args = ["analyze", "--run-dir", str(campaign_dir), "--samples", "32",
          "--points-1d", "5", "--points-2d", "3", "--top-k", "2",
          "--top-iterations", "4", "--iterations", "4", "--probes", "1",
          "--trace-probes", "2"]
  assert cli.main(args) == 0
  printed = capsys.readouterr().out.splitlines()
  for optimizer in ("adam", "sgd_momentum"):
    out = campaign_dir / optimizer / "analysis"
    for name in ("landscape1d.json", "landscape1d.png", "landscape2d.json",
                 "landscape2d.png", "landscape2d_pca.json",
                 "landscape2d_pca.png", "hessian.json",
                 "hessian_density.png"):
      assert (out / name).stat().st_size > 0, (optimizer, name)
    one_d = json.loads((out / "landscape1d.json").read_text())
    curve = one_d["curves"]["initial → final"]
    run = restore.load_run(str(campaign_dir / optimizer))
    loss_fn = jax.jit(run.loss_function(run.state().model_state,
                                        samples=32))
    assert curve["losses"][curve["alphas"].index(0.0)] == pytest.approx(
        float(loss_fn(run.initial_params())), rel=1e-6)
    assert curve["losses"][curve["alphas"].index(1.0)] == pytest.approx(
        float(loss_fn(run.final_params())), rel=1e-6)
    two_d = json.loads((out / "landscape2d.json").read_text())
    assert two_d["trajectory"]["epochs"] == [0, 1, 2]
    pca = json.loads((out / "landscape2d_pca.json").read_text())
    assert sum(pca["explained"]) == pytest.approx(1.0)  # 3 points, 2 ≠ θ*
    spectrum = json.loads((out / "hessian.json").read_text())
    top = spectrum["top_eigenvalues"]
    assert len(top) == 2 and top[0] >= top[1]
    # The console gives λ_max, trace ± standard error and the path's
    # barrier (the report's digits), and where the figures are.
    (line,) = [p for p in printed if p.startswith(f"{optimizer} (lr ")]
    assert f"λ_max {render.format_number(top[0])};" in line
    trace = render.format_estimate(spectrum["trace"],
                                   spectrum["trace_stderr"])
    assert f"trace {trace} (± standard error)" in line
    barrier = landscape.barrier(curve["alphas"], curve["losses"])
    assert line.endswith(f"barrier initial → final "
                         f"{render.format_number(barrier)}"), line
    assert printed[printed.index(line) + 1] == (
        f"  figures and numbers under {out}")
  for name in ("landscape1d_all_runs.png", "hessian_density_all_runs.png"):
    assert (campaign_dir / "analysis" / name).stat().st_size > 0
  assert printed[-1] == (
      f"figures of all runs under {campaign_dir / 'analysis'}")
  # the report tabulates the analyses: λ_max and trace as analyze wrote them
  report.write_report(str(campaign_dir), str(campaign_dir / "report"))
  with open(campaign_dir / "report" / "tables" / "image_classification" /
            "digits" / "cnn_scratch" / "analysis.csv") as f:
    rows = {r["label"]: r for r in csv.DictReader(f)}
  for optimizer in ("adam", "sgd_momentum"):
    spectrum = json.loads((campaign_dir / optimizer / "analysis" /
                           "hessian.json").read_text())
    assert float(rows[optimizer]["lambda_max"]) == pytest.approx(
        spectrum["top_eigenvalues"][0], rel=1e-12)
    assert float(rows[optimizer]["trace"]) == pytest.approx(
        spectrum["trace"], rel=1e-12)
    path = json.loads((campaign_dir / optimizer / "analysis" /
                       "landscape1d.json").read_text())["curves"][
                           "initial → final"]
    inside = [l for a, l in zip(path["alphas"], path["losses"])
              if 0.0 <= a <= 1.0]
    ends = [inside[0], inside[-1]]   # α = 0 and α = 1
    assert float(rows[optimizer]["barrier"]) == pytest.approx(
        max(inside) - max(ends), rel=1e-12, abs=1e-12)
    assert float(rows[optimizer]["final_loss"]) == pytest.approx(
        path["losses"][path["alphas"].index(1.0)], rel=1e-12)


@pytest.mark.parametrize("args, expected", [
    (["--run-dir", "/nonexistent"], "no such directory"),
    (["--run-dir", "{empty}"], "holds no run"),
    (["--run-dir", "{run}", "--what", "landscape3d"],
     "unknown analysis landscape3d"),
    (["--run-dir", "{run}", "--samples", "0"], "samples must be at least 1"),
])
def test_bad_input_gives_one_line_error(campaign_dir, tmp_path, capsys, args,
                                        expected):
  args = [a.replace("{run}", str(campaign_dir / "adam"))
          .replace("{empty}", str(tmp_path)) for a in args]
  assert cli.main(["analyze", *args]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  assert expected in lines[0], lines


def test_runs_are_found_and_filtered_by_seed(campaign_dir):
  runs = analyze.find_runs(str(campaign_dir))
  assert [r.split("/")[-1] for r in runs] == ["adam", "sgd_momentum"]
  assert analyze.find_runs(str(campaign_dir), seeds=[0]) == runs
  with pytest.raises(Exception, match="no run of seed"):
    analyze.find_runs(str(campaign_dir), seeds=[1])


def test_what_is_parsed_and_checked():
  assert analyze.parse_what("hessian, landscape1d,hessian") == [
      "hessian", "landscape1d"]
