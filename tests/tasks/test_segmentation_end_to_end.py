"""Semantic segmentation end to end through the CLI on synthetic data."""
import json

import pytest

from optbench_jax import cli
from tests.train.helpers import read_history

METRICS = ("dice", "iou", "pixel_accuracy", "mean_class_accuracy")


# 32×32 synthetic images, the models at a quarter of their widths (full
# width: tests/models/test_segmentation_models.py checks the layers). Both
# are slow: DeepLabV3 (78 s here, most of it compiling ResNet-50), and U-Net
# on synthetic images is the README's try-it command, whose tiny run
# (tests/test_try_it.py) is in the default suite.
@pytest.mark.parametrize("model", [
    pytest.param("unet_vanilla", marks=pytest.mark.slow),
    pytest.param("deeplabv3_resnet50", marks=pytest.mark.slow)])
def test_segmentation_campaign_learns_and_writes_its_files(tmp_path, model):
  args = ["run", "--task", "semantic_segmentation", "--dataset", "synthetic",
          "--model", model, "--optimizers", "adam", "--epochs", "2",
          "--batch-size", "8", "--max-samples", "32", "--width", "0.25",
          "--test-max-samples", "16", "--quiet",
          "--output-dir", str(tmp_path)]
  assert cli.main(args) == 0
  campaign = tmp_path / "semantic_segmentation" / "synthetic" / model
  run = campaign / "adam"
  for name in ("summary.csv", "epochs.csv", "dice_all_optimizers.png"):
    assert (campaign / name).stat().st_size > 0, name
  for name in ("history.json", "run_metadata.json", "dice_and_val_loss.png",
               "train_vs_val_loss.png"):
    assert (run / name).stat().st_size > 0, name
  history = read_history(run)
  assert [h["epoch"] for h in history] == [1, 2]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  for key in METRICS:
    assert 0.0 <= history[-1][key] <= 1.0, key
  meta = json.loads((run / "run_metadata.json").read_text())
  assert meta["status"] == "completed" and meta["grad_clip"] == 1.0
  assert meta["primary_metric"] == "dice"
  assert set(METRICS) <= set(meta["test_metrics"])
