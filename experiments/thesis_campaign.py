"""The source benchmark's campaign: 32 configurations × 16 optimizers.

Settings from F. Struffi, *Data-Guided Benchmarking of Optimization
Strategies* (MSc thesis, Politecnico di Torino, 2026) [T]: §3.9 (protocol:
20 epochs, one fixed seed, per-optimizer default learning rates, cosine
annealing for vision and ReduceLROnPlateau for NLP tasks) and the commands
of Ch. 4 with §3.1–3.8 (per configuration: batch size, ``--max-samples``,
sequence lengths, vocabulary caps, gradient clipping, label smoothing,
weight decay). Where [T] states nothing (learning rates, schedule
parameters) the registry's and the task's defaults apply; where it states
no weight decay, none (0 for every optimizer, stated below, so that
AdamW's own default of 1e-2 does not apply). Our dataset names for [T]'s
data: MNIST ``mnist``, CIFAR-10 ``cifar10``, Oxford-IIIT Pet
``oxford_iiit_pet``, VOC2012 ``voc2012``, IMDB ``imdb``, SST-2 ``sst2``,
Europarl de-en ``europarl_bilingual``, [T]'s "IWSLT14" (really opus_books
en-de, [T] §3.4.2) ``opus_books_en_de``, SQuAD ``squad_v1``, TweetQA
``tweet_qa``, CoNLL-2003 ``conll2003``, WikiANN ``wikiann_en``, WikiText-2
``wikitext2``, PTB ``ptb_text_only``, CNN/DailyMail ``cnn_dailymail``, AESLC
``aeslc``; all but the embedded ones are read from the local dataset cache
(``--data-dir``).

Try it small first, then run it all, in parts if you like::

  python experiments/thesis_campaign.py --list
  python experiments/thesis_campaign.py --configs mnist_cnn \\
      --optimizers sgd,adam --epochs 1 --max-samples 512
  python experiments/thesis_campaign.py                # resumable
  python experiments/thesis_campaign.py --shard 2/8    # one of 8 jobs
"""
import sys

from optbench_jax import experiment
from optbench_jax.experiment import Configuration

# [T] §1.1: the 16 optimizers.
OPTIMIZERS = ["sgd", "sgd_momentum", "lars", "rmsprop", "adam", "adagrad",
              "adadelta", "adafactor", "adabelief", "adamw", "radam", "lion",
              "lamb", "yogi", "sam", "gsam"]

# [T] §4.3 states a weight decay for the sentiment-analysis models only;
# every other configuration trains without (stated, so that no optimizer's
# own default applies, e.g. AdamW's 1e-2).
NO_WD = 0.0
LSTM_WD = 1e-5    # [T] §4.3: 1e-5 to 1e-4 for the recurrent models (lower end)
BERT_WD = 0.01    # [T] §4.3

# Per task: what [T] states for all of its configurations (§3.9.3, §4.x).
IC = dict(task="image_classification", epochs=20, scheduler="cosine",
          weight_decay=NO_WD)
SS = dict(task="semantic_segmentation", epochs=20, scheduler="cosine",
          grad_clip=1.0, weight_decay=NO_WD)
SA = dict(task="sentiment_analysis", epochs=20, scheduler="plateau",
          grad_clip=1.0, label_smoothing=0.05, max_length=128)
MT = dict(task="machine_translation", epochs=20, scheduler="plateau",
          label_smoothing=0.1, max_length=64, target_length=64,
          weight_decay=NO_WD)
QA = dict(task="question_answering", epochs=20, scheduler="plateau",
          grad_clip=1.0, weight_decay=NO_WD)
NER = dict(task="ner", epochs=20, scheduler="plateau", grad_clip=1.0,
           max_length=128, weight_decay=NO_WD)
TG = dict(task="text_generation", epochs=20, scheduler="plateau",
          weight_decay=NO_WD)
TS = dict(task="text_summarization", epochs=20, scheduler="plateau",
          grad_clip=1.0, label_smoothing=0.1, vocab_size=50_000,
          weight_decay=NO_WD)

# [T] §2 table, rows 1-32, in its order.
CONFIGURATIONS = [
    Configuration("mnist_cnn", **IC, dataset="mnist", model="cnn_scratch",
                  batch_size=128, max_samples=20_000),
    Configuration("mnist_resnet18", **IC, dataset="mnist", model="resnet18",
                  batch_size=128, max_samples=20_000),
    Configuration("cifar10_cnn", **IC, dataset="cifar10", model="cnn_scratch",
                  batch_size=128, max_samples=15_000),
    Configuration("cifar10_resnet18", **IC, dataset="cifar10",
                  model="resnet18", batch_size=128, max_samples=15_000),
    Configuration("pet_deeplabv3", **SS, dataset="oxford_iiit_pet",
                  model="deeplabv3_resnet50", batch_size=8, max_samples=5_000),
    Configuration("pet_unet", **SS, dataset="oxford_iiit_pet",
                  model="unet_vanilla", batch_size=8, max_samples=5_000),
    Configuration("voc_deeplabv3", **SS, dataset="voc2012",
                  model="deeplabv3_resnet50", batch_size=8, max_samples=3_000),
    Configuration("voc_unet", **SS, dataset="voc2012", model="unet_vanilla",
                  batch_size=8, max_samples=3_000),
    Configuration("imdb_lstm", **SA, dataset="imdb", model="lstm_sentiment",
                  batch_size=16, max_samples=115_000, weight_decay=LSTM_WD),
    Configuration("imdb_distilbert", **SA, dataset="imdb",
                  model="distilbert_sentiment", batch_size=64,
                  max_samples=90_000, weight_decay=BERT_WD),
    Configuration("sst2_lstm", **SA, dataset="sst2", model="lstm_sentiment",
                  batch_size=64, max_samples=30_000, weight_decay=LSTM_WD),
    Configuration("sst2_distilbert", **SA, dataset="sst2",
                  model="distilbert_sentiment", batch_size=64,
                  max_samples=10_000, weight_decay=BERT_WD),
    Configuration("europarl_transformer", **MT, dataset="europarl_bilingual",
                  model="transformer_seq2seq", batch_size=64,
                  max_samples=30_000, vocab_size=30_000),
    Configuration("europarl_lstm", **MT, dataset="europarl_bilingual",
                  model="lstm_seq2seq", batch_size=64, max_samples=30_000,
                  vocab_size=30_000),
    Configuration("opus_books_transformer", **MT, dataset="opus_books_en_de",
                  model="transformer_seq2seq", batch_size=64,
                  max_samples=10_000, vocab_size=40_000),
    Configuration("opus_books_lstm", **MT, dataset="opus_books_en_de",
                  model="lstm_seq2seq", batch_size=64, max_samples=10_000,
                  vocab_size=40_000),
    Configuration("squad_transformer", **QA, dataset="squad_v1",
                  model="transformer_qa", batch_size=32, max_samples=20_000,
                  max_length=384),
    Configuration("squad_bilstm", **QA, dataset="squad_v1",
                  model="bilstm_attention_qa", batch_size=64,
                  max_samples=20_000, max_length=384),
    Configuration("tweetqa_transformer", **QA, dataset="tweet_qa",
                  model="transformer_qa", batch_size=32, max_samples=8_000,
                  max_length=256),
    Configuration("tweetqa_bilstm", **QA, dataset="tweet_qa",
                  model="bilstm_attention_qa", batch_size=64,
                  max_samples=8_000, max_length=256),
    Configuration("conll_lstm_crf", **NER, dataset="conll2003",
                  model="lstm_crf_ner", batch_size=64, max_samples=8_000),
    Configuration("conll_charcnn", **NER, dataset="conll2003",
                  model="bilstm_crf_charcnn_ner", batch_size=64,
                  max_samples=8_000),
    Configuration("wikiann_lstm_crf", **NER, dataset="wikiann_en",
                  model="lstm_crf_ner", batch_size=64, max_samples=10_000),
    Configuration("wikiann_charcnn", **NER, dataset="wikiann_en",
                  model="bilstm_crf_charcnn_ner", batch_size=64,
                  max_samples=10_000),
    Configuration("wikitext2_gpt", **TG, dataset="wikitext2",
                  model="gpt_small", batch_size=64, max_samples=15_000,
                  max_length=64, vocab_size=50_000),
    Configuration("wikitext2_gru", **TG, dataset="wikitext2", model="gru_lm",
                  batch_size=64, max_samples=15_000, max_length=64,
                  vocab_size=50_000),
    Configuration("ptb_gpt", **TG, dataset="ptb_text_only", model="gpt_small",
                  batch_size=64, max_samples=50_000),
    Configuration("ptb_gru", **TG, dataset="ptb_text_only", model="gru_lm",
                  batch_size=64, max_samples=50_000),
    Configuration("cnn_dm_bart", **TS, dataset="cnn_dailymail",
                  model="bart_small", batch_size=16, max_samples=8_000),
    Configuration("cnn_dm_tiny", **TS, dataset="cnn_dailymail",
                  model="tiny_transformer_seq2seq", batch_size=32,
                  max_samples=10_000),
    Configuration("aeslc_bart", **TS, dataset="aeslc", model="bart_small",
                  batch_size=16, max_samples=10_000),
    Configuration("aeslc_tiny", **TS, dataset="aeslc",
                  model="tiny_transformer_seq2seq", batch_size=32,
                  max_samples=10_000),
]

if __name__ == "__main__":
  sys.exit(experiment.main(CONFIGURATIONS, OPTIMIZERS, sys.argv[1:],
                           script=__file__, description=__doc__))
