#!/usr/bin/env bash
# Fresh machine -> I-JEPA pretrained on real images -> linear-probe and kNN accuracy, printed
# next to the two baselines on the same images: the raw pixels, and the same encoder before
# any training (random init). A short version of configs/fmnist_best.yaml (see QUICK below),
# evaluated on 10,000 train / 2,000 test images: under 10 minutes on 2 cores after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=/usr/share/datasets/fashion-mnist
if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
cargo build --release
IJEPA=target/release/ijepa
OUT=${1:-runs/quickstart}
CONFIG=configs/fmnist_best.yaml
# The short variant: the recipe's 3 epochs on a third of the training set, a smaller online kNN
# monitor.
QUICK=(--set data.max_images=20000 --set logging.knn_monitor_bank=2000
       --set logging.knn_monitor_queries=500)
EVAL=(--train fmnist:$DATA --test fmnist:$DATA --max-train 10000 --max-test 2000)
start=$(date +%s)

echo "== pretraining (${QUICK[*]})"
$IJEPA pretrain --config $CONFIG --output "$OUT/pretrained" --overwrite "${QUICK[@]}"
# The same networks before any step: the random-init baseline.
$IJEPA pretrain --config $CONFIG --output "$OUT/random-init" --overwrite "${QUICK[@]}" --max-steps 0 --quiet

echo "== evaluation (frozen target encoder, average-pooled; 10,000 train / 2,000 test images)"
pre=$($IJEPA eval --model "$OUT/pretrained/latest" "${EVAL[@]}" --output "$OUT/pretrained.json" | tail -1)
rnd=$($IJEPA eval --model "$OUT/random-init/latest" "${EVAL[@]}" --output "$OUT/random-init.json" | tail -1)
pix=$($IJEPA eval --pixels --model "$OUT/random-init/latest" "${EVAL[@]}" --output "$OUT/pixels.json" | tail -1)
echo
printf '%-26s %s\n' "I-JEPA, this run:" "$pre" "random-init encoder:" "$rnd" "raw pixels:" "$pix"
echo "($(( ($(date +%s) - start) / 60 )) min after the build; the full recipe: configs/fmnist_best.yaml, docs/recipes.md)"
