"""Machine translation: source sentence → target sentence.

Sequence-to-sequence training and decoding as ``tasks/_seq2seq.py``
describes. Metrics on decoded, detokenised text: sacreBLEU corpus BLEU
(primary, sacreBLEU's 0-100 scale), chrF and TER (``tasks/
_generation_metrics.py``), and the teacher-forced token accuracy as a named
extra (``tf_token_accuracy``; the source benchmark scored BLEU on
teacher-forced argmax tokens, which this is not). Texts are lower-cased
(the source's "lc"), references too. Defaults: label smoothing 0.1,
clipping 1.0, plateau schedule, 64 source and 64 target tokens, one
byte-level BPE vocabulary of ≤ 30,000 over both languages, beam search of
width 4 with length penalty 0.6.
"""
from optbench_jax.tasks import _generation_metrics
from optbench_jax.tasks._seq2seq import Seq2SeqTask
from optbench_jax.tasks.base import register


class MachineTranslation(Seq2SeqTask):
  name = "machine_translation"
  primary_metric = "bleu"
  default_max_length = 64
  default_target_length = 64
  default_vocab_size = 30_000

  def scores(self, hypotheses, references, sources):
    del sources
    return _generation_metrics.translation_scores(hypotheses, references)


register(MachineTranslation())
