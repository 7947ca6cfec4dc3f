"""Resume after an interruption; determinism of a seed on CPU."""

import pytest

from optbench_jax import cli
from optbench_jax.train import run as run_lib
from tests.train.helpers import read_history, small_run_args, without_times

OPTIMIZERS = "sgd_momentum,adam"
EPOCHS = 3


class Interrupt(Exception):
  pass


def _campaign(root):
  return root / "image_classification" / "synthetic" / "cnn_scratch"


def test_resume_loses_nothing_and_repeats_nothing(tmp_path, monkeypatch):
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  assert cli.main(small_run_args(reference, optimizers=OPTIMIZERS,
                                 epochs=EPOCHS)) == 0

  # Kill the campaign after epoch 2 of the second optimizer.
  real_train_runs = run_lib.train_runs
  epochs_trained = []

  def interrupting(runs, splits, *, on_epoch=None, kill_after=None,
                   **kwargs):
    def hook(index, record):
      epochs_trained.append((runs[index].config.optimizer, record["epoch"]))
      if on_epoch:
        on_epoch(index, record)
      if kill_after and (runs[index].config.optimizer, record["epoch"]) == kill_after:
        raise Interrupt()
    return real_train_runs(runs, splits, on_epoch=hook, **kwargs)

  monkeypatch.setattr(
      run_lib, "train_runs",
      lambda *a, **k: interrupting(*a, **k, kill_after=("adam", 2)))
  with pytest.raises(Interrupt):
    cli.main(small_run_args(resumed, optimizers=OPTIMIZERS, epochs=EPOCHS))
  assert epochs_trained == [("sgd_momentum", 1), ("sgd_momentum", 2),
                            ("sgd_momentum", 3), ("adam", 1), ("adam", 2)]

  epochs_trained.clear()
  monkeypatch.setattr(run_lib, "train_runs",
                      lambda *a, **k: interrupting(*a, **k))
  assert cli.main(small_run_args(resumed, optimizers=OPTIMIZERS,
                                 epochs=EPOCHS, extra=["--resume"])) == 0
  # The finished run is skipped; the unfinished one trains only epoch 3.
  assert epochs_trained == [("adam", 3)]
  for optimizer in OPTIMIZERS.split(","):
    assert without_times(read_history(_campaign(resumed) / optimizer)) == \
        without_times(read_history(_campaign(reference) / optimizer))
  with open(_campaign(resumed) / "summary.csv") as f:
    assert len(f.read().strip().splitlines()) == 3  # header + 2 rows


def test_same_seed_gives_identical_histories(tmp_path):
  histories = []
  for name in ("a", "b"):
    assert cli.main(small_run_args(tmp_path / name, optimizers="adam",
                                   epochs=2)) == 0
    histories.append(without_times(read_history(
        _campaign(tmp_path / name) / "adam")))
  assert histories[0] == histories[1]
  assert cli.main(small_run_args(tmp_path / "c", optimizers="adam", epochs=2,
                                 extra=["--seed", "1"])) == 0
  assert without_times(read_history(_campaign(tmp_path / "c") / "adam")) != \
      histories[0]


def test_resume_of_runs_trained_together(tmp_path, monkeypatch):
  """Two seeds in one program, killed after epoch 2, resumed: both runs
  continue from their common checkpoint and equal the uninterrupted ones."""
  seeds = ["--seeds", "0,1"]
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  assert cli.main(small_run_args(reference, optimizers="adam", epochs=EPOCHS,
                                 extra=seeds)) == 0
  real_train_runs = run_lib.train_runs
  trained = []

  def interrupting(runs, splits, *, on_epoch=None, kill=True,
                   **kwargs):
    def hook(index, record):
      trained.append((runs[index].config.seed, record["epoch"]))
      on_epoch(index, record)
      if kill and (runs[index].config.seed, record["epoch"]) == (1, 2):
        raise Interrupt()
    return real_train_runs(runs, splits, on_epoch=hook, **kwargs)

  monkeypatch.setattr(run_lib, "train_runs", interrupting)
  with pytest.raises(Interrupt):
    cli.main(small_run_args(resumed, optimizers="adam", epochs=EPOCHS,
                            extra=seeds))
  trained.clear()
  monkeypatch.setattr(run_lib, "train_runs",
                      lambda *a, **k: interrupting(*a, **k, kill=False))
  assert cli.main(small_run_args(resumed, optimizers="adam", epochs=EPOCHS,
                                 extra=seeds + ["--resume"])) == 0
  assert trained == [(0, 3), (1, 3)]
  for seed in (0, 1):
    run = _campaign(resumed) / "adam" / f"seed_{seed}"
    assert without_times(read_history(run)) == without_times(
        read_history(_campaign(reference) / "adam" / f"seed_{seed}"))
