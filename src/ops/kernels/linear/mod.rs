//! Linear layer `y = x W + b` (burn layout: `W [K, N]`), optionally fused with exact GELU.
//!
//! Why: burn-flex runs the matmul, then a broadcast bias add (a second full pass over
//! `y`), then GELU (a third pass with scalar `erf`). Here the output is produced in
//! fixed blocks of rows by the register tiles of [`crate::ops::kernels::matmul`] (`W`
//! packed once per call, each tile starting from the bias in registers and written once),
//! and — for `linear_gelu` — the activation (and in training its slope, all the backward
//! needs) is computed in place while the block is still in cache. The backward computes
//! `dx = dy Wᵀ` on the same tiles (`Wᵀ` packed once), `dW = xᵀ dy` on gemm with strided
//! views (no transposed copies; see [`weight_grad`]) and `db` as a chunked, ordered column sum.
//! `linear_residual_forward` adds a residual `r` to each tile as it is stored.

use crate::ops::Precision;
use crate::ops::kernels::gelu::gelu_in_place;
use crate::ops::kernels::math::simd_fn;
use crate::ops::kernels::matmul::{
    PackedRhs, Parallelism, View, gemm_rows, gemm_rows_plus, gemm_strided, par_all, tile_rows,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
mod bf16;
#[cfg(target_arch = "x86_64")]
pub use bf16::{linear_forward_to_bf16, linear_gelu_forward_bf16};

/// Most rows per output block (256 rows measured best or on par with one all-pool GEMM for
/// N = 128..1536 at K = 128..512).
const ROWS_PER_BLOCK: usize = 256;

/// Rows per output block for an `m`-row product: at most [`ROWS_PER_BLOCK`], and as many
/// blocks as a multiple of the pool's threads, all of the same size (a multiple of the
/// register tile's rows, [`tile_rows`]) bar the last. Why: blocks are the unit of work the threads share, and
/// 1,248 rows (ViT-S's context encoder) in blocks of 256 make 5 blocks, 3 on one of two
/// threads while the other idles for one; 6 blocks of 208 (216 with 12-row tiles) keep both
/// busy. Every output row
/// is computed the same way in any block, so the result does not depend on the split.
fn rows_per_block(m: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let rounds = m.div_ceil(threads * ROWS_PER_BLOCK).max(1);
    let mr = tile_rows();
    m.div_ceil(threads * rounds).next_multiple_of(mr).max(mr)
}
/// Rows per chunk of the ordered column sums (even: [`bf16::bf16_gelu_backward`] pairs rows
/// within a chunk).
const SUM_ROWS: usize = 64;

#[allow(clippy::too_many_arguments)]
fn check(x: Rows<'_>, w: &[f32], b: Option<&[f32]>, m: usize, k: usize, n: usize, p: Precision) {
    assert!(k > 0, "K must be positive");
    assert!(
        matches!(x, Rows::F32(_)) || p == Precision::Bf16,
        "bf16 rows are multiplied in bf16 only"
    );
    assert_eq!(x.len(), m * k, "x must be [M, K]");
    assert_eq!(w.len(), k * n, "w must be [K, N]");
    if let Some(b) = b {
        assert_eq!(b.len(), n, "b must be [N]");
    }
}

/// The left operand `x [M, K]` of a Linear: f32 values, or values already rounded to bf16 by
/// their producer ([`linear_gelu_forward_bf16`]), which bf16 products read as they are (the
/// same products as on the f32 values they were rounded from, without the conversion pass).
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
}

impl<'a> Rows<'a> {
    pub fn len(&self) -> usize {
        match self {
            Rows::F32(x) => x.len(),
            Rows::Bf16(x) => x.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `start .. start + len` (whole rows, in the callers).
    fn range(&self, start: usize, len: usize) -> Rows<'a> {
        match *self {
            Rows::F32(x) => Rows::F32(&x[start..start + len]),
            Rows::Bf16(x) => Rows::Bf16(&x[start..start + len]),
        }
    }

    /// The values as f32 (bf16 widened: exact).
    fn f32s(&self) -> std::borrow::Cow<'a, [f32]> {
        match *self {
            Rows::F32(x) => std::borrow::Cow::Borrowed(x),
            Rows::Bf16(x) => std::borrow::Cow::Owned(x.iter().map(|v| v.to_f32()).collect()),
        }
    }
}

/// `dst = x_blk · rhs (+ bias) (+ residual)` for one block of rows (`K, N > 0`): the register
/// tiles on f32 rows, the bf16 tiles in place on bf16 rows (`rhs` then packed for bf16).
fn block_product<'d>(
    x_blk: Rows<'_>,
    k: usize,
    rhs: &PackedRhs<'_>,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    dst: &'d mut [MaybeUninit<f32>],
) -> &'d mut [f32] {
    let rows = dst.len() / rhs.cols();
    match (x_blk, residual) {
        (Rows::F32(x), Some(r)) => gemm_rows_plus(rows, x, k, rhs, bias, r, dst),
        (Rows::F32(x), None) => gemm_rows(rows, x, k, rhs, bias, dst),
        #[cfg(target_arch = "x86_64")]
        (Rows::Bf16(x), r) => {
            crate::ops::kernels::matmul::gemm_rows_bf16(rows, x, k, rhs, bias, r, dst)
        }
        #[cfg(not(target_arch = "x86_64"))]
        (Rows::Bf16(_), _) => unreachable!("bf16 rows come from bf16 products only"),
    }
}

/// The right operand `rhs [k, n]` packed for products in precision `p` (bf16: operands rounded
/// to bf16, f32 accumulation; only where [`crate::ops::kernels::cpu::bf16_products`]).
fn packed(rhs: View<'_>, k: usize, n: usize, p: Precision) -> PackedRhs<'_> {
    match p {
        Precision::F32 => PackedRhs::new(rhs, k, n),
        Precision::Bf16 => PackedRhs::new_bf16(rhs, k, n),
    }
}

/// `y = x W + b`. `x: [M, K]`, `w: [K, N]`, `b: [N]` → `y: [M, N]`; the product in precision
/// `p` (bf16 rows: only in bf16).
pub fn linear_forward(
    x: Rows<'_>,
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    p: Precision,
) -> Vec<f32> {
    check(x, w, b, m, k, n, p);
    if m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    product_in_blocks(x, k, &packed(View::rows(w, n), k, n, p), b, None)
}

/// `y = r + (x W + b)`, the residual branch of a transformer block closed by its projection:
/// `r [M, N]` is added to each tile as it is stored, the same floats as `linear_forward`
/// followed by the addition, without the addition's own pass over `y` (a serial one, on the
/// calling thread, in burn-flex).
#[allow(clippy::too_many_arguments)]
pub fn linear_residual_forward(
    x: Rows<'_>,
    w: &[f32],
    b: Option<&[f32]>,
    r: &[f32],
    m: usize,
    k: usize,
    n: usize,
    p: Precision,
) -> Vec<f32> {
    check(x, w, b, m, k, n, p);
    assert_eq!(r.len(), m * n, "the residual must be [M, N]");
    if m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    product_in_blocks(x, k, &packed(View::rows(w, n), k, n, p), b, Some(r))
}

/// `lhs [M, K] · rhs (+ bias) (+ residual [M, N])` in fixed blocks of rows on the pool
/// (`K, N > 0`).
fn product_in_blocks(
    lhs: Rows<'_>,
    k: usize,
    rhs: &PackedRhs<'_>,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let (m, n) = (lhs.len() / k, rhs.cols());
    let mut y = super::uninit(m * n);
    let br = rows_per_block(m);
    y.par_chunks_mut(br * n).enumerate().for_each(|(i, y_blk)| {
        let rows = y_blk.len() / n;
        let x_blk = lhs.range(i * br * k, rows * k);
        let r_blk = residual.map(|r| &r[i * br * n..i * br * n + rows * n]);
        block_product(x_blk, k, rhs, bias, r_blk, y_blk);
    });
    // SAFETY: the blocks cover `y` and `block_product` writes all of each.
    unsafe { super::assume_init(y) }
}

/// `act = gelu(x W + b)` (exact GELU), and, when `with_slope` (training), `slope =
/// gelu'(x W + b)`, the only thing [`linear_gelu_backward`] needs of the forward: computed
/// here from the same erf, it spares the backward a second one. Returns `(act, slope)`.
#[allow(clippy::too_many_arguments)]
pub fn linear_gelu_forward(
    x: Rows<'_>,
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    with_slope: bool,
    p: Precision,
) -> (Vec<f32>, Option<Vec<f32>>) {
    check(x, w, b, m, k, n, p);
    if m == 0 || n == 0 {
        return (vec![0.0; m * n], with_slope.then(|| vec![0.0; m * n]));
    }
    let mut act = super::uninit(m * n);
    let mut slope = super::uninit(if with_slope { m * n } else { 0 });
    let rhs = packed(View::rows(w, n), k, n, p);
    // the pre-activation block is computed into `act` and activated in place, in cache
    in_gelu_blocks(
        x,
        k,
        n,
        &mut act,
        &mut slope,
        with_slope,
        |x_blk, a_blk, s_blk| {
            gelu_in_place(block_product(x_blk, k, &rhs, b, None, a_blk), s_blk);
        },
    );
    // SAFETY: the blocks cover both buffers, written by `block_product` and `gelu_in_place`.
    unsafe {
        (
            super::assume_init(act),
            with_slope.then(|| super::assume_init(slope)),
        )
    }
}

/// `block(x rows, act block, slope block)` over the blocks of rows of a Linear+GELU forward,
/// on the pool (`act` and, `with_slope`, `slope`: `[M, N]`).
fn in_gelu_blocks<O: Send>(
    x: Rows<'_>,
    k: usize,
    n: usize,
    act: &mut [O],
    slope: &mut [MaybeUninit<f32>],
    with_slope: bool,
    block: impl Fn(Rows<'_>, &mut [O], Option<&mut [MaybeUninit<f32>]>) + Sync,
) {
    let br = rows_per_block(act.len() / n);
    let rows = |i: usize, a_blk: &[O]| x.range(i * br * k, a_blk.len() / n * k);
    if with_slope {
        act.par_chunks_mut(br * n)
            .zip(slope.par_chunks_mut(br * n))
            .enumerate()
            .for_each(|(i, (a_blk, s_blk))| block(rows(i, a_blk), a_blk, Some(s_blk)));
    } else {
        act.par_chunks_mut(br * n)
            .enumerate()
            .for_each(|(i, a_blk)| block(rows(i, a_blk), a_blk, None));
    }
}

/// Ordered column sum of `g [M, N]`: fixed chunks of rows, partials added in chunk order.
fn column_sum(g: &[f32], n: usize) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    let rows = g.len() / n;
    let n_chunks = rows.div_ceil(SUM_ROWS);
    let mut partials = vec![0.0f32; n_chunks * n];
    partials
        .par_chunks_mut(n)
        .zip(g.par_chunks(SUM_ROWS * n))
        .for_each(|(p, g)| add_rows(p, g, n));
    reduce_partials(&partials, n)
}

fn reduce_partials(partials: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    add_rows(&mut out, partials, n);
    out
}

/// Most outputs of `dW` (`K·N`) for which the reduction over rows is split into chunks.
const SPLIT_MAX_OUTPUTS: usize = 128 * 512;
/// Most chunks of that split, and fewest rows per chunk.
const SPLIT_CHUNKS: usize = 8;
const SPLIT_MIN_ROWS: usize = 256;

/// `dW = xᵀ dy` (`x [M, K]`, `dy [M, N]`), on strided views (no transposed copy).
///
/// A small `dW` (the Fashion-MNIST recipe's: at most 128 x 512) with a long reduction is split
/// over rows: up to 8 chunks, each one single-threaded gemm into its own partial, the partials
/// then added in chunk order. gemm's own parallel split works on the output, of which such a
/// `dW` has too little to share between threads well: in-process, best of 15, the split ran
/// 1.05-1.2x as fast on the encoder's shapes (3,456 rows) and 1.3-1.6x on the predictor's
/// (9,728 rows, K or N 64). A larger `dW` (ViT-S: 384 x 1152) is one all-pool gemm call,
/// which measured faster there. The chunks depend on the shape only, never on the thread
/// count, so neither do the results.
fn weight_grad(x: &[f32], dy: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let chunks = (m / SPLIT_MIN_ROWS).min(SPLIT_CHUNKS);
    if k * n > SPLIT_MAX_OUTPUTS || chunks < 2 {
        let mut dw = vec![0.0f32; k * n];
        let (xt, dyv) = (View::t(x, k), View::rows(dy, n));
        gemm_strided(k, n, m, &mut dw, n, false, xt, dyv, 1.0, par_all());
        return dw;
    }
    let rows = m.div_ceil(chunks).next_multiple_of(8);
    let (kn, chunks) = (k * n, m.div_ceil(rows));
    // each partial zeroed by its own task (gemm writes into zeroed memory), not serially here
    let mut partials = super::uninit(chunks * kn);
    partials
        .par_chunks_mut(kn)
        .zip(x.par_chunks(rows * k).zip(dy.par_chunks(rows * n)))
        .for_each(|(p, (xc, dyc))| {
            let (xt, dyv) = (View::t(xc, k), View::rows(dyc, n));
            let (p, r) = (super::zeroed(p), xc.len() / k);
            gemm_strided(k, n, r, p, n, false, xt, dyv, 1.0, Parallelism::None);
        });
    // SAFETY: every partial went through `zeroed`.
    let partials = unsafe { super::assume_init(partials) };
    // the partials added in chunk order, in parallel over pieces of dW
    let mut dw = super::uninit(kn);
    dw.par_chunks_mut(SUM_PIECE)
        .enumerate()
        .for_each(|(i, piece)| {
            let at = i * SUM_PIECE;
            for (d, &v) in piece.iter_mut().zip(&partials[at..]) {
                d.write(v);
            }
            // SAFETY: written just above.
            let piece = unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) };
            for p in partials[kn..].chunks_exact(kn) {
                add_rows(piece, &p[at..at + piece.len()], piece.len());
            }
        });
    // SAFETY: the pieces cover `dw` and each was written whole.
    unsafe { super::assume_init(dw) }
}

/// Floats of `dW` per task of the partials' summation.
const SUM_PIECE: usize = 4096;

/// `dx = dy Wᵀ` (register tiles) and `dW = xᵀ dy` ([`weight_grad`]), both in precision `p`
/// (bf16: [`bf16::bf16_input_and_weight_grads`]).
fn input_and_weight_grads(
    x: Rows<'_>,
    w: &[f32],
    dy: &[f32],
    m: usize,
    k: usize,
    n: usize,
    p: Precision,
) -> (Vec<f32>, Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if p == Precision::Bf16 && m > 0 && k > 0 && n > 0 {
        return bf16::bf16_input_and_weight_grads(x, w, dy, m, k, n);
    }
    // dx in blocks of rows, as the forward (Wᵀ packed once)
    let dx = if k == 0 || n == 0 {
        vec![0.0; m * k]
    } else {
        product_in_blocks(
            Rows::F32(dy),
            n,
            &packed(View::t(w, n), n, k, p),
            None,
            None,
        )
    };
    (dx, weight_grad(&x.f32s(), dy, m, k, n))
}

/// Backward of [`linear_forward`]: returns `(dx [M, K], dW [K, N], db [N] if with_bias)`, the
/// products in precision `p`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    x: Rows<'_>,
    w: &[f32],
    dy: &[f32],
    m: usize,
    k: usize,
    n: usize,
    with_bias: bool,
    p: Precision,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    check(x, w, None, m, k, n, p);
    assert_eq!(dy.len(), m * n, "dy must be [M, N]");
    let (dx, dw) = input_and_weight_grads(x, w, dy, m, k, n, p);
    let db = with_bias.then(|| column_sum(dy, n));
    (dx, dw, db)
}

simd_fn! {
    /// `dpre = dact · slope` on a chunk of rows, and (with `part`) the chunk's column sums of
    /// `dpre` for `db`.
    fn gelu_grad_rows(
        dp: &mut [MaybeUninit<f32>],
        sl: &[f32],
        da: &[f32],
        part: Option<&mut [f32]>,
        n: usize,
    ) {
        for ((o, &s), &g) in dp.iter_mut().zip(sl).zip(da) {
            o.write(g * s);
        }
        // SAFETY: every element was written just above.
        let dp = unsafe { &*(dp as *const [MaybeUninit<f32>] as *const [f32]) };
        if let Some(part) = part {
            add_rows(part, dp, n);
        }
    }
}

simd_fn! {
    /// `acc += Σ rows of g` (`g [rows, n]`), rows in order.
    fn add_rows(acc: &mut [f32], g: &[f32], n: usize) {
        for row in g.chunks_exact(n) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    }
}

/// The Linear+GELU backward's `dpre = dact · slope`, in chunks of [`SUM_ROWS`] rows (`n > 0`)
/// run in parallel: `work(chunk, dpre, slope, dact, part)` on chunk number `chunk` writes all
/// of its `dpre` and, with `part` (given when `with_bias`), adds the chunk's column sums into
/// it. Returns `db` (the partials added in chunk order) when `with_bias`. Shared by the f32
/// and bf16 `dpre`.
fn gelu_grad_chunks<T: Send>(
    dpre: &mut [MaybeUninit<T>],
    slope: &[f32],
    dact: &[f32],
    n: usize,
    with_bias: bool,
    work: impl Fn(usize, &mut [MaybeUninit<T>], &[f32], &[f32], Option<&mut [f32]>) + Sync,
) -> Option<Vec<f32>> {
    let n_chunks = (slope.len() / n).div_ceil(SUM_ROWS);
    let mut partials = vec![0.0f32; if with_bias { n_chunks * n } else { 0 }];
    let iter = dpre.par_chunks_mut(SUM_ROWS * n).enumerate().zip(
        slope
            .par_chunks(SUM_ROWS * n)
            .zip(dact.par_chunks(SUM_ROWS * n)),
    );
    if with_bias {
        iter.zip(partials.par_chunks_mut(n))
            .for_each(|(((c, dp), (sl, da)), part)| work(c, dp, sl, da, Some(part)));
    } else {
        iter.for_each(|((c, dp), (sl, da))| work(c, dp, sl, da, None));
    }
    with_bias.then(|| reduce_partials(&partials, n))
}

/// Backward of [`linear_gelu_forward`] from its `slope` (= gelu'(pre)) and `d act`:
/// `dpre = dact · slope` (fused with the ordered `db` column sum), then the linear
/// backward. Returns `(dx, dW, db if with_bias)`.
#[allow(clippy::too_many_arguments)]
pub fn linear_gelu_backward(
    x: Rows<'_>,
    w: &[f32],
    slope: &[f32],
    dact: &[f32],
    m: usize,
    k: usize,
    n: usize,
    with_bias: bool,
    p: Precision,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    check(x, w, None, m, k, n, p);
    assert_eq!(slope.len(), m * n);
    assert_eq!(dact.len(), m * n);
    if n == 0 {
        let (dx, dw) = (vec![0.0; m * k], Vec::new());
        return (dx, dw, with_bias.then(Vec::new));
    }
    #[cfg(target_arch = "x86_64")]
    if p == Precision::Bf16 && m > 0 && k > 0 && n.is_multiple_of(2) {
        return bf16::bf16_gelu_backward(x, w, slope, dact, m, k, n, with_bias);
    }
    let mut dpre = super::uninit(m * n);
    let db = gelu_grad_chunks(
        &mut dpre,
        slope,
        dact,
        n,
        with_bias,
        |_, dp, sl, da, part| gelu_grad_rows(dp, sl, da, part, n),
    );
    // SAFETY: the chunks cover `dpre` and `gelu_grad_rows` writes all of each.
    let dpre = unsafe { super::assume_init(dpre) };
    let (dx, dw) = input_and_weight_grads(x, w, &dpre, m, k, n, p);
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Precision::F32;
    use crate::ops::kernels::testutil::*;
    use rand_chacha::ChaCha8Rng;

    pub(super) fn ref_linear(
        x: &[f64],
        w: &[f64],
        b: Option<&[f64]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f64> {
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = b.map_or(0.0, |b| b[j])
                    + (0..k).map(|t| x[i * k + t] * w[t * n + j]).sum::<f64>();
            }
        }
        y
    }

    /// `dx = dy wᵀ` and `dW = xᵀ dy` in f64.
    pub(super) fn ref_input_and_weight_grads(
        x: &[f64],
        w: &[f64],
        dy: &[f64],
        m: usize,
        k: usize,
        n: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let dx = (0..m * k)
            .map(|e| {
                (0..n)
                    .map(|j| dy[(e / k) * n + j] * w[(e % k) * n + j])
                    .sum()
            })
            .collect();
        let dw = (0..k * n)
            .map(|e| (0..m).map(|i| x[i * k + e / n] * dy[i * n + e % n]).sum())
            .collect();
        (dx, dw)
    }

    /// `x [m, k]`, `w [k, n]`, `b [n]`, `dy [m, n]`, uniform in ±1, drawn in that order.
    pub(super) fn operands(rg: &mut ChaCha8Rng, m: usize, k: usize, n: usize) -> [Vec<f32>; 4] {
        let x = uniform(rg, m * k, 1.0);
        let w = uniform(rg, k * n, 1.0);
        let b = uniform(rg, n, 1.0);
        let dy = uniform(rg, m * n, 1.0);
        [x, w, b, dy]
    }

    pub(super) const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 13, 7),
        (3, 5, 33),
        (27, 48, 19),
        (130, 20, 100),
        (600, 64, 72),
    ];

    #[test]
    fn forward_vs_f64() {
        let mut rg = rng(40);
        for &(m, k, n) in SHAPES {
            let x = uniform(&mut rg, m * k, 1.0);
            let w = uniform(&mut rg, k * n, 1.0);
            let b = uniform(&mut rg, n, 1.0);
            let (x64, w64, b64) = (to_f64(&x), to_f64(&w), to_f64(&b));
            let want = ref_linear(&x64, &w64, Some(&b64), m, k, n);
            assert_close(
                &format!("linear {m}x{k}x{n}"),
                &linear_forward(Rows::F32(&x), &w, Some(&b), m, k, n, F32),
                &want,
                1e-6,
            );
            let want_nb = ref_linear(&x64, &w64, None, m, k, n);
            assert_close(
                &format!("linear nobias {m}x{k}x{n}"),
                &linear_forward(Rows::F32(&x), &w, None, m, k, n, F32),
                &want_nb,
                1e-6,
            );
            let (act, slope) = linear_gelu_forward(Rows::F32(&x), &w, Some(&b), m, k, n, true, F32);
            let want_act: Vec<f64> = want.iter().map(|&v| gelu_f64(v)).collect();
            assert_close(
                &format!("linear_gelu act {m}x{k}x{n}"),
                &act,
                &want_act,
                2e-6,
            );
            let want_slope: Vec<f64> = want.iter().map(|&v| gelu_grad_f64(v)).collect();
            assert_close(
                &format!("linear_gelu slope {m}x{k}x{n}"),
                &slope.unwrap(),
                &want_slope,
                2e-6,
            );
            let (act_only, none) =
                linear_gelu_forward(Rows::F32(&x), &w, Some(&b), m, k, n, false, F32);
            assert!(none.is_none());
            assert_eq!(
                act_only, act,
                "the activation does not depend on with_slope"
            );
        }
    }

    /// Gradients of L = Σ r ∘ f(x W + b) by central differences of the f64 reference.
    #[allow(clippy::too_many_arguments)]
    fn fd(
        x: &[f64],
        w: &[f64],
        b: &[f64],
        r: &[f64],
        m: usize,
        k: usize,
        n: usize,
        act: bool,
    ) -> [Vec<f64>; 3] {
        let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            ref_linear(x, w, Some(b), m, k, n)
                .iter()
                .zip(r)
                .map(|(&y, &r)| r * if act { gelu_f64(y) } else { y })
                .sum()
        };
        let h = 1e-6;
        let grad = |which: usize| -> Vec<f64> {
            let mut v = [x.to_vec(), w.to_vec(), b.to_vec()];
            let mut g = vec![0.0; v[which].len()];
            for i in 0..g.len() {
                let o = v[which][i];
                v[which][i] = o + h;
                let lp = loss(&v[0], &v[1], &v[2]);
                v[which][i] = o - h;
                let lm = loss(&v[0], &v[1], &v[2]);
                v[which][i] = o;
                g[i] = (lp - lm) / (2.0 * h);
            }
            g
        };
        [grad(0), grad(1), grad(2)]
    }

    #[test]
    fn backward_vs_finite_differences() {
        let mut rg = rng(41);
        for &(m, k, n) in &[
            (1usize, 1usize, 1usize),
            (1, 6, 5),
            (9, 7, 13),
            (27, 12, 10),
        ] {
            let [x, w, b, dy] = operands(&mut rg, m, k, n);
            let (x64, w64, b64, dy64) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
            let [fx, fw, fb] = fd(&x64, &w64, &b64, &dy64, m, k, n, false);
            let (dx, dw, db) = linear_backward(Rows::F32(&x), &w, &dy, m, k, n, true, F32);
            let tag = format!("{m}x{k}x{n}");
            assert_close(&format!("linear dx {tag}"), &dx, &fx, 1e-5);
            assert_close(&format!("linear dw {tag}"), &dw, &fw, 1e-5);
            assert_close(&format!("linear db {tag}"), &db.unwrap(), &fb, 1e-5);
            let [fx, fw, fb] = fd(&x64, &w64, &b64, &dy64, m, k, n, true);
            let (_, slope) = linear_gelu_forward(Rows::F32(&x), &w, Some(&b), m, k, n, true, F32);
            let slope = slope.unwrap();
            let (dx, dw, db) =
                linear_gelu_backward(Rows::F32(&x), &w, &slope, &dy, m, k, n, true, F32);
            assert_close(&format!("linear_gelu dx {tag}"), &dx, &fx, 1e-5);
            assert_close(&format!("linear_gelu dw {tag}"), &dw, &fw, 1e-5);
            assert_close(&format!("linear_gelu db {tag}"), &db.unwrap(), &fb, 1e-5);
        }
    }

    #[test]
    fn backward_vs_analytic_f64_larger() {
        let mut rg = rng(42);
        for &(m, k, n) in SHAPES {
            let x = uniform(&mut rg, m * k, 1.0);
            let w = uniform(&mut rg, k * n, 1.0);
            let dy = uniform(&mut rg, m * n, 1.0);
            let (x64, w64, dy64) = (to_f64(&x), to_f64(&w), to_f64(&dy));
            let (dx, dw, db) = linear_backward(Rows::F32(&x), &w, &dy, m, k, n, true, F32);
            let (want_dx, want_dw) = ref_input_and_weight_grads(&x64, &w64, &dy64, m, k, n);
            let want_db: Vec<f64> = (0..n)
                .map(|j| (0..m).map(|i| dy64[i * n + j]).sum())
                .collect();
            let tag = format!("{m}x{k}x{n}");
            assert_close(&format!("linear dx {tag}"), &dx, &want_dx, 1e-6);
            assert_close(&format!("linear dw {tag}"), &dw, &want_dw, 1e-6);
            assert_close(&format!("linear db {tag}"), &db.unwrap(), &want_db, 1e-6);
            let (_, _, none) = linear_backward(Rows::F32(&x), &w, &dy, m, k, n, false, F32);
            assert!(none.is_none());
        }
    }

    #[test]
    fn residual_forward_is_bitwise_the_sum_done_apart() {
        let mut rg = rng(45);
        for &(m, k, n) in SHAPES {
            let x = uniform(&mut rg, m * k, 1.0);
            let w = uniform(&mut rg, k * n, 1.0);
            let b = uniform(&mut rg, n, 1.0);
            let r = uniform(&mut rg, m * n, 3.0);
            for bias in [Some(&b[..]), None] {
                let apart: Vec<f32> = linear_forward(Rows::F32(&x), &w, bias, m, k, n, F32)
                    .iter()
                    .zip(&r)
                    .map(|(&y, &r)| r + y)
                    .collect();
                let fused = linear_residual_forward(Rows::F32(&x), &w, bias, &r, m, k, n, F32);
                assert_eq!(fused, apart, "{m}x{k}x{n}, bias {}", bias.is_some());
            }
        }
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let mut rg = rng(43);
        let (m, k, n) = (1500, 96, 200);
        let [x, w, b, dy] = operands(&mut rg, m, k, n);
        assert_deterministic("linear", || {
            let y = linear_forward(Rows::F32(&x), &w, Some(&b), m, k, n, F32);
            let (act, slope) = linear_gelu_forward(Rows::F32(&x), &w, Some(&b), m, k, n, true, F32);
            let slope = slope.unwrap();
            let (dx, dw, db) = linear_backward(Rows::F32(&x), &w, &dy, m, k, n, true, F32);
            let (gx, gw, gb) =
                linear_gelu_backward(Rows::F32(&x), &w, &slope, &dy, m, k, n, true, F32);
            vec![y, slope, act, dx, dw, db.unwrap(), gx, gw, gb.unwrap()]
        });
    }

    #[test]
    fn weight_grad_deterministic_at_training_size() {
        // dW = xᵀ dy reduces over M = 8192 rows inside gemm: its k-loop is sequential and
        // only output tiles are split between threads, so the result is thread-count free.
        let mut rg = rng(44);
        let (m, k, n) = (8192, 128, 512);
        let x = uniform(&mut rg, m * k, 1.0);
        let w = uniform(&mut rg, k * n, 1.0);
        let dy = uniform(&mut rg, m * n, 1.0);
        assert_deterministic("linear 8192x128x512", || {
            let (dx, dw, db) = linear_backward(Rows::F32(&x), &w, &dy, m, k, n, true, F32);
            let y = linear_forward(Rows::F32(&x), &w, None, m, k, n, F32);
            vec![dx, dw, db.unwrap(), y]
        });
    }
}
