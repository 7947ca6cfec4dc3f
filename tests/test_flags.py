"""Every command's and script's flags are declared once (``flags.py``):
``--help`` shows every default, and bad values are refused in one line
naming the flag, with exit status 2, before anything is loaded, trained or
written (issues 22 and 25)."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from optbench_jax import cli, experiment, flags
from optbench_jax.errors import OptBenchError
from optbench_jax.analysis import analyze
from optbench_jax.train import settings
from tests.train.helpers import SCRIPTS, load_script, small_run_args



def _script(name):
  return load_script(name, f"{name}_flags_test")


def _status(call, argv):
  try:
    return call(argv)
  except SystemExit as e:  # argparse's own errors
    return e.code


def _refused(capsys, call, argv, *words):
  assert _status(call, argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err, err
  for word in words:
    assert word in err, err


def _never(*args, **kwargs):
  raise AssertionError("reached: the check must come first")


# -- --help --------------------------------------------------------------------
def test_run_help_shows_the_defaults(capsys):
  with pytest.raises(SystemExit):
    cli.main(["run", "--help"])
  text = " ".join(capsys.readouterr().out.split())
  for shown in ("epochs per run (default: 20)",
                "training batch size (default: 128)",
                "comma-separated list (default: all)",
                "(default: per-optimizer)", "(default: results)"):
    assert shown in text, shown


def _declared():
  return [settings.CampaignConfig, cli.Processes, cli.ReportFlags,
          analyze.Selection, analyze.Options, experiment.Shared,
          _script("lr_sensitivity").Options,
          _script("test_functions").Options]


def test_a_flag_whose_default_is_none_says_what_none_means():
  for cls in _declared():
    for field in flags.fields(cls):
      if flags.flag_of(field) is None or flags.default_of(field) is not None:
        continue
      assert flags._SAYS_DEFAULT.search(field.metadata["help"]), (
          cls.__name__, field.name)


# -- run -----------------------------------------------------------------------
def test_run_refuses_a_file_as_compile_cache(tmp_path, capsys):
  afile = tmp_path / "afile"
  afile.write_text("")
  out = tmp_path / "out"
  _refused(capsys, cli.main, small_run_args(out, optimizers="adam", extra=[
      "--compile-cache", str(afile)]), "--compile-cache", "existing file")
  _refused(capsys, cli.main, small_run_args(out, optimizers="adam", extra=[
      "--num-processes", "0"]), "--num-processes must be at least 1")
  assert not out.exists()


def test_list_says_what_an_optimizer_uses_besides_the_gradient(capsys):
  assert cli.main(["list"]) == 0
  out = capsys.readouterr().out
  assert "update also uses" in out and "  needs" not in out
  assert "grad_fn" in out and "full_grad" in out


# -- analyze and report --------------------------------------------------------
@pytest.mark.parametrize("flag, value, expected", [
    ("--batch-size", "-4", "--batch-size must be at least 1 (got -4)"),
    ("--batch-size", "0", "--batch-size must be at least 1 (got 0)"),
    ("--samples", "0", "--samples must be at least 1"),
    ("--points-1d", "1", "--points-1d must be at least 2"),
    ("--points-2d", "0", "--points-2d must be at least 2"),
    ("--top-k", "0", "--top-k must be at least 1"),
    ("--top-k", "50", "--top-iterations 40 is smaller than --top-k 50"),
    ("--top-iterations", "-1", "--top-iterations must be at least 1"),
    ("--iterations", "0", "--iterations must be at least 1"),
    ("--probes", "0", "--probes must be at least 1"),
    ("--trace-probes", "1", "--trace-probes must be at least 2"),
    ("--span", "-1", "--span must be a positive finite number"),
    ("--span", "inf", "--span must be a positive finite number"),
    ("--seed", "-1", "--seed must be an integer in [0, 4294967295]"),
    ("--seed", "4294967296", "--seed must be an integer in [0, 4294967295]"),
    ("--split", "dev", "unknown --split 'dev'"),
    ("--bn", "none", "unknown --bn 'none'"),
    ("--seeds", "-1", "--seeds: -1 must be an integer"),
    ("--what", "landscape3d", "--what unknown analysis landscape3d"),
    ("--compare-run", "/no/such/run", "--compare-run /no/such/run: no such"),
])
def test_analyze_refuses_bad_values_before_looking_for_runs(
    tmp_path, capsys, monkeypatch, flag, value, expected):
  monkeypatch.setattr(analyze, "find_runs", _never)
  _refused(capsys, cli.main, ["analyze", "--run-dir", str(tmp_path), flag,
                              value], expected)


def test_report_refuses_bad_directories_before_reading_runs(
    tmp_path, capsys, monkeypatch):
  from optbench_jax.analysis import report
  monkeypatch.setattr(report, "write_report", _never)
  afile = tmp_path / "afile"
  afile.write_text("")
  _refused(capsys, cli.main, ["report", "--campaign-dir", str(tmp_path /
                                                              "none")],
           "--campaign-dir", "no such directory")
  _refused(capsys, cli.main, ["report", "--campaign-dir", str(tmp_path),
                              "--output-dir", str(afile)],
           "--output-dir", "existing file")


# -- the experiment scripts' shared flags --------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["--output-dir", "{file}"], "--output-dir {file} is an existing file"),
    (["--output-dir", "{file}/below"], "which is a file"),
    (["--ray-cpus", "0"], "--ray-cpus must be a positive finite number"),
    (["--shard", "-1/2"], "--shard expects I/N"),
    (["--shard=-1/2"], "--shard expects I/N"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--seeds", "-1"], "--seeds: -1 must be an integer"),
    (["--data-dir", "{file}"], "--data-dir {file} is an existing file"),
    (["--lr-grid", "0.1,-1"], "--lr-grid: -1.0 must be a positive finite"),
])
def test_scripts_refuse_bad_shared_flags_before_planning(
    tmp_path, capsys, monkeypatch, argv, expected):
  module = _script("lr_sensitivity")
  afile = tmp_path / "afile"
  afile.write_text("")
  monkeypatch.setattr(experiment, "make_plan", _never)
  argv = [a.replace("{file}", str(afile)) for a in argv]
  _refused(capsys, module.main, argv, expected.replace("{file}", str(afile)))


def test_script_help_shows_the_scripts_defaults(capsys):
  module = _script("lr_sensitivity")
  with pytest.raises(SystemExit):
    module.main(["--help"])
  text = " ".join(capsys.readouterr().out.split())
  assert "(default: results/lr_sensitivity)" in text
  assert "(default: 1e-05,0.0001,0.001,0.01,0.1,1)" in text


# -- experiments/test_functions.py ---------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["--output-dir", "{file}"], "--output-dir {file} is an existing file"),
    (["--steps", "0"], "--steps must be at least 1 (got 0)"),
    (["--steps", "-5"], "--steps must be at least 1 (got -5)"),
    (["--learning-rate", "-1"], "--learning-rate must be a positive finite"),
    (["--epoch-steps", "0"], "--epoch-steps must be at least 1"),
    (["--seed", "-1"], "--seed must be an integer in"),
    (["--optimizers", "adam,nope"], "--optimizers names unknown optimizer"),
    (["--functions", "himmelblau"], "unknown test function 'himmelblau'"),
])
def test_test_functions_refuses_bad_flags_before_computing(
    tmp_path, capsys, monkeypatch, argv, expected):
  module = _script("test_functions")
  monkeypatch.setattr(module, "run_optimizer", _never)
  afile = tmp_path / "afile"
  afile.write_text("")
  out = tmp_path / "out"
  argv = [a.replace("{file}", str(afile)) for a in argv]
  _refused(capsys, module.main, ["--output-dir", str(out), *argv],
           expected.replace("{file}", str(afile)))
  assert not out.exists()


def test_test_functions_epoch_steps_0_is_refused_not_a_hang(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(SCRIPTS.parent))
  done = subprocess.run(
      [sys.executable, str(SCRIPTS / "test_functions.py"), "--optimizers",
       "svrg", "--epoch-steps", "0", "--steps", "3", "--output-dir",
       str(tmp_path / "out")], capture_output=True, text=True, env=env,
      timeout=600)
  assert done.returncode == 2, done.stderr
  assert done.stderr.strip() == ("error: --epoch-steps must be at least 1 "
                                 "(got 0)")


def test_test_functions_lists_and_resumes(tmp_path, capsys):
  module = _script("test_functions")
  out = tmp_path / "out"
  base = ["--functions", "rosenbrock", "--steps", "3", "--learning-rate",
          "1e-3", "--quiet", "--output-dir", str(out)]
  assert module.main([*base, "--list", "--optimizers", "sgd,kfac"]) == 0
  listed = capsys.readouterr().out
  assert "rosenbrock" in listed and "kfac" in listed and "skipped" in listed
  assert not out.exists()

  assert module.main([*base, "--optimizers", "sgd"]) == 0
  first = (out / "rosenbrock.json").read_text()
  assert module.main([*base, "--optimizers", "sgd,adam"]) == 0
  runs = json.loads((out / "rosenbrock.json").read_text())["runs"]
  assert json.loads(first)["runs"]["sgd"] == runs["sgd"]  # kept
  summary = json.loads((out / "summary.json").read_text())
  assert set(summary["rosenbrock"]) == {"sgd", "adam"}
  capsys.readouterr()
  _refused(capsys, module.main, [*base[:3], "4", *base[4:]],
           "--resume", "steps 3 → 4", "--no-resume")
  assert module.main([*base[:3], "4", *base[4:], "--no-resume",
                      "--optimizers", "sgd"]) == 0
  runs = json.loads((out / "rosenbrock.json").read_text())["runs"]
  assert set(runs) == {"sgd"} and runs["sgd"]["steps_run"] == 4


# -- refusals once the data are split, before training -------------------------
def test_a_batch_larger_than_the_training_split_is_refused(tmp_path, capsys):
  out = tmp_path / "out"
  _refused(capsys, cli.main, small_run_args(
      out, optimizers="adam", epochs=1, batch_size=64, max_samples=50),
           "--batch-size 64", "50 examples")
  assert not list(out.rglob("run_metadata.json"))
  assert not (out / "image_classification").exists()


def test_a_qa_max_length_that_cuts_every_answer_is_refused(tmp_path, capsys):
  out = tmp_path / "out"
  _refused(capsys, cli.main, [
      "run", "--task", "question_answering", "--dataset", "synthetic",
      "--model", "bilstm_attention_qa", "--optimizers", "adam", "--epochs",
      "1", "--batch-size", "32", "--max-samples", "64", "--max-length", "1",
      "--quiet",
      "--output-dir", str(out)], "--max-length 1", "no train example")
  # Nothing written, the vocabulary (fitted before the refusal) included.
  assert not (out / "question_answering").exists()


def test_flags_are_generated_from_a_dataclass():
  @dataclasses.dataclass(frozen=True, kw_only=True)
  class Toy:
    count: int = flags.setting(3, "how many", check=flags.at_least(1))
    name: str = flags.setting(help="a name")
    quiet: bool = flags.setting(False, "no output")
  parser = flags.Parser(prog="toy")
  flags.add_flags(parser, Toy)
  args = parser.parse_args(flags.attach_values(
      ["--name", "x", "--count", "-2"], parser))
  toy = flags.from_args(Toy, args)
  assert toy == Toy(name="x", count=-2, quiet=False)
  with pytest.raises(OptBenchError,
                     match=r"^--count must be at least 1 \(got -2\)$"):
    flags.check(toy)
  assert "how many (default: 3)" in " ".join(parser.format_help().split())
