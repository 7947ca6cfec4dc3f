"""What the sequence-tagging (NER) tasks share: host-side metrics computed
from tag-id sequences ``(N, T)`` and a mask ``(N, T)`` (1 = real token).

* Entity level (:func:`entity_scores`): precision, recall and F1 of whole
  entities (a chunk counts only when its type and both boundaries match), by
  ``seqeval`` in its default, conlleval-compatible mode with the micro
  average (Ramshaw & Marcus 1995; Tjong Kim Sang & De Meulder 2003).
* Token level (:func:`token_scores`): the source benchmark's micro scores
  over entity tags, the ``O`` tag and padding excluded.

Zero divisions give 0.0.
"""
from typing import Sequence

import numpy as np


def _rows(ids, mask, tag_names: Sequence[str]):
  """Each row's real tags, as tag strings."""
  names = np.asarray(tag_names, dtype=object)
  return [list(names[row[keep]]) for row, keep in zip(ids, mask)]


def entity_scores(true_tags, pred_tags, mask,
                  tag_names: Sequence[str]) -> dict:
  """Entity-level micro precision, recall and F1 (seqeval, default mode).

  Args:
    true_tags: ``(N, T)`` int gold tag ids.
    pred_tags: ``(N, T)`` int predicted tag ids.
    mask: ``(N, T)``, 1 for real tokens; other positions are dropped before
      the tags are read as sequences.
    tag_names: the name of each tag id (``"O"``, ``"B-PER"``, ...).

  Returns:
    ``{"f1", "precision", "recall"}`` as Python floats.
  """
  # Imported here: seqeval imports scikit-learn, 2.6 s of every start.
  from seqeval import metrics as seqeval_metrics  # pylint: disable=import-outside-toplevel
  mask = np.asarray(mask).astype(bool)
  y_true = _rows(np.asarray(true_tags), mask, tag_names)
  y_pred = _rows(np.asarray(pred_tags), mask, tag_names)
  scores = {"f1": seqeval_metrics.f1_score,
            "precision": seqeval_metrics.precision_score,
            "recall": seqeval_metrics.recall_score}
  return {name: float(score(y_true, y_pred, average="micro",
                            zero_division=0))
          for name, score in scores.items()}


def token_scores(true_tags, pred_tags, mask, outside_id: int) -> dict:
  """Token-level micro scores over entity tags, ``O`` and padding excluded.

  Over the real (``mask = 1``) tokens:

  * ``TP = #{pred == true and true != O}``;
  * ``precision = TP / #{pred != O}``;
  * ``recall = TP / #{true != O}``;
  * ``F1 = 2·precision·recall / (precision + recall)``;

  each 0.0 when its denominator is 0. A ``B-PER`` predicted for a gold
  ``I-PER`` is wrong (tags are compared as ids).

  Args:
    true_tags: ``(N, T)`` int gold tag ids.
    pred_tags: ``(N, T)`` int predicted tag ids.
    mask: ``(N, T)``, 1 for real tokens.
    outside_id: the id of the ``O`` tag.

  Returns:
    ``{"token_f1_excl_o", "token_precision_excl_o",
    "token_recall_excl_o"}`` as Python floats.
  """
  mask = np.asarray(mask).astype(bool)
  true_tags, pred_tags = np.asarray(true_tags), np.asarray(pred_tags)
  true_entity = mask & (true_tags != outside_id)
  pred_entity = mask & (pred_tags != outside_id)
  hits = int(np.sum(true_entity & (pred_tags == true_tags)))
  ratio = lambda a, b: float(a) / float(b) if b > 0 else 0.0
  precision = ratio(hits, np.sum(pred_entity))
  recall = ratio(hits, np.sum(true_entity))
  return {"token_f1_excl_o": ratio(2 * precision * recall,
                                   precision + recall),
          "token_precision_excl_o": precision,
          "token_recall_excl_o": recall}
