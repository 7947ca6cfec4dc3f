"""What ``run`` and ``analyze`` print (``optbench_jax/campaign/console.py``)
on summary rows and analysis results made by hand: test metrics beside the
validation ones, "not converged" as such, how times were measured, and
analyze's headline numbers."""
import math
import re

from optbench_jax.analysis import analyze
from optbench_jax.campaign import console
from optbench_jax.train import outputs


def _rows(test=True, runs_in_program=2):
  rows = []
  for optimizer, losses, accuracy in (("adam", (1.0, 0.5, 0.499), 0.91),
                                      ("sgd", (1.0, 0.8, 0.6), 0.7734)):
    history = [{"epoch": e, "val_loss": v, "accuracy": accuracy - 0.1 / e,
                "status": "ok", "train_time_s": 1.0}
               for e, v in enumerate(losses, 1)]
    meta = {"optimizer": optimizer, "seed": 0, "learning_rate": 0.01,
            "primary_metric": "accuracy", "status": "completed",
            "total_runtime_s": 12.25, "runs_in_program": runs_in_program}
    if test:
      meta["test_metrics"] = {"accuracy": accuracy - 0.01, "loss": 0.3}
    rows.append(outputs.summarize(history, meta, True))
  return rows


def test_summary_prints_test_metrics_and_not_converged():
  lines = console.summary_lines(_rows(), "/out")
  header, adam, sgd = lines[1:4]
  assert "best val accuracy" in header and "test accuracy" in header
  assert header.index("best val accuracy") < header.index("test accuracy")
  # adam: best val accuracy 0.91 − 0.1/3, test 0.90; converged at epoch 2.
  assert adam.split() == ["adam", "completed", "0.8767", "3", "0.4990",
                          "0.9000", "2", "12.2"]
  assert sgd.split()[:6] == ["sgd", "completed", "0.7401", "3", "0.6000",
                             "0.7634"]
  assert re.search(r"\s+not converged\s+12\.2$", sgd), sgd
  assert lines[-2] == ("time s: wall time of the compiled program "
                       "(compilation and evaluation included), shared by "
                       "the runs it trained together (N = 2)")
  assert lines[-1] == "results under /out"


def test_summary_without_a_test_split_has_no_test_column():
  lines = console.summary_lines(_rows(test=False, runs_in_program=1), "/o")
  assert "test" not in lines[1]
  assert not any(line.startswith("time s:") for line in lines)
  assert console.summary_lines([], "/o") == []


def test_analysis_lines_give_the_headline_numbers_and_where_they_are():
  hessian = {"top_eigenvalues": [12.3456, 3.0], "trace": 45.678,
             "trace_stderr": 3.21}
  path = {"curves": {"initial → final": {
      "alphas": [-0.5, 0.0, 0.5, 1.0, 1.5],
      "losses": [3.0, 2.0, 2.25, 0.5, None]}}}
  both = analyze.Analysed("/r/adam", "adam (lr 0.001, seed 0)",
                          "/r/adam/analysis",
                          {"hessian": hessian, "landscape1d": path})
  flat = analyze.Analysed("/r/sgd", "sgd (lr 0.01, seed 0)",
                          "/r/sgd/analysis", {"landscape1d": {"curves": {
                              "initial → final": {
                                  "alphas": [0.0, 0.5, 1.0],
                                  "losses": [2.0, math.inf, 0.4]}}}})
  assert both.lambda_max == 12.3456 and both.trace == (45.678, 3.21)
  assert both.barrier == 0.25      # max(2, 2.25, 0.5) − max(2, 0.5)
  assert flat.barrier == math.inf  # a diverging point on the path
  lines = console.analysis_lines(analyze.Analysis([both, flat], "/r/an"))
  assert lines == [
      "adam (lr 0.001, seed 0): λ_max 12.35; trace 45.7 ± 3.2 (± standard "
      "error); barrier initial → final 0.2500",
      "  figures and numbers under /r/adam/analysis",
      "sgd (lr 0.01, seed 0): barrier initial → final ∞",
      "  figures and numbers under /r/sgd/analysis",
      "figures of all runs under /r/an"]
