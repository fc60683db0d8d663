//! Safe entry points to the bf16 register tiles ([`super::bf16::sweep`]) on operands that are
//! already pairs: the small per-head products of attention under bf16 autocast
//! ([`crate::ops::kernels::attention_bf16`]), whose operands are converted once per image (or
//! once per head for the probabilities) and then read in place with strides.

use super::NR;
use super::bf16::{PairPanels, PairRows, sweep};
use std::mem::MaybeUninit;

/// A left operand of pairs: pair `s` of row `i` at `data[i·row + s·step]` (pairs along a
/// row-major matrix's rows: `row` = its pair row stride, `step` = 1; pairs across the rows of
/// a matrix, for its transpose: `row` = 1, `step` = the pair row stride).
#[derive(Clone, Copy)]
pub struct Lhs<'a> {
    pub data: &'a [u32],
    pub row: usize,
    pub step: usize,
}

impl<'a> Lhs<'a> {
    /// Pairs along the rows of a row-major matrix, `row` pairs apart.
    pub fn along(data: &'a [u32], row: usize) -> Self {
        Lhs { data, row, step: 1 }
    }

    /// Pairs across the rows of a matrix (read as its transpose), `step` pairs apart.
    pub fn across(data: &'a [u32], step: usize) -> Self {
        Lhs { data, row: 1, step }
    }
}

/// A right operand of pairs read in place: pair row `s`, column `j` at `data[s·ld + j]`; the
/// tiles read whole panels of 16 columns, so `data` must hold `cols` rounded up to 16 in the
/// last pair row (the columns past `cols` may hold anything: they are never stored).
#[derive(Clone, Copy)]
pub struct Rhs<'a> {
    pub data: &'a [u32],
    pub ld: usize,
}

impl<'a> Rhs<'a> {
    pub fn new(data: &'a [u32], ld: usize) -> Self {
        Rhs { data, ld }
    }
}

/// `c [rows, cols] (row stride ldc) = a [rows, steps pairs] · b [steps pairs, cols]`, products
/// of bf16 pairs accumulated in f32 (`vdpbf16ps`), on the calling thread. Every element of
/// the `rows x cols` block of `c` is written.
///
/// Panics unless the CPU has bf16 products and every operand holds what is read.
pub fn product(
    rows: usize,
    steps: usize,
    cols: usize,
    a: Lhs<'_>,
    b: Rhs<'_>,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(steps > 0, "an empty reduction");
    assert!(
        super::super::cpu::bf16_products(),
        "no bf16 products on this CPU"
    );
    assert!(
        (rows - 1) * a.row + (steps - 1) * a.step < a.data.len(),
        "lhs out of bounds"
    );
    assert!(b.ld >= cols, "rhs rows overlap");
    assert!(
        (steps - 1) * b.ld + cols.next_multiple_of(NR) <= b.data.len(),
        "rhs out of bounds"
    );
    assert!(rows == 1 || ldc >= cols, "dst rows overlap");
    assert!((rows - 1) * ldc + cols <= c.len(), "dst out of bounds");
    let a = PairRows {
        base: a.data.as_ptr(),
        row: a.row,
        step: a.step,
    };
    let b = PairPanels {
        base: b.data.as_ptr(),
        ldb: b.ld,
        pstride: NR,
    };
    let none = std::ptr::null();
    // SAFETY: AVX-512 BF16 present (asserted); every pair the tiles read lies inside `a` and
    // `b` (asserted above: the tiles read rows < rows, steps < steps, and whole panels of `b`
    // up to cols rounded to 16), and they write only the rows x cols block of `c` (asserted
    // inside `c`, a unique borrow).
    unsafe {
        sweep(
            rows,
            steps,
            cols,
            a,
            b,
            none,
            false,
            none,
            c.as_mut_ptr().cast(),
            ldc,
        )
    }
}

/// `dst[s·ldd + j] = src[j·ld + s]` for `s < cols`, `j < rows`, and zero for `rows <= j < ldd`:
/// the pairs along the rows of a matrix as the panels of its transpose (`Kᵀ` from the pairs of
/// `K`'s rows), zero-padded to `ldd` columns.
pub fn transpose(src: &[u32], rows: usize, cols: usize, ld: usize, dst: &mut [u32], ldd: usize) {
    assert!(ldd >= rows, "dst rows too short");
    assert!(dst.len() >= cols * ldd, "dst too short");
    assert!(
        rows == 0 || cols == 0 || (rows - 1) * ld + cols <= src.len(),
        "src out of bounds"
    );
    for (s, out) in dst.chunks_exact_mut(ldd).take(cols).enumerate() {
        for (j, o) in out[..rows].iter_mut().enumerate() {
            *o = src[j * ld + s];
        }
        out[rows..].fill(0);
    }
}
