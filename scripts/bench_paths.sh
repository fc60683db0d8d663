#!/usr/bin/env bash
# CPU speed of `ijepa bench` on each kernel path this CPU runs (IJEPA_CPU_KERNELS=avx512|avx2|
# portable), with bf16 products where the CPU has them, and optionally an older binary: all
# alternate, ROUNDS rounds, medians over rounds of train / infer img/s.
#
#   scripts/bench_paths.sh [ROUNDS] [fmnist|vits|config]
#
# Environment: IJEPA (binary), IJEPA_BEFORE (an older binary: its own path only), THREADS
# (default 2). `config` runs `--config configs/fmnist_vit.yaml` (masks from the real sampler).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
WHICH=${2:-fmnist}
IJEPA=${IJEPA:-target/release/ijepa}
THREADS=${THREADS:-2}
IJEPA_BEFORE=${IJEPA_BEFORE:-}
[ -x "$IJEPA" ] || cargo build --release
case $WHICH in
  fmnist) SHAPE="--image-size 32 --patch-size 4 --in-chans 1 --embed-dim 128 --depth 6 --heads 4 --pred-dim 64 --pred-depth 3 --pred-heads 4 --npred 2 --k-enc 27 --k-pred 11 --batch-size 128" ;;
  vits) SHAPE="--image-size 96 --patch-size 8 --in-chans 3 --embed-dim 384 --depth 12 --heads 6 --pred-dim 192 --pred-depth 6 --pred-heads 6 --npred 4 --k-enc 39 --k-pred 25 --batch-size 32" ;;
  config) SHAPE="--config configs/fmnist_vit.yaml" ;;
  *) echo "unknown shapes '$WHICH': fmnist, vits or config" >&2; exit 2 ;;
esac
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# the variants: name and command prefix
names=()
declare -A cmd
if [ -n "$IJEPA_BEFORE" ]; then names+=(before); cmd[before]="$IJEPA_BEFORE"; fi
for p in avx512 avx2 portable; do
  if IJEPA_CPU_KERNELS=$p "$IJEPA" bench --steps 1 --warmup 0 --batch-size 2 --infer-batch-size 2 \
      --image-size 8 --patch-size 4 --embed-dim 16 --heads 2 --pred-dim 16 --pred-heads 2 \
      --depth 1 --pred-depth 1 --k-enc 2 --k-pred 1 >/dev/null 2>&1; then
    names+=("$p"); cmd[$p]="env IJEPA_CPU_KERNELS=$p $IJEPA"
  fi
done
# captured first: `grep -q` in a pipe would end the pipe early and pipefail would say "no"
probe=$("$IJEPA" bench --bf16 --steps 1 --warmup 0 --batch-size 2 --infer-batch-size 2 --image-size 8 \
    --patch-size 4 --embed-dim 16 --heads 2 --pred-dim 16 --pred-heads 2 --depth 1 \
    --pred-depth 1 --k-enc 2 --k-pred 1 2>&1 || true)
if grep -q "bf16 products" <<< "$probe"; then
  names+=(bf16); cmd[bf16]="$IJEPA"
fi

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $THREADS threads, $ROUNDS rounds, $WHICH, medians (train infer img/s)"
for r in $(seq "$ROUNDS"); do
  line="  round $r:"
  for v in "${names[@]}"; do
    extra=""; [ "$v" = bf16 ] && extra="--bf16"
    # shellcheck disable=SC2086
    ${cmd[$v]} bench $SHAPE $extra --threads "$THREADS" --steps 10 --warmup 3 > "$TMP/out" 2>&1 \
      || { cat "$TMP/out"; exit 1; }
    awk '/RESULT train_step/ {split($4,a,"="); t=a[2]} /RESULT infer/ {split($4,a,"="); i=a[2]}
         END {print t, i}' "$TMP/out" >> "$TMP/$v"
    line="$line  $v $(tail -1 "$TMP/$v")"
  done
  echo "$line" >&2
done
for v in "${names[@]}"; do
  printf "%-9s train %7.1f  infer %7.1f\n" "$v" "$(cut -d' ' -f1 "$TMP/$v" | median)" \
    "$(cut -d' ' -f2 "$TMP/$v" | median)"
done
