"""Abstractive summarization: document → summary.

Sequence-to-sequence training and decoding as ``tasks/_seq2seq.py``
describes (columns ``document`` → ``summary``). Metrics on decoded text:
ROUGE-L F (primary), ROUGE-1/2 F by ``rouge-score`` (with stemming),
sacreBLEU, the compression ratio, and METEOR where NLTK's WordNet data is
available offline (otherwise reported unavailable, never approximated)
(``tasks/_generation_metrics.py``); the teacher-forced token accuracy as a
named extra. Texts lower-cased (the source's "lc"). Defaults: label
smoothing 0.1, clipping 1.0, plateau schedule, documents cut at 256 and
summaries at 64 tokens (the source's caps are not stated), one byte-level
BPE vocabulary of ≤ 50,000 (the source's cap), beam 4, length penalty 0.6.
"""
from optbench_jax.tasks import _generation_metrics
from optbench_jax.tasks._seq2seq import Seq2SeqTask
from optbench_jax.tasks.base import register


class TextSummarization(Seq2SeqTask):
  name = "text_summarization"
  primary_metric = "rougeL"
  default_max_length = 256
  default_target_length = 64
  default_vocab_size = 50_000
  source_column = "document"
  target_column = "summary"

  def scores(self, hypotheses, references, sources):
    return _generation_metrics.summary_scores(hypotheses, references, sources)


register(TextSummarization())
