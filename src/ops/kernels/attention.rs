//! Multi-head self-attention straight from the fused qkv projection output.
//!
//! Why: the timm/I-JEPA block reshapes `qkv [B, N, 3D]` to `[3, B, H, N, hd]`,
//! permutes, and later merges heads back; on burn-flex each permute is a strided
//! copy, softmax is several ops, and autodiff keeps the `N×N` probabilities. Here
//! q, k, v are read in place with strides (head `h` = columns `h·hd..(h+1)·hd` of
//! each third), the output is written already head-merged as `[B, N, D]`, and only
//! the per-row log-sum-exp is kept: the backward recomputes `P = exp(scale·QKᵀ - lse)`.
//!
//! Work is parallel over the batch (each batch row of `out`/`dqkv` is a contiguous
//! slice, so safe code can split it); heads run sequentially inside. The `N×N`
//! scratch lives in a per-thread buffer that is reused across calls (a fresh
//! zeroed buffer per task would cost a memset, and page faults, of up to 2·784²
//! floats each). `P V` and `dS K` run on the register tiles of [`crate::ops::kernels::matmul`]
//! reading V and K in place (no packing: for one head, packing cost as much as the product);
//! the products with a transposed operand (`Q Kᵀ`, `dO Vᵀ`, `Pᵀ dO`, `dSᵀ Q`) go through
//! `gemm` with `Parallelism::None` (already inside a parallel loop). (`Q Kᵀ` on the tiles with
//! `Kᵀ` packed per head measured no faster.)

use crate::ops::Precision;
use crate::ops::kernels::math::{self, exp2_f32, simd_fn};
use crate::ops::kernels::matmul::{PackedRhs, Parallelism, View, gemm_rows_strided, gemm_strided};
use rayon::prelude::*;
use std::cell::RefCell;
use std::f32::consts::{LN_2, LOG2_E};
use std::mem::MaybeUninit;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a per-thread scratch slice of `len` floats (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // re-entered on this thread (not expected): use a private buffer
        Err(_) => f(&mut vec![0.0; len]),
    })
}

pub(super) fn dims(len: usize, batch: usize, seq: usize, heads: usize) -> (usize, usize) {
    assert!(batch > 0 && seq > 0 && heads > 0);
    assert_eq!(len % (batch * seq * 3), 0, "qkv must be [B, N, 3*D]");
    let d = len / (batch * seq * 3);
    assert_eq!(d % heads, 0, "D must be a multiple of heads");
    (d, d / heads)
}

/// One head's scores `s [n, n] = scale2 · Q Kᵀ`, Q and K read in place from the qkv rows
/// (stride `3d`; gemm takes `Kᵀ` as a transposed view). The forward and the backward's
/// recomputation of P both call this, so they see the same values. (On the register tiles,
/// with `Kᵀ` packed per head, it measured no faster: the packing costs what the tiles save.)
fn scores(q: &[f32], k: &[f32], d: usize, n: usize, hd: usize, scale2: f32, s: &mut [f32]) {
    let (q, kt) = (View::rows(q, 3 * d), View::t(k, 3 * d));
    gemm_strided(n, n, hd, s, n, false, q, kt, scale2, Parallelism::None);
}

simd_fn! {
    /// Row-wise softmax numerators in place on log2-scaled scores `s [rows, n]`
    /// (`s = logits·log2 e`): `p = 2^(s - max)`, with `inv[i] = 1 / Σ_j p_ij` (the
    /// normalisation is applied to the rows of `P V`, `hd` wide, instead of to `P`, `n` wide)
    /// and `lse[i] = ln Σ_j e^{logit_ij}`.
    pub(super) fn softmax_numerators(s: &mut [f32], n: usize, lse: &mut [f32], inv: &mut [f32]) {
        for ((row, l), r) in s
            .chunks_exact_mut(n)
            .zip(lse.iter_mut())
            .zip(inv.iter_mut())
        {
            let m = math::max(row);
            let sum = math::exp2_in_place_sum(row, m);
            *r = 1.0 / sum;
            *l = (m + sum.log2()) * LN_2;
        }
    }
}

simd_fn! {
    /// One head's output rows: row `i` of `pv [n, hd]` times `inv[i]`, written into `hd`
    /// columns of `out` at stride `d`.
    pub(super) fn scale_head_rows(out: &mut [MaybeUninit<f32>], pv: &[f32], inv: &[f32], d: usize, hd: usize) {
        for ((i, &r), row) in inv.iter().enumerate().zip(pv.chunks_exact(hd)) {
            for (o, &v) in out[i * d..i * d + hd].iter_mut().zip(row) {
                o.write(v * r);
            }
        }
    }
}

simd_fn! {
    /// The backward's recomputation of `P` in place on log2-scaled scores: `2^(s - lse·log2 e)`.
    pub(super) fn probabilities(p: &mut [f32], lse: &[f32], n: usize) {
        for (row, &l) in p.chunks_exact_mut(n).zip(lse) {
            let l2 = l * LOG2_E;
            for x in row.iter_mut() {
                *x = exp2_f32(*x - l2);
            }
        }
    }
}

simd_fn! {
    /// `dp ← scale · P ∘ (dP - delta)` with `delta_i = dO_i · O_i` (rows of `g` and `o`: `hd`
    /// floats at stride `d`), in place on `dp [n, n]`; `delta` is scratch of `n`.
    pub(super) fn scaled_score_grads(
        dp: &mut [f32],
        p: &[f32],
        g: &[f32],
        o: &[f32],
        delta: &mut [f32],
        n: usize,
        d: usize,
        hd: usize,
        scale: f32,
    ) {
        for (i, di) in delta.iter_mut().enumerate() {
            *di = math::dot(&g[i * d..i * d + hd], &o[i * d..i * d + hd]);
        }
        for ((dsr, pr), &di) in dp.chunks_exact_mut(n).zip(p.chunks_exact(n)).zip(delta.iter()) {
            for (x, &pv) in dsr.iter_mut().zip(pr) {
                *x = scale * (pv * (*x - di));
            }
        }
    }
}

/// `(scale, scale · log2 e)`: timm's `head_dim ** -0.5` (a Python float, rounded once to f32),
/// and the same in log2 units, where softmax needs `2^x` instead of `e^x`.
pub(super) fn scales(hd: usize) -> (f32, f32) {
    let scale = (hd as f64).powf(-0.5) as f32;
    (scale, scale * LOG2_E)
}

/// Whether the products run on bf16 operands ([`super::attention_bf16`]): in precision bf16
/// where the CPU has bf16 products and the head dimension is even; f32 otherwise.
#[cfg(target_arch = "x86_64")]
fn bf16_products(p: Precision, hd: usize) -> bool {
    p == Precision::Bf16 && super::cpu::bf16_products() && super::attention_bf16::supported(hd)
}

/// Attention forward.
///
/// `qkv: [B, N, 3D]` (q | k | v, head `h` at columns `h·hd..(h+1)·hd` of each third),
/// `D = heads·hd`, `scale = hd^-0.5`. Returns `(out [B, N, D], lse [B, heads, N])`.
pub fn attention_forward(
    qkv: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
    p: Precision,
) -> (Vec<f32>, Vec<f32>) {
    let (d, hd) = dims(qkv.len(), batch, seq, heads);
    #[cfg(target_arch = "x86_64")]
    if bf16_products(p, hd) {
        return super::attention_bf16::attention_forward(qkv, batch, seq, heads);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
    let n = seq;
    let (_, scale2) = scales(hd);
    let (out, lse) = forward_images(qkv, batch, n, d, heads, |out_b, lse_b, qkv_b| {
        with_scratch(n * n + n + n * hd, |buf| {
            let (s, rest) = buf.split_at_mut(n * n);
            let (inv, pv) = rest.split_at_mut(n);
            for h in 0..heads {
                let q = &qkv_b[h * hd..];
                let k = &qkv_b[d + h * hd..];
                let v = &qkv_b[2 * d + h * hd..];
                scores(q, k, d, n, hd, scale2, s);
                softmax_numerators(s, n, &mut lse_b[h * n..(h + 1) * n], inv);
                // O_h = (P V) / Σ, written into columns h·hd.. of out (V read in place)
                let vp = PackedRhs::in_place(View::rows(v, 3 * d), n, hd);
                // SAFETY: the product only writes floats.
                let pv_out = unsafe { super::as_uninit(pv) };
                gemm_rows_strided(n, s, n, &vp, None, pv_out, hd);
                scale_head_rows(&mut out_b[h * hd..], pv, inv, d, hd);
            }
        })
    });
    // SAFETY: the per-image pieces cover `out`, and in each the heads' products wrote every
    // column (head h: columns h·hd..(h+1)·hd of every row).
    (unsafe { super::assume_init(out) }, lse)
}

/// The forward's images on the pool: `image(out, lse, qkv)` on each image's `out [n, d]` (to
/// be written whole), `lse [heads, n]` and `qkv [n, 3d]`. Returns `(out, lse)` of the batch.
/// Shared by the f32 and the bf16 products.
pub(super) fn forward_images<Q: Sync>(
    qkv: &[Q],
    batch: usize,
    n: usize,
    d: usize,
    heads: usize,
    image: impl Fn(&mut [MaybeUninit<f32>], &mut [f32], &[Q]) + Sync,
) -> (Vec<MaybeUninit<f32>>, Vec<f32>) {
    let mut out = super::uninit(batch * n * d);
    let mut lse = vec![0.0f32; batch * heads * n];
    out.par_chunks_mut(n * d)
        .zip(lse.par_chunks_mut(heads * n))
        .zip(qkv.par_chunks(n * 3 * d))
        .for_each(|((out_b, lse_b), qkv_b)| image(out_b, lse_b, qkv_b));
    (out, lse)
}

/// The backward's images on the pool: `image(dqkv, qkv, out, dout, lse)` on each image's
/// `dqkv [n, 3d]` (to be written whole), `qkv [n, 3d]`, `out` and `dout [n, d]` and
/// `lse [heads, n]`. Returns `dqkv` of the batch. Shared by the f32 and the bf16 products.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_images<Q: Sync>(
    qkv: &[Q],
    out: &[f32],
    dout: &[f32],
    lse: &[f32],
    n: usize,
    d: usize,
    heads: usize,
    image: impl Fn(&mut [MaybeUninit<f32>], &[Q], &[f32], &[f32], &[f32]) + Sync,
) -> Vec<MaybeUninit<f32>> {
    let mut dqkv = super::uninit(qkv.len());
    dqkv.par_chunks_mut(n * 3 * d)
        .zip(qkv.par_chunks(n * 3 * d))
        .zip(out.par_chunks(n * d).zip(dout.par_chunks(n * d)))
        .zip(lse.par_chunks(heads * n))
        .for_each(|(((dqkv_b, qkv_b), (out_b, dout_b)), lse_b)| {
            image(dqkv_b, qkv_b, out_b, dout_b, lse_b)
        });
    dqkv
}

/// [`attention_forward`] in precision bf16 on a `qkv` its projection already rounded to bf16
/// for these products ([`super::linear::linear_forward_to_bf16`]): the bf16 products read it
/// as it is (half the bytes, no conversion of their own; the same values). Without bf16
/// products for this head dimension, on the values widened to f32.
pub fn attention_forward_rounded(
    qkv: &[half::bf16],
    batch: usize,
    seq: usize,
    heads: usize,
) -> (Vec<f32>, Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if bf16_products(Precision::Bf16, dims(qkv.len(), batch, seq, heads).1) {
        return super::attention_bf16::attention_forward(qkv, batch, seq, heads);
    }
    attention_forward(&widened(qkv), batch, seq, heads, Precision::Bf16)
}

/// [`attention_backward`] on the `qkv` of [`attention_forward_rounded`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_rounded(
    qkv: &[half::bf16],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        let (d, hd) = dims(qkv.len(), batch, seq, heads);
        if bf16_products(Precision::Bf16, hd) {
            check_backward(out, dout, lse, batch, seq, heads, d);
            return super::attention_bf16::attention_backward(
                qkv, out, lse, dout, batch, seq, heads,
            );
        }
    }
    let q = widened(qkv);
    attention_backward(&q, out, lse, dout, batch, seq, heads, Precision::Bf16)
}

/// The backward's operands against `qkv`'s `[batch, seq, 3d]`: `out`, `dout [batch, seq, d]`,
/// `lse [batch, heads, seq]`.
#[allow(clippy::too_many_arguments)]
fn check_backward(
    out: &[f32],
    dout: &[f32],
    lse: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
    d: usize,
) {
    assert_eq!(out.len(), batch * seq * d);
    assert_eq!(dout.len(), batch * seq * d);
    assert_eq!(lse.len(), batch * heads * seq);
}

fn widened(x: &[half::bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// Attention backward. Returns `dqkv [B, N, 3D]` in the same layout as `qkv`.
///
/// Recomputes `P = exp(scale·QKᵀ - lse)`; then `dV = Pᵀ dO`, `dP = dO Vᵀ`,
/// `dS = P ∘ (dP - rowsum(dO ∘ O))`, `dQ = scale·dS K`, `dK = scale·dSᵀ Q`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
    p: Precision,
) -> Vec<f32> {
    let (d, hd) = dims(qkv.len(), batch, seq, heads);
    let n = seq;
    check_backward(out, dout, lse, batch, seq, heads, d);
    #[cfg(target_arch = "x86_64")]
    if bf16_products(p, hd) {
        return super::attention_bf16::attention_backward(qkv, out, lse, dout, batch, seq, heads);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
    let (scale, scale2) = scales(hd);
    let dqkv = backward_images(
        qkv,
        out,
        dout,
        lse,
        n,
        d,
        heads,
        |dqkv_b, qkv_b, out_b, dout_b, lse_b| {
            let dqkv_b = super::zeroed(dqkv_b);
            with_scratch(2 * n * n + n, |buf| {
                let (p, rest) = buf.split_at_mut(n * n);
                let (dp, delta) = rest.split_at_mut(n * n);
                for h in 0..heads {
                    let q = &qkv_b[h * hd..];
                    let k = &qkv_b[d + h * hd..];
                    let v = &qkv_b[2 * d + h * hd..];
                    let o = &out_b[h * hd..];
                    let g = &dout_b[h * hd..];
                    // P = 2^(scale·log2(e) · Q Kᵀ - lse·log2(e)), scores as in the forward
                    scores(q, k, d, n, hd, scale2, p);
                    probabilities(p, &lse_b[h * n..(h + 1) * n], n);
                    // dV = Pᵀ dO
                    gemm_strided(
                        n,
                        hd,
                        n,
                        &mut dqkv_b[2 * d + h * hd..],
                        3 * d,
                        false,
                        View::t(p, n),
                        View::rows(g, d),
                        1.0,
                        Parallelism::None,
                    );
                    // dP = dO Vᵀ
                    gemm_strided(
                        n,
                        n,
                        hd,
                        dp,
                        n,
                        false,
                        View::rows(g, d),
                        View::t(v, 3 * d),
                        1.0,
                        Parallelism::None,
                    );
                    // scale · dS = scale · P ∘ (dP - delta), delta_i = dO_i · O_i
                    scaled_score_grads(dp, p, g, o, delta, n, d, hd, scale);
                    // dQ = (scale · dS) K (K read in place)
                    let kp = PackedRhs::in_place(View::rows(k, 3 * d), n, hd);
                    // SAFETY: the product only writes floats.
                    let dq = unsafe { super::as_uninit(&mut dqkv_b[h * hd..]) };
                    gemm_rows_strided(n, dp, n, &kp, None, dq, 3 * d);
                    // dK = (scale · dS)ᵀ Q
                    gemm_strided(
                        n,
                        hd,
                        n,
                        &mut dqkv_b[d + h * hd..],
                        3 * d,
                        false,
                        View::t(dp, n),
                        View::rows(q, 3 * d),
                        1.0,
                        Parallelism::None,
                    );
                }
            })
        },
    );
    // SAFETY: the per-image pieces cover `dqkv` and each went through `zeroed`.
    unsafe { super::assume_init(dqkv) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Precision::F32;
    use crate::ops::kernels::testutil::*;

    /// f64 reference forward: returns out [B, N, D].
    fn ref_forward(qkv: &[f64], b: usize, n: usize, heads: usize) -> Vec<f64> {
        let d = qkv.len() / (b * n * 3);
        let hd = d / heads;
        let scale = (hd as f64).powf(-0.5);
        let mut out = vec![0.0; b * n * d];
        let at = |bb: usize, t: usize, c: usize| qkv[(bb * n + t) * 3 * d + c];
        for bb in 0..b {
            for h in 0..heads {
                for i in 0..n {
                    let mut s = vec![0.0; n];
                    for (j, sj) in s.iter_mut().enumerate() {
                        let mut acc = 0.0;
                        for c in 0..hd {
                            acc += at(bb, i, h * hd + c) * at(bb, j, d + h * hd + c);
                        }
                        *sj = acc * scale;
                    }
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for c in 0..hd {
                        let mut acc = 0.0;
                        for (j, &sj) in s.iter().enumerate() {
                            acc += (sj - m).exp() / z * at(bb, j, 2 * d + h * hd + c);
                        }
                        out[(bb * n + i) * d + h * hd + c] = acc;
                    }
                }
            }
        }
        out
    }

    fn ref_lse(qkv: &[f64], b: usize, n: usize, heads: usize) -> Vec<f64> {
        let d = qkv.len() / (b * n * 3);
        let hd = d / heads;
        let scale = (hd as f64).powf(-0.5);
        let mut lse = vec![0.0; b * heads * n];
        for bb in 0..b {
            for h in 0..heads {
                for i in 0..n {
                    let s: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..hd)
                                .map(|c| {
                                    qkv[(bb * n + i) * 3 * d + h * hd + c]
                                        * qkv[(bb * n + j) * 3 * d + d + h * hd + c]
                                })
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    lse[(bb * heads + h) * n + i] =
                        m + s.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                }
            }
        }
        lse
    }

    fn case(b: usize, n: usize, heads: usize, hd: usize, fd: bool, seed: u64) {
        let d = heads * hd;
        let mut rg = rng(seed);
        // scale 2.0 → logits of order a few units: a non-trivial softmax
        let qkv = uniform(&mut rg, b * n * 3 * d, 2.0);
        let dout = uniform(&mut rg, b * n * d, 1.0);
        let (out, lse) = attention_forward(&qkv, b, n, heads, F32);
        let q64 = to_f64(&qkv);
        let tag = format!("attn B{b} N{n} H{heads} hd{hd}");
        assert_close(
            &format!("{tag} out"),
            &out,
            &ref_forward(&q64, b, n, heads),
            1e-5,
        );
        assert_close(
            &format!("{tag} lse"),
            &lse,
            &ref_lse(&q64, b, n, heads),
            1e-5,
        );
        let dqkv = attention_backward(&qkv, &out, &lse, &dout, b, n, heads, F32);
        if fd {
            // L = Σ dout ∘ out(qkv), central differences of the f64 reference.
            let g64 = to_f64(&dout);
            let loss = |x: &[f64]| -> f64 {
                ref_forward(x, b, n, heads)
                    .iter()
                    .zip(&g64)
                    .map(|(a, c)| a * c)
                    .sum()
            };
            let mut x = q64.clone();
            let h = 1e-6;
            let mut want = vec![0.0; x.len()];
            for i in 0..x.len() {
                let o = x[i];
                x[i] = o + h;
                let lp = loss(&x);
                x[i] = o - h;
                let lm = loss(&x);
                x[i] = o;
                want[i] = (lp - lm) / (2.0 * h);
            }
            assert_close(&format!("{tag} dqkv vs fd"), &dqkv, &want, 2e-5);
        }
    }

    #[test]
    fn small_shapes_with_finite_differences() {
        case(1, 1, 1, 16, true, 1);
        case(2, 3, 2, 5, true, 2);
        case(1, 27, 1, 16, true, 3);
        case(2, 9, 3, 24, true, 4);
        case(1, 5, 2, 80, true, 5);
    }

    #[test]
    fn larger_shapes_forward() {
        case(2, 27, 4, 16, false, 6);
        case(1, 64, 2, 80, false, 7);
        case(3, 38, 3, 24, false, 8);
        case(1, 50, 1, 7, false, 9);
    }

    #[test]
    fn backward_vs_analytic_f64_larger() {
        // Compare against the analytic f64 gradient (itself validated by the fd tests).
        let (b, n, heads, hd) = (2, 33, 3, 24);
        let d = heads * hd;
        let mut rg = rng(20);
        let qkv = uniform(&mut rg, b * n * 3 * d, 2.0);
        let dout = uniform(&mut rg, b * n * d, 1.0);
        let (out, lse) = attention_forward(&qkv, b, n, heads, F32);
        let got = attention_backward(&qkv, &out, &lse, &dout, b, n, heads, F32);
        let want = ref_backward(&to_f64(&qkv), &to_f64(&dout), b, n, heads);
        assert_close("attn dqkv vs analytic f64", &got, &want, 1e-5);
    }

    fn ref_backward(qkv: &[f64], g: &[f64], b: usize, n: usize, heads: usize) -> Vec<f64> {
        let d = qkv.len() / (b * n * 3);
        let hd = d / heads;
        let scale = (hd as f64).powf(-0.5);
        let mut dqkv = vec![0.0; qkv.len()];
        let idx = |bb: usize, t: usize, c: usize| (bb * n + t) * 3 * d + c;
        for bb in 0..b {
            for h in 0..heads {
                let (qo, ko, vo) = (h * hd, d + h * hd, 2 * d + h * hd);
                let mut p = vec![0.0; n * n];
                for i in 0..n {
                    for j in 0..n {
                        p[i * n + j] = (0..hd)
                            .map(|c| qkv[idx(bb, i, qo + c)] * qkv[idx(bb, j, ko + c)])
                            .sum::<f64>()
                            * scale;
                    }
                    let row = &mut p[i * n..(i + 1) * n];
                    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
                    row.iter_mut().for_each(|v| *v = (*v - m).exp() / z);
                }
                let go = |i: usize, c: usize| g[(bb * n + i) * d + h * hd + c];
                let mut ds = vec![0.0; n * n];
                for i in 0..n {
                    let dpi: Vec<f64> = (0..n)
                        .map(|j| (0..hd).map(|c| go(i, c) * qkv[idx(bb, j, vo + c)]).sum())
                        .collect();
                    let delta: f64 = (0..n).map(|j| p[i * n + j] * dpi[j]).sum();
                    for j in 0..n {
                        ds[i * n + j] = p[i * n + j] * (dpi[j] - delta);
                    }
                }
                for i in 0..n {
                    for c in 0..hd {
                        dqkv[idx(bb, i, qo + c)] = scale
                            * (0..n)
                                .map(|j| ds[i * n + j] * qkv[idx(bb, j, ko + c)])
                                .sum::<f64>();
                        dqkv[idx(bb, i, ko + c)] = scale
                            * (0..n)
                                .map(|j| ds[j * n + i] * qkv[idx(bb, j, qo + c)])
                                .sum::<f64>();
                        dqkv[idx(bb, i, vo + c)] = (0..n).map(|j| p[j * n + i] * go(j, c)).sum();
                    }
                }
            }
        }
        dqkv
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let (b, n, heads, hd) = (5, 27, 4, 16);
        let d = heads * hd;
        let mut rg = rng(30);
        let qkv = uniform(&mut rg, b * n * 3 * d, 2.0);
        let dout = uniform(&mut rg, b * n * d, 1.0);
        assert_deterministic("attention", || {
            let (out, lse) = attention_forward(&qkv, b, n, heads, F32);
            let dqkv = attention_backward(&qkv, &out, &lse, &dout, b, n, heads, F32);
            vec![out, lse, dqkv]
        });
    }
}
