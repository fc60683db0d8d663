#!/usr/bin/env bash
# The GPU checks of the project, in one go, on a machine with an NVIDIA GPU and PyTorch.
#
#   scripts/gpu_bundle.sh            # on the build machine: builds with --features cuda and
#                                    # packs binaries, reference data and a small FMNIST subset
#   scripts/gpu_checks.sh [BUNDLE]   # on the GPU machine (default BUNDLE: target/gpu)
#
# 1. parity with the official and Hugging Face reference outputs on cuda (within 1e-4),
#    the three official training iterations (gradients, AdamW moments, weights) on cuda;
# 2. `ijepa pretrain --device cuda:0` for a few steps on real images, loss finite and logged;
# 3. `ijepa bench --device cuda:0` next to PyTorch on the same GPU: ViT-S at 96 px (batch 32)
#    and ViT-B/16 at 224 px (batch 64), PyTorch in f32 and with bf16 autocast.
set -uo pipefail
G=${1:-target/gpu}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
[ -f "$G/bundle.tar.xz" ] && tar -C "$G" -xJf "$G/bundle.tar.xz"
export IJEPA_REFERENCE=$PWD/$G/reference
nvidia-smi -L
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'

echo "== parity on cuda"
for t in parity_official parity_hf train_steps_reference; do
  timeout 150 "$G/bin/$t" cuda --test-threads 1 --nocapture 2>&1 | grep -vE "^\s*$" | tail -25
  echo "$t exit ${PIPESTATUS[0]}"
done

echo "== pretrain on cuda"
timeout 100 "$G/bin/ijepa" pretrain --device cuda:0 --config configs/fmnist_vit.yaml \
  --set data.dataset=fmnist:$G/fmnist --set data.max_images=4096 --max-steps 40 --quiet \
  --output "$OUT/pretrain" 2>&1 | tail -3
tail -3 "$OUT/pretrain/log.csv"

S_ARGS="--image-size 96 --patch-size 8 --in-chans 3 --embed-dim 384 --depth 12 --heads 6 --pred-dim 192 --pred-depth 6 --pred-heads 6 --npred 4 --k-enc 39 --k-pred 25 --batch-size 32 --infer-batch-size 128 --steps 10 --warmup 3"
B_ARGS="--image-size 224 --patch-size 16 --in-chans 3 --embed-dim 768 --depth 12 --heads 12 --pred-dim 384 --pred-depth 6 --pred-heads 12 --npred 4 --k-enc 64 --k-pred 33 --batch-size 64 --infer-batch-size 128 --steps 10 --warmup 3"
for shape in S B; do
  args=S_ARGS; [ $shape = B ] && args=B_ARGS
  echo "== bench ViT-$shape: ijepa f32"
  timeout 120 "$G/bin/ijepa" bench --device cuda:0 ${!args} 2>&1 | tail -4
  echo "== bench ViT-$shape: torch f32"
  timeout 60 python3 "$G/torch_ijepa_step.py" --device cuda ${!args} 2>&1 | tail -3
  echo "== bench ViT-$shape: torch bf16"
  timeout 60 python3 "$G/torch_ijepa_step.py" --device cuda --bf16 ${!args} 2>&1 | tail -3
done
