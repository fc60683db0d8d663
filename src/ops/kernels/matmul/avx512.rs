//! The AVX-512 register tiles: `12 x 32` (24 of the 32 zmm registers accumulate: two 16-column
//! panels side by side), `12 x 16` where one panel is left; the kernel path of CPUs with
//! AVX-512 (Intel Skylake-SP and later Xeons, AMD Zen 4 and later).
//!
//! Hand-written (intrinsics) because the compiler does not keep a tile of accumulators in
//! registers across the reduction by itself; see [`super`] for what the tiles buy. Every
//! element is computed as on the AVX2 path (the bias, then one fused multiply-add per step of
//! `k` in order, then the residual), so the two paths give the same bits.

use super::{NR, Panels};
use std::arch::x86_64::*;

/// Rows per register tile.
pub(super) const MR: usize = 12;
/// Most panels (of 16 columns) per tile.
const V: usize = 2;
/// Rows of the left operand swept per pass over the panels.
const ROWS_PER_SWEEP: usize = 48;

/// `tile::<mr, V, MASKED>(t)` for a run-time `mr` (up to 14).
macro_rules! by_rows {
    ($mr:expr, $t:expr, $v:literal, $masked:literal) => {
        match $mr {
            14 => tile::<14, $v, $masked>($t),
            13 => tile::<13, $v, $masked>($t),
            12 => tile::<12, $v, $masked>($t),
            11 => tile::<11, $v, $masked>($t),
            10 => tile::<10, $v, $masked>($t),
            9 => tile::<9, $v, $masked>($t),
            8 => tile::<8, $v, $masked>($t),
            7 => tile::<7, $v, $masked>($t),
            6 => tile::<6, $v, $masked>($t),
            5 => tile::<5, $v, $masked>($t),
            4 => tile::<4, $v, $masked>($t),
            3 => tile::<3, $v, $masked>($t),
            2 => tile::<2, $v, $masked>($t),
            _ => tile::<1, $v, $masked>($t),
        }
    };
}

/// The register-tile sweep: writes `c[i * ldc + j]` for every `i < rows`, `j < n`, plus
/// `res[i * n + j]` when `res` is not null.
///
/// # Safety
/// AVX-512 F/BW/VL/DQ and FMA available; `a` readable for `rows` rows of `k > 0` at stride
/// `lda`; `b`'s panels cover `n` columns (the last zero-padded to 16) and `k` rows; `bias` null
/// or `n` floats; `c` writable for `rows` rows of `n` at stride `ldc`; `res` null or readable
/// for `rows * n` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sweep(
    rows: usize,
    k: usize,
    n: usize,
    a: *const f32,
    lda: usize,
    b: Panels,
    bias: *const f32,
    res: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: forwarded.
    unsafe { sweep_with::<MR, V>(ROWS_PER_SWEEP, rows, k, n, a, lda, b, bias, res, c, ldc) }
}

/// [`sweep`] with its tile shape as parameters (`MR` rows, up to `VMAX` panels wide, sweeps of
/// `SWEEP` rows), for tuning.
///
/// # Safety
/// As [`sweep`]; `MR <= 14`, `MR * VMAX + VMAX + 1 <= 32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sweep_with<const MR: usize, const VMAX: usize>(
    sweep_rows: usize,
    rows: usize,
    k: usize,
    n: usize,
    a: *const f32,
    lda: usize,
    b: Panels,
    bias: *const f32,
    res: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    let (full, tail) = (n / NR, n % NR);
    let mut padded_bias = [0.0f32; NR];
    let tail_bias = if bias.is_null() || tail == 0 {
        std::ptr::null()
    } else {
        // SAFETY: `bias` holds n floats.
        padded_bias[..tail]
            .copy_from_slice(unsafe { std::slice::from_raw_parts(bias.add(full * NR), tail) });
        padded_bias.as_ptr()
    };
    let mask: __mmask16 = (1u32 << tail).wrapping_sub(1) as __mmask16;
    for r0 in (0..rows).step_by(sweep_rows) {
        let sweep = (rows - r0).min(sweep_rows);
        let mut p = 0;
        while p < full + usize::from(tail > 0) {
            let c0 = p * NR;
            // SAFETY (all): the extents are the caller's; each tile stays inside them.
            let at = |i0: usize| unsafe {
                let res = if res.is_null() {
                    res
                } else {
                    res.add(i0 * n + c0)
                };
                (a.add(i0 * lda), res, c.add(i0 * ldc + c0))
            };
            let pb = b.panel(p);
            let v = if p + VMAX <= full {
                VMAX
            } else if p < full {
                1
            } else {
                0 // the partial last panel
            };
            let bias_p = match v {
                0 => tail_bias,
                // SAFETY: inside the n floats of the bias.
                _ if !bias.is_null() => unsafe { bias.add(c0) },
                _ => std::ptr::null(),
            };
            for i0 in (r0..r0 + sweep).step_by(MR) {
                let mr = (r0 + sweep - i0).min(MR);
                let (ai, ri, ci) = at(i0);
                let t = Tile {
                    a: ai,
                    lda,
                    b: pb,
                    ldb: b.ldb,
                    pstride: b.pstride,
                    k,
                    bias: bias_p,
                    res: ri,
                    ldr: n,
                    c: ci,
                    ldc,
                    mask,
                };
                // SAFETY: as above.
                unsafe {
                    match v {
                        0 => by_rows!(mr, t, 1, true),
                        1 => by_rows!(mr, t, 1, false),
                        2 if VMAX == 2 => by_rows!(mr, t, 2, false),
                        3 if VMAX == 3 => by_rows!(mr, t, 3, false),
                        4 if VMAX == 4 => by_rows!(mr, t, 4, false),
                        _ => unreachable!(),
                    }
                }
            }
            p += v.max(1);
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
        for (i, acc) in acc.iter().enumerate() {
            for (v, &y) in acc.iter().enumerate() {
                let off = v * NR;
                let y = if t.res.is_null() {
                    y
                } else if MASKED {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(t.mask, t.res.add(i * t.ldr + off)), y)
                } else {
                    _mm512_add_ps(_mm512_loadu_ps(t.res.add(i * t.ldr + off)), y)
                };
                if MASKED {
                    _mm512_mask_storeu_ps(t.c.add(i * t.ldc + off), t.mask, y);
                } else {
                    _mm512_storeu_ps(t.c.add(i * t.ldc + off), y);
                }
            }
        }
    }
}
