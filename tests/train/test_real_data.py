"""Real runs on embedded data, and the missing-cache path through the CLI."""
import csv
import subprocess
import sys

from optbench_jax import cli


def test_mnist_5k_reaches_sane_accuracy(tmp_path):
  # cnn_scratch + Adam, 2 epochs on the 4,500 training digits of mnist_5k
  # (rotation augmentation, cosine schedule, PyTorch initialisation):
  # measured 0.896 validation accuracy on the 500 held-out digits (split
  # seed 0; 0.920 with --init flax); 0.86 leaves room for floating-point
  # differences between CPUs.
  args = ["run", "--task", "image_classification", "--dataset", "mnist_5k",
          "--model", "cnn_scratch", "--optimizers", "adam", "--epochs", "2",
          "--batch-size", "128", "--quiet", "--output-dir", str(tmp_path)]
  assert cli.main(args) == 0
  path = tmp_path / "image_classification" / "mnist_5k" / "cnn_scratch"
  with open(path / "summary.csv") as f:
    (row,) = list(csv.DictReader(f))
  assert row["status"] == "completed"
  assert float(row["best_primary"]) >= 0.86, row


def test_missing_cache_stops_at_once_with_one_clear_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "optbench_jax", "run", "--task",
       "image_classification", "--dataset", "mnist", "--model", "cnn_scratch",
       "--optimizers", "adam", "--data-dir", str(tmp_path / "cache")],
      capture_output=True, text=True, timeout=120,
      env={**__import__("os").environ, "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "TFDS_DATA_DIR": str(tmp_path / "tfds"), "HF_HUB_OFFLINE": "1"})
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
  assert "'mnist'" in lines[0] and str(tmp_path / "cache") in lines[0]
  assert "load_dataset" in lines[0]  # says how to fill the cache
