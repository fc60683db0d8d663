//! The AVX2 + FMA register tiles: `6 x 16` (12 of the 16 ymm registers accumulate), the
//! kernel path of x86-64 CPUs without AVX-512.
//!
//! Hand-written (intrinsics) because the compiler does not keep a tile of accumulators in
//! registers across the reduction by itself; see [`super`] for what the tiles buy.

use super::NR;
use super::tiles::{Sweep, offset_or_null};
use std::arch::x86_64::*;

/// Rows per register tile (6 x 16 accumulators: 12 of the 16 AVX registers).
pub(super) const MR: usize = 6;
/// Rows of the left operand swept per pass over the panels (48 rows x K stay in L1/L2 while
/// every panel of the right operand streams past them).
const ROWS_PER_SWEEP: usize = 48;

/// The register-tile sweep of `s` (every element of its `c` written).
///
/// # Safety
/// AVX2 and FMA available; `a` readable for `rows` rows of `k > 0` at stride `lda`; `b`'s
/// panels cover `n` columns and `k` rows; `bias` null or `n` floats; `c` writable for `rows`
/// rows of `n` at stride `ldc`; `res` null or readable for `rows * n` floats.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn sweep(s: Sweep) {
    let Sweep {
        rows,
        k,
        n,
        a,
        lda,
        b,
        bias,
        res,
        c,
        ldc,
    } = s;
    let mut padded_bias = [0.0f32; NR];
    let mut tile = [0.0f32; MR * NR];
    for r0 in (0..rows).step_by(ROWS_PER_SWEEP) {
        let sweep = (rows - r0).min(ROWS_PER_SWEEP);
        for p in 0..n.div_ceil(NR) {
            let c0 = p * NR;
            let cols = (n - c0).min(NR);
            let panel = b.panel(p);
            let bias = if bias.is_null() {
                None
            } else {
                // SAFETY: `bias` holds n floats.
                padded_bias[..cols]
                    .copy_from_slice(unsafe { std::slice::from_raw_parts(bias.add(c0), cols) });
                Some(&padded_bias)
            };
            for i0 in (r0..r0 + sweep).step_by(MR) {
                let mr = (r0 + sweep - i0).min(MR);
                // SAFETY (all): within the extents the caller guarantees; the partial last
                // panel is computed into the local tile (its padding columns are zero).
                unsafe {
                    let res = offset_or_null(res, i0 * n + c0);
                    let t = Tile {
                        a: a.add(i0 * lda),
                        lda,
                        b: panel,
                        ldb: b.ldb,
                        k,
                        bias,
                        res,
                        ldr: n,
                        c: c.add(i0 * ldc + c0),
                        ldc,
                    };
                    if cols == NR {
                        tile_rows(mr, t);
                    } else {
                        let none = std::ptr::null();
                        let c_tile = tile.as_mut_ptr();
                        tile_rows(
                            mr,
                            Tile {
                                res: none,
                                ldr: 0,
                                c: c_tile,
                                ldc: NR,
                                ..t
                            },
                        );
                        for i in 0..mr {
                            for j in 0..cols {
                                let v = tile[i * NR + j];
                                *c.add((i0 + i) * ldc + c0 + j) = if res.is_null() {
                                    v
                                } else {
                                    *res.add(i * n + j) + v
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One tile's operands: `mr <= 6` rows of `a` (stride `lda`), `k` rows of 16 floats of `b`
/// (stride `ldb`), the bias (16 floats) or none, `res` null or rows of 16 at stride `ldr`, `c`
/// rows of 16 at stride `ldc`.
#[derive(Clone, Copy)]
struct Tile<'b> {
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    k: usize,
    bias: Option<&'b [f32; NR]>,
    res: *const f32,
    ldr: usize,
    c: *mut f32,
    ldc: usize,
}

/// One `mr x 16` tile (`mr <= 6`): `c = a · b (+ bias)`, accumulated in registers over `k`,
/// then `res` added when not null.
///
/// # Safety
/// AVX2 and FMA available; the extents of [`Tile`] readable / writable.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_rows(mr: usize, t: Tile<'_>) {
    // SAFETY: forwarded from the caller.
    unsafe { by_rows!(mr; 6 5 4 3 2 else 1; tile::<_>(t)) }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const ROWS: usize>(t: Tile<'_>) {
    let Tile {
        a,
        lda,
        b,
        ldb,
        k,
        bias,
        res,
        ldr,
        c,
        ldc,
    } = t;
    // SAFETY: the caller guarantees the extents (see tile_rows).
    unsafe {
        let (b0, b1) = match bias {
            Some(b) => (
                _mm256_loadu_ps(b.as_ptr()),
                _mm256_loadu_ps(b.as_ptr().add(8)),
            ),
            None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
        };
        let mut acc = [[b0, b1]; ROWS];
        // Row pointers advanced together, k unrolled by two: fewer address computations per
        // FMA (the loop is issue-bound, not FMA-bound, at 12 FMAs per step).
        let rows: [*const f32; ROWS] = std::array::from_fn(|i| a.add(i * lda));
        let mut bp = b;
        let mut p = 0;
        while p + 2 <= k {
            let w0 = _mm256_loadu_ps(bp);
            let w1 = _mm256_loadu_ps(bp.add(8));
            let v0 = _mm256_loadu_ps(bp.add(ldb));
            let v1 = _mm256_loadu_ps(bp.add(ldb + 8));
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let x = _mm256_broadcast_ss(&*row.add(p));
                acc[0] = _mm256_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, w1, acc[1]);
                let x = _mm256_broadcast_ss(&*row.add(p + 1));
                acc[0] = _mm256_fmadd_ps(x, v0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, v1, acc[1]);
            }
            bp = bp.wrapping_add(2 * ldb);
            p += 2;
        }
        if p < k {
            let w0 = _mm256_loadu_ps(bp);
            let w1 = _mm256_loadu_ps(bp.add(8));
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let x = _mm256_broadcast_ss(&*row.add(p));
                acc[0] = _mm256_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, w1, acc[1]);
            }
        }
        if res.is_null() {
            for (i, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(c.add(i * ldc), acc[0]);
                _mm256_storeu_ps(c.add(i * ldc + 8), acc[1]);
            }
        } else {
            for (i, acc) in acc.iter().enumerate() {
                let r = res.add(i * ldr);
                _mm256_storeu_ps(c.add(i * ldc), _mm256_add_ps(_mm256_loadu_ps(r), acc[0]));
                _mm256_storeu_ps(
                    c.add(i * ldc + 8),
                    _mm256_add_ps(_mm256_loadu_ps(r.add(8)), acc[1]),
                );
            }
        }
    }
}
