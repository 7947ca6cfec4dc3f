"""``--track-sharpness``: the Hessian's top eigenvalue and trace in the history.

On a quadratic ``½ Σ_i λ_i w_i²`` the Hessian is ``diag(λ)`` wherever the
parameters are, so along training the measured sharpness is ``max λ`` and
Hutchinson's trace with Rademacher probes is ``Σ λ`` exactly (``z_i² = 1``).
"""
from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax import cli, tasks, transforms
from optbench_jax.data.base import DatasetInfo
from optbench_jax.engine import optimizer as optimizer_lib
from optbench_jax.engine.program import Hyper, Program
from optbench_jax.engine.sharpness import LANCZOS_ITERATIONS, TRACE_PROBES

LAMBDAS = np.array([0.5, 3.0, 7.5, 1.0, 0.25, 2.0])
N, BATCH = 16, 8


class Weights(nn.Module):
  """Outputs its parameter vector ``w`` for every example."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    w = self.param("w", nn.initializers.ones, (LAMBDAS.size,))
    return jnp.broadcast_to(w, (x.shape[0], LAMBDAS.size))


class QuadraticTask:
  """The image-classification task with the loss ``½ Σ λ_i w_i²``."""

  def __init__(self, task):
    self._task = task

  def __getattr__(self, name):
    return getattr(self._task, name)

  def loss(self, outputs, batch, label_smoothing=0.0):
    per_example = 0.5 * jnp.sum(jnp.asarray(LAMBDAS, outputs.dtype)
                                * outputs ** 2, axis=-1)
    return jnp.sum(per_example * batch["mask"]), jnp.sum(batch["mask"])


def test_sharpness_of_a_quadratic_along_training():
  info = DatasetInfo("random", "image_classification", num_classes=3,
                     input_shape=(2, 2, 1))
  tx = optimizer_lib.build("sgd", 0.05)
  program = Program(QuadraticTask(tasks.get("image_classification")),
                    Weights(), info, transforms.get("sgd"), tx,
                    Hyper(batch_size=BATCH, eval_batch_size=BATCH,
                          total_steps=4, scheduler="none"))
  rng = np.random.RandomState(0)
  raw = {"image": rng.uniform(size=(N, 2, 2, 1)).astype(np.float32),
         "label": rng.randint(0, 3, N).astype(np.int32)}
  data = jax.tree.map(jnp.asarray, raw)
  batch = {**{k: v[:BATCH] for k, v in data.items()},
           "mask": jnp.ones(BATCH)}
  state = program.initial_state([0], [0.05], program.example(raw))
  _, train_keys = program.run_keys([0])
  for epoch in range(3):
    measured = program.sharpness(state, batch,
                                 program.epoch_keys(train_keys, epoch))
    np.testing.assert_allclose(measured["sharpness"], [LAMBDAS.max()],
                               rtol=1e-5)
    assert float(measured["sharpness_residual"][0]) < 1e-4
    np.testing.assert_allclose(measured["hessian_trace"], [LAMBDAS.sum()],
                               rtol=1e-6)
    np.testing.assert_allclose(measured["hessian_trace_stderr"], [0.0],
                               atol=1e-5)
    assert int(measured["sharpness_iterations"][0]) == min(
        LANCZOS_ITERATIONS, LAMBDAS.size)
    assert int(measured["hessian_trace_probes"][0]) == TRACE_PROBES
    before = np.asarray(state.params["w"])
    state, _ = program.train_epoch(state, data,
                                   program.epoch_keys(train_keys, epoch))
    assert not np.allclose(state.params["w"], before)  # it trained


def test_track_sharpness_every_two_epochs_from_the_command_line(tmp_path):
  assert cli.main(["run", "--task", "image_classification", "--dataset",
                   "digits", "--model", "cnn_scratch", "--optimizers", "sgd",
                   "--epochs", "2", "--max-samples", "64", "--batch-size", "32",
                   "--width", "0.25",
                   "--track-sharpness", "2", "--quiet", "--output-dir",
                   str(tmp_path)]) == 0
  campaign = tmp_path / "image_classification" / "digits" / "cnn_scratch"
  history = json.loads((campaign / "sgd" / "history.json").read_text())
  assert "sharpness" not in history[0]
  assert history[1]["sharpness"] > 0
  assert history[1]["sharpness_residual"] < history[1]["sharpness"]
  assert history[1]["hessian_trace_probes"] == TRACE_PROBES
  assert history[1]["sharpness_time_s"] > 0
  assert (campaign / "sharpness.png").stat().st_size > 0
  meta = json.loads((campaign / "sgd" / "run_metadata.json").read_text())
  assert meta["track_sharpness"] == 2


def test_track_sharpness_needs_a_positive_number_of_epochs(tmp_path, capsys):
  assert cli.main(["run", "--task", "image_classification", "--dataset",
                   "digits", "--model", "cnn_scratch", "--optimizers", "sgd",
                   "--track-sharpness", "0", "--output-dir",
                   str(tmp_path)]) != 0
  assert "--track-sharpness" in capsys.readouterr().err
