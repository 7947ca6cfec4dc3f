"""What the generative tasks share: host-side scores of decoded text.

* Translation (:func:`translation_scores`): corpus BLEU (Papineni et al.
  2002), chrF (Popović 2015) and TER (Snover et al. 2006) by sacreBLEU
  (Post 2018) with its default settings (BLEU: ``13a`` tokenisation, mixed
  case, exponential smoothing; chrF: character 6-grams, β = 2; TER: case
  sensitive, punctuation kept), one reference per hypothesis. All three on
  sacreBLEU's 0-100 scale; BLEU and chrF higher is better, TER (edits per
  reference word × 100) lower is better. :func:`signatures` gives the
  settings' sacreBLEU signature strings, for reports.
* Summarisation (:func:`summary_scores`): ROUGE-1, ROUGE-2 and ROUGE-L
  (Lin 2004) F-measures by ``rouge-score`` with the Porter stemmer, each
  the mean over examples (0-1 scale); sacreBLEU corpus BLEU (0-100, as
  above); the compression ratio

    ``mean_i  |words(source_i)| / max(1, |words(hypothesis_i)|)``

  (words split on whitespace; higher means shorter summaries); and METEOR
  (Banerjee & Lavie 2005) by NLTK, the mean over examples of
  ``meteor_score([reference.split()], hypothesis.split())``, only when
  NLTK and its WordNet data are installed (nothing is downloaded). Without
  them METEOR is reported unavailable, never approximated: ``"meteor"`` is
  NaN and ``"meteor_available"`` is 0.0 (1.0 when it was computed).
* Language modelling (:func:`perplexity`): ``exp`` of the mean negative
  log-likelihood per token (natural log), and the same in bits per token.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import sacrebleu

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _same_lengths(hypotheses: Sequence[str], *others: Sequence[str]) -> None:
  if not hypotheses:
    raise ValueError("no hypotheses to score")
  if any(len(o) != len(hypotheses) for o in others):
    raise ValueError(f"{len(hypotheses)} hypotheses but "
                     f"{', '.join(str(len(o)) for o in others)} references/"
                     "sources")


def _bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  return float(sacrebleu.corpus_bleu(list(hypotheses),
                                     [list(references)]).score)


def translation_scores(hypotheses: Sequence[str],
                       references: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU, chrF and TER (sacreBLEU defaults, 0-100 scale).

  Args:
    hypotheses: one decoded (detokenised) string per example.
    references: the reference translation of each example.

  Returns:
    ``{"bleu", "chrf", "ter"}`` as Python floats.
  """
  _same_lengths(hypotheses, references)
  hyps, refs = list(hypotheses), [list(references)]
  return {"bleu": _bleu(hyps, references),
          "chrf": float(sacrebleu.corpus_chrf(hyps, refs).score),
          "ter": float(sacrebleu.corpus_ter(hyps, refs).score)}


@functools.cache
def signatures() -> dict[str, str]:
  """sacreBLEU's signature of each score :func:`translation_scores` and
  :func:`summary_scores` report (``"nrefs:1|case:mixed|eff:no|tok:13a|
  smooth:exp|version:…"`` for BLEU)."""
  out = {}
  for key, metric in [("bleu", sacrebleu.BLEU()), ("chrf", sacrebleu.CHRF()),
                      ("ter", sacrebleu.TER())]:
    metric.corpus_score(["a"], [["a"]])  # fixes the number of references
    out[key] = metric.get_signature().format()
  return out


def compression_ratio(hypotheses: Sequence[str],
                      sources: Sequence[str]) -> float:
  """``mean_i |words(source_i)| / max(1, |words(hypothesis_i)|)``."""
  _same_lengths(hypotheses, sources)
  return float(np.mean([len(s.split()) / max(1, len(h.split()))
                        for h, s in zip(hypotheses, sources)]))


def _wordnet_available() -> bool:
  """Whether NLTK and its WordNet data are installed (never downloads)."""
  try:
    import nltk
  except ImportError:
    return False
  for resource in ("corpora/wordnet", "corpora/wordnet.zip"):
    try:
      nltk.data.find(resource)
      return True
    except LookupError:
      continue
  return False


def meteor(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """Mean METEOR over examples (NLTK, whitespace tokens); NaN when NLTK's
  WordNet data is not installed."""
  _same_lengths(hypotheses, references)
  if not _wordnet_available():
    return float("nan")
  from nltk.translate.meteor_score import meteor_score
  return float(np.mean([meteor_score([r.split()], h.split())
                        for h, r in zip(hypotheses, references)]))


def summary_scores(hypotheses: Sequence[str], references: Sequence[str],
                   sources: Sequence[str]) -> dict[str, float]:
  """ROUGE-1/2/L, BLEU, compression ratio and METEOR of summaries.

  Args:
    hypotheses: one decoded summary per example.
    references: the reference summary of each example.
    sources: the document each summary was made from.

  Returns:
    ``{"rougeL", "rouge1", "rouge2", "bleu", "compression_ratio",
    "meteor", "meteor_available"}`` as Python floats (ROUGE 0-1, BLEU
    0-100; ``meteor`` NaN and ``meteor_available`` 0.0 without WordNet).
  """
  _same_lengths(hypotheses, references, sources)
  # Imported here: rouge-score imports NLTK, 4 s of every process's start.
  from rouge_score import rouge_scorer  # pylint: disable=import-outside-toplevel
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  rows = [scorer.score(r, h) for h, r in zip(hypotheses, references)]
  out = {k: float(np.mean([row[k].fmeasure for row in rows]))
         for k in ROUGE_TYPES}
  value = meteor(hypotheses, references)
  out.update(bleu=_bleu(hypotheses, references),
             compression_ratio=compression_ratio(hypotheses, sources),
             meteor=value, meteor_available=float(not math.isnan(value)))
  return out


def perplexity(nll_sum: float, token_count: float) -> dict[str, float]:
  """``exp(nll_sum / token_count)`` and ``nll_sum / token_count / ln 2``.

  Args:
    nll_sum: summed negative log-likelihood (natural log) of the tokens.
    token_count: how many tokens it sums over (positive).

  Returns:
    ``{"perplexity", "bits_per_token"}`` as Python floats (perplexity
    ``inf`` when it overflows a float).
  """
  if not token_count > 0:
    raise ValueError(f"perplexity over {token_count} tokens")
  mean = float(nll_sum) / float(token_count)
  try:
    value = math.exp(mean)
  except OverflowError:
    value = math.inf
  return {"perplexity": value, "bits_per_token": mean / math.log(2)}
