//! bf16 matrix products on AVX-512 BF16 (`vdpbf16ps`): operands rounded to bf16, products
//! accumulated in f32, results f32. The arithmetic of `meta.use_bfloat16` (autocast) on CPUs
//! with `avx512_bf16` (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later).
//!
//! Why hand-written: neither `gemm` nor burn-flex has bf16 dot-product kernels (burn-flex
//! converts bf16 back to f32 for its products), and `vdpbf16ps` does two multiply-adds per f32
//! lane per instruction, twice the f32 FMA rate, on operands half the size.
//!
//! Layout: `vdpbf16ps` multiplies pairs of bf16 along the reduction, so both operands hold
//! *pairs* (`u32`: the even element in the low half, the odd one in the high half, a missing
//! odd element zero). The left operand is read through two strides (between rows and between
//! pairs), so a row-major operand (pairs along its rows) and a transposed one (pairs across
//! two rows, see [`pairs_across`]) are read alike. The right operand comes in panels of 16
//! columns, `[pairs][16]`, packed once ([`pack`]) or read in place from a `[pairs][n]` matrix.
//! Tiles are `12 x 32` as in [`super::avx512`].
//!
//! Rounding: to nearest, ties to even, as `vcvtneps2bf16` (which also flushes denormal inputs
//! to zero); [`bf16_bits`] is the same conversion in scalar code.

use super::tiles::{ColumnTiles, offset_or_null};
use super::{NR, View};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Rows per register tile, panels per tile, rows per sweep (as the f32 AVX-512 tiles).
pub(super) const MR: usize = 12;
const V: usize = 2;
pub(super) const ROWS_PER_SWEEP: usize = 48;

/// The bf16 bits of `x`, rounded as `vcvtneps2bf16`: to nearest, ties to even; zero and
/// denormal inputs give a zero of their sign; NaN stays a (quiet) NaN.
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let exp = (b >> 23) & 0xff;
    if exp == 0 {
        return ((b >> 16) & 0x8000) as u16;
    }
    if exp == 0xff {
        let quiet = if b & 0x007f_ffff != 0 { 0x40 } else { 0 };
        return ((b >> 16) | quiet) as u16;
    }
    let lsb = (b >> 16) & 1;
    ((b + 0x7fff + lsb) >> 16) as u16
}

/// `x` rounded to bf16 (as [`bf16_bits`]), back in f32.
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// The pair `(lo, hi)` as `vdpbf16ps` reads it.
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) as u32 | (bf16_bits(hi) as u32) << 16
}

/// 16 floats (the first `count`, the rest zero) rounded to bf16 and zero-extended to 32 bits
/// (the tests check the scalar rounding against it).
///
/// # Safety
/// AVX-512 F/BW/BF16; `p` readable for `count <= 16` floats.
#[cfg(test)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
#[inline]
unsafe fn widened(p: *const f32, count: usize) -> __m512i {
    let mask = ((1u32 << count) - 1) as __mmask16;
    // SAFETY: masked-off lanes are not read.
    let v = unsafe { _mm512_maskz_loadu_ps(mask, p) };
    // SAFETY: same size, both plain vectors.
    let h: __m256i = unsafe { std::mem::transmute(_mm512_cvtneps_pbh(v)) };
    _mm512_cvtepu16_epi32(h)
}

/// `dst[j] = pair(a[j], b[j])` for `j < len` (`b` null: a zero row): both rows rounded by one
/// `vcvtne2ps2bf16`, their halves interleaved by one `vpermw`.
///
/// # Safety
/// AVX-512 F/BW/BF16; `a` (and `b` unless null) readable for `len` floats, `dst` writable for
/// `len` pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
unsafe fn pairs_across_row(a: *const f32, b: *const f32, len: usize, dst: *mut u32) {
    // 16-bit lane 2j takes a[j] (lane j of the conversion), lane 2j + 1 takes b[j] (lane 16 + j)
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let mut j = 0;
    while j < len {
        let count = (len - j).min(16);
        let mask = ((1u32 << count) - 1) as __mmask16;
        // SAFETY: inside the extents above; masked-off lanes are neither read nor written.
        unsafe {
            let lo = _mm512_maskz_loadu_ps(mask, a.add(j));
            let hi = if b.is_null() {
                _mm512_setzero_ps()
            } else {
                _mm512_maskz_loadu_ps(mask, b.add(j))
            };
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let pairs = _mm512_permutexvar_epi16(interleave, both);
            _mm512_mask_storeu_epi32(dst.add(j).cast(), mask, pairs);
        }
        j += count;
    }
}

/// `dst[t] = pair(src[2t], src[2t + 1])` for `t < len.div_ceil(2)` (a missing odd element 0).
///
/// # Safety
/// AVX-512 F/BW/BF16; `src` readable for `len` floats, `dst` writable for `len.div_ceil(2)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
unsafe fn pairs_along_row(src: *const f32, len: usize, dst: *mut u32) {
    let mut j = 0;
    while j < len {
        let count = (len - j).min(32);
        let (c0, c1) = (count.min(16), count.saturating_sub(16));
        // SAFETY: inside the extents above; masked-off lanes are neither read nor written.
        unsafe {
            let lo = _mm512_maskz_loadu_ps(((1u32 << c0) - 1) as __mmask16, src.add(j));
            let hi = _mm512_maskz_loadu_ps(((1u32 << c1) - 1) as __mmask16, src.add(j + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let pairs = count.div_ceil(2);
            let mask = ((1u32 << pairs) - 1) as __mmask16;
            _mm512_mask_storeu_epi32(dst.add(j / 2).cast(), mask, v);
        }
        j += count;
    }
}

/// The rows `[rows, cols]` (row stride `ld`) of `src` as pairs along each row:
/// `[rows][cols.div_ceil(2)]`, written into `dst` (from bf16 rows: a copy of half the bytes).
pub fn pairs_along<T: PairSource>(src: &[T], rows: usize, cols: usize, ld: usize, dst: &mut [u32]) {
    let cp = cols.div_ceil(2);
    assert!(
        rows == 0 || (rows - 1) * ld + cols <= src.len(),
        "src out of bounds"
    );
    assert!(dst.len() >= rows * cp, "dst too short");
    assert!(
        super::super::cpu::bf16_products(),
        "no bf16 products on this CPU"
    );
    for i in 0..rows {
        // SAFETY: bf16 products checked above (AVX-512 BF16 present); extents asserted.
        unsafe { T::along(src.as_ptr().add(i * ld), cols, dst.as_mut_ptr().add(i * cp)) }
    }
}

/// `dst[j] = pair(a[j], b[j])` for `j < len` from bf16 bits (`b` null: a zero row): two rows of
/// bf16 already rounded, interleaved as the pairs across them.
///
/// # Safety
/// AVX-512 F/BW; `a` (and `b` unless null) readable for `len` bf16, `dst` writable for `len`
/// pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
unsafe fn bits_across_row(a: *const u16, b: *const u16, len: usize, dst: *mut u32) {
    let mut j = 0;
    while j < len {
        let count = (len - j).min(16);
        let mask = ((1u32 << count) - 1) as __mmask16;
        // SAFETY: inside the extents above; masked-off lanes are neither read nor written.
        unsafe {
            let lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, a.add(j).cast()));
            let hi = if b.is_null() {
                _mm512_setzero_si512()
            } else {
                let h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, b.add(j).cast()));
                _mm512_slli_epi32::<16>(h)
            };
            _mm512_mask_storeu_epi32(dst.add(j).cast(), mask, _mm512_or_si512(lo, hi));
        }
        j += count;
    }
}

/// The elements a matrix of pairs is made from: f32 (rounded to bf16 on the way) or bf16
/// already rounded by the producer of the matrix ([`round_to_bf16`]).
pub trait PairSource: Copy + Send + Sync {
    /// `dst[j] = pair(a[j], b[j])` for `j < len` (`b` null: a zero row).
    ///
    /// # Safety
    /// bf16 products available; `a` (and `b` unless null) readable for `len` elements, `dst`
    /// writable for `len` pairs.
    unsafe fn across(a: *const Self, b: *const Self, len: usize, dst: *mut u32);

    /// `dst[t] = pair(src[2t], src[2t + 1])` for `t < len.div_ceil(2)` (a missing odd element
    /// zero).
    ///
    /// # Safety
    /// bf16 products available; `src` readable for `len` elements, `dst` writable for
    /// `len.div_ceil(2)` pairs.
    unsafe fn along(src: *const Self, len: usize, dst: *mut u32);
}

impl PairSource for f32 {
    unsafe fn across(a: *const f32, b: *const f32, len: usize, dst: *mut u32) {
        // SAFETY: the caller's contract.
        unsafe { pairs_across_row(a, b, len, dst) }
    }

    unsafe fn along(src: *const f32, len: usize, dst: *mut u32) {
        // SAFETY: the caller's contract.
        unsafe { pairs_along_row(src, len, dst) }
    }
}

impl PairSource for half::bf16 {
    unsafe fn across(a: *const half::bf16, b: *const half::bf16, len: usize, dst: *mut u32) {
        // SAFETY: the caller's contract (bf16 is a transparent u16).
        unsafe { bits_across_row(a.cast(), b.cast(), len, dst) }
    }

    unsafe fn along(src: *const half::bf16, len: usize, dst: *mut u32) {
        // SAFETY: the caller's contract: the whole pairs are the bf16 bits as they lie (the
        // even element in the low half), the odd last one gets a zero high half.
        unsafe {
            std::ptr::copy_nonoverlapping(src.cast::<u16>(), dst.cast::<u16>(), len & !1);
            if len % 2 == 1 {
                *dst.add(len / 2) = (*src.add(len - 1)).to_bits() as u32;
            }
        }
    }
}

/// The matrix `src [rows, cols]` (row stride `ld`) as pairs across rows: row `t` of the result
/// holds `pair(src[2t][j], src[2t + 1][j])` for `j < cols`, then zeros up to `ldd`
/// (`[rows.div_ceil(2)][ldd]`), on the pool for large matrices. Why: the reduction of `xᵀ dy`
/// runs over the rows of `x` and `dy`; this is the layout that reads both in pairs.
pub fn pairs_across<T: PairSource>(
    src: &[T],
    rows: usize,
    cols: usize,
    ld: usize,
    ldd: usize,
) -> Vec<u32> {
    let mut dst = uninit_vec(rows.div_ceil(2) * ldd);
    let work = |(t, d): (usize, &mut [MaybeUninit<u32>])| {
        pairs_across_into(&src[2 * t * ld..], 2.min(rows - 2 * t), cols, ld, d, ldd)
    };
    if dst.len() < 1 << 16 {
        dst.chunks_mut(ldd.max(1)).enumerate().for_each(work);
    } else {
        dst.par_chunks_mut(ldd.max(1)).enumerate().for_each(work);
    }
    // SAFETY: every pair row was written whole (values and padding) by `pairs_across_into`.
    unsafe { assume_init_vec(dst) }
}

/// [`pairs_across`] of the `rows` rows of `src` into `dst` (`[rows.div_ceil(2)][ldd]`, every
/// element written: the pairs, then zeros up to `ldd`).
pub fn pairs_across_into<T: PairSource>(
    src: &[T],
    rows: usize,
    cols: usize,
    ld: usize,
    dst: &mut [MaybeUninit<u32>],
    ldd: usize,
) {
    assert!(ldd >= cols);
    assert!(
        rows == 0 || (rows - 1) * ld + cols <= src.len(),
        "src out of bounds"
    );
    assert!(dst.len() >= rows.div_ceil(2) * ldd, "dst too short");
    assert!(
        super::super::cpu::bf16_products(),
        "no bf16 products on this CPU"
    );
    for (t, d) in dst
        .chunks_mut(ldd.max(1))
        .take(rows.div_ceil(2))
        .enumerate()
    {
        let a = src[2 * t * ld..].as_ptr();
        let b = if 2 * t + 1 < rows {
            src[(2 * t + 1) * ld..].as_ptr()
        } else {
            std::ptr::null()
        };
        // SAFETY: bf16 products present (asserted); rows 2t and 2t + 1 hold `cols` elements;
        // `d` holds ldd >= cols pairs (written, never read).
        unsafe { T::across(a, b, cols, d.as_mut_ptr().cast()) }
        d[cols..].iter_mut().for_each(|v| {
            v.write(0);
        });
    }
}

/// `dst[i] = bf16(src[i])` (rounded as [`bf16_bits`]), for a producer whose output only bf16
/// products read: an even number of values, converted 32 at a time.
pub fn round_to_bf16(src: &[f32], dst: &mut [MaybeUninit<half::bf16>]) {
    assert_eq!(src.len(), dst.len(), "dst must hold src");
    assert!(src.len().is_multiple_of(2), "an even number of values");
    assert!(
        super::super::cpu::bf16_products(),
        "no bf16 products on this CPU"
    );
    // SAFETY: AVX-512 BF16 present (asserted); `src` holds len floats; the len / 2 pairs
    // written are the len bf16 of `dst` in order (the stores are unaligned ones).
    unsafe { pairs_along_row(src.as_ptr(), src.len(), dst.as_mut_ptr().cast()) }
}

/// A buffer of `len` pairs (or bf16), not yet initialised (see [`super::super::uninit`]).
pub fn uninit_vec<T: Copy>(len: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(len);
    v.resize_with(len, MaybeUninit::uninit);
    v
}

/// The buffer of [`uninit_vec`] once every element was written.
///
/// # Safety
/// Every element of `v` must have been initialised.
pub unsafe fn assume_init_vec<T: Copy>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation and layout (MaybeUninit<T> is repr(transparent)); the caller
    // guarantees initialisation.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity()) }
}

/// The right operand `rhs [k, n]` (any strides) in panels of 16 columns of pairs:
/// `[n.div_ceil(16)][k.div_ceil(2)][16]`, zero-padded.
pub fn pack(rhs: View<'_>, k: usize, n: usize) -> Vec<u32> {
    assert!(k > 0 && n > 0);
    assert!(
        (k - 1) * rhs.rs + (n - 1) * rhs.cs < rhs.data.len(),
        "rhs out of bounds"
    );
    assert!(
        super::super::cpu::bf16_products(),
        "no bf16 products on this CPU"
    );
    let kp = k.div_ceil(2);
    let mut panels = vec![0u32; n.div_ceil(NR) * kp * NR];
    let at = |t: usize, j: usize| rhs.data[t * rhs.rs + j * rhs.cs];
    let work = |(p, panel): (usize, &mut [u32])| {
        let c0 = p * NR;
        let cols = (n - c0).min(NR);
        if rhs.cs == 1 {
            for (t, row) in panel.chunks_exact_mut(NR).enumerate() {
                let a = &rhs.data[2 * t * rhs.rs + c0..];
                let b = if 2 * t + 1 < k {
                    rhs.data[(2 * t + 1) * rhs.rs + c0..].as_ptr()
                } else {
                    std::ptr::null()
                };
                // SAFETY: AVX-512 BF16 present (asserted); rows 2t, 2t + 1 hold `cols` floats
                // from column c0 (bounds asserted above); the panel row holds 16.
                unsafe { pairs_across_row(a.as_ptr(), b, cols, row.as_mut_ptr()) }
            }
        } else if rhs.rs == 1 {
            // a transposed view (the backward's `Wᵀ`): each column's elements are contiguous,
            // paired along it by the vector rounding, then spread over the panel's pair rows
            let mut column = vec![0u32; kp];
            for (jj, j) in (c0..c0 + cols).enumerate() {
                // SAFETY: AVX-512 BF16 present (asserted); column j holds k floats from
                // data[j·cs] (the extent asserted above); `column` holds k.div_ceil(2) pairs.
                unsafe { pairs_along_row(rhs.data[j * rhs.cs..].as_ptr(), k, column.as_mut_ptr()) }
                for (t, &v) in column.iter().enumerate() {
                    panel[t * NR + jj] = v;
                }
            }
        } else {
            // a strided view: pairs gathered element by element
            for (t, row) in panel.chunks_exact_mut(NR).enumerate() {
                for (j, v) in row[..cols].iter_mut().enumerate() {
                    let hi = if 2 * t + 1 < k {
                        at(2 * t + 1, c0 + j)
                    } else {
                        0.0
                    };
                    *v = pair(at(2 * t, c0 + j), hi);
                }
            }
        }
    };
    if k * n < 1 << 16 {
        panels.chunks_mut(kp * NR).enumerate().for_each(work);
    } else {
        panels.par_chunks_mut(kp * NR).enumerate().for_each(work);
    }
    panels
}

/// Rows of the reduction per chunk of [`xt_y`] (pairs: 512 rows of `x` and `y`): a tile's
/// accumulators go back to memory between chunks, and the chunk of `y`'s panels stays in L2.
const XT_Y_STEPS: usize = 256;

/// `xᵀ y` (`x [m, k]`, `y [m, n]`, both row-major) with bf16 operands and f32 accumulation:
/// the weight gradient `xᵀ dy` of a Linear under bf16 autocast. Both are converted once into
/// pairs across rows ([`pairs_across`]); the output is computed in blocks of its rows on the
/// pool, each reducing over all of `m` in chunks, in order: every element is summed in the same
/// order whatever the blocks and threads.
pub fn xt_y(x: &[f32], y: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "x must be [m, k]");
    assert_eq!(y.len(), m * n, "y must be [m, n]");
    if m == 0 || k == 0 || n == 0 {
        return vec![0.0; k * n];
    }
    let np = n.next_multiple_of(NR);
    let yp = pairs_across(y, m, n, n, np);
    xt_y_pairs(&pairs_across(x, m, k, k, k), &yp, m, k, n)
}

/// [`xt_y`] from the pairs across rows of `x` (`[m.div_ceil(2)][k]`) and of `y`
/// (`[m.div_ceil(2)][n.next_multiple_of(16)]`, zero-padded).
pub fn xt_y_pairs(xp: &[u32], yp: &[u32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let (steps, np) = (m.div_ceil(2), n.next_multiple_of(NR));
    assert_eq!(xp.len(), steps * k, "x pairs must be [m / 2, k]");
    assert_eq!(
        yp.len(),
        steps * np,
        "y pairs must be [m / 2, n padded to 16]"
    );
    if m == 0 || k == 0 || n == 0 {
        return vec![0.0; k * n];
    }
    assert!(
        super::super::cpu::bf16_products(),
        "no bf16 products on this CPU"
    );
    let (rb, cb) = xt_y_grid(k, n, 4 * rayon::current_num_threads().max(1));
    let mut out = super::super::uninit(k * n);
    let c = SendPtr(out.as_mut_ptr().cast::<f32>());
    let blocks = (k.div_ceil(rb), n.div_ceil(cb));
    (0..blocks.0 * blocks.1).into_par_iter().for_each(|t| {
        let (r0, c0) = (t / blocks.1 * rb, t % blocks.1 * cb);
        let (rows, cols) = ((k - r0).min(rb), (n - c0).min(cb));
        for s0 in (0..steps).step_by(XT_Y_STEPS) {
            let chunk = (steps - s0).min(XT_Y_STEPS);
            let a = PairRows {
                base: xp[s0 * k + r0..].as_ptr(),
                row: 1,
                step: k,
            };
            let b = PairPanels {
                base: yp[s0 * np + c0..].as_ptr(),
                ldb: np,
                pstride: NR,
            };
            let none = std::ptr::null();
            // SAFETY: AVX-512 BF16 present (asserted); `a` covers rows r0..r0 + rows (<= k) of
            // `chunk` pairs at stride k, `b` `chunk` pair rows of columns c0..c0 + cols (the
            // rows hold np >= n, zero-padded); the block (rows x cols at stride n from
            // (r0, c0)) is this task's alone, written by the first chunk (no accumulate) before
            // later ones read it.
            unsafe {
                let c = c.get().add(r0 * n + c0);
                sweep(rows, chunk, cols, a, b, none, s0 > 0, none, c, n)
            };
        }
    });
    // SAFETY: the blocks cover `out`, each written whole by its first chunk.
    unsafe { super::super::assume_init(out) }
}

/// Rows and columns per block of [`xt_y_pairs`]'s output: whole tiles (12 rows, 32 columns),
/// at least `tasks` blocks where the output has that many tiles, shaped to read the operands
/// the fewest times (every block reads its rows' `x` pairs and its columns' `y` pairs over the
/// whole reduction: `k` against `n` per block row or column).
fn xt_y_grid(k: usize, n: usize, tasks: usize) -> (usize, usize) {
    let (row_tiles, col_tiles) = (k.div_ceil(MR), n.div_ceil(V * NR));
    let best = (1..=row_tiles)
        .map(|r| {
            let c = tasks.div_ceil(r).min(col_tiles);
            let (r, c) = (
                row_tiles.div_ceil(row_tiles.div_ceil(r)),
                col_tiles.div_ceil(col_tiles.div_ceil(c)),
            );
            let short = (r * c < tasks.min(row_tiles * col_tiles)) as usize;
            ((short, c * k + r * n), (r, c))
        })
        .min()
        .map_or((1, 1), |(_, rc)| rc);
    (
        row_tiles.div_ceil(best.0) * MR,
        col_tiles.div_ceil(best.1) * V * NR,
    )
}

/// A pointer handed to the pool's tasks, each writing its own block.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks of `xt_y_pairs` write disjoint blocks through it.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Panels of pairs: panel `p` (16 columns) at `base + p·pstride`, its pair rows `ldb` apart.
#[derive(Clone, Copy)]
pub(super) struct PairPanels {
    pub base: *const u32,
    pub ldb: usize,
    pub pstride: usize,
}

/// The left operand: pair `s` of row `i` at `base + i·row + s·step`.
#[derive(Clone, Copy)]
pub(super) struct PairRows {
    pub base: *const u32,
    pub row: usize,
    pub step: usize,
}

/// `c [rows, n] (stride ldc) = (c if accumulate, else bias or 0) + a · b (+ res [rows, n])`
/// over `steps` pairs.
///
/// # Safety
/// AVX-512 F/BW/VL/DQ/BF16 and FMA available; `a` readable for `rows` rows of `steps` pairs,
/// `b`'s panels for `steps` pair rows covering `n` columns (the last panel padded to 16);
/// `bias` null or `n` floats; `res` null or `rows * n` floats; `c` readable (when
/// `accumulate`) and writable for `rows` rows of `n` at stride `ldc`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sweep(
    rows: usize,
    steps: usize,
    n: usize,
    a: PairRows,
    b: PairPanels,
    bias: *const f32,
    accumulate: bool,
    res: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: `bias` holds n floats (the caller's).
    let columns = unsafe { ColumnTiles::new(n, bias) };
    for r0 in (0..rows).step_by(ROWS_PER_SWEEP) {
        let sweep = (rows - r0).min(ROWS_PER_SWEEP);
        for (p, v, bias) in columns.iter(V) {
            let c0 = p * NR;
            for i0 in (r0..r0 + sweep).step_by(MR) {
                let mr = (r0 + sweep - i0).min(MR);
                // SAFETY (all): the extents are the caller's; each tile stays inside them.
                let t = unsafe {
                    Tile {
                        a: a.base.add(i0 * a.row),
                        a_row: a.row,
                        a_step: a.step,
                        b: b.base.add(p * b.pstride),
                        ldb: b.ldb,
                        pstride: b.pstride,
                        steps,
                        bias,
                        accumulate,
                        res: offset_or_null(res, i0 * n + c0),
                        ldr: n,
                        c: c.add(i0 * ldc + c0),
                        ldc,
                        mask: columns.mask,
                    }
                };
                // `tile::<mr, V, MASKED>(t)` for any `mr <= 12`
                macro_rules! tile_v {
                    ($v:literal, $masked:literal) => {
                        by_rows!(mr; 12 11 10 9 8 7 6 5 4 3 2 else 1; tile::<_, $v, $masked>(t))
                    };
                }
                // SAFETY: as above.
                unsafe {
                    match v {
                        0 => tile_v!(1, true),
                        1 => tile_v!(1, false),
                        _ => tile_v!(2, false),
                    }
                }
            }
        }
    }
}

/// One tile's operands (see [`sweep`]); with `MASKED`, one panel of which only the columns in
/// `mask` exist in `c` and `res`.
#[derive(Clone, Copy)]
struct Tile {
    a: *const u32,
    a_row: usize,
    a_step: usize,
    b: *const u32,
    ldb: usize,
    pstride: usize,
    steps: usize,
    bias: *const f32,
    accumulate: bool,
    res: *const f32,
    ldr: usize,
    c: *mut f32,
    ldc: usize,
    mask: __mmask16,
}

/// One `ROWS x 16·V` tile, accumulated in registers over the pairs.
///
/// # Safety
/// As [`sweep`], for this tile's rows and panels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
#[inline]
unsafe fn tile<const ROWS: usize, const V: usize, const MASKED: bool>(t: Tile) {
    // SAFETY: the caller guarantees the extents; __m512i and __m512bh are both 64-byte vectors.
    unsafe {
        let mut acc: [[__m512; V]; ROWS] = std::array::from_fn(|i| {
            std::array::from_fn(|v| {
                let at = t.c.add(i * t.ldc + v * NR);
                if t.accumulate {
                    if MASKED {
                        _mm512_maskz_loadu_ps(t.mask, at)
                    } else {
                        _mm512_loadu_ps(at)
                    }
                } else if t.bias.is_null() {
                    _mm512_setzero_ps()
                } else {
                    _mm512_loadu_ps(t.bias.add(v * NR))
                }
            })
        });
        let rows: [*const u32; ROWS] = std::array::from_fn(|i| t.a.add(i * t.a_row));
        let panels: [*const u32; V] = std::array::from_fn(|v| t.b.add(v * t.pstride));
        for s in 0..t.steps {
            let w: [__m512bh; V] = std::array::from_fn(|v| {
                std::mem::transmute(_mm512_loadu_si512(panels[v].add(s * t.ldb).cast()))
            });
            for (acc, row) in acc.iter_mut().zip(&rows) {
                // unaligned: pairs read in place from bf16 rows may start at any even byte
                let pair = row.add(s * t.a_step).read_unaligned();
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                for (acc, &w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_dpbf16_ps(*acc, x, w);
                }
            }
        }
        store_avx512_tile!(acc, t, MASKED);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PackedRhs, gemm_rows, gemm_rows_plus};
    use super::*;
    use crate::ops::kernels::testutil::*;

    fn rounded(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| round_bf16(v) as f64).collect()
    }

    #[test]
    fn scalar_rounding_is_the_instructions() {
        if skip_without_bf16_products() {
            return;
        }
        let mut x = uniform(&mut rng(90), 100_000, 1e4);
        x.extend([
            0.0,
            -0.0,
            1e-40,
            -1e-40,
            f32::MIN_POSITIVE,
            f32::MAX,
            -f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1.0 + 2f32.powi(-8),         // a tie, rounds down to even
            1.0 + 3.0 * 2f32.powi(-8),   // a tie, rounds up to even
            f32::from_bits(0x7f7f_ffff), // rounds to +inf
            f32::from_bits(0x7fc0_1234), // a quiet NaN with payload
            f32::from_bits(0x7f80_0001), // a signalling NaN
        ]);
        for chunk in x.chunks(16) {
            let mut got = [0u16; 16];
            // SAFETY: bf16 products checked above; 16 lanes read (masked) and written.
            unsafe { instruction(chunk, &mut got) };
            for (v, g) in chunk.iter().zip(got) {
                assert_eq!(bf16_bits(*v), g, "{v:e} ({:#x})", v.to_bits());
            }
        }
        assert_eq!(round_bf16(1.0 + 2f32.powi(-10)), 1.0);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")]
    unsafe fn instruction(x: &[f32], out: &mut [u16; 16]) {
        // SAFETY: the caller checked the features; `x` has at most 16 floats.
        unsafe {
            let v = widened(x.as_ptr(), x.len());
            let mut wide = [0u32; 16];
            _mm512_storeu_si512(wide.as_mut_ptr().cast(), v);
            for (o, w) in out.iter_mut().zip(wide) {
                *o = w as u16;
            }
        }
    }

    /// `gemm_rows` with bf16 operands against f64 on the bf16-rounded operands: edge rows and
    /// columns, odd k, bias, residual, a transposed right operand.
    #[test]
    fn products_vs_f64_on_rounded_operands() {
        if skip_without_bf16_products() {
            return;
        }
        let mut rg = rng(91);
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 3, 17),
            (13, 33, 40),
            (50, 128, 100),
            (29, 64, 80),
            (100, 257, 48),
        ] {
            for transposed in [false, true] {
                let lda = k + 1;
                let a = uniform(&mut rg, m * lda, 1.0);
                let b = uniform(&mut rg, k * n, 1.0);
                let bias = uniform(&mut rg, n, 1.0);
                let res = uniform(&mut rg, m * n, 1.0);
                let (a64, b64) = (rounded(&a), rounded(&b));
                let (view, get): (View<'_>, Box<dyn Fn(usize, usize) -> f64>) = if transposed {
                    (View::t(&b, k), Box::new(|p, j| b64[j * k + p]))
                } else {
                    (View::rows(&b, n), Box::new(|p, j| b64[p * n + j]))
                };
                let rhs = PackedRhs::new_bf16(view, k, n);
                let want: Vec<f64> = (0..m * n)
                    .map(|e| {
                        let (i, j) = (e / n, e % n);
                        bias[j] as f64 + (0..k).map(|p| a64[i * lda + p] * get(p, j)).sum::<f64>()
                    })
                    .collect();
                let mut dst = crate::ops::kernels::uninit(m * n);
                let got = gemm_rows(m, &a, lda, &rhs, Some(&bias), &mut dst).to_vec();
                let tag = format!("bf16 {m}x{k}x{n} t={transposed}");
                assert_close(&tag, &got, &want, 1e-6);
                let mut dst = crate::ops::kernels::uninit(m * n);
                let plus = gemm_rows_plus(m, &a, lda, &rhs, Some(&bias), &res, &mut dst);
                let apart: Vec<f32> = got.iter().zip(&res).map(|(&y, &r)| r + y).collect();
                assert_eq!(bits(plus), bits(&apart), "{tag} residual");
            }
        }
    }

    #[test]
    fn xt_y_vs_f64_on_rounded_operands_and_thread_free() {
        if skip_without_bf16_products() {
            return;
        }
        let mut rg = rng(92);
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 17),
            (37, 13, 40),
            (1030, 64, 100),
            (601, 130, 48),
        ] {
            let x = uniform(&mut rg, m * k, 1.0);
            let y = uniform(&mut rg, m * n, 1.0);
            let (x64, y64) = (rounded(&x), rounded(&y));
            let want: Vec<f64> = (0..k * n)
                .map(|e| {
                    (0..m)
                        .map(|i| x64[i * k + e / n] * y64[i * n + e % n])
                        .sum()
                })
                .collect();
            assert_close(
                &format!("xt_y {m}x{k}x{n}"),
                &xt_y(&x, &y, m, k, n),
                &want,
                1e-6,
            );
            assert_deterministic("xt_y", || vec![xt_y(&x, &y, m, k, n)]);
        }
    }
}
