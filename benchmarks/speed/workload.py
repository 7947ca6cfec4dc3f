"""One benchmark entry: a registered model and the random data it trains on.

Every model of the model registry (``optbench_jax.models``) is an entry. Its
registry entry states the data it expects (``example_info``: input shape,
classes) and, when it has one, its PyTorch twin (``torch_twin``) and the
weight conversion (``conversion``); its task's recipe in ``TASK_DATA`` makes
random data of that shape and says how PyTorch reads a batch and which loss
it trains; the task computes the data's statistics (``Task.fit``). A model
whose task has no recipe is reported as not implemented yet, with the
reason.

Text tasks tokenise raw text in ``Task.fit`` (vocabularies, encoding); the
benchmark skips that: its recipes make already-encoded random id arrays
(right-padded, every row with at least one real token) and give the info the
statistics ``fit`` would have stored (``TaskData.encoded_stats``: vocabulary
sizes from the model's ``example_info``, the sequence lengths).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from optbench_jax import data, models, tasks
from optbench_jax.data.base import DatasetInfo
from optbench_jax.tasks import semantic_segmentation as segmentation


@dataclasses.dataclass(frozen=True)
class TaskData:
  """How a task's benchmark data are made and fed to PyTorch.

  random(info, n, rng) -> host arrays of n examples; torch_batch(a
  preprocessed numpy batch) ->
  (model inputs, target: an array or a tuple of arrays); torch_loss(the
  PyTorch twin) -> the PyTorch loss module, called as ``loss(model output,
  target)`` (the mean over the batch, as the engine's loss; it gets the twin
  for losses with parameters of their own, e.g. a CRF's).
  encoded_stats(info) -> the statistics the task's ``fit`` would store, for
  tasks whose random data are already encoded (then ``fit`` is skipped);
  None: ``fit`` runs on the random data (image statistics).
  target_tokens(host arrays) -> ``(n,)`` the real (non-padding) target
  tokens of each example, for the tasks that predict tokens (tokens/s);
  None: the task's throughput is examples/s only.
  """
  random: Callable[[DatasetInfo, int, np.random.RandomState], dict]
  torch_batch: Callable[[Mapping[str, np.ndarray]], tuple[tuple, Any]]
  torch_loss: Callable[[torch.nn.Module], torch.nn.Module]
  encoded_stats: Optional[Callable[[DatasetInfo], dict]] = None
  target_tokens: Optional[Callable[[Mapping[str, np.ndarray]],
                                   np.ndarray]] = None


def random_images(info, n, rng):
  """uint8 images of ``info.input_shape`` and uniform labels."""
  return {"image": rng.randint(0, 256, (n, *info.input_shape), dtype=np.uint8),
          "label": rng.randint(0, info.num_classes, n).astype(np.int32)}


def nchw_images(batch):
  """NHWC images → PyTorch's NCHW; int64 class targets (per example or per
  pixel)."""
  image = np.asarray(batch["image"])
  return ((image.transpose(0, image.ndim - 1, *range(1, image.ndim - 1)),),
          np.asarray(batch["label"]).astype(np.int64))


def random_segmentation(info, n, rng):
  """uint8 images of ``info.input_shape`` and uint8 per-pixel labels,
  uniform over the classes with 1 % of pixels ``IGNORE`` (255)."""
  height, width = info.input_shape[:2]
  label = rng.randint(0, info.num_classes, (n, height, width)).astype(np.uint8)
  label[rng.random_sample(label.shape) < 0.01] = segmentation.IGNORE
  return {"image": rng.randint(0, 256, (n, *info.input_shape), dtype=np.uint8),
          "label": label}


class SegmentationLoss(torch.nn.Module):
  """The ``semantic_segmentation`` task's batch loss in PyTorch (no padding,
  no label smoothing): inverse-frequency weighted pixel cross-entropy plus
  soft Dice, over the pixels not labelled ``IGNORE``; logits NCHW."""

  def forward(self, logits, target):
    num_classes = logits.shape[1]
    valid = target != segmentation.IGNORE
    label = torch.where(valid, target, torch.zeros_like(target))
    onehot = torch.nn.functional.one_hot(label, num_classes).permute(
        0, 3, 1, 2).to(logits.dtype) * valid[:, None]
    counts = onehot.sum((0, 2, 3))
    weights = torch.where(counts > 0, counts.sum() / (
        num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    pixel_weight = weights[label] * valid
    per_pixel = torch.nn.functional.cross_entropy(logits, label,
                                                  reduction="none")
    cross_entropy = (per_pixel * pixel_weight).sum() / pixel_weight.sum(
    ).clamp(min=1e-12)
    probs = logits.softmax(1) * valid[:, None]
    smoothing = segmentation.DICE_SMOOTHING
    dice = (2 * (probs * onehot).sum((0, 2, 3)) + smoothing) / (
        probs.sum((0, 2, 3)) + counts + smoothing)
    return cross_entropy + 1 - dice.mean()


# -- text: already-encoded random ids ----------------------------------------
MAX_WORD_LENGTH = 16       # tasks/ner.py: characters per word
QUESTION_LENGTH = 64       # tasks/question_answering.py
MAX_ANSWER_LENGTH = 30
# data/text.py GENERATION_SPECIALS: [PAD] 0, [UNK] 1, [BOS] 2, [EOS] 3.
BOS_ID, EOS_ID, FIRST_WORD_ID = 2, 3, 4


def random_ids(rng, n, length, vocab_size, min_length=1):
  """``(n, length)`` int32 ids in ``[1, vocab_size)``, right-padded with 0
  to a uniform random length in ``[min_length, length]`` per row."""
  lengths = rng.randint(min_length, length + 1, n)
  ids = rng.randint(1, vocab_size, (n, length)).astype(np.int32)
  ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
  return ids


def text_length(info):
  """The sequence length of the benchmark's data: the model's
  ``max_length`` statistic, else its example input length."""
  return int(info.stats.get("max_length", info.input_shape[0]))


def text_stats(info):
  """What the text tasks' ``fit`` stores, for encoded random data: the
  example info's statistics (vocabulary sizes) and the lengths."""
  stats = {"max_length": text_length(info)}
  if "target_length" in info.stats:           # sequence-to-sequence
    stats.update(target_length=int(info.stats["target_length"]),
                 bos_id=BOS_ID, eos_id=EOS_ID)
  if info.task == "question_answering":
    stats["question_length"] = int(info.stats.get("question_length",
                                                  QUESTION_LENGTH))
  return stats


def random_sentiment(info, n, rng):
  return {"tokens": random_ids(rng, n, text_length(info),
                               int(info.stats["vocab_size"])),
          "label": rng.randint(0, info.num_classes, n).astype(np.int32)}


def long(x):
  return np.asarray(x).astype(np.int64)


def sentiment_batch(batch):
  """``model(tokens, mask)``, int64 class targets."""
  tokens = long(batch["tokens"])
  return (tokens, tokens != 0), long(batch["label"])


class SentimentLoss(torch.nn.CrossEntropyLoss):
  """The sentiment task's loss: cross-entropy with label smoothing 0.05; reads
  ``.logits`` of a Hugging Face model's output."""

  def __init__(self, model=None):
    del model
    from optbench_jax.tasks import sentiment_analysis
    super().__init__(label_smoothing=(
        sentiment_analysis.SentimentAnalysis.default_label_smoothing))

  def forward(self, output, target):
    return super().forward(getattr(output, "logits", output), target)


def random_ner(info, n, rng):
  length = text_length(info)
  tokens = random_ids(rng, n, length, int(info.stats["vocab_size"]))
  chars = random_ids(rng, n * length, MAX_WORD_LENGTH,
                     int(info.stats["char_vocab_size"])).reshape(
                         n, length, MAX_WORD_LENGTH)
  real = tokens != 0
  chars[~real] = 0
  tags = rng.randint(0, len(info.extra["tag_names"]), (n, length))
  return {"tokens": tokens, "chars": chars,
          "tags": np.where(real, tags, 0).astype(np.int32)}


def ner_batch(batch):
  """``model(tokens, chars, mask)``; target ``(tags, mask)``."""
  tokens = long(batch["tokens"])
  mask = tokens != 0
  return (tokens, long(batch["chars"]), mask), (long(batch["tags"]), mask)


def crf_nll(emissions, tags, mask, transitions, start, end):
  """Per-sentence CRF negative log-likelihood ``log Z − S(y)`` ``(B,)``, as
  ``optbench_jax/models/crf.py``: forward algorithm in log space, right
  padding (a padding step carries α unchanged), 0 for an empty row."""
  mask = mask.bool()
  real = mask.to(emissions.dtype)
  tags = torch.where(mask, tags, torch.zeros_like(tags))
  emitted = emissions.gather(-1, tags[..., None])[..., 0]
  moved = transitions[tags[:, :-1], tags[:, 1:]] * real[:, 1:]
  length = mask.sum(-1)
  last = tags.gather(1, (length - 1).clamp(min=0)[:, None])[:, 0]
  score = (start[tags[:, 0]] + (emitted * real).sum(-1) + moved.sum(-1)
           + end[last])
  alpha = start + emissions[:, 0]
  for t in range(1, emissions.shape[1]):
    nxt = torch.logsumexp(alpha[:, :, None] + transitions, dim=1) + (
        emissions[:, t])
    alpha = torch.where(mask[:, t, None], nxt, alpha)
  log_z = torch.logsumexp(alpha + end, dim=-1)
  nonempty = length > 0
  return torch.where(nonempty, log_z - score, torch.zeros_like(score))


class CRFLoss(torch.nn.Module):
  """The NER task's loss: the CRF negative log-likelihood of the gold tags,
  mean over sentences, with the twin's ``crf_transitions/start/end``."""

  def __init__(self, model):
    super().__init__()
    self.crf = lambda: (model.crf_transitions, model.crf_start,
                        model.crf_end)

  def forward(self, emissions, target):
    tags, mask = target
    return crf_nll(emissions.float(), tags, mask, *self.crf()).mean()


def random_qa(info, n, rng):
  """Contexts and questions of random lengths, an answer span of at most
  30 tokens inside each context, every example answerable."""
  stats = text_stats(info)
  vocab = int(info.stats["vocab_size"])
  context = random_ids(rng, n, stats["max_length"], vocab)
  question = random_ids(rng, n, stats["question_length"], vocab)
  length = (context != 0).sum(1)
  start = (rng.random_sample(n) * length).astype(np.int32)
  span = np.minimum(length - start, MAX_ANSWER_LENGTH)
  end = start + (rng.random_sample(n) * span).astype(np.int32)
  return {"context": context, "question": question, "start": start,
          "end": end.astype(np.int32), "answerable": np.ones(n, np.float32),
          "uid": np.arange(n, dtype=np.int32)}


def qa_batch(batch):
  """``model(context, context_mask, question, question_mask)``; target
  ``(start, end)``."""
  context, question = long(batch["context"]), long(batch["question"])
  return ((context, context != 0, question, question != 0),
          (long(batch["start"]), long(batch["end"])))


class SpanLoss(torch.nn.Module):
  """The QA task's loss: cross-entropy of the start plus of the end
  position, each the mean over the (all answerable) examples."""

  def __init__(self, model=None):
    super().__init__()
    del model
    self.ce = torch.nn.CrossEntropyLoss()

  def forward(self, output, target):
    (start_logits, end_logits), (start, end) = output, target
    return self.ce(start_logits, start) + self.ce(end_logits, end)


# -- generation: language modelling and sequence-to-sequence ---------------
def random_lm(info, n, rng):
  """Full blocks of ``max_length + 1`` random ids, as ``fit`` cuts a token
  stream (only a stream's last block is padded): every target is real."""
  return {"tokens": rng.randint(FIRST_WORD_ID, int(info.stats["vocab_size"]),
                                (n, text_length(info) + 1)).astype(np.int32)}


def lm_batch(batch):
  """``model(tokens[:, :-1], mask)``; target ``tokens[:, 1:]``."""
  tokens = long(batch["tokens"])
  inputs = tokens[:, :-1]
  return (inputs, inputs != 0), tokens[:, 1:]


def lm_targets(arrays):
  return (np.asarray(arrays["tokens"])[:, 1:] != 0).sum(1)


def random_seq2seq(info, n, rng):
  """Sources of ``max_length`` ids right-padded to uniform random lengths
  ``[1, max_length]``; targets ``(n, target_length + 1)`` = ``[BOS] y
  [EOS]`` right-padded, ``y`` of a uniform random length in ``[1,
  target_length - 1]`` (as ``_seq2seq.encode_targets``); ``uid`` 0..n-1."""
  stats, vocab = text_stats(info), int(info.stats["vocab_size"])
  length = stats["target_length"]
  source = random_ids(rng, n, stats["max_length"], vocab)
  words = rng.randint(1, length, n)
  target = rng.randint(FIRST_WORD_ID, vocab,
                       (n, length + 1)).astype(np.int32)
  target[:, 0] = BOS_ID
  position = np.arange(length + 1)[None, :]
  target[position == words[:, None] + 1] = EOS_ID
  target[position > words[:, None] + 1] = 0
  return {"source": source, "target": target,
          "uid": np.arange(n, dtype=np.int32)}


def seq2seq_batch(batch):
  """``model(source, source_mask, target[:, :-1], target_mask)``; target
  ``target[:, 1:]``."""
  source, target = long(batch["source"]), long(batch["target"])
  target_in = target[:, :-1]
  return (source, source != 0, target_in, target_in != 0), target[:, 1:]


def seq2seq_targets(arrays):
  return (np.asarray(arrays["target"])[:, 1:] != 0).sum(1)


class TokenLoss(torch.nn.CrossEntropyLoss):
  """Next-token cross-entropy over the real target tokens (id 0 ignored),
  the mean over them, with the task's label smoothing (0 for
  ``text_generation``, 0.1 for translation and summarization); PyTorch's
  ``label_smoothing`` mixes in the uniform distribution as optax's
  ``smooth_labels``. Logits ``(B, T, V)``, targets ``(B, T)``."""

  def __init__(self, task_name):
    super().__init__(ignore_index=0, label_smoothing=float(
        tasks.get(task_name).default_label_smoothing))

  def forward(self, output, target):
    logits = getattr(output, "logits", output)
    return super().forward(logits.float().flatten(0, 1), target.flatten())


def token_loss(task_name):
  return lambda model: TokenLoss(task_name)


_cross_entropy = lambda model: torch.nn.CrossEntropyLoss()
TASK_DATA = {
    "image_classification": TaskData(random_images, nchw_images,
                                     _cross_entropy),
    "semantic_segmentation": TaskData(random_segmentation, nchw_images,
                                      lambda model: SegmentationLoss()),
    "sentiment_analysis": TaskData(random_sentiment, sentiment_batch,
                                   SentimentLoss, text_stats),
    "ner": TaskData(random_ner, ner_batch, CRFLoss, text_stats),
    "question_answering": TaskData(random_qa, qa_batch, SpanLoss,
                                   text_stats),
    "text_generation": TaskData(random_lm, lm_batch,
                                token_loss("text_generation"), text_stats,
                                lm_targets),
    **{task: TaskData(random_seq2seq, seq2seq_batch, token_loss(task),
                      text_stats, seq2seq_targets)
       for task in ("machine_translation", "text_summarization")},
}


class NotImplementedYet(Exception):
  """The benchmark cannot measure this model; the message says why."""


@dataclasses.dataclass
class Workload:
  spec: models.ModelSpec
  info: DatasetInfo          # example_info, with the random data's stats
  arrays: dict               # host arrays: steps × batch random examples
  recipe: TaskData
  jax: Any = None            # jax_timing.Setup, once made
  entry: Optional[str] = None  # the benchmark entry's name, e.g. gpt_small@512

  @property
  def name(self) -> str:
    return self.entry or self.spec.name

  def target_tokens(self, arrays) -> Optional[int]:
    """Real target tokens in ``arrays``; None for tasks without tokens."""
    if self.recipe.target_tokens is None:
      return None
    return int(np.sum(self.recipe.target_tokens(arrays)))


def registered() -> list[str]:
  """Every model of the registry, in registry order."""
  return models.MODELS.names()


def split_entry(entry: str) -> tuple[str, Optional[int]]:
  """``"gpt_small@512"`` -> ``("gpt_small", 512)``; ``"gpt_small"`` ->
  ``("gpt_small", None)``. Raises ValueError on a malformed length."""
  name, at, length = entry.partition("@")
  if not at:
    return name, None
  if not length.isdigit() or int(length) < 2:
    raise ValueError(f"{entry!r}: the sequence length after '@' must be an "
                     f"integer >= 2")
  return name, int(length)


def has_sequence_length(name: str) -> bool:
  """Whether the model's task recipe makes token data of a chosen length."""
  recipe = TASK_DATA.get(models.MODELS.get(name).task)
  return recipe is not None and recipe.encoded_stats is not None


def entry_error(entry: str) -> Optional[str]:
  """Why ``entry`` (``model`` or ``model@length``) is not valid, or None."""
  try:
    name, length = split_entry(entry)
  except ValueError as e:
    return str(e)
  if name not in registered():
    return f"unknown model {name!r}"
  if length is not None and not has_sequence_length(name):
    return (f"{entry!r}: '@length' applies to text models only "
            f"({name!r} is {models.MODELS.get(name).task})")
  return None


def sequence_info(example: DatasetInfo, length: Optional[int]) -> DatasetInfo:
  """The example info with every sequence length set to ``length``: the
  input (``max_length``: LM blocks, sources, contexts) and, for
  sequence-to-sequence models, the target (``target_length``)."""
  if length is None:
    return example
  stats = {**example.stats, "max_length": length}
  if "target_length" in stats:
    stats["target_length"] = length
  return dataclasses.replace(example, input_shape=(length,), stats=stats)


def make(entry: str, args) -> Workload:
  """The workload of ``entry``: a registered model's name, optionally with a
  sequence length (``gpt_small@512``); a text model without one gets
  ``--seq-len`` if given, else its example info's length."""
  name, length = split_entry(entry)
  spec = models.MODELS.get(name)
  recipe = TASK_DATA.get(spec.task)
  if recipe is None:
    raise NotImplementedYet(f"no random-data recipe for task {spec.task!r} "
                            f"in benchmarks/speed/workload.py")
  example = spec.example_info
  if recipe.encoded_stats is not None:
    if length is None:
      length = getattr(args, "seq_len", None)
    example = sequence_info(example, length)
    # Encoded random data: the statistics fit would store; fit is skipped.
    info = dataclasses.replace(
        example, name="random", source="random",
        stats={**example.stats, **recipe.encoded_stats(example)})
    arrays = recipe.random(info, args.batch_size * args.steps,
                           np.random.RandomState(args.seed))
    return Workload(spec, info, arrays, recipe, entry=entry)
  arrays = recipe.random(example, args.batch_size * args.steps,
                         np.random.RandomState(args.seed))
  # The task's statistics of the training data (e.g. normalisation); the
  # example info has no augmentation, so none runs.
  splits = tasks.get(spec.task).fit(data.Splits(
      train=arrays, val=data.take(arrays, np.arange(0)), test=None,
      info=dataclasses.replace(spec.example_info, name="random",
                               source="random")))
  return Workload(spec, splits.info, arrays, recipe, entry=entry)
