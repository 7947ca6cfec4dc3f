"""The run store (``optbench_jax/store.py``): names, atomic writes, reading
runs in every state, finding runs. No training: files written by hand."""
import json
import os

import pytest

from optbench_jax import store
from optbench_jax.errors import OptBenchError


def _run(directory, meta=None, history=None):
  os.makedirs(directory, exist_ok=True)
  if meta is not None:
    with open(os.path.join(directory, store.METADATA), "w") as f:
      f.write(meta if isinstance(meta, str) else json.dumps(meta))
  if history is not None:
    with open(os.path.join(directory, store.HISTORY), "w") as f:
      f.write(history if isinstance(history, str) else json.dumps(history))
  return directory


def test_directory_names_and_labels():
  assert store.run_dir("out", "t", "d", "m", "adam") == os.path.join(
      "out", "t", "d", "m", "adam")
  assert store.run_dir("out", "t", "d", "m", "adam", learning_rate=1e-3,
                       seed=2) == os.path.join("out", "t", "d", "m", "adam",
                                               "lr_0.001", "seed_2")
  assert store.run_label("adam", learning_rate=1e-3, seed=2) == \
      "adam lr=0.001 seed=2"
  assert store.run_label("adam") == "adam"


@pytest.mark.parametrize("meta, history, state", [
    ({"status": "completed", "epochs_run": 2}, [{}, {}], "completed"),
    ({"status": "diverged", "epochs_run": 1}, [{}], "diverged"),
    ({"status": "running"}, [{}], "unfinished"),
    ({"status": "completed", "epochs_run": 3}, [{}, {}], "unfinished"),
    ("{\"status\": \"comp", [{}], "unreadable"),          # truncated
    ("[]", [{}], "unreadable"),                          # JSON of wrong type
    ({"status": "completed", "epochs_run": 1}, "{}", "unreadable"),
    ({"status": "completed", "epochs_run": 1}, "[1]", "unreadable"),
    (None, [{}], "unreadable"),                          # no metadata
])
def test_a_run_is_read_in_every_state(tmp_path, meta, history, state):
  run = store.read_run(_run(str(tmp_path / "r"), meta, history))
  assert run.state == state
  assert run.finished == (state in store.FINISHED)
  assert (store.read_finished(run.run_dir) is not None) == run.finished
  if state == "unreadable":
    assert run.problem and "\n" not in run.problem


def test_wrong_json_type_names_what_it_holds(tmp_path):
  run = store.read_run(_run(str(tmp_path / "r"), "[]", [{}]))
  assert run.problem.startswith("metadata damaged: ")
  assert "holds a JSON list, not a dict" in run.problem


def test_a_damaged_history_alone_is_named_and_the_metadata_kept(tmp_path):
  meta = {"status": "completed", "epochs_run": 1, "optimizer": "adam"}
  run = store.read_run(_run(str(tmp_path / "r"), meta, '[{"epoch": 1, "t'))
  assert run.state == "unreadable" and run.metadata == meta
  assert run.problem.startswith(
      f"history damaged: {tmp_path / 'r' / store.HISTORY}: ")


def test_damaged_sample_files_are_found_with_their_epochs(tmp_path):
  run = str(tmp_path / "r")
  for epoch, text in ((1, "[{}]"), (2, '[{"source": "a'), (None, "")):
    os.makedirs(os.path.dirname(store.samples_path(run, epoch)),
                exist_ok=True)
    with open(store.samples_path(run, epoch), "w") as f:
      f.write(text)
  assert store.samples_path(run, 2).endswith(
      os.path.join(store.SAMPLES, "epoch_002.json"))
  assert store.damaged_samples(run) == {store.samples_path(run, 2): 2,
                                        store.samples_path(run, None): None}
  assert store.damaged_samples(str(tmp_path / "absent")) == {}


def test_the_campaign_directory_above_a_run(tmp_path):
  campaign = tmp_path / "out" / "t" / "d" / "m"
  run = campaign / "adam" / "seed_0"
  assert store.campaign_dir_above(str(run), "t", "d", "m") == str(campaign)
  assert store.campaign_dir_above(str(run), "t", "d", "other") is None


def test_atomic_writes_leave_no_partial_file_and_cleanup_is_recursive(
    tmp_path):
  path = tmp_path / "a" / "x.json"
  store.write_json(str(path), {"v": float("nan"), "t": (1, 2)})
  assert json.loads(path.read_text()) == {"v": None, "t": [1, 2]}
  with pytest.raises(RuntimeError):
    with store.atomic_path(str(path)):
      raise RuntimeError("killed")
  assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]
  (tmp_path / "a" / ".tmp-left").write_text("{")
  (tmp_path / "a" / "b").mkdir()
  (tmp_path / "a" / "b" / ".tmp-deeper").write_text("{")
  store.remove_partial_writes(str(tmp_path / "a"))
  assert not (tmp_path / "a" / ".tmp-left").exists()
  assert (tmp_path / "a" / "b" / ".tmp-deeper").exists()
  store.remove_partial_writes(str(tmp_path / "a"), recursive=True)
  assert not (tmp_path / "a" / "b" / ".tmp-deeper").exists()


def test_find_runs_stops_at_runs_and_skips_their_folders(tmp_path):
  done = {"status": "completed", "epochs_run": 1}
  a = _run(str(tmp_path / "c" / "adam" / "seed_0"), done, [{}])
  b = _run(str(tmp_path / "c" / "sgd"), done, [{}])
  # folders inside a run or a campaign never count as runs
  _run(str(tmp_path / "c" / "sgd" / store.ANALYSIS / "x"), done, [{}])
  _run(str(tmp_path / "c" / store.REPORT / "y"), done, [{}])
  assert store.find_runs(str(tmp_path)) == [a, b]
  assert store.find_runs(a) == [a]
  (tmp_path / "empty").mkdir()
  with pytest.raises(OptBenchError, match="--campaign-dir .* holds no run"):
    store.find_runs(str(tmp_path / "empty"), flag="--campaign-dir")
  with pytest.raises(OptBenchError, match="is not a directory"):
    store.find_runs(str(tmp_path / "missing"))


def test_a_block_that_raises_leaves_the_directory_as_it_was(tmp_path):
  kept = tmp_path / "kept"
  kept.mkdir()
  (kept / "a.json").write_text("before")
  with pytest.raises(OptBenchError):
    with store.unchanged_on_error(str(kept), ["a.json", "b.json"]):
      store.write_text(str(kept / "a.json"), "after")
      store.write_text(str(kept / "b.json"), "new")
      raise OptBenchError("refused")
  assert sorted(os.listdir(kept)) == ["a.json"]
  assert (kept / "a.json").read_text() == "before"
  # Directories the block created are removed, the outermost included.
  new = tmp_path / "new" / "deeper"
  with pytest.raises(OptBenchError):
    with store.unchanged_on_error(str(new), ["a.json"]):
      store.write_text(str(new / "a.json"), "x")
      raise OptBenchError("refused")
  assert sorted(os.listdir(tmp_path)) == ["kept"]
  # Without an error, what the block wrote stays.
  with store.unchanged_on_error(str(new), ["a.json"]):
    store.write_text(str(new / "a.json"), "x")
  assert (new / "a.json").read_text() == "x"
