#!/usr/bin/env bash
# Side-by-side CPU speed of `ijepa bench` and PyTorch (../shared/bench/torch_ijepa_step.py) on
# the same shapes: the two programs alternate, ROUNDS rounds each, and the medians over rounds of
# img/s and peak resident memory (GNU time's max RSS) are printed, with the ratio ijepa / torch.
#
#   scripts/bench_vs_torch.sh [ROUNDS] [fmnist|vits|all]
#
# Environment: TORCH_BENCH (path of torch_ijepa_step.py), IJEPA (binary), THREADS (default 2),
# IJEPA_KERNELS=composed (ijepa without its fused kernels, for the "before" column),
# IJEPA_BEFORE (a second ijepa binary, e.g. built from an earlier commit: it joins the
# alternation, so before, after and PyTorch are measured in the same run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
WHICH=${2:-all}
TORCH_BENCH=${TORCH_BENCH:-../shared/bench/torch_ijepa_step.py}
IJEPA=${IJEPA:-target/release/ijepa}
THREADS=${THREADS:-2}
IJEPA_BEFORE=${IJEPA_BEFORE:-}
[ -x "$IJEPA" ] || cargo build --release
FMNIST="--image-size 32 --patch-size 4 --in-chans 1 --embed-dim 128 --depth 6 --heads 4 --pred-dim 64 --pred-depth 3 --pred-heads 4 --npred 2 --k-enc 27 --k-pred 11 --batch-size 128"
VITS="--image-size 96 --patch-size 8 --in-chans 3 --embed-dim 384 --depth 12 --heads 6 --pred-dim 192 --pred-depth 6 --pred-heads 6 --npred 4 --k-enc 39 --k-pred 25 --batch-size 32"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# one run: prints "train infer rss_mb"
run() {
  local out="$TMP/out" rss
  /usr/bin/time -f "%M" -o "$TMP/rss" "$@" > "$out" 2>&1 || { cat "$out"; exit 1; }
  rss=$(tail -1 "$TMP/rss")
  awk -v rss="$rss" '/RESULT train_step/ {split($4,a,"="); t=a[2]} /RESULT infer/ {split($4,a,"="); i=a[2]}
       END {printf "%s %s %.0f\n", t, i, rss/1024}' "$out"
}

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

compare() {
  local name=$1 shape=$2
  : > "$TMP/ijepa"; : > "$TMP/torch"; : > "$TMP/before"
  for r in $(seq "$ROUNDS"); do
    local before=""
    if [ -n "$IJEPA_BEFORE" ]; then
      # shellcheck disable=SC2086
      run "$IJEPA_BEFORE" bench $shape --threads "$THREADS" --steps 10 --warmup 3 >> "$TMP/before"
      before="  before $(tail -1 "$TMP/before")"
    fi
    # shellcheck disable=SC2086
    run "$IJEPA" bench $shape --threads "$THREADS" --steps 10 --warmup 3 >> "$TMP/ijepa"
    # shellcheck disable=SC2086
    run python3 "$TORCH_BENCH" $shape --threads "$THREADS" --steps 10 --warmup 3 >> "$TMP/torch"
    echo "  round $r:$before  ijepa $(tail -1 "$TMP/ijepa")  torch $(tail -1 "$TMP/torch")  (train infer rss_mb)" >&2
  done
  if [ -n "$IJEPA_BEFORE" ]; then
    for k in 1 2 3; do eval "b$k=$(cut -d' ' -f$k "$TMP/before" | median)"; done
    # shellcheck disable=SC2154
    awk -v n="$name" -v b1="$b1" -v b2="$b2" -v b3="$b3" 'BEGIN {
      printf "%-8s before: train %7.1f  infer %7.1f  peak RSS MB %7.0f\n", n, b1, b2, b3 }'
  fi
  for k in 1 2 3; do
    eval "i$k=$(cut -d' ' -f$k "$TMP/ijepa" | median)"
    eval "t$k=$(cut -d' ' -f$k "$TMP/torch" | median)"
  done
  # shellcheck disable=SC2154
  awk -v n="$name" -v i1="$i1" -v i2="$i2" -v i3="$i3" -v t1="$t1" -v t2="$t2" -v t3="$t3" 'BEGIN {
    printf "%-8s train img/s: ijepa %7.1f  torch %7.1f  (%.2fx)\n", n, i1, t1, i1/t1
    printf "%-8s infer img/s: ijepa %7.1f  torch %7.1f  (%.2fx)\n", n, i2, t2, i2/t2
    printf "%-8s peak RSS MB: ijepa %7.0f  torch %7.0f  (%.2fx)\n", n, i3, t3, i3/t3 }'
}

echo "$("$IJEPA" --version), $(python3 -c 'import torch; print("torch", torch.__version__)'), $THREADS threads, $ROUNDS rounds, medians"
[ "$WHICH" = vits ] || compare fmnist "$FMNIST"
[ "$WHICH" = fmnist ] || compare vit-s96 "$VITS"
