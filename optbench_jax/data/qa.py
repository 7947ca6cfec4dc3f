"""Extractive question-answering datasets: ``context``, ``question`` (str),
``answers`` (a list of gold answer strings) and ``answer_starts`` (their
character offsets in the context, -1 where the dataset gives none).

From the Hugging Face Hub (downloaded on first use, then cached):

* ``squad_v1``: SQuAD v1.1, 87,599 training and 10,570 validation
  questions (the validation split, with its several gold answers, is the
  test split here) (``rajpurkar/squad``, formerly ``squad``). Contexts cut
  at 384 tokens.
* ``tweet_qa``: TweetQA, 10,692 training and 1,086 validation questions on
  tweets, with free-text answers (no offsets; often not a span of the
  tweet, see ``tasks/question_answering.py``) (``ucsbnlp/tweet_qa``,
  formerly ``tweet_qa``). Contexts cut at 256 tokens.

No installable package ships real SQuAD-style data of useful size, so these
are tested on tiny caches the tests write in the Hugging Face format.
"""
from __future__ import annotations

import numpy as np

from optbench_jax.data.base import DatasetInfo, RawDataset
from optbench_jax.data.hf import Arrays, HFSource
from optbench_jax.data.vision import register_cached
from optbench_jax.errors import OptBenchError

TASK = "question_answering"


def _objects(values) -> np.ndarray:
  out = np.empty(len(values), dtype=object)
  out[:] = values
  return out


def qa_split(name: str, contexts, questions, answers, starts, source: str
             ) -> Arrays:
  answers = [[str(a) for a in row] for row in answers]
  starts = [[int(s) for s in row] for row in starts]
  if not (len(contexts) == len(questions) == len(answers) == len(starts)):
    raise OptBenchError(f"dataset {name!r} at {source}: columns differ in "
                        f"length")
  return {"context": _objects([str(c) for c in contexts]),
          "question": _objects([str(q) for q in questions]),
          "answers": _objects(answers), "answer_starts": _objects(starts)}


def _info(name, source):
  return DatasetInfo(name=name, task=TASK, source=source)


def _squad_split(name, arrays, source):
  answers = [a["text"] for a in arrays["answers"]]
  starts = [a["answer_start"] for a in arrays["answers"]]
  return qa_split(name, arrays["context"], arrays["question"], answers,
                  starts, source)


def build_squad(splits, source, class_names) -> RawDataset:
  del class_names
  return RawDataset(
      train=_squad_split("squad_v1", splits["train"], source),
      test=_squad_split("squad_v1", splits["test"], source),
      info=_info("squad_v1", source))


def _tweet_split(arrays, source):
  answers = [list(a) if not isinstance(a, str) else [a]
             for a in arrays["answers"]]
  return qa_split("tweet_qa", arrays["context"], arrays["question"], answers,
                  [[-1] * len(a) for a in answers], source)


def build_tweet_qa(splits, source, class_names) -> RawDataset:
  del class_names
  return RawDataset(train=_tweet_split(splits["train"], source),
                    test=_tweet_split(splits["test"], source),
                    info=_info("tweet_qa", source))


# Split sizes (``sizes=``): each source's dataset card (HFSource.card).
_EVAL_AS_TEST = {"train": "train", "test": "validation"}
register_cached(
    "squad_v1", TASK,
    [HFSource(("rajpurkar/squad", "squad"), "plain_text", _EVAL_AS_TEST,
              {"context": "context", "question": "question",
               "answers": "answers"},
              sizes={"train": 87_599, "validation": 10_570})],
    build_squad,
    "SQuAD v1.1, 87,599 + 10,570 questions, from the HF Hub")
register_cached(
    "tweet_qa", TASK,
    [HFSource(("ucsbnlp/tweet_qa", "tweet_qa"), None, _EVAL_AS_TEST,
              {"context": "Tweet", "question": "Question",
               "answers": "Answer"},
              sizes={"train": 10_692, "validation": 1_086})],
    build_tweet_qa,
    "TweetQA, 10,692 + 1,086 questions on tweets (free-text answers), from "
    "the HF Hub", defaults={"max_length": 256})
