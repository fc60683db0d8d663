#!/usr/bin/env bash
# Fresh machine -> pretrained I-JEPA encoder on real images -> linear-probe and kNN accuracy.
# A short version of configs/fmnist_vit.yaml (1 epoch on 10,000 Fashion-MNIST images, then
# evaluation on 10,000 train / 2,000 test images): a few minutes on 2 cores after the build.
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
$IJEPA pretrain --config configs/fmnist_vit.yaml --output "$OUT" \
  --set data.max_images=10000 --set optimization.epochs=1
$IJEPA eval --model "$OUT/latest" --train fmnist:$DATA --test fmnist:$DATA \
  --max-train 10000 --max-test 2000 --output "$OUT/eval.json"
