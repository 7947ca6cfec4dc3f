"""``--width``: every model scales its declared widths (``ModelSpec.widths``).

At width 0.5 each registered model builds, keeps its outputs' shapes and
has fewer parameters than at width 1 (shapes only: ``jax.eval_shape``, on
the tiny inputs of ``tests/tasks/test_torch_losses.py``). Widths a model
cannot take are refused in one line, before any data are loaded: a model
with one size, and a model starting from pretrained weights unless
``--pretrained none``.
"""
import dataclasses
import math

import jax
import pytest

from optbench_jax import cli, models, store, tasks
from optbench_jax.errors import OptBenchError
from optbench_jax.models.base import scale_widths
from optbench_jax.train import settings
from tests.tasks.test_torch_losses import device_batch, task_info

HALF = 0.5


def shapes(spec, width):
  """``(parameter count, output shapes)`` of ``spec`` at ``width``."""
  task = tasks.get(spec.task)
  info = task_info(task, spec)
  model = spec.build(info, width=width)
  key = jax.random.key(0)
  outputs, variables = jax.eval_shape(
      lambda b: model.init_with_output({"params": key, "dropout": key},
                                       *task.model_inputs(b), train=False),
      device_batch(task, info, 4))
  count = sum(math.prod(p.shape) for p in jax.tree.leaves(
      variables["params"]))
  return count, jax.tree.map(lambda x: x.shape, outputs)


@pytest.mark.parametrize("name", models.MODELS.names())
def test_half_width_has_fewer_parameters_and_the_same_outputs(name):
  spec = models.MODELS.get(name)
  assert spec.widths, f"{name} declares no widths"
  full, full_outputs = shapes(spec, 1.0)
  half, half_outputs = shapes(spec, HALF)
  assert half < 0.6 * full, (name, half, full)
  assert half_outputs == full_outputs


def test_scaling_rounds_to_the_declared_multiple():
  @dataclasses.dataclass(frozen=True)
  class Config:
    dim: int = 768
    layers: int = 6

  @dataclasses.dataclass(frozen=True)
  class Model:
    config: Config = Config()
    widths: tuple = (32, "M", 64)
    hidden: int = 10

  scaled = scale_widths(Model(), {"config.dim": 12, "widths": 1,
                                  "hidden": 4}, 0.3)
  # 768·0.3 = 230.4 → 19 heads of 12; 10·0.3 = 3 → at least one multiple.
  assert scaled == Model(Config(228, 6), (10, "M", 19), 4)


def test_cnn_scratch_at_half_width_has_half_the_channels():
  spec = models.get("image_classification", "cnn_scratch")
  full = spec.build(spec.example_info)
  half = spec.build(spec.example_info, width=HALF)
  assert (full.widths, full.hidden) == ((32, 64), 128)
  assert (half.widths, half.hidden) == ((16, 32), 64)


def test_a_model_with_one_size_refuses_a_width():
  spec = dataclasses.replace(
      models.get("image_classification", "cnn_scratch"), widths={})
  assert spec.width_error(1.0, None) is None
  with pytest.raises(OptBenchError, match="has one size"):
    spec.build(spec.example_info, width=HALF)


def _config(**fields):
  return settings.CampaignConfig(
      task="sentiment_analysis", dataset="synthetic",
      model="distilbert_sentiment", **fields)


def test_pretrained_weights_refuse_a_width_unless_none():
  with pytest.raises(OptBenchError, match="--width: .*pretrained none"):
    settings.check(_config(width=HALF))
  with pytest.raises(OptBenchError, match="--width"):
    settings.check(_config(width=HALF, pretrained="distilbert-base-uncased"))
  settings.check(_config(width=HALF, pretrained="none"))
  settings.check(_config())


@pytest.mark.parametrize("extra, expected", [
    (["--width", "0"], "--width must be a positive finite number"),
    (["--width", "0.5"], "--width: model distilbert_sentiment starts from "
                         "pretrained weights"),
])
def test_refused_widths_are_one_line_before_data(tmp_path, capsys, extra,
                                                 expected):
  code = cli.main(["run", "--task", "sentiment_analysis", "--dataset",
                   "synthetic", "--model", "distilbert_sentiment", "--optimizers",
                   "adam", "--output-dir", str(tmp_path / "out"), *extra])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
  assert expected in err[0]
  assert not (tmp_path / "out").exists()


def test_width_is_a_recorded_setting_that_changes_results():
  assert "width" in settings.numeric_settings()
  config = settings.RunConfig(task="image_classification", dataset="digits",
                              model="cnn_scratch", optimizer="adam",
                              learning_rate=1e-3, width=HALF)
  stored = store.as_json(dataclasses.asdict(config))
  assert settings.differences(stored, config) == []
  assert settings.differences(stored, dataclasses.replace(
      config, width=1.0)) == ["--width 0.5 → 1.0"]
  # A run stored before --width existed was trained at width 1.
  del stored["width"]
  assert settings.differences(stored, dataclasses.replace(
      config, width=1.0)) == []
  assert settings.differences(stored, config) == ["--width 1.0 → 0.5"]
