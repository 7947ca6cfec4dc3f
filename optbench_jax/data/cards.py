"""What the dataset cards of the downloaded datasets state: licence, sizes.

One entry per download origin (a Hub id, or ``TFDS <name>``), read in
stored copies of the cards (no network reaches the machine this was
written on): the licence as the card states it and the sizes it gives for
the configuration read — the download and the prepared dataset, in MB
(10⁶ bytes). ``None``: the card states none. The split sizes each download
is checked against live in the registry entries (``HFSource.sizes``,
``TFDSSource.sizes``); ``docs/reference/datasets.md`` shows both.

Sources: ``A`` is the dataset's card in the ``huggingface/datasets``
repository (``datasets/<name>/README.md`` at commit ``040102f``, the
dataset script's ``dataset_info``; ``dataset_infos.json`` at ``d7dfbc8``
agrees). The Hub's current copies are Parquet conversions of the same
data, whose files differ in size from those figures.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

_A = "huggingface/datasets@040102f datasets/{}/README.md"


@dataclasses.dataclass(frozen=True)
class CardFacts:
  """A dataset card's licence and sizes, and where they were read."""
  licence: str
  download_mb: Optional[float]
  prepared_mb: Optional[float]
  source: str

  def sizes(self) -> str:
    """``download / prepared MB`` in words."""
    if self.download_mb is None and self.prepared_mb is None:
      return "not stated"
    mb = lambda v: "?" if v is None else f"{v:,.1f}"
    return f"{mb(self.download_mb)} / {mb(self.prepared_mb)} MB"


FACTS = {
    "ylecun/mnist": CardFacts("MIT", 11.59, 20.39, _A.format("mnist")),
    "uoft-cs/cifar10": CardFacts("unknown", 170.50, 136.63,
                                 _A.format("cifar10")),
    "uoft-cs/cifar100": CardFacts("unknown", 169.00, 135.36,
                                  _A.format("cifar100")),
    "Helsinki-NLP/europarl": CardFacts(
        "unknown (the card: the licence of the original sources, "
        "opus.nlpl.eu Europarl v8)", 291.38, 641.86,
        _A.format("europarl_bilingual")),
    "bbaaaa/iwslt14-de-en": CardFacts(
        "CC BY-NC-ND 4.0", None, None,
        "huggingface.co/datasets/bbaaaa/iwslt14-de-en README (1d2b118)"),
    "Helsinki-NLP/opus_books": CardFacts("unknown", 5.12, 13.74,
                                         _A.format("opus_books")),
    "eriktks/conll2003": CardFacts(
        "other (the CoNLL-2003 terms: Reuters text for research, from "
        "NIST)", 0.98, 10.25, _A.format("conll2003")),
    "unimelb-nlp/wikiann": CardFacts(
        "unknown", 234.01, 9.32,
        _A.format("wikiann") + " (the download holds every language)"),
    "rajpurkar/squad": CardFacts("CC BY 4.0", 35.14, 89.79,
                                 _A.format("squad")),
    "ucsbnlp/tweet_qa": CardFacts("CC BY-SA 4.0", 1.57, 3.54,
                                  _A.format("tweet_qa")),
    "nateraw/pascal-voc-2012": CardFacts(
        "not stated", 329.87, 331.99,
        "huggingface.co/datasets/nateraw/pascal-voc-2012 "
        "dataset_infos.json (1537ff1)"),
    "stanfordnlp/imdb": CardFacts("other", 84.13, 133.19, _A.format("imdb")),
    "stanfordnlp/sst2": CardFacts("unknown", 7.44, 5.01, _A.format("sst2")),
    "Salesforce/wikitext": CardFacts(
        "CC BY-SA 3.0 and GFDL (the card's text says CC BY-SA 4.0)", 4.72,
        13.53, _A.format("wikitext")),
    "ptb-text-only/ptb_text_only": CardFacts(
        "other: LDC User Agreement for Non-Members (research only)", 5.95,
        6.00, _A.format("ptb_text_only")),
    "abisee/cnn_dailymail": CardFacts("Apache-2.0", 585.44, 1369.36,
                                      _A.format("cnn_dailymail")),
    "Yale-LILY/aeslc": CardFacts("unknown", 11.64, 14.95,
                                 _A.format("aeslc")),
    "TFDS oxford_iiit_pet": CardFacts(
        "not stated", 811.09, 811.26,
        "tensorflow.org/datasets/catalog/oxford_iiit_pet "
        "(773.52 / 773.68 MiB)"),
}


def facts(origin: str) -> Optional[CardFacts]:
  """The card facts of a download ``origin`` (None if not recorded)."""
  return FACTS.get(origin)
