#!/usr/bin/env bash
# The GPU checks of the project, in one go, on a machine with an NVIDIA GPU and PyTorch.
#
#   scripts/gpu_bundle.sh            # on the build machine: builds with --features cuda and
#                                    # packs binaries, reference data and a small FMNIST subset
#   scripts/gpu_checks.sh [BUNDLE] [SECONDS]
#                                    # on the GPU machine (default BUNDLE: target/gpu); every
#                                    # step gets at most what is left of SECONDS (default 540)
#
# In order of importance:
# 1. `ijepa bench --device cuda:0` next to PyTorch on the same GPU, ViT-S at 96 px (batch 32), f32;
# 2. parity with the official reference outputs on cuda within 1e-4, and the three official
#    training iterations (gradients, AdamW moments, weights after 3 steps);
# 3. the same bench for ViT-B/16 at 224 px (batch 64), then both shapes with bf16 autocast
#    (PyTorch's --bf16);
# 4. parity with the Hugging Face outputs, the bf16-vs-f32 loss trajectory on real images;
# 5. `ijepa pretrain --device cuda:0` for a few steps on real images.
set -uo pipefail
G=${1:-target/gpu}
BUDGET=${2:-540}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
END=$(( $(date +%s) + BUDGET ))
[ -f "$G/bundle.tar.xz" ] && tar -C "$G" -xJf "$G/bundle.tar.xz"
export IJEPA_REFERENCE=$PWD/$G/reference IJEPA_FMNIST=$PWD/$G/fmnist

# step SECONDS NAME CMD...: run CMD with at most SECONDS (and what is left of the budget).
step() {
  local want=$1 name=$2; shift 2
  local left=$(( END - $(date +%s) ))
  local t=$(( want < left ? want : left ))
  if [ "$t" -lt 5 ]; then echo "== $name: skipped, budget spent"; return; fi
  echo "== $name (limit ${t}s)"
  local t0=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -E "RESULT|test result|panicked|max \|diff\||exit|error|^ijepa|^torch|^step [0-9]+:" "$OUT/$name.log" | tail -30
  echo "-- $name: exit $rc after $(( $(date +%s) - t0 ))s"
}

nvidia-smi -L
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'

S="--image-size 96 --patch-size 8 --in-chans 3 --embed-dim 384 --depth 12 --heads 6 --pred-dim 192 --pred-depth 6 --pred-heads 6 --npred 4 --k-enc 39 --k-pred 25 --batch-size 32 --infer-batch-size 128 --steps 10 --warmup 3"
B="--image-size 224 --patch-size 16 --in-chans 3 --embed-dim 768 --depth 12 --heads 12 --pred-dim 384 --pred-depth 6 --pred-heads 12 --npred 4 --k-enc 64 --k-pred 33 --batch-size 64 --infer-batch-size 128 --steps 10 --warmup 3"
T="on_cuda --test-threads 1 --nocapture"   # the cuda variants of a test binary

step 150 bench-S-ijepa-f32 "$G/bin/ijepa" bench --device cuda:0 --verbose $S
step 60 bench-S-torch-f32 python3 "$G/torch_ijepa_step.py" --device cuda $S
step 90 parity_official "$G/bin/parity_official" $T
step 150 train_steps_reference "$G/bin/train_steps_reference" $T
step 120 bench-B-ijepa-f32 "$G/bin/ijepa" bench --device cuda:0 --verbose $B
step 60 bench-B-torch-f32 python3 "$G/torch_ijepa_step.py" --device cuda $B
step 90 bench-S-ijepa-bf16 "$G/bin/ijepa" bench --device cuda:0 --verbose --bf16 $S
step 60 bench-S-torch-bf16 python3 "$G/torch_ijepa_step.py" --device cuda --bf16 $S
step 90 bench-B-ijepa-bf16 "$G/bin/ijepa" bench --device cuda:0 --verbose --bf16 $B
step 60 bench-B-torch-bf16 python3 "$G/torch_ijepa_step.py" --device cuda --bf16 $B
step 60 parity_hf "$G/bin/parity_hf" $T
step 150 mixed_precision "$G/bin/mixed_precision" $T
step 90 pretrain "$G/bin/ijepa" pretrain --device cuda:0 --config configs/fmnist_vit.yaml \
  --set data.dataset=fmnist:$G/fmnist --set data.max_images=4096 --max-steps 20 --quiet \
  --output "$OUT/pretrain"
[ -f "$OUT/pretrain/log.csv" ] && tail -3 "$OUT/pretrain/log.csv"
echo "== done, $(( END - $(date +%s) ))s of the budget left"
