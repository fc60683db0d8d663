//! The row passes of attention's bf16 products (`super::attention_bf16`): softmax, the
//! backward's recomputed probabilities and its score gradients, each in one AVX-512 pass per row
//! (masked tails) that writes its result straight into the bf16 pairs the next products read.
//!
//! Why not the f32 row kernels ([`super::attention`]) and a conversion pass: the rows are short
//! (64 tokens or fewer in the recipes), so those kernels' 16-lane folds and scalar tails cost
//! as much as their arithmetic, and their f32 results only ever go to bf16 products. The f32
//! path keeps its kernels; these give the same values up to an ulp (sums in another order,
//! polynomials with fused multiply-adds), then rounded to bf16.

use std::arch::x86_64::*;

/// `($a, $b)` for the rows `i` and `i + 1` of a pair, `$b` zero (and not evaluated) where row
/// `i + 1` is past the end (`!$two`), in that order.
macro_rules! row_pair {
    ($two:expr, $a:expr, $b:expr) => {
        ($a, if $two { $b } else { _mm512_setzero_ps() })
    };
}

/// One head's softmax numerators on the scores `s [n, n]` (scaled here by `scale2`, the same
/// floats as the backward's `s · scale2`), written straight into bf16 pairs along the rows
/// (`pa [n][n.div_ceil(2)]`, the left operand of `P V`), with `lse` and `1 / Σ` per row as
/// [`super::attention::softmax_numerators`] gives them (the sum in another order: the same up
/// to an ulp). Why not that function and a conversion pass: its rows are short (64 tokens
/// or fewer), so its 16-lane folds and scalar tails cost as much as the exponentials, and the
/// numerators only ever go to a bf16 product.
pub(super) fn softmax_pairs(
    s: &[f32],
    n: usize,
    scale2: f32,
    lse: &mut [f32],
    inv: &mut [f32],
    pa: &mut [u32],
) {
    assert!(s.len() >= n * n && lse.len() >= n && inv.len() >= n);
    assert!(pa.len() >= n * n.div_ceil(2));
    assert!(super::cpu::bf16_products(), "no bf16 products on this CPU");
    // SAFETY: AVX-512 BF16 present (asserted); the extents asserted above.
    unsafe { softmax_pairs_avx512(s, n, scale2, lse, inv, pa) }
}

/// # Safety
/// AVX-512 F/BW/BF16; the extents of [`softmax_pairs`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
#[allow(clippy::needless_range_loop)] // `c` indexes the row's chunks, `e` only for n <= 64
unsafe fn softmax_pairs_avx512(
    s: &[f32],
    n: usize,
    scale2: f32,
    lse: &mut [f32],
    inv: &mut [f32],
    pa: &mut [u32],
) {
    let n2 = n.div_ceil(2);
    let chunks = n.div_ceil(16);
    let mask = |c: usize| -> __mmask16 { ((1u32 << (n - 16 * c).min(16)) - 1) as __mmask16 };
    let scale = _mm512_set1_ps(scale2);
    let mut e = [_mm512_setzero_ps(); 4]; // a row's numerators (n <= 64), or chunk by chunk
    for i in 0..n {
        // SAFETY (all): row i holds n floats of `s` and n2 pairs of `pa` (asserted by the caller);
        // masked-off lanes are neither read nor written.
        unsafe {
            let row = s.as_ptr().add(i * n);
            let load = |c: usize| {
                let x = _mm512_maskz_loadu_ps(mask(c), row.add(16 * c));
                _mm512_mul_ps(x, scale)
            };
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            for c in 0..chunks {
                m = _mm512_mask_max_ps(m, mask(c), m, load(c));
            }
            let m = _mm512_reduce_max_ps(m);
            let mv = _mm512_set1_ps(m);
            let mut sum = _mm512_setzero_ps();
            let out = pa.as_mut_ptr().add(i * n2);
            for c in 0..chunks {
                let v = exp2_ps(_mm512_sub_ps(load(c), mv));
                let v = _mm512_maskz_mov_ps(mask(c), v);
                sum = _mm512_add_ps(sum, v);
                if chunks <= 4 {
                    e[c] = v;
                } else {
                    store_pairs(out, c, v, _mm512_setzero_ps(), n);
                }
            }
            if chunks <= 4 {
                for c in (0..chunks).step_by(2) {
                    let hi = if c + 1 < chunks {
                        e[c + 1]
                    } else {
                        _mm512_setzero_ps()
                    };
                    store_pairs(out, c, e[c], hi, n);
                }
            }
            let sum = _mm512_reduce_add_ps(sum);
            inv[i] = 1.0 / sum;
            lse[i] = (m + sum.log2()) * std::f32::consts::LN_2;
        }
    }
}

/// The pairs of 16-float chunks `c` (and `c + 1` in `hi`) of a row of `n` into `out`: one
/// `vcvtne2ps2bf16`, stored up to the row's `n.div_ceil(2)` pairs. With `n > 64` each chunk is
/// stored alone (`hi` zero), as 8 pairs.
///
/// # Safety
/// AVX-512 F/BW/BF16; `out` writable for `n.div_ceil(2)` pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
unsafe fn store_pairs(out: *mut u32, c: usize, lo: __m512, hi: __m512, n: usize) {
    let n2 = n.div_ceil(2);
    // SAFETY: both are plain 64-byte vectors.
    let v: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo)) };
    if n <= 64 {
        // chunks c and c + 1: pairs 8c .. 8c + 16
        let count = (n2 - 8 * c).min(16);
        // SAFETY: pairs 8c .. 8c + count lie in the row (the caller's extent).
        unsafe {
            _mm512_mask_storeu_epi32(out.add(8 * c).cast(), ((1u32 << count) - 1) as __mmask16, v)
        };
    } else {
        // chunk c alone: its 8 pairs are the low 256 bits
        let count = (n2 - 8 * c).min(8);
        // SAFETY: as above.
        unsafe {
            _mm512_mask_storeu_epi32(out.add(8 * c).cast(), ((1u32 << count) - 1) as __mmask16, v)
        };
    }
}

/// `2^u` on 16 lanes, [`crate::ops::kernels::math::exp2_core`]'s polynomial with fused
/// multiply-adds; 0 below -126 (`u <= 0` here: the scores minus their maximum).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
#[allow(clippy::approx_constant)] // fitted coefficient close to ln 2
fn exp2_ps(u: __m512) -> __m512 {
    let magic = _mm512_set1_ps(12_582_912.0);
    let k = _mm512_add_ps(u, magic);
    let f = _mm512_sub_ps(u, _mm512_sub_ps(k, magic));
    let c = |v: f32| _mm512_set1_ps(v);
    let f2 = _mm512_mul_ps(f, f);
    let p01 = _mm512_fmadd_ps(c(6.931_47e-1), f, c(1.0));
    let p23 = _mm512_fmadd_ps(c(5.550_734e-2), f, c(2.402_224_2e-1));
    let p45 = _mm512_fmadd_ps(c(1.326_473_5e-3), f, c(9.671_518e-3));
    let p = _mm512_fmadd_ps(f2, _mm512_fmadd_ps(f2, p45, p23), p01);
    let scale = _mm512_castsi512_ps(_mm512_add_epi32(
        _mm512_slli_epi32::<23>(_mm512_castps_si512(k)),
        _mm512_set1_epi32(127 << 23),
    ));
    let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(u, c(-126.0));
    _mm512_maskz_mul_ps(keep, p, scale)
}

/// The lanes `< n - 16 c` of a row of `n`'s chunk `c`.
fn lanes(n: usize, c: usize) -> __mmask16 {
    ((1u32 << (n - 16 * c).min(16)) - 1) as __mmask16
}

/// Chunk `c` of rows `a` and `b` (a zero row where `b` is null) as 16 pairs across the two
/// rows, stored at `out + 16 c` (the lanes of the row only): one `vcvtne2ps2bf16`, one
/// `vpermw`, as [`crate::ops::kernels::matmul::bf16::pairs_across`] lays them out.
///
/// # Safety
/// AVX-512 F/BW/BF16; `out` writable for the row's `n` pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
unsafe fn store_across(out: *mut u32, c: usize, a: __m512, b: __m512, n: usize) {
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    // SAFETY: both are plain 64-byte vectors; lanes c·16 .. n of the row are the caller's.
    unsafe {
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
        let pairs = _mm512_permutexvar_epi16(interleave, both);
        _mm512_mask_storeu_epi32(out.add(16 * c).cast(), lanes(n, c), pairs);
    }
}

/// The backward's probabilities of one head in place on its unscaled scores `p [n, n]`:
/// `2^(p · scale2 - lse · log2 e)` (the floats of [`super::attention::probabilities`] after
/// the same scaling, up to an ulp), also written as bf16 pairs across rows into
/// `pc [n.div_ceil(2)][n]` (`Pᵀ`, the left operand of `dV = Pᵀ dO`).
pub(super) fn probabilities_pairs(
    p: &mut [f32],
    n: usize,
    scale2: f32,
    lse: &[f32],
    pc: &mut [u32],
) {
    assert!(p.len() >= n * n && lse.len() >= n && pc.len() >= n.div_ceil(2) * n);
    assert!(super::cpu::bf16_products(), "no bf16 products on this CPU");
    // SAFETY: AVX-512 BF16 present (asserted); the extents asserted above.
    unsafe { probabilities_pairs_avx512(p, n, scale2, lse, pc) }
}

/// # Safety
/// AVX-512 F/BW/BF16; the extents of [`probabilities_pairs`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
unsafe fn probabilities_pairs_avx512(
    p: &mut [f32],
    n: usize,
    scale2: f32,
    lse: &[f32],
    pc: &mut [u32],
) {
    let scale = _mm512_set1_ps(scale2);
    let base = p.as_mut_ptr();
    for t in 0..n.div_ceil(2) {
        let (i, two) = (2 * t, 2 * t + 1 < n);
        let l = |r: usize| _mm512_set1_ps(lse[r] * std::f32::consts::LOG2_E);
        let (la, lb) = row_pair!(two, l(i), l(i + 1));
        for c in 0..n.div_ceil(16) {
            let m = lanes(n, c);
            // SAFETY (all): rows i and i + 1 (when `two`) hold n floats; pair row t of `pc`
            // holds n pairs (the caller's extents); masked-off lanes are not touched.
            unsafe {
                let at = |r: usize| base.add(r * n + 16 * c);
                let prob = |r: usize, l: __m512| {
                    let x = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, at(r)), scale);
                    let v = _mm512_maskz_mov_ps(m, exp2_ps(_mm512_sub_ps(x, l)));
                    _mm512_mask_storeu_ps(at(r), m, v);
                    v
                };
                let (a, b) = row_pair!(two, prob(i, la), prob(i + 1, lb));
                store_across(pc.as_mut_ptr().add(t * n), c, a, b, n);
            }
        }
    }
}

/// The backward's scaled score gradients of one head, `scale · P ∘ (dP - delta)` with
/// `delta_i = dO_i · O_i` (rows of `g` and `o`: `hd` floats at stride `d`), as
/// [`super::attention::scaled_score_grads`] computes them (up to an ulp: the dot in another
/// order), written only as bf16 pairs: along rows into `dsa [n][n.div_ceil(2)]` (the left
/// operand of `dQ = dS K`) and across rows into `dsc [n.div_ceil(2)][n]` (of `dK = dSᵀ Q`).
#[allow(clippy::too_many_arguments)]
pub(super) fn score_grads_pairs(
    dp: &[f32],
    p: &[f32],
    g: &[f32],
    o: &[f32],
    n: usize,
    d: usize,
    hd: usize,
    scale: f32,
    dsa: &mut [u32],
    dsc: &mut [u32],
) {
    let n2 = n.div_ceil(2);
    assert!(dp.len() >= n * n && p.len() >= n * n);
    assert!(hd > 0 && g.len() >= (n - 1) * d + hd && o.len() >= (n - 1) * d + hd);
    assert!(dsa.len() >= n * n2 && dsc.len() >= n2 * n);
    assert!(super::cpu::bf16_products(), "no bf16 products on this CPU");
    // SAFETY: AVX-512 BF16 present (asserted); the extents asserted above.
    unsafe { score_grads_pairs_avx512(dp, p, g, o, n, d, hd, scale, dsa, dsc) }
}

/// # Safety
/// AVX-512 F/BW/BF16; the extents of [`score_grads_pairs`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn score_grads_pairs_avx512(
    dp: &[f32],
    p: &[f32],
    g: &[f32],
    o: &[f32],
    n: usize,
    d: usize,
    hd: usize,
    scale: f32,
    dsa: &mut [u32],
    dsc: &mut [u32],
) {
    let n2 = n.div_ceil(2);
    let sv = _mm512_set1_ps(scale);
    // SAFETY (all): rows r < n of g and o hold hd floats at stride d, of dp and p n floats,
    // of dsa n2 pairs, pair rows of dsc n pairs (the caller's extents); masked-off lanes
    // are not touched.
    let delta = |r: usize| unsafe {
        let mut acc = _mm512_setzero_ps();
        for c in 0..hd.div_ceil(16) {
            let m = lanes(hd, c);
            let gv = _mm512_maskz_loadu_ps(m, g.as_ptr().add(r * d + 16 * c));
            let ov = _mm512_maskz_loadu_ps(m, o.as_ptr().add(r * d + 16 * c));
            acc = _mm512_fmadd_ps(gv, ov, acc);
        }
        _mm512_set1_ps(_mm512_reduce_add_ps(acc))
    };
    for t in 0..n2 {
        let (i, two) = (2 * t, 2 * t + 1 < n);
        let (da, db) = row_pair!(two, delta(i), delta(i + 1));
        for c in 0..n.div_ceil(16) {
            let m = lanes(n, c);
            // SAFETY: as above.
            unsafe {
                let ds = |r: usize, dl: __m512| {
                    let x = _mm512_maskz_loadu_ps(m, dp.as_ptr().add(r * n + 16 * c));
                    let pv = _mm512_maskz_loadu_ps(m, p.as_ptr().add(r * n + 16 * c));
                    _mm512_mul_ps(sv, _mm512_mul_ps(pv, _mm512_sub_ps(x, dl)))
                };
                let (a, b) = row_pair!(two, ds(i, da), ds(i + 1, db));
                store_across(dsc.as_mut_ptr().add(t * n), c, a, b, n);
                for (r, v) in [(i, a), (i + 1, b)].into_iter().take(1 + two as usize) {
                    // this chunk's 8 pairs along row r: the low half of one conversion
                    let pairs: __m512i =
                        std::mem::transmute(_mm512_cvtne2ps_pbh(_mm512_setzero_ps(), v));
                    let count = (n2 - 8 * c).min(8);
                    let out = dsa.as_mut_ptr().add(r * n2 + 8 * c);
                    _mm512_mask_storeu_epi32(out.cast(), ((1u32 << count) - 1) as __mmask16, pairs);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::kernels::testutil::*;

    /// Pairs (along or across) widened back to f32, in their storage order.
    fn widen(p: &[u32]) -> Vec<f32> {
        p.iter()
            .flat_map(|&v| [f32::from_bits(v << 16), f32::from_bits(v & 0xffff_0000)])
            .collect()
    }

    /// The fused softmax against the f32 one followed by the conversion to pairs: `lse` and
    /// `1 / Σ` to an ulp or two (the sum's order), the pairs to a bf16 ulp (an exponential an
    /// ulp apart can round the other way), short rows, odd ones and rows of more than 64.
    #[test]
    fn softmax_pairs_follows_the_f32_softmax() {
        use super::super::attention::softmax_numerators;
        use crate::ops::kernels::matmul::bf16::pairs_along;
        if skip_without_bf16_products() {
            return;
        }
        let mut rg = rng(34);
        for n in [1, 2, 7, 16, 27, 33, 64, 65, 100] {
            let s = uniform(&mut rg, n * n, 8.0);
            let scale2 = 0.255;
            let n2 = n.div_ceil(2);
            let (mut lse, mut inv, mut pa) = (vec![0.0; n], vec![0.0; n], vec![0u32; n * n2]);
            softmax_pairs(&s, n, scale2, &mut lse, &mut inv, &mut pa);
            let mut scaled: Vec<f32> = s.iter().map(|&x| x * scale2).collect();
            let (mut lse32, mut inv32, mut pa32) = (lse.clone(), inv.clone(), pa.clone());
            softmax_numerators(&mut scaled, n, &mut lse32, &mut inv32);
            pairs_along(&scaled, n, n, n, &mut pa32);
            assert!(
                rel(&lse, &lse32) < 1e-6,
                "n {n} lse {:e}",
                rel(&lse, &lse32)
            );
            assert!(
                rel(&inv, &inv32) < 1e-6,
                "n {n} inv {:e}",
                rel(&inv, &inv32)
            );
            assert!(rel(&widen(&pa), &widen(&pa32)) < 8e-3, "n {n} pairs");
        }
    }

    /// The fused probabilities and score gradients against the f32 row kernels followed by
    /// the conversions to pairs: the f32 probabilities to an ulp or two, the pairs to a bf16
    /// ulp; short rows, odd ones, rows of more than 64, head dims that are not a multiple of 16.
    #[test]
    fn backward_rows_follow_the_f32_ones() {
        use super::super::attention::{probabilities, scaled_score_grads};
        use crate::ops::kernels::matmul::bf16::{pairs_across_into, pairs_along};
        if skip_without_bf16_products() {
            return;
        }
        let across = |x: &[f32], n: usize| {
            let mut c = crate::ops::kernels::matmul::bf16::uninit_vec(n.div_ceil(2) * n);
            pairs_across_into(x, n, n, n, &mut c, n);
            // SAFETY: `pairs_across_into` writes every element.
            unsafe { crate::ops::kernels::matmul::bf16::assume_init_vec(c) }
        };
        let mut rg = rng(35);
        for (n, hd) in [
            (1, 2),
            (2, 6),
            (7, 10),
            (27, 32),
            (38, 16),
            (64, 32),
            (65, 64),
            (100, 8),
        ] {
            let (d, scale) = (3 * hd, 0.2);
            let s = uniform(&mut rg, n * n, 8.0);
            let lse: Vec<f32> = uniform(&mut rg, n, 1.0).iter().map(|v| v + 3.0).collect();
            let (scale2, n2) = (0.255, n.div_ceil(2));
            let mut p = s.clone();
            let mut pc = vec![0u32; n2 * n];
            probabilities_pairs(&mut p, n, scale2, &lse, &mut pc);
            let mut p32: Vec<f32> = s.iter().map(|&x| x * scale2).collect();
            probabilities(&mut p32, &lse, n);
            assert!(rel(&p, &p32) < 1e-6, "n {n} p {:e}", rel(&p, &p32));
            assert!(
                rel(&widen(&pc), &widen(&across(&p32, n))) < 8e-3,
                "n {n} pᵀ"
            );
            let dp = uniform(&mut rg, n * n, 1.0);
            let (g, o) = (uniform(&mut rg, n * d, 1.0), uniform(&mut rg, n * d, 1.0));
            let (mut dsa, mut dsc) = (vec![0u32; n * n2], vec![0u32; n2 * n]);
            score_grads_pairs(&dp, &p32, &g, &o, n, d, hd, scale, &mut dsa, &mut dsc);
            let (mut ds32, mut delta) = (dp.clone(), vec![0.0; n]);
            scaled_score_grads(&mut ds32, &p32, &g, &o, &mut delta, n, d, hd, scale);
            let mut along = vec![0u32; n * n2];
            pairs_along(&ds32, n, n, n, &mut along);
            let tag = format!("n {n} hd {hd}");
            assert!(rel(&widen(&dsa), &widen(&along)) < 8e-3, "{tag} ds");
            assert!(
                rel(&widen(&dsc), &widen(&across(&ds32, n))) < 8e-3,
                "{tag} dsᵀ"
            );
        }
    }
}
