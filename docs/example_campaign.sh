#!/usr/bin/env bash
# The example campaign behind docs/example_report/: no download needed
# (embedded MNIST digits, scikit-learn's digits, synthetic images, gensim's
# review sentences). About 31 minutes on a 2-core CPU (1858 s, 2026-12-07).
set -euo pipefail
OUT=${1:-results/example_campaign}
OPT=sgd,sgd_momentum,adam,adamw,rmsprop,adagrad,radam,lion
run() { python -m optbench_jax run --optimizers $OPT --seeds 0,1,2 --epochs 5 \
          --output-dir "$OUT" --quiet "$@"; }
run --task image_classification --dataset mnist_5k --model cnn_scratch \
    --keep-checkpoints 0
run --task image_classification --dataset digits --model cnn_scratch \
    --batch-size 64
run --task image_classification --dataset synthetic --model cnn_scratch \
    --max-samples 2000
run --task sentiment_analysis --dataset pang_lee_polarity \
    --model lstm_sentiment --batch-size 32
python -m optbench_jax analyze \
    --run-dir "$OUT/image_classification/mnist_5k/cnn_scratch" --seeds 0 \
    --samples 256 --points-2d 11 --trace-probes 20 --iterations 60
python -m optbench_jax report --campaign-dir "$OUT" \
    --output-dir docs/example_report
