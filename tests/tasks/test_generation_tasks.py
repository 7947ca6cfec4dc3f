"""The generative tasks end to end, their decoding and their metrics.

Each of the six generation models (five of them in the slow suite) trains
2 epochs on its task's synthetic data through the CLI at a quarter of its
widths (the loss falls, decoded
samples and metrics are written); a sequence-to-sequence model trained briefly on the copy task
decodes its input back; decoding with the key/value cache gives exactly
the tokens of full recomputation; beam size 1 equals greedy; perplexity is
exp of the mean masked NLL.
"""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import cli, data, models, tasks
from optbench_jax.nn import decoding
from optbench_jax.tasks.text_generation import blocks
from optbench_jax.train import settings
from optbench_jax.train.settings import RunConfig
from optbench_jax.workload import Workload
from tests.train.helpers import read_history

METRICS = {"machine_translation": ("bleu", "chrf", "ter", "tf_token_accuracy"),
           "text_summarization": ("rougeL", "rouge1", "rouge2", "bleu",
                                  "compression_ratio"),
           "text_generation": ("perplexity", "bits_per_token",
                               "token_accuracy")}
# The default suite trains the GRU language model here; the others are slow (their layers are checked against their twins
# in tests/models). The LSTM translator's run of the default suite is the
# copy task below.
MODELS = [pytest.param("machine_translation", "transformer_seq2seq",
                       marks=pytest.mark.slow),
          pytest.param("machine_translation", "lstm_seq2seq",
                       marks=pytest.mark.slow),
          # The try-it test trains a summarization Transformer (on real
          # paper summaries); the copy task below writes and checks the
          # decoded samples of a sequence-to-sequence task.
          pytest.param("text_summarization", "bart_small",
                       marks=pytest.mark.slow),
          pytest.param("text_summarization", "tiny_transformer_seq2seq",
                       marks=pytest.mark.slow),
          pytest.param("text_generation", "gpt_small",
                       marks=pytest.mark.slow),
          ("text_generation", "gru_lm")]


def _check_campaign(run, task, history):
  """What every generation campaign writes: its metrics, its metadata and
  (sequence-to-sequence tasks, beam size 2) its decoded samples."""
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  meta = json.loads((run / "run_metadata.json").read_text())
  assert meta["status"] == "completed"
  assert set(METRICS[task]) <= set(history[-1]) <= set(history[-1]) | {
      "samples"}
  assert "samples" not in history[-1]
  assert set(METRICS[task]) <= set(meta["test_metrics"])
  assert "object at 0x" not in json.dumps(meta["dataset_info"])
  assert meta["max_samples_unit"] == (
      "documents" if task == "text_generation" else "examples")
  if task == "text_generation":
    assert history[-1]["perplexity"] == pytest.approx(
        math.exp(history[-1]["val_loss"]))
    return
  assert meta["beam_size"] == 2 and meta["length_penalty"] == 0.6
  assert meta["target_length"] == data.get(task, "synthetic").defaults[
      "target_length"]
  last = f"epoch_{len(history):03d}.json"
  for name in (last, "test.json"):
    samples = json.loads((run / "samples" / name).read_text())
    assert len(samples) == 5
    assert set(samples[0]) == {"source", "reference", "hypothesis"}


@pytest.mark.parametrize("task,model", MODELS)
def test_generation_campaign_learns_and_writes_its_files(tmp_path, task,
                                                         model):
  args = ["run", "--task", task, "--dataset", "synthetic", "--model", model,
          "--optimizers", "adam", "--epochs", "2", "--batch-size", "16",
          "--max-samples", "256", "--eval-max-samples", "32",
          "--test-max-samples", "32", "--width", "0.25", "--quiet",
          "--output-dir", str(tmp_path)]
  if task != "text_generation":
    args += ["--beam-size", "2"]
  assert cli.main(args) == 0
  run = tmp_path / task / "synthetic" / model / "adam"
  _check_campaign(run, task, read_history(run))


def test_a_briefly_trained_model_decodes_the_copy_task_back(tmp_path):
  args = ["run", "--task", "machine_translation", "--dataset", "synthetic",
          "--model", "lstm_seq2seq", "--optimizers", "adam", "--epochs", "6",
          "--batch-size", "16", "--beam-size", "2", "--width", "0.5",
          "--eval-max-samples", "64", "--test-max-samples", "32", "--quiet",
          "--output-dir", str(tmp_path)]
  assert cli.main(args) == 0
  run = tmp_path / "machine_translation" / "synthetic" / "lstm_seq2seq" / (
      "adam")
  history = read_history(run)
  # Measured (sacreBLEU, 0-100) per epoch: 0.0, 1.0, 7.3, 46.9, 65.6, 76.2.
  assert history[-1]["bleu"] > 40.0
  assert history[-1]["bleu"] > 5 * history[0]["bleu"]
  _check_campaign(run, "machine_translation", history)


def _model_and_batch(name, task="machine_translation"):
  config = settings.resolve(RunConfig(task=task, dataset="synthetic",
                                      model=name, optimizer="adam",
                                      learning_rate=1e-3))
  splits = Workload.of(config).fit(data.prepare(
      data.load(task, "synthetic"), seed=0), config)
  model = models.get(task, name).build(splits.info, width=0.25)
  batch = {k: jnp.asarray(v[:4]) for k, v in splits.val.items()}
  source = batch["source"]
  variables = model.init(jax.random.key(0), *tasks.get(task).model_inputs(
      batch), train=False)
  # only the parameters, as the engine's state (the curvature-statistics
  # collections that init also creates are the K-FAC optimizer's)
  return model, {"params": variables["params"]}, splits.info, source


def _decoder(model, variables, info, source):
  """The task's step function over the model's key/value cache."""
  mask = source != 0
  memory = model.apply(variables, source, mask, method="encode")
  _, cache = model.apply(variables, source.shape[0],
                         info.stats["target_length"], method="init_cache",
                         mutable=["cache"])
  state = {"model": cache["cache"], "memory": memory, "source_mask": mask}

  def step(state, tokens, position):
    logits, mutated = model.apply({**variables, "cache": state["model"]},
                                  state["memory"], state["source_mask"],
                                  tokens, position, method="decode_step",
                                  mutable=["cache"])
    return (jax.nn.log_softmax(logits.astype(jnp.float32)),
            {**state, "model": mutated["cache"]})

  return step, state


@pytest.mark.parametrize("name", ["transformer_seq2seq", "lstm_seq2seq"])
def test_cached_decoding_gives_the_tokens_of_full_recomputation(name):
  model, variables, info, source = _model_and_batch(name)
  step, state = _decoder(model, variables, info, source)
  bos, eos = info.stats["bos_id"], info.stats["eos_id"]
  length = 8
  cached = np.asarray(jax.jit(lambda s: decoding.greedy_search(
      step, s, source.shape[0], bos_id=bos, eos_id=eos,
      max_length=length))(state))
  # recomputation: the whole prefix through the teacher-forced model, in
  # one compiled shape (the decoders are causal: the zeros after position
  # t change nothing at t)
  full = jax.jit(lambda prefix: model.apply(
      variables, source, source != 0, prefix, jnp.ones(prefix.shape, bool),
      train=False))
  prefix = np.zeros((source.shape[0], length + 1), np.int32)
  prefix[:, 0] = bos
  done = np.zeros(source.shape[0], bool)
  for t in range(length):
    logits = full(jnp.asarray(prefix))
    nxt = np.where(done, 0, np.asarray(jnp.argmax(logits[:, t], -1)))
    prefix[:, t + 1] = nxt
    done |= nxt == eos
  np.testing.assert_array_equal(cached, prefix[:, 1:])


def test_beam_size_one_is_greedy_on_a_model():
  model, variables, info, source = _model_and_batch("transformer_seq2seq")
  step, state = _decoder(model, variables, info, source)
  common = dict(bos_id=info.stats["bos_id"], eos_id=info.stats["eos_id"],
                max_length=10)
  greedy = decoding.greedy_search(step, state, source.shape[0], **common)
  beam, _ = decoding.beam_search(step, state, source.shape[0], beam_size=1,
                                 length_penalty=0.0, **common)
  np.testing.assert_array_equal(np.asarray(greedy), np.asarray(beam))


def test_perplexity_is_exp_of_the_mean_masked_nll():
  task = tasks.get("text_generation")
  tokens = jnp.asarray([[5, 6, 7, 0], [6, 5, 0, 0]])   # targets 6 7 | 5
  logits = jnp.log(jnp.asarray([
      [[.05] * 5 + [.5, .2, .05, 0.0], [.1] * 7 + [.3, 0.0], [1 / 9] * 9],
      [[.04] * 5 + [.6, .1, .1, 0.0], [1 / 9] * 9, [1 / 9] * 9]]) + 1e-30)
  batch = {"tokens": tokens, "mask": jnp.ones(2)}
  stats = task.eval_stats(logits, batch, None)
  nll = -(math.log(.2) + math.log(.3) + math.log(.6)) / 3
  metrics = task.finalize(jax.tree.map(np.asarray, stats), None)
  assert float(stats["count"]) == 3
  assert metrics["loss"] == pytest.approx(nll, rel=1e-5)
  assert metrics["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
  assert metrics["bits_per_token"] == pytest.approx(nll / math.log(2),
                                                    rel=1e-5)
  # argmax: 5 (target 6, wrong), 7 (target 7, right), 5 (target 5, right)
  assert metrics["token_accuracy"] == pytest.approx(2 / 3)


def test_language_model_blocks_cover_the_stream():
  out = blocks(list(range(1, 11)), 4)        # 10 tokens: 9 predictions
  np.testing.assert_array_equal(out, [[1, 2, 3, 4, 5], [5, 6, 7, 8, 9],
                                      [9, 10, 0, 0, 0]])


def test_decoding_settings_resolve_per_task_and_are_refused_elsewhere():
  from optbench_jax.errors import OptBenchError
  resolved = settings.resolve(RunConfig(
      task="text_summarization", dataset="synthetic", model="bart_small",
      optimizer="adam", learning_rate=1e-3))
  assert (resolved.beam_size, resolved.length_penalty) == (4, 0.6)
  assert (resolved.max_length, resolved.target_length) == (40, 12)
  assert resolved.label_smoothing == 0.1 and resolved.grad_clip == 1.0
  with pytest.raises(OptBenchError, match="--beam-size does not apply"):
    settings.check(RunConfig(task="text_generation", dataset="synthetic",
                             model="gru_lm", optimizer="adam",
                             learning_rate=1e-3, beam_size=2))
