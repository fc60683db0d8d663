//! The Linear layer with bf16 products (`meta.use_bfloat16` on CPUs with AVX-512 BF16): the
//! parts that differ from f32 besides the packing of the weights.
//!
//! Why hand-written: the bf16 tiles take operands as pairs of bf16, and converting an f32
//! activation into pairs is a pass over it that waits on memory (the activations of the
//! Fashion-MNIST recipe are 4-16 MB); done where the activation is made, or where it is in
//! cache for another product, it costs next to nothing. So the MLP's hidden activation is
//! written in bf16 by the Linear+GELU that makes it ([`linear_gelu_forward_bf16`]), read as
//! it is by fc2 (forward, and its weight gradient), and `dy`'s pairs for the weight gradient
//! are written by the `dx` product that reads `dy` anyway ([`bf16_input_and_weight_grads`]).
//! The arithmetic is that of converting on use: every operand is rounded to bf16 once, to
//! nearest even, and every product accumulates in f32.

use super::{
    Rows, SUM_ROWS, block_product, check, gelu_grad_chunks, gelu_grad_rows, in_gelu_blocks,
    product_in_blocks, rows_per_block,
};
use crate::ops::Precision;
use crate::ops::kernels::gelu::gelu_in_place;
use crate::ops::kernels::matmul::{PackedRhs, View, bf16, gemm_rows_keeping_pairs};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// [`linear_gelu_forward`] with bf16 products whose activation is rounded to bf16 as it is
/// written (`n` even): what the next Linear's bf16 product would round it to, so that product
/// reads it as it is ([`Rows::Bf16`]), half the bytes and no conversion pass; its weight
/// gradient takes the same bf16 values. The slope stays f32. Why: the MLP's hidden activation
/// (4x the width) was the largest operand converted to bf16 on every use.
pub fn linear_gelu_forward_bf16(
    x: Rows<'_>,
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    with_slope: bool,
) -> (Vec<half::bf16>, Option<Vec<f32>>) {
    check(x, w, b, m, k, n, Precision::Bf16);
    assert!(n.is_multiple_of(2), "bf16 activations of whole pairs");
    let mut act = bf16::uninit_vec(m * n);
    let mut slope = crate::ops::kernels::uninit(if with_slope { m * n } else { 0 });
    if m > 0 && n > 0 {
        let rhs = PackedRhs::new_bf16(View::rows(w, n), k, n);
        // the pre-activation block in a per-thread f32 buffer (in cache), activated there,
        // then rounded into `act`
        in_gelu_blocks(
            x,
            k,
            n,
            &mut act,
            &mut slope,
            with_slope,
            |x_blk, a_blk, s_blk| {
                with_pre(a_blk.len(), |pre| {
                    let pre = block_product(x_blk, k, &rhs, b, None, pre);
                    gelu_in_place(pre, s_blk);
                    bf16::round_to_bf16(pre, a_blk);
                })
            },
        );
    }
    // SAFETY: the blocks cover both buffers, written by `round_to_bf16` and `gelu_in_place`.
    unsafe {
        (
            bf16::assume_init_vec(act),
            with_slope.then(|| crate::ops::kernels::assume_init(slope)),
        )
    }
}

/// The chunks' shared output, each chunk writing its own rows through it.
#[derive(Clone, Copy)]
struct SendPtr(*mut MaybeUninit<u32>);
// SAFETY: the chunks of `bf16_gelu_backward` write disjoint rows through it.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut MaybeUninit<u32> {
        self.0
    }
}

thread_local! {
    /// The f32 products of one block of rows before they are rounded to bf16.
    static PRE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` on this thread's [`PRE`] buffer of `len` floats (contents unspecified).
fn with_pre(len: usize, f: impl FnOnce(&mut [MaybeUninit<f32>])) {
    PRE.with_borrow_mut(|pre| {
        if pre.len() < len {
            pre.resize(len, 0.0);
        }
        // SAFETY: the products only write floats.
        f(unsafe { crate::ops::kernels::as_uninit(&mut pre[..len]) })
    })
}

/// `y = x W + b` with bf16 products, rounded to bf16 as it is written (`n` even), for a Linear
/// whose output only bf16 products read (the qkv projection, read by attention's products):
/// what they would round it to, so they read it as it is, half the bytes and no conversion
/// pass of their own.
pub fn linear_forward_to_bf16(
    x: Rows<'_>,
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<half::bf16> {
    check(x, w, b, m, k, n, Precision::Bf16);
    assert!(n.is_multiple_of(2), "bf16 outputs of whole pairs");
    let mut y = bf16::uninit_vec(m * n);
    if m > 0 && n > 0 {
        let rhs = PackedRhs::new_bf16(View::rows(w, n), k, n);
        let br = rows_per_block(m);
        y.par_chunks_mut(br * n).enumerate().for_each(|(i, y_blk)| {
            let x_blk = x.range(i * br * k, y_blk.len() / n * k);
            with_pre(y_blk.len(), |pre| {
                bf16::round_to_bf16(block_product(x_blk, k, &rhs, b, None, pre), y_blk)
            })
        });
    }
    // SAFETY: the blocks cover `y`, each written whole by `round_to_bf16`.
    unsafe { bf16::assume_init_vec(y) }
}

/// [`input_and_weight_grads`] with bf16 operands: `dx = dy Wᵀ` on the bf16 tiles, which also
/// write `dy`'s rows as pairs across rows while they are in cache, the layout of the weight
/// gradient's right operand; then `dW = xᵀ dy` ([`bf16::xt_y_pairs`]).
pub(super) fn bf16_input_and_weight_grads(
    x: Rows<'_>,
    w: &[f32],
    dy: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> (Vec<f32>, Vec<f32>) {
    let rhs = PackedRhs::new_bf16(View::t(w, n), n, k);
    let ldp = n.next_multiple_of(16);
    let mut dx = crate::ops::kernels::uninit(m * k);
    let mut dy_pairs = bf16::uninit_vec(m.div_ceil(2) * ldp);
    let br = rows_per_block(m); // a multiple of the 12-row tile: even
    dx.par_chunks_mut(br * k)
        .zip(dy.par_chunks(br * n))
        .zip(dy_pairs.par_chunks_mut(br / 2 * ldp))
        .for_each(|((dx, dy), p)| {
            gemm_rows_keeping_pairs(dx.len() / k, dy, n, &rhs, dx, p, ldp);
        });
    // SAFETY: the blocks cover both buffers, written whole by `gemm_rows_keeping_pairs`.
    let (dx, dy_pairs) = unsafe {
        (
            crate::ops::kernels::assume_init(dx),
            bf16::assume_init_vec(dy_pairs),
        )
    };
    let x_pairs = match x {
        Rows::F32(x) => bf16::pairs_across(x, m, k, k, k),
        Rows::Bf16(x) => bf16::pairs_across(x, m, k, k, k),
    };
    (dx, bf16::xt_y_pairs(&x_pairs, &dy_pairs, m, k, n))
}

/// [`linear_gelu_backward`] with bf16 products: `dpre = dact · slope` is written in bf16 (its
/// f32 column sums taken first, for `db`), the rounding both its products apply to it anyway,
/// twice from the same f32 chunk while it is in cache: along its rows, which `dx = dpre Wᵀ`
/// reads in place, and as pairs across rows, the layout of `dW = xᵀ dpre`.
/// Why: `dpre` is as wide as the MLP's hidden layer, the largest gradient the step converts;
/// written in f32 it went through memory twice more (written, then read to convert), and
/// paired across rows afterwards once more (read, then written again).
#[allow(clippy::too_many_arguments)]
pub(super) fn bf16_gelu_backward(
    x: Rows<'_>,
    w: &[f32],
    slope: &[f32],
    dact: &[f32],
    m: usize,
    k: usize,
    n: usize,
    with_bias: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    assert!(n.is_multiple_of(2), "bf16 rows of whole pairs");
    let mut dpre = bf16::uninit_vec(m * n);
    let ldp = n.next_multiple_of(16);
    let mut dpre_pairs = bf16::uninit_vec::<u32>(m.div_ceil(2) * ldp);
    let pairs_at = SendPtr(dpre_pairs.as_mut_ptr());
    let db = gelu_grad_chunks(
        &mut dpre,
        slope,
        dact,
        n,
        with_bias,
        |c, dp, sl, da, part| {
            let rows = dp.len() / n;
            // SAFETY: chunk c holds rows c·SUM_ROWS.. (SUM_ROWS even), whose pair rows
            // c·SUM_ROWS/2.. are this chunk's alone and inside `dpre_pairs`.
            let pairs = unsafe {
                let at = pairs_at.get().add(c * SUM_ROWS / 2 * ldp);
                std::slice::from_raw_parts_mut(at, rows.div_ceil(2) * ldp)
            };
            with_pre(dp.len(), |buf| {
                gelu_grad_rows(buf, sl, da, part, n);
                // SAFETY: `gelu_grad_rows` wrote every element.
                let buf = unsafe { &*(buf as *const [MaybeUninit<f32>] as *const [f32]) };
                bf16::round_to_bf16(buf, dp);
                bf16::pairs_across_into(buf, rows, n, n, pairs, ldp);
            })
        },
    );
    // SAFETY: the chunks cover `dpre` and `dpre_pairs`, written whole by `round_to_bf16` and
    // `pairs_across_into`.
    let (dpre, dy_pairs) = unsafe {
        (
            bf16::assume_init_vec(dpre),
            bf16::assume_init_vec(dpre_pairs),
        )
    };
    let rhs = PackedRhs::new_bf16(View::t(w, n), n, k);
    let dx = product_in_blocks(Rows::Bf16(&dpre), n, &rhs, None, None);
    let x_pairs = match x {
        Rows::F32(x) => bf16::pairs_across(x, m, k, k, k),
        Rows::Bf16(x) => bf16::pairs_across(x, m, k, k, k),
    };
    (dx, bf16::xt_y_pairs(&x_pairs, &dy_pairs, m, k, n), db)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{SHAPES, operands, ref_input_and_weight_grads, ref_linear};
    use super::super::*;
    use super::*;
    use crate::ops::Precision::{Bf16, F32};
    use crate::ops::kernels::matmul::bf16::bf16_bits as round;
    use crate::ops::kernels::testutil::*;

    /// bf16 operands (where the CPU has bf16 products): the forward, `dx` and `dW` against f64
    /// on the bf16-rounded operands, `db` as in f32; independent of the thread count.
    #[test]
    fn bf16_products_vs_f64_on_rounded_operands() {
        use crate::ops::Precision::Bf16;
        use crate::ops::kernels::matmul::bf16::round_bf16;
        if skip_without_bf16_products() {
            return;
        }
        let rounded = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| round_bf16(x) as f64).collect() };
        let mut rg = rng(46);
        for &(m, k, n) in SHAPES.iter().chain(&[(700, 33, 64)]) {
            let [x, w, b, dy] = operands(&mut rg, m, k, n);
            let (xr, wr, dyr) = (rounded(&x), rounded(&w), rounded(&dy));
            let tag = format!("bf16 {m}x{k}x{n}");
            let want = ref_linear(&xr, &wr, Some(&to_f64(&b)), m, k, n);
            let y = linear_forward(Rows::F32(&x), &w, Some(&b), m, k, n, Bf16);
            assert_close(&format!("{tag} y"), &y, &want, 1e-6);
            let (dx, dw, db) = linear_backward(Rows::F32(&x), &w, &dy, m, k, n, true, Bf16);
            let (want_dx, want_dw) = ref_input_and_weight_grads(&xr, &wr, &dyr, m, k, n);
            assert_close(&format!("{tag} dx"), &dx, &want_dx, 1e-6);
            assert_close(&format!("{tag} dw"), &dw, &want_dw, 1e-6);
            let (_, _, db32) = linear_backward(Rows::F32(&x), &w, &dy, m, k, n, true, F32);
            assert_eq!(db, db32, "{tag} db");
        }
        let (m, k, n) = (1500, 96, 200);
        let [x, w, b, dy] = operands(&mut rg, m, k, n);
        assert_deterministic("linear bf16", || {
            let (act, slope) =
                linear_gelu_forward(Rows::F32(&x), &w, Some(&b), m, k, n, true, Bf16);
            let slope = slope.unwrap();
            let (gx, gw, gb) =
                linear_gelu_backward(Rows::F32(&x), &w, &slope, &dy, m, k, n, true, Bf16);
            vec![act, slope, gx, gw, gb.unwrap()]
        });
    }

    /// Rows already in bf16 give the floats of the f32 rows they were rounded from (the
    /// products round every operand once, to nearest even): forward, residual forward, `dx`,
    /// `dW`, `db`; and the Linear+GELU's bf16 activation is its f32 activation rounded, with
    /// the same slope.
    #[test]
    fn bf16_rows_are_the_f32_rows_rounded() {
        if skip_without_bf16_products() {
            return;
        }
        let mut rg = rng(47);
        for &(m, k, n) in &[
            (1, 2, 2),
            (3, 6, 34),
            (27, 48, 20),
            (700, 34, 64),
            (600, 64, 72),
        ] {
            let [x, w, b, dy] = operands(&mut rg, m, k, n);
            let r = uniform(&mut rg, m * n, 1.0);
            let xb: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let (f, h) = (Rows::F32(&x), Rows::Bf16(&xb));
            let tag = format!("{m}x{k}x{n}");
            let y = |x| linear_forward(x, &w, Some(&b), m, k, n, Bf16);
            assert_eq!(bits(&y(h)), bits(&y(f)), "{tag} y");
            let yr = |x| linear_residual_forward(x, &w, None, &r, m, k, n, Bf16);
            assert_eq!(bits(&yr(h)), bits(&yr(f)), "{tag} y + r");
            let back = |x| {
                let (dx, dw, db) = linear_backward(x, &w, &dy, m, k, n, true, Bf16);
                vec![dx, dw, db.unwrap()]
            };
            assert_eq!(back(h), back(f), "{tag} backward");
            let (act, slope) = linear_gelu_forward(f, &w, Some(&b), m, k, n, true, Bf16);
            let (act16, slope16) = linear_gelu_forward_bf16(f, &w, Some(&b), m, k, n, true);
            let rounded: Vec<u16> = act.iter().map(|&v| round(v)).collect();
            let got: Vec<u16> = act16.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, rounded, "{tag} bf16 activation");
            assert_eq!(
                bits(&slope16.unwrap()),
                bits(&slope.unwrap()),
                "{tag} slope"
            );
            let (on_bf16, _) = linear_gelu_forward_bf16(h, &w, Some(&b), m, k, n, false);
            assert_eq!(on_bf16, act16, "{tag} from bf16 rows");
            let y16: Vec<u16> = linear_forward_to_bf16(f, &w, Some(&b), m, k, n)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let y32: Vec<u16> = y(f).iter().map(|&v| round(v)).collect();
            assert_eq!(y16, y32, "{tag} bf16 output");
        }
    }

    /// The Linear+GELU backward with `dpre` kept in bf16 gives the floats of `dpre` in f32
    /// handed to the bf16 Linear backward (what it computed before).
    #[test]
    fn bf16_gelu_backward_is_the_f32_dpre_path() {
        if skip_without_bf16_products() {
            return;
        }
        let mut rg = rng(48);
        for &(m, k, n) in &[(1, 2, 2), (27, 48, 20), (130, 20, 100), (700, 34, 64)] {
            let [x, w, b, dy] = operands(&mut rg, m, k, n);
            let (_, slope) = linear_gelu_forward(Rows::F32(&x), &w, Some(&b), m, k, n, true, F32);
            let slope = slope.unwrap();
            let dpre: Vec<f32> = dy.iter().zip(&slope).map(|(&g, &s)| g * s).collect();
            for with_bias in [true, false] {
                let x = Rows::F32(&x);
                let got = linear_gelu_backward(x, &w, &slope, &dy, m, k, n, with_bias, Bf16);
                let want = linear_backward(x, &w, &dpre, m, k, n, with_bias, Bf16);
                let tag = format!("{m}x{k}x{n} bias {with_bias}");
                assert_eq!(bits(&got.0), bits(&want.0), "{tag} dx");
                assert_eq!(bits(&got.1), bits(&want.1), "{tag} dw");
                assert_eq!(got.2, want.2, "{tag} db");
            }
        }
    }
}
