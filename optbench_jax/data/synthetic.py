"""Synthetic datasets: small, deterministic, generated in memory, learnable.

Each task registers a ``synthetic`` dataset here with the real input and label
shapes, whose labels follow a rule of the inputs, so the loss must fall.

``image_classification/synthetic``: 28×28×1 images of Gaussian noise with a
bright 7×7 square whose position (one of 10 cells of a grid) is the label.

``semantic_segmentation/synthetic``: 32×32×3 uint8 images of grey noise with
1–3 rectangles or discs, red-ish (class 1) or blue-ish (class 2) on the
background (class 0): a pixel's class is a rule of its colour (red minus
blue above 0.3: 1; below −0.3: 2; else 0). Pixels with an 8-neighbour of
another class (a 1-pixel band on each side of every shape's outline) are
labelled 255 (ignored).

Text tasks (raw strings, tokenised by the task for the model):
``sentiment_analysis/synthetic`` (label = whether positive cue words
outnumber negative ones), ``ner/synthetic`` (person and place names among
filler words, BIO tags), ``question_answering/synthetic`` (``key value``
pairs among filler words; the question names a key, the answer is its
value). Generative tasks: ``machine_translation/synthetic`` (the copy
task), ``text_summarization/synthetic`` (the summary lists the colour words
of the document), ``text_generation/synthetic`` (a small formal language).
"""
from __future__ import annotations

import numpy as np

from optbench_jax.data import augment
from optbench_jax.data.base import DatasetInfo, DatasetSpec, RawDataset, register

SYNTHETIC_SEED = 1234  # the data never depend on the run's seed
IGNORE = 255
SHAPE_COLOURS = {1: (0.8, 0.2, 0.2), 2: (0.2, 0.2, 0.8)}  # class -> RGB


def image_classification(n_train: int = 1024, n_test: int = 256,
                         size: int = 28, num_classes: int = 10) -> RawDataset:
  rng = np.random.default_rng(SYNTHETIC_SEED)

  def make(n):
    label = rng.integers(0, num_classes, size=n).astype(np.int32)
    image = rng.normal(0.2, 0.1, size=(n, size, size, 1))
    cells = [(r, c) for r in (2, 11, 20) for c in (2, 11, 20)] + [(11, 11)]
    for i, y in enumerate(label):
      r, c = cells[y] if y < 9 else (6, 16)
      r += rng.integers(-2, 3)
      c += rng.integers(-2, 3)
      image[i, r:r + 7, c:c + 7, 0] += 0.7
    return {"image": np.clip(image, 0, 1).astype(np.float32), "label": label}

  info = DatasetInfo(name="synthetic", task="image_classification",
                     num_classes=num_classes, input_shape=(size, size, 1),
                     source="synthetic")
  return RawDataset(train=make(n_train), test=make(n_test), info=info)


register(DatasetSpec(
    name="synthetic", task="image_classification",
    load=lambda data_dir=None: image_classification(),
    description="28x28 noise with a bright square whose position is the label"))


def segmentation_shapes(rng: np.random.Generator, size: int
                        ) -> tuple[np.ndarray, np.ndarray]:
  """One image (float RGB in [0, 1]) and its class map (before ignoring)."""
  grey = rng.normal(0.45, 0.1, size=(size, size, 1))
  image = grey + rng.normal(0.0, 0.02, size=(size, size, 3))
  classes = np.zeros((size, size), np.uint8)
  yy, xx = np.mgrid[:size, :size]
  for _ in range(rng.integers(1, 4)):
    cls = int(rng.integers(1, 3))
    extent = rng.integers(5, size // 2, size=2)
    top, left = (rng.integers(0, size - e) for e in extent)
    if rng.random() < 0.5:  # rectangle
      inside = ((yy >= top) & (yy < top + extent[0])
                & (xx >= left) & (xx < left + extent[1]))
    else:  # disc inscribed in the box
      radius = extent.min() / 2
      inside = ((yy - top - radius + 0.5) ** 2
                + (xx - left - radius + 0.5) ** 2) <= radius ** 2
    image[inside] = np.asarray(SHAPE_COLOURS[cls]) + rng.normal(
        0.0, 0.05, size=(int(inside.sum()), 3))
    classes[inside] = cls
  return np.clip(image, 0.0, 1.0), classes


def ignore_boundaries(classes: np.ndarray) -> np.ndarray:
  """``classes`` with every pixel that has an 8-neighbour of another class
  set to 255."""
  padded = np.pad(classes, 1, mode="edge")
  h, w = classes.shape
  boundary = np.zeros(classes.shape, bool)
  for dy in (0, 1, 2):
    for dx in (0, 1, 2):
      boundary |= padded[dy:dy + h, dx:dx + w] != classes
  return np.where(boundary, IGNORE, classes).astype(np.uint8)


def semantic_segmentation(n_train: int = 512, n_test: int = 128,
                          size: int = 32) -> RawDataset:
  rng = np.random.default_rng(SYNTHETIC_SEED)

  def make(n):
    image = np.empty((n, size, size, 3), np.uint8)
    label = np.empty((n, size, size), np.uint8)
    for i in range(n):
      pixels, classes = segmentation_shapes(rng, size)
      image[i] = np.round(pixels * 255).astype(np.uint8)
      label[i] = ignore_boundaries(classes)
    return {"image": image, "label": label}

  info = DatasetInfo(
      name="synthetic", task="semantic_segmentation", num_classes=3,
      input_shape=(size, size, 3), source="synthetic",
      extra={"ignore_index": IGNORE,
             "class_names": ["background", "red", "blue"]})
  return RawDataset(train=make(n_train), test=make(n_test), info=info)


register(DatasetSpec(
    name="synthetic", task="semantic_segmentation",
    load=lambda data_dir=None: semantic_segmentation(),
    augment=augment.flip_scale_crop,
    description="32x32 grey noise with red and blue shapes whose colour is "
    "the pixel class, shape outlines ignored"))


# -- text ----------------------------------------------------------------------
FILLER = tuple(f"w{i}" for i in range(40))
POSITIVE = ("great", "superb", "lovely", "excellent", "fine")
NEGATIVE = ("awful", "boring", "dull", "terrible", "bad")


def _object_array(values) -> np.ndarray:
  out = np.empty(len(values), dtype=object)
  out[:] = values
  return out


def sentiment_analysis(n_train: int = 512, n_test: int = 128) -> RawDataset:
  """Filler words with 1-5 cue words; the label is whether positive cues
  outnumber negative ones (a counting rule an LSTM learns)."""
  rng = np.random.default_rng(SYNTHETIC_SEED)

  def make(n):
    texts, labels = [], []
    for _ in range(n):
      label = int(rng.integers(0, 2))
      minority = int(rng.integers(0, 3))
      majority = minority + int(rng.integers(1, 3))
      pos, neg = (majority, minority) if label else (minority, majority)
      words = list(rng.choice(FILLER, size=int(rng.integers(6, 20))))
      for cue in ([rng.choice(POSITIVE) for _ in range(pos)]
                  + [rng.choice(NEGATIVE) for _ in range(neg)]):
        words.insert(int(rng.integers(0, len(words) + 1)), str(cue))
      texts.append(" ".join(words))
      labels.append(label)
    return {"text": _object_array(texts),
            "label": np.asarray(labels, np.int32)}

  info = DatasetInfo(name="synthetic", task="sentiment_analysis",
                     num_classes=2, source="synthetic",
                     extra={"class_names": ("negative", "positive")})
  return RawDataset(train=make(n_train), test=make(n_test), info=info)


NER_TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
PEOPLE = (("Anna",), ("Bruno",), ("Chen", "Li"), ("Dara", "Okafor"),
          ("Emil",), ("Farah", "Khan"))
PLACES = (("Paris",), ("Lagos",), ("New", "York"), ("Rio", "de", "Janeiro"),
          ("Oslo",), ("Hanoi",))


def ner(n_train: int = 512, n_test: int = 128) -> RawDataset:
  """Filler words with person and place names (1-3 words) tagged in BIO;
  a word's tag follows from the word and its left neighbour."""
  rng = np.random.default_rng(SYNTHETIC_SEED)

  def make(n):
    sentences, tags = [], []
    for _ in range(n):
      words, labels = [], []
      for _ in range(int(rng.integers(3, 9))):
        kind = rng.random()
        if kind < 0.2:
          entity, tag = PEOPLE[int(rng.integers(len(PEOPLE)))], "PER"
        elif kind < 0.35:
          entity, tag = PLACES[int(rng.integers(len(PLACES)))], "LOC"
        else:
          words.append(str(rng.choice(FILLER)))
          labels.append(0)
          continue
        words.extend(entity)
        labels.extend([NER_TAGS.index(f"B-{tag}")]
                      + [NER_TAGS.index(f"I-{tag}")] * (len(entity) - 1))
      sentences.append(words)
      tags.append(labels)
    return {"tokens": _object_array(sentences), "tags": _object_array(tags)}

  info = DatasetInfo(name="synthetic", task="ner", num_classes=len(NER_TAGS),
                     source="synthetic", extra={"tag_names": NER_TAGS})
  return RawDataset(train=make(n_train), test=make(n_test), info=info)


QA_KEYS = ("colour", "size", "city", "animal", "mood")
QA_VALUES = ("red", "blue", "big", "small", "rome", "lima", "cat", "owl",
             "calm", "glad", "green", "tiny")


def question_answering(n_train: int = 512, n_test: int = 128) -> RawDataset:
  """Contexts of filler words and ``key value`` pairs; the question names a
  key, the answer is the value that follows it in the context."""
  rng = np.random.default_rng(SYNTHETIC_SEED)

  def make(n):
    contexts, questions, answers, starts = [], [], [], []
    for _ in range(n):
      keys = rng.choice(QA_KEYS, size=3, replace=False)
      units = [str(w) for w in rng.choice(FILLER,
                                           size=int(rng.integers(8, 24)))]
      pairs = {}
      for key in keys:
        pairs[str(key)] = str(rng.choice(QA_VALUES))
        units.insert(int(rng.integers(0, len(units) + 1)),
                     f"{key} {pairs[str(key)]}")
      asked = str(rng.choice(keys))
      context = " ".join(units)
      start = context.index(f"{asked} {pairs[asked]}") + len(asked) + 1
      contexts.append(context)
      questions.append(f"what {asked} is it ?")
      answers.append([pairs[asked]])
      starts.append([start])
    return {"context": _object_array(contexts),
            "question": _object_array(questions),
            "answers": _object_array(answers),
            "answer_starts": _object_array(starts)}

  info = DatasetInfo(name="synthetic", task="question_answering",
                     source="synthetic")
  return RawDataset(train=make(n_train), test=make(n_test), info=info)


# Their texts are short: every text fits the default maximum length.
for _task, _make, _length, _what in (
    ("sentiment_analysis", sentiment_analysis, 32,
     "texts whose label is whether positive cue words outnumber negative"),
    ("ner", ner, 32, "sentences with person and place names tagged in BIO"),
    ("question_answering", question_answering, 48,
     "key-value contexts; the answer is the value of the asked key")):
  register(DatasetSpec(name="synthetic", task=_task,
                       load=lambda data_dir=None, _make=_make: _make(),
                       description=f"synthetic: {_what}",
                       defaults={"max_length": _length}))


# -- generation ------------------------------------------------------------------
WORDS = ("red", "blue", "green", "cat", "dog", "bird", "runs", "sleeps",
         "big", "small", "tree", "house", "river", "stone", "light", "dark")
NOUNS = ("cat", "dog", "bird", "fox", "owl")
VERBS = {"sees": "the", "chases": "the", "likes": "a"}
ADJECTIVES = ("big", "small", "old", "young")


def machine_translation(n_train: int = 512, n_test: int = 64) -> RawDataset:
  """The copy task: the target is the source (4-10 words), which a
  sequence-to-sequence model learns to decode back."""
  rng = np.random.default_rng(SYNTHETIC_SEED)

  def make(n):
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 11))))
             for _ in range(n)]
    return {"source": _object_array(texts), "target": _object_array(texts)}

  info = DatasetInfo(name="synthetic", task="machine_translation",
                     source="synthetic")
  return RawDataset(train=make(n_train), test=make(n_test), info=info)


def text_summarization(n_train: int = 512, n_test: int = 64) -> RawDataset:
  """Documents of filler words with 2-4 colour words; the summary is the
  colour words in order."""
  rng = np.random.default_rng(SYNTHETIC_SEED)
  colours = ("red", "blue", "green", "black", "white", "gold")

  def make(n):
    documents, summaries = [], []
    for _ in range(n):
      words = [str(w) for w in rng.choice(FILLER, size=int(
          rng.integers(10, 24)))]
      keys = [str(c) for c in rng.choice(colours, size=int(
          rng.integers(2, 5)))]
      places = sorted(rng.choice(len(words), size=len(keys), replace=False))
      for offset, (place, key) in enumerate(zip(places, keys)):
        words.insert(int(place) + offset, key)
      documents.append(" ".join(words))
      summaries.append(" ".join(keys))
    return {"document": _object_array(documents),
            "summary": _object_array(summaries)}

  info = DatasetInfo(name="synthetic", task="text_summarization",
                     source="synthetic")
  return RawDataset(train=make(n_train), test=make(n_test), info=info)


def text_generation(n_train: int = 256, n_test: int = 64) -> RawDataset:
  """Paragraphs of a small formal language: ``the [adjective] noun verb
  det noun .`` where the verb fixes the determiner of its object."""
  rng = np.random.default_rng(SYNTHETIC_SEED)

  def sentence():
    words = ["the"]
    if rng.random() < 0.5:
      words.append(str(rng.choice(ADJECTIVES)))
    verb = str(rng.choice(list(VERBS)))
    words += [str(rng.choice(NOUNS)), verb, VERBS[verb],
              str(rng.choice(NOUNS)), "."]
    return " ".join(words)

  def make(n):
    return {"text": _object_array([
        " ".join(sentence() for _ in range(int(rng.integers(3, 8))))
        for _ in range(n)])}

  info = DatasetInfo(name="synthetic", task="text_generation",
                     source="synthetic")
  return RawDataset(train=make(n_train), test=make(n_test), info=info)


for _task, _make, _defaults, _what in (
    ("machine_translation", machine_translation,
     {"max_length": 24, "target_length": 24},
     "the copy task (the target is the source)"),
    ("text_summarization", text_summarization,
     {"max_length": 40, "target_length": 12},
     "filler words with colour words; the summary lists the colours"),
    ("text_generation", text_generation, {"max_length": 32},
     "paragraphs of a small formal language")):
  register(DatasetSpec(name="synthetic", task=_task,
                       load=lambda data_dir=None, _make=_make: _make(),
                       description=f"synthetic: {_what}",
                       defaults=_defaults))
