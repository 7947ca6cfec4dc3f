"""NER metrics from tag ids: seqeval's documented example, masking, the
token-level definition by hand, zero divisions."""
import numpy as np
import pytest

from optbench_jax.tasks import _tagging

NAMES = ("O", "B-MISC", "I-MISC", "B-PER", "I-PER")
ID = {name: i for i, name in enumerate(NAMES)}


def _ids(rows, t):
  """Tag-name rows → right-padded ids ``(N, t)`` (padding: a garbage id)
  and their mask."""
  ids = np.full((len(rows), t), ID["B-PER"])
  mask = np.zeros((len(rows), t), int)
  for i, row in enumerate(rows):
    ids[i, :len(row)] = [ID[n] for n in row]
    mask[i, :len(row)] = 1
  return ids, mask


# seqeval's README example: one of two true entities found, out of two
# predicted (the MISC span's left boundary is wrong): P = R = F1 = 0.5.
Y_TRUE = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"],
          ["B-PER", "I-PER", "O"]]
Y_PRED = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"],
          ["B-PER", "I-PER", "O"]]


def test_entity_scores_seqeval_example_and_padding_ignored():
  for t in (7, 10):  # 10: more padding, which predicts entities
    true, mask = _ids(Y_TRUE, t)
    pred, _ = _ids(Y_PRED, t)
    assert _tagging.entity_scores(true, pred, mask, NAMES) == pytest.approx(
        {"f1": 0.5, "precision": 0.5, "recall": 0.5})
  # Unmasked, the padding's B-PER tokens would be entities.
  unmasked = _tagging.entity_scores(true, pred, np.ones_like(mask), NAMES)
  assert unmasked["f1"] != pytest.approx(0.5)


def test_entity_scores_by_hand_and_zero_division():
  true, mask = _ids([["B-PER", "I-PER", "O", "B-MISC"], ["O", "B-PER"]], 4)
  pred, _ = _ids([["B-PER", "I-PER", "O", "O"], ["O", "O"]], 4)
  # 1 of 3 true entities found, 1 predicted, correct: P 1, R 1/3, F1 1/2.
  assert _tagging.entity_scores(true, pred, mask, NAMES) == pytest.approx(
      {"f1": 0.5, "precision": 1.0, "recall": 1 / 3})
  outside, _ = _ids([["O"] * 4, ["O"] * 2], 4)
  assert _tagging.entity_scores(true, outside, mask, NAMES) == {
      "f1": 0.0, "precision": 0.0, "recall": 0.0}
  assert _tagging.entity_scores(outside, outside, mask, NAMES) == {
      "f1": 0.0, "precision": 0.0, "recall": 0.0}


def test_token_scores_by_hand():
  true, mask = _ids(Y_TRUE, 9)
  pred, _ = _ids(Y_PRED, 9)
  # true != O: 5 tokens; pred != O: 6 tokens; equal and != O: I-MISC ×2,
  # B-PER, I-PER = 4 (the B-MISC under a gold I-MISC is wrong).
  p, r = 4 / 6, 4 / 5
  assert _tagging.token_scores(true, pred, mask, ID["O"]) == pytest.approx({
      "token_precision_excl_o": p, "token_recall_excl_o": r,
      "token_f1_excl_o": 2 * p * r / (p + r)})


def test_token_scores_zero_division():
  true, mask = _ids([["O", "O"], ["O"]], 3)
  pred, _ = _ids([["O", "B-PER"], ["O"]], 3)
  assert _tagging.token_scores(true, true, mask, ID["O"]) == {
      "token_f1_excl_o": 0.0, "token_precision_excl_o": 0.0,
      "token_recall_excl_o": 0.0}
  # One predicted entity token, no true ones: P = 0/1, R = 0/0 → 0.
  assert _tagging.token_scores(true, pred, mask, ID["O"]) == {
      "token_f1_excl_o": 0.0, "token_precision_excl_o": 0.0,
      "token_recall_excl_o": 0.0}
  empty = np.zeros_like(mask)
  assert _tagging.token_scores(true, pred, empty, ID["O"])[
      "token_f1_excl_o"] == 0.0
  assert _tagging.entity_scores(true, pred, empty, ("O", "B-X", "I-X",
                                                    "B-PER", "I-PER"))[
      "f1"] == 0.0
