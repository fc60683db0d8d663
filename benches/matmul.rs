//! GFLOP/s of `ijepa`'s matrix products on the Linear shapes of the Fashion-MNIST recipe and
//! ViT-S, each pair of methods alternating in one process (this machine's speed drifts within
//! seconds), best of 15 runs each, on the whole rayon pool:
//!
//! 1. `y = x W`: `gemm` (burn-flex's GEMM) per block of 256 rows, against the register tiles of
//!    the process's kernel path on a once-packed `W` (`gemm_rows`);
//! 2. the Linear layer forward (`y = x W + b`) and backward (`dx`, `dW`, `db`) with f32 and with
//!    bf16 operands (on CPUs with AVX-512 BF16).
//!
//! ```text
//! cargo bench --bench matmul                          # RAYON_NUM_THREADS picks the threads
//! IJEPA_CPU_KERNELS=avx2 cargo bench --bench matmul   # the tiles of another kernel path
//! ```

use ijepa::ops::Precision;
use ijepa::ops::kernels::cpu;
use ijepa::ops::kernels::linear::{Rows, linear_backward, linear_forward};
use ijepa::ops::kernels::matmul::{PackedRhs, Parallelism, View, gemm_rows, gemm_strided};
use rayon::prelude::*;

mod common;
use common::best_pair;

const ROWS: usize = 256;

// The CLI's allocator and setting (src/bin/ijepa/main.rs): freed memory is kept, so the outputs
// allocated in every run do not fault in fresh zeroed pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn with_gemm(x: &[f32], w: &[f32], y: &mut [f32], k: usize, n: usize) {
    y.par_chunks_mut(ROWS * n)
        .zip(x.par_chunks(ROWS * k))
        .for_each(|(yb, xb)| {
            let rows = yb.len() / n;
            let (lhs, rhs) = (View::rows(xb, k), View::rows(w, n));
            gemm_strided(rows, n, k, yb, n, false, lhs, rhs, 1.0, Parallelism::None);
        });
}

fn with_tiles(x: &[f32], w: &[f32], y: &mut [std::mem::MaybeUninit<f32>], k: usize, n: usize) {
    let rhs = PackedRhs::new(View::rows(w, n), k, n);
    y.par_chunks_mut(ROWS * n)
        .zip(x.par_chunks(ROWS * k))
        .for_each(|(yb, xb)| {
            gemm_rows(yb.len() / n, xb, k, &rhs, None, yb);
        });
}

fn values(len: usize, a: usize, b: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * a) % b) as f32 * 0.1 - 0.05 * b as f32)
        .collect()
}

fn main() {
    // mimalloc v2's `mi_option_purge_delay`; -1 disables purging.
    // SAFETY: setting a mimalloc option is a plain store into its option table.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    // (what, M = batch x tokens, K, N)
    let shapes = [
        ("FMNIST target qkv", 128 * 64, 128, 384),
        ("FMNIST target proj", 128 * 64, 128, 128),
        ("FMNIST target fc1", 128 * 64, 128, 512),
        ("FMNIST target fc2", 128 * 64, 512, 128),
        ("FMNIST predictor qkv", 256 * 38, 64, 192),
        ("FMNIST predictor fc2", 256 * 38, 256, 64),
        ("ViT-S target qkv", 32 * 144, 384, 1152),
        ("ViT-S target fc2", 32 * 144, 1536, 384),
    ];
    println!(
        "threads: {}, {}",
        rayon::current_num_threads(),
        cpu::describe()
    );
    println!(
        "{:<22} {:>6} {:>5} {:>5} {:>12} {:>12}",
        "shape", "M", "K", "N", "gemm GF/s", "tiles GF/s"
    );
    for (what, m, k, n) in shapes {
        let x = values(m * k, 7, 13);
        let w = values(k * n, 5, 11);
        let mut y = vec![0.0f32; m * n];
        let mut yt = ijepa::ops::kernels::uninit(m * n);
        let flop = 2.0 * (m * k * n) as f64;
        let (g, t) = best_pair(
            || with_gemm(&x, &w, &mut y, k, n),
            || with_tiles(&x, &w, &mut yt, k, n),
        );
        println!(
            "{what:<22} {m:>6} {k:>5} {n:>5} {:>12.1} {:>12.1}",
            flop / g / 1e9,
            flop / t / 1e9
        );
    }
    if !cpu::bf16_products() {
        println!("no bf16 products on this CPU (kernel path and avx512_bf16): Linear f32 only");
        return;
    }
    println!(
        "\n{:<22} {:>6} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9}",
        "Linear (GF/s)", "M", "K", "N", "fwd f32", "fwd bf16", "bwd f32", "bwd bf16"
    );
    for (what, m, k, n) in shapes {
        let x = values(m * k, 7, 13);
        let w = values(k * n, 5, 11);
        let b = values(n, 3, 7);
        let dy = values(m * n, 3, 17);
        let flop = 2.0 * (m * k * n) as f64;
        let forward = |p| drop(linear_forward(Rows::F32(&x), &w, Some(&b), m, k, n, p));
        let backward = |p| drop(linear_backward(Rows::F32(&x), &w, &dy, m, k, n, true, p));
        let (f32f, bf16f) = best_pair(|| forward(Precision::F32), || forward(Precision::Bf16));
        let (f32b, bf16b) = best_pair(|| backward(Precision::F32), || backward(Precision::Bf16));
        println!(
            "{what:<22} {m:>6} {k:>5} {n:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            flop / f32f / 1e9,
            flop / bf16f / 1e9,
            2.0 * flop / f32b / 1e9,
            2.0 * flop / bf16b / 1e9
        );
    }
}
