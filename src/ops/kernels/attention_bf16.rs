//! Attention's products with bf16 operands and f32 accumulation (`vdpbf16ps`): what
//! [`super::attention`] computes under bf16 autocast where the CPU has bf16 products, as
//! PyTorch's autocast runs `bmm` in bf16. Softmax, its log-sum-exp, the normalisation and
//! `delta = rowsum(dO ∘ O)` stay f32, as the scores and every accumulation.
//!
//! Layout: the operands are rounded to bf16 once per image, into the two layouts of
//! [`crate::ops::kernels::matmul::bf16`] (pairs along rows, for a left operand or, transposed
//! per head, for `Kᵀ` and `Vᵀ`; pairs across rows, for a right operand read in place or a
//! transposed left one): `q, k` along and `v` across in the forward; `q, k, v` along, `q, k`
//! across, `dO` along and across in the backward. The probabilities and the score gradients
//! are rounded per head. The backward recomputes the scores from the same pairs on the same
//! tiles as the forward, so it sees the forward's values bit for bit.

use super::attention::{backward_images, dims, forward_images, scale_head_rows, scales};
use super::attention_bf16_rows::{probabilities_pairs, score_grads_pairs, softmax_pairs};
use super::matmul::bf16::{PairSource, pairs_across_into, pairs_along};
use super::matmul::bf16_pairs::{Lhs, Rhs, product, transpose};
use std::cell::RefCell;
use std::mem::MaybeUninit;

thread_local! {
    static SCRATCH: RefCell<(Vec<f32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` on per-thread scratch of `floats` f32 and `pairs` u32 (contents unspecified).
fn with_scratch<R>(floats: usize, pairs: usize, f: impl FnOnce(&mut [f32], &mut [u32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            let (fb, pb) = &mut *buf;
            if fb.len() < floats {
                fb.resize(floats, 0.0);
            }
            if pb.len() < pairs {
                pb.resize(pairs, 0);
            }
            f(&mut fb[..floats], &mut pb[..pairs])
        }
        Err(_) => f(&mut vec![0.0; floats], &mut vec![0; pairs]),
    })
}

/// Whether the bf16 products take `d = heads · hd`: pairs along a row of q, k or v must not
/// straddle two heads (`hd` even).
pub fn supported(hd: usize) -> bool {
    hd.is_multiple_of(2)
}

fn uninit_u32(v: &mut [u32]) -> &mut [MaybeUninit<u32>] {
    // SAFETY: MaybeUninit<u32> has u32's layout; the only writer (`pairs_across_into`) stores
    // plain integers.
    unsafe { &mut *(v as *mut [u32] as *mut [MaybeUninit<u32>]) }
}

fn uninit_f32(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: as `uninit_u32`; the products store plain floats.
    unsafe { super::as_uninit(v) }
}

/// `s [n, n] = Q Kᵀ` for one head (unscaled: [`softmax_pairs`] applies the scale): `qk` holds
/// the pairs along the rows of q and k (`[n][ld]`: q's from pair 0, k's from pair `d / 2`),
/// `kt` is scratch for `Kᵀ`'s panels.
#[allow(clippy::too_many_arguments)]
fn scores(
    qk: &[u32],
    ld: usize,
    d: usize,
    n: usize,
    hd: usize,
    h: usize,
    kt: &mut [u32],
    s: &mut [f32],
) {
    let (hp, np) = (hd / 2, n.next_multiple_of(16));
    transpose(&qk[d / 2 + h * hp..], n, hp, ld, kt, np);
    let q = Lhs::along(&qk[h * hp..], ld);
    product(n, hp, n, q, Rhs::new(kt, np), uninit_f32(s), n);
}

/// [`super::attention::attention_forward`] with bf16 products; `qkv` in f32, or in bf16 as
/// the qkv projection rounded it for these products (the same values: every operand is
/// rounded to bf16 once, to nearest even), read with half the bytes.
pub fn attention_forward<Q: PairSource>(
    qkv: &[Q],
    batch: usize,
    seq: usize,
    heads: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (d, hd) = dims(qkv.len(), batch, seq, heads);
    assert!(supported(hd), "bf16 attention needs an even head dimension");
    let n = seq;
    let (_, scale2) = scales(hd);
    let (n2, np, hp) = (n.div_ceil(2), n.next_multiple_of(16), hd / 2);
    let ldv = d + 16; // v's pairs across rows, padded for the last head's whole panels
    let floats = n * n + n + n * hd;
    let pairs = n * d + n2 * ldv + hp * np + n * n2;
    let (out, lse) = forward_images(qkv, batch, n, d, heads, |out_b, lse_b, qkv_b| {
        with_scratch(floats, pairs, |fb, pb| {
            let (s, rest) = fb.split_at_mut(n * n);
            let (inv, pv) = rest.split_at_mut(n);
            let (qk, rest) = pb.split_at_mut(n * d);
            let (va, rest) = rest.split_at_mut(n2 * ldv);
            let (kt, pa) = rest.split_at_mut(hp * np);
            pairs_along(qkv_b, n, 2 * d, 3 * d, qk);
            pairs_across_into(&qkv_b[2 * d..], n, d, 3 * d, uninit_u32(va), ldv);
            for h in 0..heads {
                scores(qk, d, d, n, hd, h, kt, s);
                softmax_pairs(s, n, scale2, &mut lse_b[h * n..(h + 1) * n], inv, pa);
                let p = Lhs::along(pa, n2);
                let v = Rhs::new(&va[h * hd..], ldv);
                product(n, n2, hd, p, v, uninit_f32(pv), hd);
                scale_head_rows(&mut out_b[h * hd..], pv, inv, d, hd);
            }
        })
    });
    // SAFETY: every head wrote its hd columns of every row of each image's piece.
    (unsafe { super::assume_init(out) }, lse)
}

/// [`super::attention::attention_backward`] with bf16 products; `lse` from
/// [`attention_forward`]; the operands' lengths checked by the caller; `qkv` as in
/// [`attention_forward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<Q: PairSource>(
    qkv: &[Q],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
) -> Vec<f32> {
    let (d, hd) = dims(qkv.len(), batch, seq, heads);
    assert!(supported(hd), "bf16 attention needs an even head dimension");
    let n = seq;
    let (scale, scale2) = scales(hd);
    let (n2, np, hp) = (n.div_ceil(2), n.next_multiple_of(16), hd / 2);
    let (ldqk, ldg) = (2 * d + 16, d + 16); // pairs across rows, padded for whole panels
    let floats = 2 * n * n;
    // q k v along, q k across, dO along, dO across, Kᵀ / Vᵀ panels, P / dS along, across
    let pairs = n * 3 * d / 2 + n2 * ldqk + n * d / 2 + n2 * ldg + hp * np + 2 * n * n2 + n2 * n;
    let dqkv = backward_images(
        qkv,
        out,
        dout,
        lse,
        n,
        d,
        heads,
        |dqkv_b, qkv_b, out_b, dout_b, lse_b| {
            with_scratch(floats, pairs, |fb, pb| {
                let (p, rest) = fb.split_at_mut(n * n);
                let dp = rest;
                let (qkva, rest) = pb.split_at_mut(n * 3 * d / 2);
                let (qkc, rest) = rest.split_at_mut(n2 * ldqk);
                let (ga, rest) = rest.split_at_mut(n * d / 2);
                let (gc, rest) = rest.split_at_mut(n2 * ldg);
                let (t, rest) = rest.split_at_mut(hp * np);
                let (pa, rest) = rest.split_at_mut(n * n2);
                let (dsa, pc) = rest.split_at_mut(n * n2);
                pairs_along(qkv_b, n, 3 * d, 3 * d, qkva);
                pairs_across_into(qkv_b, n, 2 * d, 3 * d, uninit_u32(qkc), ldqk);
                pairs_along(dout_b, n, d, d, ga);
                pairs_across_into(dout_b, n, d, d, uninit_u32(gc), ldg);
                let ld3 = 3 * d / 2;
                for h in 0..heads {
                    let (o, g) = (&out_b[h * hd..], &dout_b[h * hd..]);
                    // P as in the forward: the same pairs, tiles and scale
                    transpose(&qkva[d / 2 + h * hp..], n, hp, ld3, t, np);
                    let q = Lhs::along(&qkva[h * hp..], ld3);
                    product(n, hp, n, q, Rhs::new(t, np), uninit_f32(p), n);
                    // P (scaled here as in the forward), and Pᵀ's pairs for dV = Pᵀ dO
                    probabilities_pairs(p, n, scale2, &lse_b[h * n..(h + 1) * n], pc);
                    let pt = Lhs::across(pc, n);
                    let gr = Rhs::new(&gc[h * hd..], ldg);
                    product(n, n2, hd, pt, gr, &mut dqkv_b[2 * d + h * hd..], 3 * d);
                    // dP = dO Vᵀ
                    transpose(&qkva[d + h * hp..], n, hp, ld3, t, np);
                    let gl = Lhs::along(&ga[h * hp..], d / 2);
                    product(n, hp, n, gl, Rhs::new(t, np), uninit_f32(dp), n);
                    // scale · dS = scale · P ∘ (dP - delta), delta_i = dO_i · O_i, as pairs
                    // along rows (dS) and across them (dSᵀ)
                    score_grads_pairs(dp, p, g, o, n, d, hd, scale, dsa, pa);
                    // dQ = (scale · dS) K
                    let ds = Lhs::along(dsa, n2);
                    let k = Rhs::new(&qkc[d + h * hd..], ldqk);
                    product(n, n2, hd, ds, k, &mut dqkv_b[h * hd..], 3 * d);
                    // dK = (scale · dS)ᵀ Q
                    let dst = Lhs::across(pa, n);
                    let q = Rhs::new(&qkc[h * hd..], ldqk);
                    product(n, n2, hd, dst, q, &mut dqkv_b[d + h * hd..], 3 * d);
                }
            })
        },
    );
    // SAFETY: every head wrote its hd columns of dq, dk and dv in every row of each piece.
    unsafe { super::assume_init(dqkv) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Precision::{Bf16, F32};
    use crate::ops::kernels::attention as f32_attention;
    use crate::ops::kernels::testutil::*;

    /// Forward and backward against the f32 kernels: equal up to bf16's rounding of the
    /// operands (a misplaced head, pair or panel would be off by the values' own size); odd
    /// token counts, head dims that are not a multiple of 16, one head, many.
    #[test]
    fn bf16_attention_follows_f32() {
        if skip_without_bf16_products() {
            return;
        }
        let mut rg = rng(31);
        for &(b, n, heads, hd) in &[
            (1, 1, 1, 2),
            (2, 7, 2, 6),
            (3, 27, 4, 16),
            (2, 64, 4, 32),
            (2, 50, 4, 32),
            (1, 70, 2, 64),
            (2, 33, 3, 10),
        ] {
            let d = heads * hd;
            let qkv = uniform(&mut rg, b * n * 3 * d, 1.0);
            let dout = uniform(&mut rg, b * n * d, 1.0);
            let f = |p| {
                let (out, lse) = f32_attention::attention_forward(&qkv, b, n, heads, p);
                let dqkv =
                    f32_attention::attention_backward(&qkv, &out, &lse, &dout, b, n, heads, p);
                (out, lse, dqkv)
            };
            let (o32, l32, g32) = f(F32);
            let (o16, l16, g16) = f(Bf16);
            let tag = format!("b{b} n{n} heads{heads} hd{hd}");
            assert!(rel(&o16, &o32) < 1e-2, "{tag} out: {:e}", rel(&o16, &o32));
            assert!(rel(&l16, &l32) < 2e-3, "{tag} lse: {:e}", rel(&l16, &l32));
            assert!(rel(&g16, &g32) < 1e-2, "{tag} dqkv: {:e}", rel(&g16, &g32));
            assert_ne!(bits(&o16), bits(&o32), "{tag}: bf16 not applied");
        }
    }

    /// A qkv already rounded to bf16 (by its projection) gives the floats of the f32 qkv it
    /// was rounded from, forward and backward.
    #[test]
    fn bf16_qkv_is_the_f32_qkv_rounded() {
        if skip_without_bf16_products() {
            return;
        }
        let mut rg = rng(33);
        for &(b, n, heads, hd) in &[(1, 1, 1, 2), (2, 27, 4, 16), (2, 64, 4, 32), (2, 33, 3, 10)] {
            let d = heads * hd;
            let qkv = uniform(&mut rg, b * n * 3 * d, 1.0);
            let q16: Vec<half::bf16> = qkv.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let dout = uniform(&mut rg, b * n * d, 1.0);
            let (o, l) = f32_attention::attention_forward(&qkv, b, n, heads, Bf16);
            let (o16, l16) = f32_attention::attention_forward_rounded(&q16, b, n, heads);
            let tag = format!("b{b} n{n} heads{heads} hd{hd}");
            assert_eq!(bits(&o16), bits(&o), "{tag} out");
            assert_eq!(bits(&l16), bits(&l), "{tag} lse");
            let g = f32_attention::attention_backward(&qkv, &o, &l, &dout, b, n, heads, Bf16);
            let g16 = f32_attention::attention_backward_rounded(&q16, &o, &l, &dout, b, n, heads);
            assert_eq!(bits(&g16), bits(&g), "{tag} dqkv");
        }
    }

    /// The same floats whatever the pool's thread count.
    #[test]
    fn bf16_attention_deterministic_across_thread_counts() {
        if skip_without_bf16_products() {
            return;
        }
        let (b, n, heads, hd) = (5, 27, 4, 16);
        let d = heads * hd;
        let mut rg = rng(32);
        let qkv = uniform(&mut rg, b * n * 3 * d, 2.0);
        let dout = uniform(&mut rg, b * n * d, 1.0);
        assert_deterministic("attention bf16", || {
            let (out, lse) = attention_forward(&qkv, b, n, heads);
            let dqkv = attention_backward(&qkv, &out, &lse, &dout, b, n, heads);
            vec![out, lse, dqkv]
        });
    }
}
