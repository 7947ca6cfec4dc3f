"""Work units, shards and the Ray backend (``campaign/dispatch.py``).

A tiny campaign (image_classification / digits / cnn_scratch, sgd and
adam, seeds 0 and 1, one epoch, 64 training examples) is trained three ways into
three output directories: all units in this process, as two shards (two
``run_local`` calls, as two jobs of an array would), and on a local Ray
cluster with two workers. The three trees hold the same files, and the
runs' histories, ``summary.csv``, ``seeds.csv`` and ``epochs.csv`` are equal
**exactly** apart from wall-time columns (measured: identical; the same
compiled programs run with the same keys on the same CPU). On Ray a third
unit whose data is missing fails in its worker and is reported while the
others finish. The Ray test starts a local cluster (``ray.init(num_cpus=2)``)
and took 18 s alone, 155 s beside the suite's other worker: it is slow, and
the default suite runs a failing unit on Ray only. Both skip where Ray is
not installed.
"""
import csv
import os

import pytest

from optbench_jax.errors import OptBenchError
from optbench_jax.campaign import dispatch
from optbench_jax.train.plan import make_plan
from optbench_jax.train.settings import CampaignConfig
from tests.train.helpers import read_history, without_times

TIME_COLUMNS = ("train_time_s", "eval_time_s", "compile_time_s",
                "total_runtime_s", "time_to_convergence_s",
                "cumulative_train_time_s")
CAMPAIGN = ("image_classification", "digits", "cnn_scratch")
OPTIMIZERS = ("sgd", "adam")
SEEDS = (0, 1)


def _config(output_dir, optimizers="sgd,adam", **overrides):
  values = dict(task="image_classification", dataset="digits",
                model="cnn_scratch", optimizers=optimizers,
                seeds=list(SEEDS), epochs=1, batch_size=32, max_samples=64,
                output_dir=str(output_dir), quiet=True)
  values.update(overrides)
  return make_plan(CampaignConfig(**values))


def _fake_plan(sizes):
  """Configurations with ``sizes[c]`` optimizers each (nothing trained)."""
  names = ["sgd", "sgd_momentum", "lars", "rmsprop", "adam", "adagrad",
           "adadelta", "adafactor", "adabelief", "adamw", "radam", "lion",
           "lamb", "yogi", "sam", "gsam"]
  return [(f"config{c}", _config("unused", ",".join(names[:n]),
                                 epochs=c + 1))
          for c, n in enumerate(sizes)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 8, 40])
def test_shards_are_disjoint_balanced_and_cover_every_unit(count):
  every = dispatch.units(_fake_plan([16, 10, 3]))
  assert len(every) == 29
  shards = [dispatch.shard(every, i, count) for i in range(1, count + 1)]
  labels = [[u.label for u in s] for s in shards]
  flat = [label for s in labels for label in s]
  assert sorted(flat) == sorted(u.label for u in every)
  assert len(flat) == len(set(flat)) == len(every)
  sizes = [len(s) for s in shards]
  assert max(sizes) - min(sizes) <= 1
  order = [u.label for u in every]
  for s in labels:  # each shard keeps the units' order
    assert [order.index(x) for x in s] == sorted(order.index(x) for x in s)


def test_units_are_in_configuration_then_optimizer_order():
  every = dispatch.units(_fake_plan([3, 2]))
  assert [u.label for u in every] == [
      "config0/sgd", "config0/sgd_momentum", "config0/lars", "config1/sgd",
      "config1/sgd_momentum"]
  assert (every[0].plan.campaign.epochs == 1
          and every[3].plan.campaign.epochs == 2)


def test_the_deal_rotates_so_an_optimizer_moves_between_shards():
  # 16 optimizers, 8 shards: without the rotation each shard would get the
  # same two optimizers in every configuration.
  every = dispatch.units(_fake_plan([16, 16, 16]))
  homes = {}
  for i in range(1, 9):
    for unit in dispatch.shard(every, i, 8):
      homes.setdefault(unit.optimizer, set()).add(i)
  assert all(len(shards) == 3 for shards in homes.values())


@pytest.mark.parametrize("text", ["3/2", "0/0", "0/3", "2/0", "-1/2", "1/",
                                  "a/b", "", "1/2/3", "1.5/2", "two"])
def test_bad_shard_strings_are_one_line_errors(text):
  with pytest.raises(OptBenchError) as info:
    dispatch.parse_shard(text)
  assert "\n" not in str(info.value) and "--shard" in str(info.value)


def test_good_shard_strings():
  assert dispatch.parse_shard("1/1") == (1, 1)
  assert dispatch.parse_shard(" 3 / 4 ") == (3, 4)
  with pytest.raises(OptBenchError):
    dispatch.shard([], 5, 4)


def test_unknown_backend_is_a_one_line_error():
  with pytest.raises(OptBenchError, match="unknown --backend 'slurm'"):
    dispatch.run([], "slurm")


def test_missing_ray_names_the_extra(monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_ray(name, *args, **kwargs):
    if name == "ray":
      raise ImportError("No module named 'ray'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_ray)
  with pytest.raises(OptBenchError, match=r"optbench_jax\[cluster\]"):
    dispatch.run([], "ray")


def _campaign_dir(root):
  return os.path.join(str(root), *CAMPAIGN)


def _files(root):
  """Every file under ``root`` (relative paths), the lock file aside; in
  checkpoint directories, whose file names Orbax draws at random, the
  checkpoints (``checkpoints/initial``, ``checkpoints/epochs/<n>``)."""
  out = set()
  for directory, _, names in os.walk(root):
    for name in names:
      parts = os.path.relpath(os.path.join(directory, name), root).split(
          os.sep)
      if "checkpoints" in parts:
        i = parts.index("checkpoints")
        parts = parts[:i + (3 if parts[i + 1] == "epochs" else 2)]
      if parts[-1] != ".campaign.lock":
        out.add("/".join(parts))
  return out


def _csv(path, drop=TIME_COLUMNS):
  with open(path) as f:
    return [{k: v for k, v in row.items() if k not in drop}
            for row in csv.DictReader(f)]


def _assert_same_results(reference, other):
  assert _files(other) == _files(reference)
  for optimizer in OPTIMIZERS:
    for seed in SEEDS:
      run = os.path.join(optimizer, f"seed_{seed}")
      assert without_times(read_history(
          os.path.join(_campaign_dir(other), run))) == without_times(
              read_history(os.path.join(_campaign_dir(reference), run)))
  for name in ("summary.csv", "seeds.csv", "epochs.csv"):
    assert _csv(os.path.join(_campaign_dir(other), name)) == _csv(
        os.path.join(_campaign_dir(reference), name)), name
  rows = _csv(os.path.join(_campaign_dir(reference), "summary.csv"))
  assert [(r["optimizer"], r["seed"]) for r in rows] == [
      (o, str(s)) for o in OPTIMIZERS for s in SEEDS]
  assert all(r["status"] == "completed" for r in rows)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
  """The tiny campaign, every unit in this process, in one go."""
  root = tmp_path_factory.mktemp("sequential")
  outcomes = dispatch.run_local(dispatch.units([("tiny", _config(root))]))
  assert [o.error for o in outcomes] == [None, None]
  assert [len(o.rows) for o in outcomes] == [2, 2]
  return root


def test_two_shards_into_one_directory_equal_the_whole(sequential, tmp_path):
  every = dispatch.units([("tiny", _config(tmp_path))])
  first = dispatch.run_local(dispatch.shard(every, 1, 2))
  assert [o.unit.optimizer for o in first] == ["sgd"]
  # After the first shard the campaign files hold its runs only ...
  assert [r["optimizer"] for r in _csv(os.path.join(
      _campaign_dir(tmp_path), "summary.csv"))] == ["sgd", "sgd"]
  second = dispatch.run_local(dispatch.shard(every, 2, 2))
  assert [o.unit.optimizer for o in second] == ["adam"]
  assert all(o.ok for o in first + second)
  # ... and after the second they are the whole campaign's.
  _assert_same_results(sequential, tmp_path)


def test_a_failing_unit_is_reported_and_the_others_go_on(tmp_path,
                                                         monkeypatch):
  from optbench_jax.campaign import runner as campaign
  real = campaign.run_campaign

  def failing(cfg, optimizers=None, **kwargs):
    if optimizers == ["sgd"]:
      raise RuntimeError("boom")
    return real(cfg, optimizers, **kwargs)

  monkeypatch.setattr(campaign, "run_campaign", failing)
  seen = []
  outcomes = dispatch.run_local(
      dispatch.units([("tiny", _config(tmp_path))]),
      report=seen.append)
  assert [o.ok for o in outcomes] == [False, True] and seen == outcomes
  assert outcomes[0].error.startswith("RuntimeError: boom")
  assert [r["optimizer"] for r in _csv(os.path.join(
      _campaign_dir(tmp_path), "summary.csv"))] == ["adam", "adam"]


def _ray(monkeypatch, num_cpus):
  ray = pytest.importorskip("ray", reason="Ray is not installed (pip "
                            "install 'optbench_jax[cluster]')")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the workers never download
  ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
  return ray


# Ray starts its processes with fork + exec (safe); JAX warns on any fork.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_a_unit_failing_in_a_ray_worker_is_reported(tmp_path, monkeypatch):
  """The Ray backend's path without training (seconds): the unit runs in
  a worker, whose error (MNIST not in the local cache) comes back."""
  ray = _ray(monkeypatch, num_cpus=1)
  broken = _config(tmp_path, optimizers="sgd", dataset="mnist")
  try:
    outcomes = dispatch.run(dispatch.units([("broken", broken)]), "ray")
  finally:
    ray.shutdown()
  assert [(o.unit.label, o.ok) for o in outcomes] == [("broken/sgd", False)]
  assert outcomes[0].error.startswith("dataset 'mnist' is not in any local "
                                      "cache")


# Training on Ray workers: 18 s alone, 155 s beside the suite's other worker
# (2-core CPU), hence slow; the test above keeps Ray's path in the default
# suite.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_ray_backend_on_two_local_workers_equals_the_sequential_run(
    sequential, tmp_path, monkeypatch):
  ray = _ray(monkeypatch, num_cpus=2)
  # A third unit fails in its worker (MNIST is not in the local cache): it
  # is reported and the others go on.
  broken = _config(tmp_path, optimizers="sgd", dataset="mnist")
  try:
    assert dispatch.task_resources(ray) == {"num_cpus": 1.0}
    outcomes = dispatch.run(dispatch.units(
        [("tiny", _config(tmp_path)), ("broken", broken)]), "ray")
  finally:
    ray.shutdown()
  assert [o.unit.label for o in outcomes] == ["tiny/sgd", "tiny/adam",
                                              "broken/sgd"]
  assert [o.ok for o in outcomes] == [True, True, False]
  assert outcomes[2].error.startswith("dataset 'mnist' is not in any local "
                                      "cache")
  _assert_same_results(sequential, tmp_path)


def test_each_ray_task_asks_for_a_gpu_where_the_cluster_has_them():
  class Cluster:
    def __init__(self, resources):
      self.resources = resources

    def cluster_resources(self):
      return self.resources

  assert dispatch.task_resources(Cluster({"CPU": 64.0, "GPU": 8.0})) == {
      "num_gpus": 1}
  assert dispatch.task_resources(Cluster({"CPU": 64.0}), 4) == {
      "num_cpus": 4}
