"""Host-side scores of decoded text (``tasks/_generation_metrics.py``).

sacreBLEU and rouge-score on known strings give their documented values
(sacreBLEU's README example, identical texts, a hand-computed ROUGE), the
perplexity of a hand case, and METEOR is NaN and flagged unavailable without
NLTK's WordNet data.
"""
import math

import numpy as np
import pytest
import sacrebleu

from optbench_jax.tasks import _generation_metrics as gm

# sacreBLEU's README example: three system outputs, two reference streams.
README_SYS = ["The dog bit the man.", "It wasn't surprising.",
              "The man had just bitten him."]
README_REFS = [["The dog bit the man.", "It was not unexpected.",
                "The man bit him first."],
               ["The dog had bit the man.", "No one was surprised.",
                "The man had bitten the dog."]]


def test_sacrebleu_readme_example():
  # The README's documented value with both streams...
  assert sacrebleu.corpus_bleu(README_SYS, README_REFS).score == \
      pytest.approx(48.53, abs=0.005)
  # ...and ours, one reference per hypothesis, equals sacreBLEU's own call.
  got = gm.translation_scores(README_SYS, README_REFS[0])
  assert set(got) == {"bleu", "chrf", "ter"}
  refs = README_REFS[:1]
  assert got["bleu"] == sacrebleu.corpus_bleu(README_SYS, refs).score
  assert got["chrf"] == sacrebleu.corpus_chrf(README_SYS, refs).score
  assert got["ter"] == sacrebleu.corpus_ter(README_SYS, refs).score
  assert all(isinstance(v, float) for v in got.values())
  assert 0 < got["bleu"] < 100 and 0 < got["chrf"] < 100 and got["ter"] > 0


def test_identical_translations_score_perfectly():
  text = ["the quick brown fox jumps over the lazy dog",
          "a second , longer sentence with punctuation ."]
  got = gm.translation_scores(text, text)
  assert got == pytest.approx({"bleu": 100.0, "chrf": 100.0, "ter": 0.0})


def test_signatures_are_sacrebleu_defaults():
  sig = gm.signatures()
  version = sacrebleu.__version__
  assert sig["bleu"] == (f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|"
                         f"version:{version}")
  assert sig["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|")
  assert sig["ter"].startswith("nrefs:1|case:lc|tok:tercom|norm:no|")
  assert all(s.endswith(f"version:{version}") for s in sig.values())


def test_rouge_by_hand():
  hyp, ref = "the cat lay on the rug", "the cat sat on the mat"
  # Unigrams in common: the ×2, cat, on -> 4 of 6 each way. Bigrams: "the
  # cat", "on the" -> 2 of 5. Longest common subsequence: the cat on the.
  got = gm.summary_scores([hyp, ref], [ref, ref], [f"{ref} {ref}", ref])
  assert got["rouge1"] == pytest.approx((4 / 6 + 1) / 2)
  assert got["rouge2"] == pytest.approx((2 / 5 + 1) / 2)
  assert got["rougeL"] == pytest.approx((4 / 6 + 1) / 2)
  assert got["bleu"] == sacrebleu.corpus_bleu([hyp, ref], [[ref, ref]]).score
  # Sources of 12 and 6 words over 6-word summaries.
  assert got["compression_ratio"] == pytest.approx((12 / 6 + 6 / 6) / 2)
  # Stemming: "cats"/"cat" and "running"/"run" match.
  stemmed = gm.summary_scores(["cats running"], ["cat run"], ["x"])
  assert stemmed["rouge1"] == pytest.approx(1.0)


def test_identical_summaries_and_empty_hypotheses():
  text = ["officials said the storm had passed", "markets rose on friday"]
  got = gm.summary_scores(text, text, ["a b c d e f g h i j k l m n"] * 2)
  assert got["rouge1"] == got["rouge2"] == got["rougeL"] == 1.0
  assert got["bleu"] == pytest.approx(100.0)
  assert got["compression_ratio"] == pytest.approx((14 / 6 + 14 / 4) / 2)
  # An empty summary counts as one word in the ratio and scores 0 ROUGE.
  empty = gm.summary_scores([""], ["markets rose"], ["one two three"])
  assert empty["compression_ratio"] == 3.0 and empty["rouge1"] == 0.0


def test_meteor_unavailable_is_nan_and_flagged(monkeypatch):
  nltk = pytest.importorskip("nltk")

  def missing(resource, *args, **kwargs):
    raise LookupError(resource)

  monkeypatch.setattr(nltk.data, "find", missing)
  got = gm.summary_scores(["the cat sat"], ["the cat sat"], ["the cat sat"])
  assert math.isnan(got["meteor"]) and got["meteor_available"] == 0.0
  assert got["rouge1"] == 1.0  # the rest is still computed
  assert set(got) == {"rougeL", "rouge1", "rouge2", "bleu",
                      "compression_ratio", "meteor", "meteor_available"}


def test_meteor_without_nltk_is_unavailable(monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "nltk", None)
  assert math.isnan(gm.meteor(["a b"], ["a b"]))


def test_meteor_when_wordnet_is_installed():
  if not gm._wordnet_available():  # pylint: disable=protected-access
    pytest.skip("NLTK's WordNet data is not installed (never downloaded)")
  got = gm.summary_scores(["the cat sat on the mat"],
                          ["the cat sat on the mat"], ["x"])
  assert got["meteor_available"] == 1.0
  assert 0.9 < got["meteor"] <= 1.0


def test_perplexity_by_hand():
  nll = np.array([1.0, 2.0, 3.0])  # per-token negative log-likelihoods
  got = gm.perplexity(nll.sum(), nll.size)
  assert got["perplexity"] == pytest.approx(math.exp(2.0))
  assert got["bits_per_token"] == pytest.approx(2.0 / math.log(2))
  uniform = gm.perplexity(10 * math.log(50), 10)  # uniform over 50 tokens
  assert uniform["perplexity"] == pytest.approx(50.0)
  assert uniform["bits_per_token"] == pytest.approx(math.log2(50))
  assert gm.perplexity(1e6, 1)["perplexity"] == math.inf
  with pytest.raises(ValueError):
    gm.perplexity(1.0, 0)


def test_mismatched_or_empty_inputs_are_errors():
  with pytest.raises(ValueError):
    gm.translation_scores(["a"], ["a", "b"])
  with pytest.raises(ValueError):
    gm.summary_scores([], [], [])
