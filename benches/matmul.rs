//! GFLOP/s of the two ways `ijepa` computes `y = x W` on the Linear shapes of the Fashion-MNIST
//! recipe and ViT-S: `gemm` (burn-flex's GEMM) per block of 256 rows, as the kernels called it
//! before, and the register tiles on a once-packed `W` (`gemm_rows`), as they call it now.
//!
//!     cargo bench --bench matmul            # RAYON_NUM_THREADS to pick the threads
//!
//! Best of 20 runs per shape and method, the two methods alternating (this machine's speed
//! drifts within seconds), both on the whole rayon pool.

use ijepa::ops::kernels::matmul::{PackedRhs, Parallelism, View, gemm_rows, gemm_strided};
use rayon::prelude::*;
use std::time::Instant;

const ROWS: usize = 256;

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

/// Best seconds of `f` and of `g` over 20 alternating runs each.
fn best_pair(mut f: impl FnMut(), mut g: impl FnMut()) -> (f64, f64) {
    let time = |h: &mut dyn FnMut()| {
        let t = Instant::now();
        h();
        t.elapsed().as_secs_f64()
    };
    (0..20).fold((f64::MAX, f64::MAX), |(bf, bg), _| {
        (bf.min(time(&mut f)), bg.min(time(&mut g)))
    })
}

fn values(len: usize, a: usize, b: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * a) % b) as f32 * 0.1 - 0.05 * b as f32)
        .collect()
}

fn main() {
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
    println!("threads: {}", rayon::current_num_threads());
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
}
