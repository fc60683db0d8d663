//! LayerNorm over the last axis: affine (weight, bias) and parameter-free variants.
//!
//! Why: burn composes LayerNorm from mean/var/sub/div/mul/add ops and autodiff then
//! records a long chain of broadcast elementwise nodes for the backward. Here the
//! forward is one pass per row (two-pass mean/variance in f32, biased variance, like
//! PyTorch) that also returns `mean` and `rstd` per row, and the backward is one
//! pass per row that produces `dx` and accumulates `dweight`/`dbias` partials per
//! fixed chunk of rows (added in chunk order → deterministic for any thread count).

use crate::ops::kernels::math::{self, simd_fn};
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Rows per parallel task (fixed: the reduction order of dweight/dbias depends on it).
const ROWS_PER_CHUNK: usize = 32;

/// Per-row statistics: two-pass mean and biased variance, `rstd = 1/sqrt(var + eps)`.
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = math::sum(x) / d;
    let var = math::sum_sq_dev(x, mean) / d;
    (mean, 1.0 / (var.max(0.0) + eps).sqrt())
}

simd_fn! {
    /// LayerNorm of the rows of `x` into `y`, with each row's mean and rstd.
    fn forward_rows(
        y: &mut [MaybeUninit<f32>],
        x: &[f32],
        mean: &mut [f32],
        rstd: &mut [f32],
        affine: Option<(&[f32], &[f32])>,
        dim: usize,
        eps: f32,
    ) {
        for (r, (yr, xr)) in y.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).enumerate() {
            let (m, s) = row_stats(xr, eps);
            mean[r] = m;
            rstd[r] = s;
            match affine {
                Some((w, b)) => {
                    for (((o, &xv), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                        o.write((xv - m) * s * wv + bv);
                    }
                }
                None => {
                    for (o, &xv) in yr.iter_mut().zip(xr) {
                        o.write((xv - m) * s);
                    }
                }
            }
        }
    }
}

/// The forward's parallel chunks of [`ROWS_PER_CHUNK`] rows of `x [rows, dim]` (`dim > 0`):
/// `chunk(y, x, mean, rstd)` on each writes all of the chunk's `y` and its rows' statistics.
/// Returns `(mean, rstd)`. Shared by the f32 and the bf16 `y`.
fn forward_chunks<T: Send>(
    y: &mut [MaybeUninit<T>],
    x: &[f32],
    dim: usize,
    chunk: impl Fn(&mut [MaybeUninit<T>], &[f32], &mut [f32], &mut [f32]) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / dim;
    let mut mean = vec![0.0f32; rows];
    let mut rstd = vec![0.0f32; rows];
    y.par_chunks_mut(ROWS_PER_CHUNK * dim)
        .zip(x.par_chunks(ROWS_PER_CHUNK * dim))
        .zip(mean.par_chunks_mut(ROWS_PER_CHUNK))
        .zip(rstd.par_chunks_mut(ROWS_PER_CHUNK))
        .for_each(|(((y, x), mean), rstd)| chunk(y, x, mean, rstd));
    (mean, rstd)
}

fn forward_impl(
    x: &[f32],
    affine: Option<(&[f32], &[f32])>,
    dim: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(
        dim > 0 && x.len().is_multiple_of(dim),
        "x.len() must be a multiple of dim"
    );
    if let Some((w, b)) = affine {
        assert_eq!(w.len(), dim);
        assert_eq!(b.len(), dim);
    }
    let mut y = super::uninit(x.len());
    let (mean, rstd) = forward_chunks(&mut y, x, dim, |y, x, mean, rstd| {
        forward_rows(y, x, mean, rstd, affine, dim, eps)
    });
    // SAFETY: the chunks cover `y` and every element of each row was written above.
    (unsafe { super::assume_init(y) }, mean, rstd)
}

/// Affine LayerNorm forward. `x: [rows, dim]`, `weight, bias: [dim]`.
/// Returns `(y, mean[rows], rstd[rows])`.
pub fn layer_norm_affine_forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    dim: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    forward_impl(x, Some((weight, bias)), dim, eps)
}

/// [`layer_norm_affine_forward`] with `y` rounded to bf16 as it is written (`dim` even; where
/// the CPU has bf16 products), for a LayerNorm whose output only bf16 products read (a block's
/// norm1 and norm2, read by qkv and fc1 under bf16 autocast): the values those products would
/// round it to, so they read it as it is, with half the bytes and no conversion pass. Each
/// chunk of rows is normalised into a per-thread f32 buffer (in cache), then rounded.
#[cfg(target_arch = "x86_64")]
pub fn layer_norm_affine_forward_bf16(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    dim: usize,
    eps: f32,
) -> (Vec<half::bf16>, Vec<f32>, Vec<f32>) {
    use crate::ops::kernels::matmul::bf16::{assume_init_vec, round_to_bf16, uninit_vec};
    thread_local! {
        static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    assert!(
        dim > 0 && x.len().is_multiple_of(dim),
        "x.len() must be a multiple of dim"
    );
    assert!(dim.is_multiple_of(2), "bf16 rows of whole pairs");
    assert_eq!(weight.len(), dim);
    assert_eq!(bias.len(), dim);
    let mut y = uninit_vec(x.len());
    let (mean, rstd) = forward_chunks(&mut y, x, dim, |y, x, mean, rstd| {
        ROWS.with_borrow_mut(|buf| {
            if buf.len() < x.len() {
                buf.resize(x.len(), 0.0);
            }
            let buf = &mut buf[..x.len()];
            // SAFETY: `forward_rows` only writes floats.
            let rows = unsafe { super::as_uninit(buf) };
            forward_rows(rows, x, mean, rstd, Some((weight, bias)), dim, eps);
            round_to_bf16(buf, y);
        })
    });
    // SAFETY: the chunks cover `y`, each written whole by `round_to_bf16`.
    (unsafe { assume_init_vec(y) }, mean, rstd)
}

/// Parameter-free LayerNorm forward (I-JEPA target normalisation).
/// Returns `(y, mean[rows], rstd[rows])`.
pub fn layer_norm_forward(x: &[f32], dim: usize, eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    forward_impl(x, None, dim, eps)
}

/// One row of the backward. With `g = dy·w` (or `dy`), `x̂ = (x - mean)·rstd`:
/// `dx = rstd·(g - mean(g) - x̂·mean(g·x̂))`. Every element of `dx` is written.
#[inline(always)]
fn backward_row(
    x: &[f32],
    dy: &[f32],
    w: Option<&[f32]>,
    mean: f32,
    rstd: f32,
    dx: &mut [MaybeUninit<f32>],
    // (dweight, dbias) partial sums for this chunk
    partial: Option<(&mut [f32], &mut [f32])>,
) {
    let dim = x.len();
    let inv_d = 1.0 / dim as f32;
    // dx used as scratch for g = dy·w
    match w {
        Some(w) => {
            for ((o, &g), &wv) in dx.iter_mut().zip(dy).zip(w) {
                o.write(g * wv);
            }
        }
        None => {
            for (o, &g) in dx.iter_mut().zip(dy) {
                o.write(g);
            }
        }
    }
    // SAFETY: every element was written just above.
    let dx = unsafe { &mut *(dx as *mut [MaybeUninit<f32>] as *mut [f32]) };
    let sum_g = math::sum(dx);
    // Σ g·x̂ = rstd·Σ g·(x - mean)
    let mut acc = [0.0f32; 16];
    let cg = dx.chunks_exact(16);
    let cx = x.chunks_exact(16);
    let (tg, tx) = (cg.remainder(), cx.remainder());
    for (g, xv) in cg.zip(cx) {
        for i in 0..16 {
            acc[i] += g[i] * (xv[i] - mean);
        }
    }
    let mut sum_gx = acc.iter().sum::<f32>();
    for (g, xv) in tg.iter().zip(tx) {
        sum_gx += g * (xv - mean);
    }
    let a = sum_g * inv_d;
    let c = sum_gx * rstd * inv_d;
    match partial {
        Some((dw, db)) => {
            for j in 0..dim {
                let xhat = (x[j] - mean) * rstd;
                dw[j] += dy[j] * xhat;
                db[j] += dy[j];
                dx[j] = rstd * (dx[j] - a - xhat * c);
            }
        }
        None => {
            for j in 0..dim {
                let xhat = (x[j] - mean) * rstd;
                dx[j] = rstd * (dx[j] - a - xhat * c);
            }
        }
    }
}

simd_fn! {
    /// [`backward_row`] over a chunk of rows; `part` holds the chunk's `[dweight | dbias]`
    /// partial sums (affine only).
    fn backward_rows(
        x: &[f32],
        dy: &[f32],
        w: Option<&[f32]>,
        mean: &[f32],
        rstd: &[f32],
        dx: &mut [MaybeUninit<f32>],
        part: Option<&mut [f32]>,
        dim: usize,
    ) {
        let mut part = part.map(|p| p.split_at_mut(dim));
        for (r, ((dxr, xr), dyr)) in dx
            .chunks_exact_mut(dim)
            .zip(x.chunks_exact(dim))
            .zip(dy.chunks_exact(dim))
            .enumerate()
        {
            let partial = part.as_mut().map(|(dw, db)| (&mut **dw, &mut **db));
            backward_row(xr, dyr, w, mean[r], rstd[r], dxr, partial);
        }
    }
}

/// Affine LayerNorm backward from the forward's `mean`/`rstd`.
/// Returns `(dx, dweight, dbias)`; the parameter gradients are summed over rows in a
/// fixed chunk order (bitwise independent of the thread count).
pub fn layer_norm_affine_backward(
    x: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dim: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(dim > 0 && x.len().is_multiple_of(dim));
    let rows = x.len() / dim;
    assert_eq!(weight.len(), dim);
    assert_eq!(dy.len(), x.len());
    assert_eq!(mean.len(), rows);
    assert_eq!(rstd.len(), rows);
    let chunk = ROWS_PER_CHUNK * dim;
    let n_chunks = rows.div_ceil(ROWS_PER_CHUNK);
    let mut dx = super::uninit(x.len());
    // per chunk: [dweight partial (dim), dbias partial (dim)]
    let mut partials = vec![0.0f32; n_chunks * 2 * dim];
    dx.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .zip(
            mean.par_chunks(ROWS_PER_CHUNK)
                .zip(rstd.par_chunks(ROWS_PER_CHUNK)),
        )
        .zip(partials.par_chunks_mut(2 * dim))
        .for_each(|(((dx, (x, dy)), (mean, rstd)), part)| {
            backward_rows(x, dy, Some(weight), mean, rstd, dx, Some(part), dim)
        });
    // SAFETY: the chunks cover `dx` and `backward_row` writes every element of each row.
    let dx = unsafe { super::assume_init(dx) };
    let mut dweight = vec![0.0f32; dim];
    let mut dbias = vec![0.0f32; dim];
    for part in partials.chunks_exact(2 * dim) {
        let (pw, pb) = part.split_at(dim);
        for j in 0..dim {
            dweight[j] += pw[j];
            dbias[j] += pb[j];
        }
    }
    (dx, dweight, dbias)
}

/// Parameter-free LayerNorm backward: returns `dx`.
pub fn layer_norm_backward(
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dim: usize,
) -> Vec<f32> {
    assert!(dim > 0 && x.len().is_multiple_of(dim));
    let rows = x.len() / dim;
    assert_eq!(dy.len(), x.len());
    assert_eq!(mean.len(), rows);
    assert_eq!(rstd.len(), rows);
    let chunk = ROWS_PER_CHUNK * dim;
    let mut dx = super::uninit(x.len());
    dx.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .zip(
            mean.par_chunks(ROWS_PER_CHUNK)
                .zip(rstd.par_chunks(ROWS_PER_CHUNK)),
        )
        .for_each(|((dx, (x, dy)), (mean, rstd))| {
            backward_rows(x, dy, None, mean, rstd, dx, None, dim)
        });
    // SAFETY: the chunks cover `dx` and `backward_row` writes every element of each row.
    unsafe { super::assume_init(dx) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::kernels::testutil::*;

    /// The bf16 output is the f32 output rounded (to nearest even), with the same statistics.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_output_is_the_f32_output_rounded() {
        use crate::ops::kernels::matmul::bf16::bf16_bits;
        if skip_without_bf16_products() {
            return;
        }
        let mut rg = rng(71);
        for &(rows, dim) in &[(1, 2), (33, 64), (70, 128), (5, 6)] {
            let x = uniform(&mut rg, rows * dim, 3.0);
            let w = uniform(&mut rg, dim, 1.0);
            let b = uniform(&mut rg, dim, 1.0);
            let (y, mean, rstd) = layer_norm_affine_forward(&x, &w, &b, dim, 1e-6);
            let (y16, mean16, rstd16) = layer_norm_affine_forward_bf16(&x, &w, &b, dim, 1e-6);
            let want: Vec<u16> = y.iter().map(|&v| bf16_bits(v)).collect();
            let got: Vec<u16> = y16.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{rows}x{dim} y");
            assert_eq!((bits(&mean16), bits(&rstd16)), (bits(&mean), bits(&rstd)));
        }
    }

    /// f64 reference forward of one row set; returns y.
    fn ref_forward(
        x: &[f64],
        w: Option<&[f64]>,
        b: Option<&[f64]>,
        dim: usize,
        eps: f64,
    ) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        for (yr, xr) in y.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
            let m = xr.iter().sum::<f64>() / dim as f64;
            let v = xr.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / dim as f64;
            let s = 1.0 / (v + eps).sqrt();
            for j in 0..dim {
                yr[j] = (xr[j] - m) * s * w.map_or(1.0, |w| w[j]) + b.map_or(0.0, |b| b[j]);
            }
        }
        y
    }

    /// Objective L = Σ r ∘ y; returns gradients by central differences of the f64 reference.
    fn fd_grads(
        x: &[f64],
        w: Option<&[f64]>,
        b: Option<&[f64]>,
        r: &[f64],
        dim: usize,
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let loss = |x: &[f64], w: Option<&[f64]>, b: Option<&[f64]>| -> f64 {
            ref_forward(x, w, b, dim, eps)
                .iter()
                .zip(r)
                .map(|(a, b)| a * b)
                .sum()
        };
        let h = 1e-6;
        let mut dx = vec![0.0; x.len()];
        let mut xp = x.to_vec();
        for i in 0..x.len() {
            let o = xp[i];
            xp[i] = o + h;
            let lp = loss(&xp, w, b);
            xp[i] = o - h;
            let lm = loss(&xp, w, b);
            xp[i] = o;
            dx[i] = (lp - lm) / (2.0 * h);
        }
        let mut dw = vec![0.0; dim];
        let mut db = vec![0.0; dim];
        if let (Some(w), Some(b)) = (w, b) {
            let mut wp = w.to_vec();
            let mut bp = b.to_vec();
            for j in 0..dim {
                let o = wp[j];
                wp[j] = o + h;
                let lp = loss(x, Some(&wp), Some(b));
                wp[j] = o - h;
                let lm = loss(x, Some(&wp), Some(b));
                wp[j] = o;
                dw[j] = (lp - lm) / (2.0 * h);
                let o = bp[j];
                bp[j] = o + h;
                let lp = loss(x, Some(w), Some(&bp));
                bp[j] = o - h;
                let lm = loss(x, Some(w), Some(&bp));
                bp[j] = o;
                db[j] = (lp - lm) / (2.0 * h);
            }
        }
        (dx, dw, db)
    }

    #[test]
    fn affine_forward_backward_vs_f64() {
        let mut rg = rng(10);
        for &(rows, dim) in &[
            (1usize, 1usize),
            (1, 7),
            (3, 13),
            (37, 24),
            (70, 100),
            (5, 1283),
        ] {
            let x: Vec<f32> = uniform(&mut rg, rows * dim, 2.0)
                .iter()
                .map(|v| v + 0.7)
                .collect();
            let w = uniform(&mut rg, dim, 1.5);
            let b = uniform(&mut rg, dim, 0.5);
            let dy = uniform(&mut rg, rows * dim, 1.0);
            let eps = 1e-6;
            let (y, mean, rstd) = layer_norm_affine_forward(&x, &w, &b, dim, eps);
            let (x64, w64, b64, dy64) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
            let want = ref_forward(&x64, Some(&w64), Some(&b64), dim, eps as f64);
            if dim > 1 {
                assert_close(&format!("ln affine fwd {rows}x{dim}"), &y, &want, 2e-6);
            }
            let (dx, dw, db) = layer_norm_affine_backward(&x, &w, &mean, &rstd, &dy, dim);
            if rows * dim <= 2000 {
                let (fdx, fdw, fdb) =
                    fd_grads(&x64, Some(&w64), Some(&b64), &dy64, dim, eps as f64);
                if dim > 1 {
                    assert_close(&format!("ln affine dx {rows}x{dim}"), &dx, &fdx, 2e-5);
                }
                assert_close(&format!("ln affine dw {rows}x{dim}"), &dw, &fdw, 2e-5);
                assert_close(&format!("ln affine db {rows}x{dim}"), &db, &fdb, 2e-5);
            }
        }
    }

    #[test]
    fn plain_forward_backward_vs_f64() {
        let mut rg = rng(11);
        for &(rows, dim) in &[(1usize, 5usize), (27, 48), (33, 80), (4, 1000)] {
            let x: Vec<f32> = uniform(&mut rg, rows * dim, 3.0)
                .iter()
                .map(|v| v - 1.0)
                .collect();
            let dy = uniform(&mut rg, rows * dim, 1.0);
            let eps = 1e-5;
            let (y, mean, rstd) = layer_norm_forward(&x, dim, eps);
            let x64 = to_f64(&x);
            let want = ref_forward(&x64, None, None, dim, eps as f64);
            assert_close(&format!("ln fwd {rows}x{dim}"), &y, &want, 2e-6);
            // mean / rstd themselves
            for (r, xr) in x64.chunks_exact(dim).enumerate() {
                let m = xr.iter().sum::<f64>() / dim as f64;
                let v = xr.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / dim as f64;
                assert!((mean[r] as f64 - m).abs() <= 1e-6 * (1.0 + m.abs()));
                let s = 1.0 / (v + eps as f64).sqrt();
                assert!((rstd[r] as f64 - s).abs() <= 1e-6 * s);
            }
            let dx = layer_norm_backward(&x, &mean, &rstd, &dy, dim);
            let (fdx, _, _) = fd_grads(&x64, None, None, &to_f64(&dy), dim, eps as f64);
            assert_close(&format!("ln dx {rows}x{dim}"), &dx, &fdx, 2e-5);
        }
    }

    #[test]
    fn constant_rows_are_finite() {
        let x = vec![3.25f32; 4 * 16];
        let (y, _, rstd) = layer_norm_forward(&x, 16, 1e-5);
        assert!(y.iter().all(|&v| v == 0.0));
        assert!(rstd.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let mut rg = rng(12);
        let (rows, dim) = (1000, 72);
        let x = uniform(&mut rg, rows * dim, 2.0);
        let w = uniform(&mut rg, dim, 1.0);
        let b = uniform(&mut rg, dim, 1.0);
        let dy = uniform(&mut rg, rows * dim, 1.0);
        assert_deterministic("layernorm", || {
            let (y, m, s) = layer_norm_affine_forward(&x, &w, &b, dim, 1e-6);
            let (dx, dw, db) = layer_norm_affine_backward(&x, &w, &m, &s, &dy, dim);
            let dx2 = layer_norm_backward(&x, &m, &s, &dy, dim);
            vec![y, m, s, dx, dw, db, dx2]
        });
    }
}
