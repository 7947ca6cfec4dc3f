"""The experiment scripts (``experiments/``) and their shared command line
(``optbench_jax/experiment.py``).

The configurations of every script resolve to campaigns that pass
``settings.check`` (every task, dataset, model and optimizer registered);
the thesis script's 32 rows and 16 optimizers are checked against
``shared/reference/source-studies.md`` §1.1–2 ([T]'s batch sizes and caps
for a row of each task); ``--list``, ``--configs`` and bad input are checked
through ``main``; and ``lr_sensitivity.py`` runs end to end on a tiny
subset (adam at two learning rates, one of them diverging; one epoch, 128
examples) and writes its figure and CSV, whose numbers are the runs'.
"""
import csv
import json
import os

import matplotlib.image
import pytest

from optbench_jax import data, experiment, models
from optbench_jax.errors import OptBenchError
from optbench_jax.campaign import dispatch
from optbench_jax.train.plan import make_plan
from tests.train.helpers import load_script


_script = load_script


def _main(module, argv):
  if hasattr(module, "main"):
    return module.main(argv)
  return experiment.main(module.CONFIGURATIONS, module.OPTIMIZERS, argv,
                         script=module.__file__)


def _registered(config):
  return (config.dataset in data.names_for(config.task)
          and config.model in models.names_for(config.task))


def _plan(module, tmp_path, argv=()):
  parser = experiment.build_parser(module.__file__,
                                   options=getattr(module, "Options", None))
  args = parser.parse_args(["--output-dir", str(tmp_path), *argv])
  return experiment.campaigns(module.CONFIGURATIONS, module.OPTIMIZERS, args)


@pytest.mark.parametrize("name", ["thesis_campaign", "warwick_cifar100",
                                  "lr_sensitivity", "tuning_study"])
def test_every_configuration_is_a_valid_campaign(name, tmp_path):
  module = _script(name)
  assert module.__doc__.strip()  # states where its settings come from
  names = [c.name for c in module.CONFIGURATIONS]
  assert len(names) == len(set(names))
  missing = [c for c in module.CONFIGURATIONS if not _registered(c)]
  if missing:
    pytest.skip(f"not registered yet: "
                f"{', '.join(f'{c.dataset}/{c.model}' for c in missing)}")
  plan = _plan(module, tmp_path)
  assert [n for n, _ in plan] == names
  for _, cfg in plan:
    make_plan(cfg)  # settings.check: names, values, combinations


def test_thesis_campaign_has_the_sources_32_rows_and_16_optimizers(
    tmp_path):
  module = _script("thesis_campaign")
  assert module.OPTIMIZERS == [
      "sgd", "sgd_momentum", "lars", "rmsprop", "adam", "adagrad",
      "adadelta", "adafactor", "adabelief", "adamw", "radam", "lion", "lamb",
      "yogi", "sam", "gsam"]
  plan = dict(_plan(module, tmp_path))
  assert len(plan) == 32
  assert {c.epochs for c in plan.values()} == {20}
  assert len({(c.task, c.dataset, c.model) for c in plan.values()}) == 32
  # [T] §2: (row, task, dataset, model, batch size, --max-samples).
  rows = [(1, "image_classification", "mnist", "cnn_scratch", 128, 20_000),
          (4, "image_classification", "cifar10", "resnet18", 128, 15_000),
          (5, "semantic_segmentation", "oxford_iiit_pet",
           "deeplabv3_resnet50", 8, 5_000),
          (8, "semantic_segmentation", "voc2012", "unet_vanilla", 8, 3_000),
          (9, "sentiment_analysis", "imdb", "lstm_sentiment", 16, 115_000),
          (12, "sentiment_analysis", "sst2", "distilbert_sentiment", 64,
           10_000),
          (15, "machine_translation", "opus_books_en_de",
           "transformer_seq2seq", 64, 10_000),
          (17, "question_answering", "squad_v1", "transformer_qa", 32,
           20_000),
          (20, "question_answering", "tweet_qa", "bilstm_attention_qa", 64,
           8_000),
          (22, "ner", "conll2003", "bilstm_crf_charcnn_ner", 64, 8_000),
          (27, "text_generation", "ptb_text_only", "gpt_small", 64, 50_000),
          (29, "text_summarization", "cnn_dailymail", "bart_small", 16,
           8_000),
          (32, "text_summarization", "aeslc", "tiny_transformer_seq2seq", 32,
           10_000)]
  configs = list(plan.values())
  for row, task, dataset, model, batch, cap in rows:
    cfg = configs[row - 1]
    assert (cfg.task, cfg.dataset, cfg.model, cfg.batch_size,
            cfg.max_samples) == (task, dataset, model, batch, cap), row
  # Schedules by task family (§3.9.3); stated sequence lengths (§3).
  assert all(c.scheduler == ("cosine" if c.task in (
      "image_classification", "semantic_segmentation") else "plateau")
             for c in configs)
  assert configs[18].max_length == 256 and configs[16].max_length == 384
  assert configs[12].vocab_size == 30_000 and configs[14].vocab_size == 40_000
  # Weight decay (§4.3): stated for the sentiment-analysis rows, none
  # elsewhere -- every row states one, so no optimizer's own default (AdamW's
  # 1e-2) applies.
  assert [c.weight_decay for c in configs[8:12]] == [1e-5, 0.01, 1e-5, 0.01]
  assert {c.weight_decay for c in configs[:8] + configs[12:]} == {0.0}
  assert len(dispatch.units([(n, make_plan(c)) for n, c in plan.items()])
             ) == 32 * 16


def test_warwick_script_has_its_optimizers_and_40_epochs(tmp_path):
  module = _script("warwick_cifar100")
  assert set(module.OPTIMIZERS) == {"sgd", "adam", "radam", "amsgrad", "yogi",
                                    "svrg", "lookahead", "ranger", "kfac",
                                    "shampoo"}
  plan = dict(_plan(module, tmp_path))
  assert {(c.dataset, c.model, c.epochs) for c in plan.values()} == {
      ("cifar100", "resnet18", 40), ("cifar100", "vgg11", 40)}
  units = [u.label for u in dispatch.units(
      [(n, make_plan(c)) for n, c in plan.items()])]
  assert len(units) == 10 + 8 and "vgg11/shampoo" not in units
  # --optimizers overrides every configuration's list.
  plan = dict(_plan(module, tmp_path, ["--optimizers", "sgd,shampoo"]))
  assert [c.optimizers for c in plan.values()] == ["sgd,shampoo"] * 2


def test_list_prints_configurations_and_the_shards_units(capsys):
  module = _script("thesis_campaign")
  assert _main(module, ["--list"]) == 0
  out = capsys.readouterr().out
  assert "configurations (32 of 32):" in out
  assert "512 in all" in out and "mnist_cnn/sgd" in out
  assert _main(module, ["--list", "--configs", "1-2,squad_bilstm",
                        "--optimizers", "adam,sam", "--shard", "2/4"]) == 0
  out = capsys.readouterr().out
  assert "configurations (3 of 32):" in out and "squad_bilstm" in out
  assert "6 in all, shard 2/4: 2" in out


@pytest.mark.parametrize("argv, message", [
    (["--configs", "nope"], "unknown configuration 'nope'"),
    (["--configs", "33"], "positions 1..32"),
    (["--configs", "3-1"], "unknown configuration '3-1'"),
    (["--optimizers", "adamm"], "adamm"),
    (["--shard", "3/2"], "--shard 3/2"),
    (["--shard", "0/0"], "--shard 0/0"),
    (["--shard", "x"], "--shard expects I/N"),
    (["--max-samples", "0"], "--max-samples must be at least 1"),
    (["--backend", "slurm"], "unknown --backend 'slurm'"),
    (["--seeds", "0,0", "--configs", "1"], "--seeds repeats a seed"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, capsys,
                                            tmp_path):
  module = _script("thesis_campaign")
  argv = [*argv, "--output-dir", str(tmp_path)]
  try:
    status = _main(module, argv)
  except SystemExit as e:  # argparse's own errors
    status = e.code
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 2
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_configuration_refuses_unknown_and_command_line_settings():
  with pytest.raises(OptBenchError, match="'batchsize' is not a setting"):
    experiment.Configuration("x", task="image_classification",
                             dataset="digits", model="cnn_scratch",
                             batchsize=3)
  with pytest.raises(OptBenchError, match="'output_dir' is not a setting"):
    experiment.Configuration("x", task="image_classification",
                             dataset="digits", model="cnn_scratch",
                             output_dir="elsewhere")


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_lr_sensitivity_runs_end_to_end_and_draws_its_figure(tmp_path,
                                                              capsys):
  module = _script("lr_sensitivity")
  argv = ["--optimizers", "adam", "--lr-grid", "1e-3,1e9", "--epochs", "1",
          "--max-samples", "128", "--quiet", "--output-dir", str(tmp_path)]
  assert module.main(argv) == 0
  out = capsys.readouterr().out
  assert "1 of 1 work units finished" in out
  directory = tmp_path / "image_classification" / "mnist_5k" / "cnn_scratch"
  image = matplotlib.image.imread(directory / "lr_sensitivity.png")
  assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
  rows = {float(r["learning_rate"]): r
          for r in _read_csv(directory / "lr_sensitivity.csv")}
  assert sorted(rows) == [1e-3, 1e9]
  with open(directory / "adam" / "lr_0.001" / "history.json") as f:
    history = json.load(f)
  assert float(rows[1e-3]["final_primary_mean"]) == history[-1]["accuracy"]
  assert rows[1e-3]["n_diverged"] == "0" and rows[1e-3]["default_lr"] == \
      "0.001"
  assert rows[1e9]["n_diverged"] == "1"
  assert rows[1e9]["final_primary_mean"] == ""
  summary = _read_csv(directory / "summary.csv")
  assert [(r["learning_rate"], r["status"]) for r in summary] == [
      ("0.001", "completed"), ("1000000000.0", "diverged")]

  # Run again: resumed by default, nothing trains, the results stay.
  stamp = os.stat(directory / "adam" / "lr_0.001" / "history.json").st_mtime
  assert module.main(argv) == 0
  assert os.stat(directory / "adam" / "lr_0.001" /
                 "history.json").st_mtime == stamp


def test_units_whose_data_is_missing_fail_alone_with_status_1(
    tmp_path, capsys, monkeypatch):
  from optbench_jax.errors import MissingDataError
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # missing, and not downloaded
  try:
    data.load("image_classification", "mnist")
    pytest.skip("MNIST is in the local cache here; this test needs it absent")
  except MissingDataError:
    pass
  module = _script("thesis_campaign")
  assert _main(module, ["--configs", "mnist_cnn", "--optimizers", "sgd,adam",
                        "--epochs", "1", "--max-samples", "64",
                        "--output-dir", str(tmp_path)]) == 1
  captured = capsys.readouterr()
  failed = [line for line in captured.err.splitlines()
            if line.startswith("FAILED ")]
  assert [line.split(":")[0] for line in failed] == [
      "FAILED mnist_cnn/sgd", "FAILED mnist_cnn/adam"]
  assert all("dataset 'mnist' is not in any local cache" in line
             for line in failed)
  assert "0 of 2 work units finished" in captured.out


def test_a_batch_larger_than_a_units_split_fails_that_unit_alone(
    tmp_path, capsys):
  """A refusal that only a configuration's data can raise (its batch size
  against its training split) comes once that unit's data are loaded,
  before it trains or writes anything: the unit fails in one line and the
  script exits 1 (the others would go on), as a unit whose data are
  missing does."""
  module = _script("lr_sensitivity")
  assert _main(module, ["--optimizers", "adam", "--epochs", "1",
                        "--max-samples", "100", "--output-dir",
                        str(tmp_path)]) == 1
  captured = capsys.readouterr()
  (failed,) = [line for line in captured.err.splitlines()
               if line.startswith("FAILED ")]
  assert "--batch-size 128 is larger than the training split" in failed
  assert not list(tmp_path.rglob("run_metadata.json"))


def test_tuning_study_ranks_ties_and_missing_values():
  ranks = _script("tuning_study").ranks
  assert ranks({"a": 0.9, "b": 0.5, "c": 0.9, "d": None}, True) == {
      "a": 1.5, "b": 3.0, "c": 1.5, "d": 4.0}
  assert ranks({"a": 2.0, "b": 1.0, "c": None}, False) == {
      "a": 2.0, "b": 1.0, "c": 3.0}


@pytest.mark.slow
def test_tuning_study_runs_both_campaigns_and_compares_them(tmp_path,
                                                           capsys):
  module = _script("tuning_study")
  argv = ["--configs", "digits_cnn", "--optimizers", "sgd,adam,lion",
          "--trials", "2", "--epochs", "1", "--seeds", "0",
          "--max-samples", "256", "--quiet", "--output-dir", str(tmp_path)]
  assert module.main(argv) == 0
  rows = _read_csv(tmp_path / "tuning_study.csv")
  assert [r["optimizer"] for r in rows] == ["sgd", "adam", "lion"]
  for r in rows:
    assert r["metric"] == "best validation accuracy" and r["n_seeds"] == "1"
  assert sorted(float(r["default_rank"]) for r in rows) == [1.0, 2.0, 3.0]
  report = (tmp_path / "tuning_study.md").read_text()
  assert "Kendall's τ" in report and "Wall time" in report
  for kind in ("defaults", "tuned"):
    assert (tmp_path / kind / "image_classification" / "digits" /
            "cnn_scratch" / "summary.csv").exists()
