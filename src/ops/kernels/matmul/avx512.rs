//! The AVX-512 register tiles: `12 x 32` (24 of the 32 zmm registers accumulate: two 16-column
//! panels side by side), `12 x 16` where one panel is left; the kernel path of CPUs with
//! AVX-512 (Intel Skylake-SP and later Xeons, AMD Zen 4 and later).
//!
//! Hand-written (intrinsics) because the compiler does not keep a tile of accumulators in
//! registers across the reduction by itself; see [`super`] for what the tiles buy. Every
//! element is computed as on the AVX2 path (the bias, then one fused multiply-add per step of
//! `k` in order, then the residual), so the two paths give the same bits.

use super::NR;
use super::tiles::{ColumnTiles, Sweep, offset_or_null};
use std::arch::x86_64::*;

/// Rows per register tile.
pub(super) const MR: usize = 12;
/// Most panels (of 16 columns) per tile.
const V: usize = 2;
/// Rows of the left operand swept per pass over the panels.
const ROWS_PER_SWEEP: usize = 48;

/// The register-tile sweep of `s` (every element of its `c` written).
///
/// # Safety
/// AVX-512 F/BW/VL/DQ and FMA available; `a` readable for `rows` rows of `k > 0` at stride
/// `lda`; `b`'s panels cover `n` columns (the last zero-padded to 16) and `k` rows; `bias` null
/// or `n` floats; `c` writable for `rows` rows of `n` at stride `ldc`; `res` null or readable
/// for `rows * n` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(super) unsafe fn sweep(s: Sweep) {
    // SAFETY: forwarded.
    unsafe { sweep_with::<MR, V>(ROWS_PER_SWEEP, s) }
}

/// [`sweep`] with its tile shape as parameters (`MR` rows, up to `VMAX` panels wide, sweeps of
/// `SWEEP` rows), for tuning.
///
/// # Safety
/// As [`sweep`]; `MR <= 14`, `MR * VMAX + VMAX + 1 <= 32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(super) unsafe fn sweep_with<const MR: usize, const VMAX: usize>(sweep_rows: usize, s: Sweep) {
    // SAFETY: `bias` holds n floats (the caller's).
    let columns = unsafe { ColumnTiles::new(s.n, s.bias) };
    for r0 in (0..s.rows).step_by(sweep_rows) {
        let sweep = (s.rows - r0).min(sweep_rows);
        for (p, v, bias) in columns.iter(VMAX) {
            let c0 = p * NR;
            for i0 in (r0..r0 + sweep).step_by(MR) {
                let mr = (r0 + sweep - i0).min(MR);
                // SAFETY (all): the extents are the caller's; each tile stays inside them.
                let t = unsafe {
                    Tile {
                        a: s.a.add(i0 * s.lda),
                        lda: s.lda,
                        b: s.b.panel(p),
                        ldb: s.b.ldb,
                        pstride: s.b.pstride,
                        k: s.k,
                        bias,
                        res: offset_or_null(s.res, i0 * s.n + c0),
                        ldr: s.n,
                        c: s.c.add(i0 * s.ldc + c0),
                        ldc: s.ldc,
                        mask: columns.mask,
                    }
                };
                // `tile::<mr, V, MASKED>(t)` for any `mr <= 14`
                macro_rules! tile_v {
                    ($v:literal, $masked:literal) => {
                        by_rows!(mr; 14 13 12 11 10 9 8 7 6 5 4 3 2 else 1; tile::<_, $v, $masked>(t))
                    };
                }
                // SAFETY: as above.
                unsafe {
                    match v {
                        0 => tile_v!(1, true),
                        1 => tile_v!(1, false),
                        2 if VMAX == 2 => tile_v!(2, false),
                        3 if VMAX == 3 => tile_v!(3, false),
                        4 if VMAX == 4 => tile_v!(4, false),
                        _ => unreachable!(),
                    }
                }
            }
        }
    }
}

/// One tile's operands: `ROWS` rows of `a` (stride `lda`), `V` panels from `b` (`pstride`
/// apart, rows `ldb` apart), `bias` null or `16·V` floats, `res` null or rows of `16·V` at
/// stride `ldr`, `c` rows of `16·V` at stride `ldc`; with `MASKED`, one panel of which only
/// the columns in `mask` exist in `res` and `c`.
#[derive(Clone, Copy)]
struct Tile {
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    pstride: usize,
    k: usize,
    bias: *const f32,
    res: *const f32,
    ldr: usize,
    c: *mut f32,
    ldc: usize,
    mask: __mmask16,
}

/// `c = a · b (+ bias) (+ res)` for one `ROWS x 16·V` tile, accumulated in registers over `k`.
///
/// # Safety
/// AVX-512 available; the extents of [`Tile`] readable / writable; `ROWS·V + V + 1 <= 32`
/// (else the accumulators spill).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
#[inline]
unsafe fn tile<const ROWS: usize, const V: usize, const MASKED: bool>(t: Tile) {
    // SAFETY: the caller guarantees the extents.
    unsafe {
        let init: [__m512; V] = std::array::from_fn(|v| {
            if t.bias.is_null() {
                _mm512_setzero_ps()
            } else {
                _mm512_loadu_ps(t.bias.add(v * NR))
            }
        });
        let mut acc = [init; ROWS];
        let rows: [*const f32; ROWS] = std::array::from_fn(|i| t.a.add(i * t.lda));
        let panels: [*const f32; V] = std::array::from_fn(|v| t.b.add(v * t.pstride));
        for p in 0..t.k {
            let w: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(panels[v].add(p * t.ldb)));
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let x = _mm512_set1_ps(*row.add(p));
                for (acc, &w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_fmadd_ps(x, w, *acc);
                }
            }
        }
        store_avx512_tile!(acc, t, MASKED);
    }
}
