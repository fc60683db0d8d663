#!/usr/bin/env bash
# Build everything the GPU checks need (scripts/gpu_checks.sh) into target/gpu/bundle.tar.xz:
# the `ijepa` binary and the test binaries with cuda variants, built with `--features cuda`
# (stripped), the reference outputs, PyTorch's benchmark script and 4,096 Fashion-MNIST images.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}
SHARED=${SHARED:-../shared}
cargo build --release --features cuda
cargo test --release --features cuda --no-run 2>&1 | tee /tmp/gpu-bundle-tests.log
G=target/gpu; rm -rf "$G/stage"; mkdir -p "$G/stage/bin"
strip -o "$G/stage/bin/ijepa" "$T/release/ijepa"
for t in cube_kernels static_shapes parity_official parity_hf train_steps_reference mixed_precision; do
  exe=$(grep -o "$T/release/deps/$t-[0-9a-f]*" /tmp/gpu-bundle-tests.log | tail -1)
  strip -o "$G/stage/bin/$t" "$exe"
done
cp -r "$SHARED/reference" "$G/stage/reference"
cp "$SHARED/bench/torch_ijepa_step.py" "$G/stage/"
python3 - "$G/stage/fmnist" <<'PY'
import gzip, os, struct, sys
src, dst = "/usr/share/datasets/fashion-mnist/", sys.argv[1]
os.makedirs(dst, exist_ok=True)
for name, n in [("train-images-idx3-ubyte.gz", 4096), ("train-labels-idx1-ubyte.gz", 4096),
                ("t10k-images-idx3-ubyte.gz", 1000), ("t10k-labels-idx1-ubyte.gz", 1000)]:
    d = gzip.open(src + name).read()
    if "images" in name:
        m, _, r, c = struct.unpack(">IIII", d[:16]); out = struct.pack(">IIII", m, n, r, c) + d[16:16 + n * r * c]
    else:
        m, _ = struct.unpack(">II", d[:8]); out = struct.pack(">II", m, n) + d[8:8 + n]
    gzip.open(os.path.join(dst, name), "wb").write(out)
PY
tar -C "$G/stage" -cJf "$G/bundle.tar.xz" .
rm -rf "$G/stage"
ls -la "$G/bundle.tar.xz"
