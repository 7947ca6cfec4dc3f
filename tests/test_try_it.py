"""Every task's try-it command of the README runs (at a tiny size).

README.md's "Try each task" block holds one ``python -m optbench_jax run``
command per task (the user guide's page the same block). Each command, as
written, must pass every check of a campaign's plan; and each is run here
in-process with tiny overrides appended (argparse keeps a flag's last
value): one epoch, a few examples, a quarter of the model's widths, short
texts. It must exit 0 and write a history whose one epoch has a finite
training loss and the task's primary metric.

Every task's tiny run is in the default suite (issue 22). They are
compile-bound (XLA:CPU compiles the initialisation, the epoch and the
evaluation whatever the size): the README states the commands' measured
CPU time. Where a task's end-to-end test trained the same dataset and model
(U-Net on synthetic images, the BiLSTM reader on synthetic QA, the real
tweets and review sentences), that test is ``slow`` now and the tiny run
here checks what every campaign writes.
"""
from __future__ import annotations

import json
import math
import pathlib
import re
import shlex

import pytest

from optbench_jax import cli, flags, tasks
from optbench_jax.train import plan, settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
USER_GUIDE = ROOT / "docs" / "user-guide" / "index.md"
SECTION = "## Try each task"
PREFIX = "python -m optbench_jax "
# Appended to every command: the smallest run that still trains, evaluates
# and tests (argparse: the last value of a flag wins).
TINY = ["--epochs", "1", "--max-samples", "24", "--batch-size", "8",
        "--eval-max-samples", "4", "--test-max-samples", "4", "--width",
        "0.25", "--quiet"]
# Only for the tasks that have the setting (others refuse it).
TINY_TASK_SETTINGS = {"max_length": "32", "target_length": "8",
                      "beam_size": "1"}


def try_it_commands(text: str) -> dict[str, list[str]]:
  """``{task: argv}`` of the commands in the README's try-it section."""
  section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
  commands = {}
  for block in re.findall(r"```bash\n(.*?)```", section, re.S):
    for line in block.splitlines():
      if line.startswith(PREFIX):
        argv = shlex.split(line[len(PREFIX):])
        task = argv[argv.index("--task") + 1]
        assert task not in commands, f"two try-it commands for {task}"
        commands[task] = argv
  return commands


COMMANDS = try_it_commands(README.read_text(encoding="utf-8"))


def test_every_task_has_a_try_it_command():
  assert sorted(COMMANDS) == sorted(tasks.TASKS.names())
  assert try_it_commands(USER_GUIDE.read_text(encoding="utf-8")) == COMMANDS


@pytest.mark.parametrize("task_name", sorted(COMMANDS))
def test_try_it_command_as_written_passes_the_plan(task_name):
  args = cli.build_parser().parse_args(COMMANDS[task_name])
  cfg = flags.from_args(settings.CampaignConfig, args)
  assert plan.make_plan(cfg).campaign.task == task_name


def tiny(argv: list[str], task: tasks.Task, output_dir) -> list[str]:
  extra = [arg for name, value in TINY_TASK_SETTINGS.items()
           if getattr(task, f"default_{name}") is not None
           for arg in (f"--{name.replace('_', '-')}", value)]
  return [*argv, *TINY, *extra, "--output-dir", str(output_dir)]


@pytest.mark.parametrize("task_name", sorted(COMMANDS))
def test_try_it_command_runs_tiny(task_name, tmp_path):
  argv = COMMANDS[task_name]
  task = tasks.get(task_name)
  assert cli.main(tiny(argv, task, tmp_path)) == 0
  (history_file,) = tmp_path.rglob("history.json")
  history = json.loads(history_file.read_text())
  assert [h["epoch"] for h in history] == [1]
  assert math.isfinite(history[0]["train_loss"])
  assert math.isfinite(history[0]["val_loss"])
  primary = task.primary_metric
  assert history[0][primary] is not None
  run = history_file.parent
  meta = json.loads((run / "run_metadata.json").read_text())
  assert meta["width"] == 0.25 and meta["status"] == "completed"
  assert meta["n_test"] <= 4
  if meta["n_test"]:  # datasets without a test split have no test metrics
    assert primary in meta["test_metrics"]
  assert "object at 0x" not in json.dumps(meta["dataset_info"])
  for name in ("summary.csv", "epochs.csv", f"{primary}_all_optimizers.png"):
    assert (run.parent / name).stat().st_size > 0, name
  for name in (f"{primary}_and_val_loss.png", "train_vs_val_loss.png"):
    assert (run / name).stat().st_size > 0, name
