"""The text tasks end to end through the CLI, and their host-side metrics.

Each of the six text models trains 2 epochs on its task's synthetic data
(short texts, default widths): the training loss falls, the files are
written and the task's metrics recorded. ``distilbert_sentiment`` starts
from a tiny pretrained checkpoint written here (``transformers``'
``DistilBertModel`` from a small random config, its own ``vocab.txt``), so
the checkpoint, its WordPiece vocabulary and the converter are all on the
path a user takes with ``--pretrained DIR``.
"""
import json
import math

import numpy as np
import pytest

from optbench_jax import cli, data, store, tasks
from optbench_jax.data import synthetic
from optbench_jax.errors import OptBenchError
from optbench_jax.tasks import _text
from optbench_jax.train import settings
from optbench_jax.train.settings import RunConfig
from optbench_jax.workload import Workload
from tests.train.helpers import read_history

METRICS = {
    "sentiment_analysis": ("accuracy", "f1_macro"),
    "ner": ("f1", "precision", "recall", "token_f1_excl_o"),
    "question_answering": ("f1", "exact_match", "precision", "recall"),
}
# Every model of the text tasks; the default suite trains one model per task
# and DistilBERT from a checkpoint, the others are slow (their layers are
# checked against their twins in tests/models).
MODELS = [("sentiment_analysis", "lstm_sentiment"),
          ("ner", "lstm_crf_ner"),
          pytest.param("ner", "bilstm_crf_charcnn_ner",
                       marks=pytest.mark.slow),
          # the README's try-it command (tests/test_try_it.py)
          pytest.param("question_answering", "bilstm_attention_qa",
                       marks=pytest.mark.slow),
          pytest.param("question_answering", "transformer_qa",
                       marks=pytest.mark.slow),
          ("sentiment_analysis", "distilbert_sentiment")]


def tiny_distilbert(directory):
  """A small random DistilBERT checkpoint with a vocabulary covering the
  synthetic sentiment words (what ``save_pretrained`` writes)."""
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  words = sorted({w for t in synthetic.sentiment_analysis(64, 8).train["text"]
                  for w in t.split()})
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
  directory.mkdir()
  (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
  config = transformers.DistilBertConfig(
      vocab_size=len(vocab), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
      max_position_embeddings=64)
  transformers.DistilBertModel(config).save_pretrained(directory)
  return directory


@pytest.mark.parametrize("task,model", MODELS)
def test_text_campaign_learns_and_writes_its_files(tmp_path, task, model):
  args = ["run", "--task", task, "--dataset", "synthetic", "--model", model,
          "--optimizers", "adam", "--batch-size", "32", "--epochs", "2",
          "--quiet", "--output-dir", str(tmp_path / "out")]
  if model == "distilbert_sentiment":
    args += ["--pretrained", str(tiny_distilbert(tmp_path / "bert")),
             "--max-samples", "128"]
  else:   # a quarter of each width, as the README's try-it commands
    args += ["--width", "0.25"]
  assert cli.main(args) == 0
  campaign = tmp_path / "out" / task / "synthetic" / model
  run = campaign / "adam"
  primary = tasks.get(task).primary_metric
  for name in ("summary.csv", "epochs.csv", f"{primary}_all_optimizers.png",
               "vocabulary.json"):
    assert (campaign / name).stat().st_size > 0, name
  history = read_history(run)
  assert [h["epoch"] for h in history] == [1, 2]
  if model != "distilbert_sentiment":
    # A tiny random post-LN Transformer stays at chance for its first ~30
    # steps here (test_pretrained_encoder_is_the_starting_point checks it)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
  assert all(math.isfinite(h["val_loss"]) for h in history)
  for key in METRICS[task]:
    assert 0.0 <= history[-1][key] <= 1.0, key
  meta = json.loads((run / "run_metadata.json").read_text())
  assert meta["status"] == "completed" and meta["grad_clip"] == 1.0
  # Dataset facts as data, not object reprs: the vocabulary by its size,
  # per-example references by their count.
  stats = meta["dataset_info"]["stats"]
  assert "object at 0x" not in json.dumps(stats)
  if "vocabulary" in stats:
    assert stats["vocabulary"]["vocabulary_size"] > 3
  assert meta["max_samples_unit"] == "examples"
  assert meta["scheduler"] == "plateau"
  assert meta["max_length"] == data.get(task, "synthetic").defaults[
      "max_length"]
  assert set(METRICS[task]) <= set(meta["test_metrics"])


def _model(config):
  """What the task needs of the run's model (the workload hands it over)."""
  return Workload.of(config).text_model(config)


def test_the_vocabulary_is_cached_beside_the_runs_and_read_back(tmp_path):
  config = settings.resolve(RunConfig(
      task="sentiment_analysis", dataset="synthetic", model="lstm_sentiment",
      optimizer="adam", learning_rate=1e-3, vocab_size=30))
  corpus = list(synthetic.sentiment_analysis(64, 8).train["text"])
  first, _ = _text.fit_vocabulary(config, _model(config), corpus,
                                  str(tmp_path))
  assert first.size == 30
  cached = json.loads((tmp_path / store.VOCABULARY).read_text())
  # a changed file with the same key is what is read back: the cache is used
  vocab = cached["vocabulary"]["tokenizer"]["model"]["vocab"]
  word = next(w for w, i in vocab.items() if i == 29)
  vocab["renamed"] = vocab.pop(word)
  (tmp_path / store.VOCABULARY).write_text(json.dumps(cached))
  again, _ = _text.fit_vocabulary(config, _model(config), corpus,
                                  str(tmp_path))
  assert again.id("renamed") == 29 and first.id("renamed") is None
  # another corpus or cap: rebuilt, and the cache rewritten
  smaller = settings.resolve(RunConfig(**{**config.__dict__,
                                         "vocab_size": 20}))
  other, _ = _text.fit_vocabulary(smaller, _model(smaller), corpus,
                                  str(tmp_path))
  assert other.size == 20 and other.id("renamed") is None


def test_text_tasks_need_the_run_settings_to_fit():
  raw = data.load("sentiment_analysis", "synthetic")
  splits = data.prepare(raw, seed=0)
  with pytest.raises(OptBenchError, match="Workload"):
    tasks.get("sentiment_analysis").fit(splits)


def _fitted(task, model, **kw):
  config = settings.resolve(RunConfig(task=task, dataset="synthetic",
                                      model=model, optimizer="adam",
                                      learning_rate=1e-3, **kw))
  splits = data.prepare(data.load(task, "synthetic"), seed=0)
  return Workload.of(config).fit(splits, config), config


def test_question_answering_scores_the_decoded_text_of_every_example():
  task = tasks.get("question_answering")
  splits, _ = _fitted("question_answering", "bilstm_attention_qa")
  val, refs = splits.val, splits.info.stats["references"]
  # the gold spans decode to the gold answers: F1 = EM = 1
  stats = {"loss_sum": 0.0, "count": 1.0, "uid": val["uid"],
           "start": val["start"], "end": val["end"]}
  scores = task.finalize(stats, splits.info)
  assert scores["f1"] == 1.0 and scores["exact_match"] == 1.0
  # one token off (the key word before the value): F1 = EM = 0 for it
  stats["start"] = val["start"] - 1
  stats["end"] = val["start"] - 1
  assert task.finalize(stats, splits.info)["f1"] == 0.0
  context, offsets, answers = refs[val["uid"][0]]
  assert context[offsets[val["start"][0]][0]:].startswith(answers[0])
  assert splits.info.stats["unanswerable"]["train"] == 0.0


def test_question_answering_labels_only_spans_it_can_find():
  from optbench_jax.tasks.question_answering import answer_tokens
  context = "Ada Lovelace wrote the first program"
  offsets = np.array([[0, 3], [4, 12], [13, 18], [19, 22], [23, 28],
                      [29, 36]])
  assert answer_tokens(context, offsets, 6, ["first program"], [-1]) == (4, 5)
  assert answer_tokens(context, offsets, 6, ["Lovelace"], [4]) == (1, 1)
  assert answer_tokens(context, offsets, 6, ["nobody", "wrote"],
                       [-1, -1]) == (2, 2)
  assert answer_tokens(context, offsets, 6, ["Babbage"], [-1]) is None
  assert answer_tokens(context, offsets, 3, ["program"], [-1]) is None


def test_ner_scores_entities_with_seqeval_and_tokens_without_o():
  task = tasks.get("ner")
  splits, _ = _fitted("ner", "lstm_crf_ner")
  names = splits.info.extra["tag_names"]
  tags = np.array([[1, 2, 0, 3, 0], [0, 3, 4, 0, 0]])     # PER, LOC; LOC
  predicted = np.array([[1, 2, 0, 0, 0], [0, 3, 0, 0, 0]])  # PER; broken LOC
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  assert names[1:5] == ("B-PER", "I-PER", "B-LOC", "I-LOC")
  scores = task.finalize({"loss_sum": 3.0, "count": 2.0, "tags": tags,
                          "predicted": predicted, "token_mask": mask},
                         splits.info)
  # entities: gold {PER, LOC, LOC}, predicted {PER, LOC(1 token)}: 1 exact
  assert scores["precision"] == pytest.approx(1 / 2)
  assert scores["recall"] == pytest.approx(1 / 3)
  # tokens: gold non-O 5, predicted non-O 3, correct non-O 3
  assert scores["token_precision_excl_o"] == pytest.approx(1.0)
  assert scores["token_recall_excl_o"] == pytest.approx(3 / 5)
  assert scores["loss"] == pytest.approx(1.5)


def test_sentiment_encodes_every_split_with_the_fitted_vocabulary():
  splits, config = _fitted("sentiment_analysis", "lstm_sentiment")
  stats = splits.info.stats
  assert splits.train["tokens"].shape[1] == config.max_length == 32
  assert stats["vocab_size"] == 2 + len(synthetic.FILLER) + len(
      synthetic.POSITIVE) + len(synthetic.NEGATIVE)
  assert stats["truncated_train"] == 0.0
  for split in (splits.train, splits.val, splits.test):
    assert split["tokens"].dtype == np.int32
    assert (split["tokens"][:, 0] > 1).all()   # no empty text, no unknowns
  assert math.isclose(splits.train["label"].mean(), 0.5, abs_tol=0.1)


def test_pretrained_encoder_is_the_starting_point(tmp_path):
  """Every run starts from the checkpoint's encoder; the head is drawn from
  the run's seed; a short full-batch training fits the data."""
  import jax
  import optax
  from optbench_jax.models import distilbert
  from optbench_jax.train.run import RunSetup
  directory = str(tiny_distilbert(tmp_path / "bert"))
  splits, config = _fitted("sentiment_analysis", "distilbert_sentiment",
                           pretrained=directory, batch_size=16)
  setup = RunSetup(config, splits)
  state = setup.program(2).initial_state([0, 1], [1e-3, 1e-3], setup.example)
  _, encoder = distilbert.load_pretrained(directory)
  for run in (0, 1):
    jax.tree.map(np.testing.assert_array_equal,
                 jax.tree.map(lambda x, r=run: np.asarray(x[r]),
                              state.params["distilbert"]), encoder)
  head = state.params["classifier"]["kernel"]
  assert not np.allclose(head[0], head[1])
  # the model learns: 64 examples, full batch, Adam 1e-3, 60 steps
  model = setup.workload.build_model(splits.info)
  tokens = splits.train["tokens"][:64]
  labels = splits.train["label"][:64]
  params = jax.tree.map(lambda x: x[0], state.params)
  tx = optax.adam(1e-3)

  def loss(p):
    logits = model.apply({"params": p}, tokens, tokens != 0, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  @jax.jit
  def step(p, s):
    value, grads = jax.value_and_grad(loss)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, value

  opt_state, losses = tx.init(params), []
  for _ in range(60):
    params, opt_state, value = step(params, opt_state)
    losses.append(float(value))
  assert losses[-1] < 0.5 * losses[0]
