"""The task contract: what a task may ask of the engine.

A toy task whose evaluation decodes with a mutable ``cache`` collection
through a model method other than ``__call__`` (as generation tasks will),
trained and evaluated by the same ``Program`` as every task, with two runs
stacked. Also: the base ``Task`` assumes no input names, and the example
batch that ``init`` is compiled for is hashed by value.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optbench_jax import transforms
from optbench_jax.data.base import DatasetInfo
from optbench_jax.tasks.base import Task
from optbench_jax.engine import optimizer as optimizer_lib
from optbench_jax.engine.program import Hyper, Program

STEPS = 3


class CacheAdd(nn.Module):
  """Adds its input into the ``cache`` variable and returns the total."""

  @nn.compact
  def __call__(self, logits):
    total = self.variable("cache", "total", jnp.zeros_like, logits)
    total.value = total.value + logits
    return total.value


class Accumulator(nn.Module):
  """``__call__``: logits of a linear map. ``decode``: ``STEPS`` steps that
  add the logits into a ``cache`` variable (a stand-in for a key/value
  cache) and emit the running argmax."""

  def setup(self):
    self.out = nn.Dense(3)
    self.cache = CacheAdd()

  def __call__(self, x, train=False):
    del train
    return self.out(x)

  def decode(self, x):
    logits = self.out(x)
    return jnp.stack([jnp.argmax(self.cache(logits), -1)
                      for _ in range(STEPS)], -1)


class DecodingTask(Task):
  name = "toy_decoding"
  primary_metric = "token_accuracy"
  gathered_stats = ("tokens",)

  def model_inputs(self, batch):
    return (batch["x"],)

  def loss(self, outputs, batch, label_smoothing):
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        outputs, batch["y"])
    return jnp.sum(per_example * batch["mask"]), jnp.sum(batch["mask"])

  def eval_outputs(self, apply, variables, batch, info):
    tokens, mutated = apply(variables, batch["x"],
                            method=Accumulator.decode, mutable=["cache"])
    assert set(mutated) == {"cache"}
    return {"tokens": tokens,
            "logits": apply(variables, *self.model_inputs(batch),
                            train=False)}

  def eval_stats(self, outputs, batch, info):
    loss_sum, count = self.loss(outputs["logits"], batch, 0.0)
    correct = (outputs["tokens"] == batch["y"][:, None]) * batch["mask"][:,
                                                                         None]
    return {"loss_sum": loss_sum, "count": count,
            "correct": jnp.sum(correct), "tokens": outputs["tokens"]}

  def finalize(self, stats, info):
    count = float(stats["count"])
    return {"loss": float(stats["loss_sum"]) / count,
            "token_accuracy": float(stats["correct"]) / (count * STEPS),
            "decoded": np.asarray(stats["tokens"])}


def _program(runs, optimizer="adam"):
  info = DatasetInfo(name="toy", task="toy_decoding", num_classes=3,
                     input_shape=(4,))
  spec = transforms.get(optimizer)
  tx = optimizer_lib.build(optimizer, 1e-2)
  hyper = Hyper(batch_size=4, eval_batch_size=4, total_steps=4,
                scheduler="none")
  return Program(DecodingTask(), Accumulator(), info, spec, tx, hyper,
                 runs=runs)


def _data(n=10):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 4)).astype(np.float32)
  return {"x": x, "y": (x[:, 0] > 0).astype(np.int32)}


def test_evaluation_decodes_with_a_mutable_cache_for_every_run():
  program, data = _program(runs=2), _data()
  example = program.example(data)
  state = program.initial_state([0, 1], [1e-2, 1e-2], example)
  state, _ = program.train_epoch(state, program.place(data),
                                 program.epoch_keys(program.run_keys([0, 1])[1],
                                                    0))
  results = program.evaluate(state, data)  # a split kept on the host
  on_device = program.evaluate(state, program.place(data))
  assert len(results) == 2
  for j, result in enumerate(results):
    params = jax.tree.map(lambda x, j=j: x[j], state.params)
    tokens, _ = Accumulator().apply({"params": params}, data["x"],
                                    method=Accumulator.decode,
                                    mutable=["cache"])
    np.testing.assert_array_equal(result["decoded"], tokens)  # padding dropped
    want = np.mean(np.asarray(tokens) == data["y"][:, None])
    assert result["token_accuracy"] == pytest.approx(want)
    assert on_device[j]["token_accuracy"] == pytest.approx(want)
  assert results[0]["loss"] != results[1]["loss"]  # two seeds, two runs


def test_init_compiles_once_for_equal_examples():
  program, data = _program(runs=1), _data()
  for _ in range(2):  # two Example objects with the same content
    program.initial_state([0], [1e-2], program.example(
        {k: v.copy() for k, v in data.items()}))
  assert program.init_variables._cache_size() == 1
  program.initial_state([0], [1e-2], program.example(
      {k: v + 1 for k, v in data.items()}))
  assert program.init_variables._cache_size() == 2


def test_initialisation_and_evaluation_are_one_program_for_all_optimizers():
  """What does not depend on the optimizer is lowered to the same program
  for every optimizer (so the persistent cache compiles it once per
  configuration): the model's initialisation and the evaluation step."""
  data = _data()
  texts = []
  for name in ("adam", "schedule_free_adamw", "sam"):
    program = _program(runs=2, optimizer=name)
    example = program.example(data)
    keys = program.run_keys([0, 1])[0]
    state = program.initial_state([0, 1], [1e-2, 1e-2], example)
    variables = program.eval_variables(state)
    index = jnp.arange(4)
    texts.append((
        program.init_variables.lower(keys, example).as_text(),
        program.eval_batch.lower(variables, program.place(data), index,
                                 jnp.ones(4)).as_text()))
  assert texts[0] == texts[1] == texts[2]


def test_base_task_assumes_no_input_names():
  class NoInputs(Task):
    name = "nothing"

    def loss(self, outputs, batch, label_smoothing):
      raise NotImplementedError

    def eval_stats(self, outputs, batch, info):
      raise NotImplementedError

    def finalize(self, stats, info):
      raise NotImplementedError

  with pytest.raises(TypeError, match="model_inputs"):
    NoInputs()  # pylint: disable=abstract-class-instantiated
