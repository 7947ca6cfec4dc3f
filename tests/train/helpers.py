"""Shared helpers for engine tests."""
import importlib.util
import json
import os
import pathlib

TIME_KEYS = ("train_time_s", "eval_time_s", "cumulative_train_time_s")
SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"


def load_script(name, module_name=None):
  """``experiments/<name>.py`` imported as a module (a fresh one per call)."""
  spec = importlib.util.spec_from_file_location(
      module_name or f"{name}_script", SCRIPTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def read_history(run_dir):
  with open(os.path.join(run_dir, "history.json")) as f:
    return json.load(f)


def without_times(history):
  return [{k: v for k, v in h.items() if k not in TIME_KEYS} for h in history]


def small_run_args(output_dir, model="cnn_scratch",
                   optimizers="sgd_momentum,adam", epochs=2, batch_size=32,
                   max_samples=128, extra=()):
  return ["run", "--task", "image_classification", "--dataset", "synthetic",
          "--model", model, "--optimizers", optimizers, "--epochs", str(epochs),
          "--batch-size", str(batch_size), "--max-samples", str(max_samples),
          "--quiet",
          "--output-dir", str(output_dir), *extra]
