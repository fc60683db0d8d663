#!/usr/bin/env bash
# The GPU checks of the project (issue 16's "Done when") in one go, on a machine with an NVIDIA
# GPU and PyTorch, within a deadline; ends with a table of every figure.
#
#   scripts/gpu_bundle.sh                    # on the build machine: builds with --features cuda and
#                                            # packs binaries, reference data, PyTorch's bench script
#                                            # and a Fashion-MNIST subset into target/gpu/bundle.tar.xz
#   scripts/gpu_checks.sh [BUNDLE] [SECONDS] # on the GPU machine (default BUNDLE: target/gpu,
#                                            # SECONDS: 470); nothing runs past the deadline
#
# With this workplace's device tool: run(command="scripts/gpu_checks.sh target/gpu 470",
# carry=["target/gpu"], timeout_s=480); the logs come back under $OUT.
#
# 1. correctness, the cuda variants of the tests, all at once (small models; each process with
#    its own kernel cache): the cubecl kernels against the composed ops and the official
#    reference (cube_kernels), static shapes (static_shapes), the official forward, EMA and three
#    training iterations (parity_official, train_steps_reference), Hugging Face (parity_hf), and
#    the bf16-vs-f32 loss trajectory on real images (mixed_precision);
# 2. speed, one process at a time, next to PyTorch (`torch_ijepa_step.py --device cuda [--bf16]`):
#    ViT-S/8 at 96 px batch 32 and ViT-B/16 at 224 px batch 64, training and inference, f32 then
#    bf16; the first ijepa process starts with an empty kernel cache (cold warm-up), a second
#    one on the same shapes measures the warm-up with the cache.
set -uo pipefail
G=${1:-target/gpu}
BUDGET=${2:-470}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
END=$(( $(date +%s) + BUDGET ))
[ -f "$G/bundle.tar.xz" ] && tar -C "$G" -xJf "$G/bundle.tar.xz"
export IJEPA_REFERENCE=$PWD/$G/reference IJEPA_FMNIST=$PWD/$G/fmnist
KC=/tmp/ijepa-kernel-cache
rm -rf "$KC"

left() { echo $(( END - $(date +%s) )); }

# step SECONDS NAME CMD...: run CMD with at most SECONDS (and what is left of the budget),
# output in $OUT/NAME.log, wall time in $OUT/NAME.secs.
step() {
  local want=$1 name=$2; shift 2
  local l; l=$(left)
  local t=$(( want < l ? want : l ))
  if [ "$t" -lt 5 ]; then echo "== $name: skipped, budget spent"; echo skipped > "$OUT/$name.secs"; return; fi
  echo "== $name (limit ${t}s)"
  local t0; t0=$(date +%s.%N)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)" > "$OUT/$name.secs"
  grep -E "RESULT|test result|panicked|train iteration 0|error" "$OUT/$name.log" | tail -8
  echo "-- $name: exit $rc after $(cat "$OUT/$name.secs")s"
}

nvidia-smi -L
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'

# 1. correctness, in parallel
T="on_cuda --test-threads 1 --nocapture"
tests=(cube_kernels static_shapes parity_official train_steps_reference parity_hf mixed_precision)
for t in "${tests[@]}"; do
  IJEPA_KERNEL_CACHE=$KC-$t step 200 "test-$t" "$G/bin/$t" $T &
done
wait

# 2. speed, one process at a time
S="--image-size 96 --patch-size 8 --in-chans 3 --embed-dim 384 --depth 12 --heads 6 --pred-dim 192 --pred-depth 6 --pred-heads 6 --npred 4 --k-enc 39 --k-pred 25 --batch-size 32 --infer-batch-size 128"
B="--image-size 224 --patch-size 16 --in-chans 3 --embed-dim 768 --depth 12 --heads 12 --pred-dim 384 --pred-depth 6 --pred-heads 12 --npred 4 --k-enc 64 --k-pred 33 --batch-size 64 --infer-batch-size 128"
N="--steps 8 --warmup 2"
export IJEPA_KERNEL_CACHE=$KC
step 150 bench-S-f32-ijepa "$G/bin/ijepa" bench --device cuda:0 --verbose $S $N
step 40 bench-S-f32-ijepa-second "$G/bin/ijepa" bench --device cuda:0 --verbose $S --steps 2 --warmup 1
step 60 bench-S-f32-torch python3 "$G/torch_ijepa_step.py" --device cuda $S $N
step 120 bench-B-f32-ijepa "$G/bin/ijepa" bench --device cuda:0 --verbose $B $N
step 60 bench-B-f32-torch python3 "$G/torch_ijepa_step.py" --device cuda $B $N
step 100 bench-S-bf16-ijepa "$G/bin/ijepa" bench --device cuda:0 --verbose --bf16 $S $N
step 60 bench-S-bf16-torch python3 "$G/torch_ijepa_step.py" --device cuda --bf16 $S $N
step 100 bench-B-bf16-ijepa "$G/bin/ijepa" bench --device cuda:0 --verbose --bf16 $B $N
step 60 bench-B-bf16-torch python3 "$G/torch_ijepa_step.py" --device cuda --bf16 $B $N

echo "== table ($(left)s of the budget left)"
python3 - "$OUT" <<'PY'
import os, re, sys
out = sys.argv[1]
def log(name):
    p = os.path.join(out, name + ".log")
    return open(p, errors="replace").read() if os.path.exists(p) else ""
def secs(name):
    p = os.path.join(out, name + ".secs")
    return open(p).read().strip() if os.path.exists(p) else "-"
def rate(name, what):
    m = re.search(rf"RESULT {what} median_ms=\S+ img_per_s=(\S+)", log(name))
    return float(m.group(1)) if m else None
def fmt(v):
    return f"{v:,.1f}" if v is not None else "-"
print("| shapes | precision | | PyTorch img/s | ijepa img/s | ratio |")
print("|---|---|---|---:|---:|---:|")
for shape, label in [("S", "ViT-S/8 96 px, batch 32"), ("B", "ViT-B/16 224 px, batch 64")]:
    for prec in ["f32", "bf16"]:
        for what, col in [("train_step", "train"), ("infer", "infer (batch 128)")]:
            t = rate(f"bench-{shape}-{prec}-torch", what)
            i = rate(f"bench-{shape}-{prec}-ijepa", what)
            r = f"{i / t:.2f}x" if t and i else "-"
            print(f"| {label} | {prec} | {col} | {fmt(t)} | {fmt(i)} | {r} |")
print()
for name, label in [("bench-S-f32-ijepa", "first process, empty kernel cache"),
                    ("bench-S-f32-ijepa-second", "second process, cache filled")]:
    m = re.search(r"train iteration 0: (\S+) ms", log(name))
    first = f"{float(m.group(1)) / 1e3:.1f} s" if m else "-"
    print(f"warm-up, {label}: first training iteration {first}, whole process {secs(name)} s")
print()
for t in ["cube_kernels", "static_shapes", "parity_official", "train_steps_reference", "parity_hf", "mixed_precision"]:
    text = log("test-" + t)
    m = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
    verdict = ", ".join(f"{a} ({p} passed, {f} failed)" for a, p, f in m) or "no result (see log)"
    print(f"test {t} (cuda variants): {verdict} in {secs('test-' + t)} s")
PY
