//! Matrix products: a bounds-checked strided wrapper around `gemm::gemm` (the GEMM burn-flex
//! uses), and register-tiled AVX2/FMA products for the tall, narrow shapes of I-JEPA.
//!
//! Why: every kernel reads operands in place with arbitrary row/column strides
//! (heads inside the fused qkv buffer, transposed views of weights) instead of
//! materialising permuted copies. The `unsafe` calls stay here, behind explicit bounds
//! checks, so the kernels themselves stay safe code.

pub use gemm::Parallelism;
use rayon::prelude::*;

/// A read-only strided matrix view: element `(i, j)` is `data[i * rs + j * cs]` (f32 unless
/// said otherwise; the evaluation code multiplies f64 matrices too).
#[derive(Clone, Copy)]
pub struct View<'a, T = f32> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> View<'a, T> {
    /// Row-major view with row stride `rs` (column stride 1).
    pub fn rows(data: &'a [T], rs: usize) -> Self {
        Self { data, rs, cs: 1 }
    }
    /// Transposed view of a row-major matrix with row stride `rs`:
    /// element `(i, j)` of the view is element `(j, i)` of the matrix.
    pub fn t(data: &'a [T], rs: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: rs,
        }
    }
}

/// The element types `gemm_strided` multiplies.
pub trait Element: Copy + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Element for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// `dst[m x n] (row stride dst_rs, col stride 1) = [dst +] beta * lhs[m x k] * rhs[k x n]`.
///
/// With `accumulate == false` the previous content of `dst` is ignored (never read).
/// Panics if any accessed element lies outside its slice.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    lhs: View<'_, T>,
    rhs: View<'_, T>,
    beta: T,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(m == 1 || dst_rs >= n, "dst rows overlap");
    assert!((m - 1) * dst_rs + n <= dst.len(), "dst out of bounds");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(T::ZERO);
            }
        }
        return;
    }
    assert!(
        (m - 1) * lhs.rs + (k - 1) * lhs.cs < lhs.data.len(),
        "lhs out of bounds"
    );
    assert!(
        (k - 1) * rhs.rs + (n - 1) * rhs.cs < rhs.data.len(),
        "rhs out of bounds"
    );
    // SAFETY: the asserts above guarantee every element gemm touches lies inside the
    // corresponding slice; `dst` is a unique borrow (so it cannot alias lhs/rhs) and its
    // rows do not overlap each other.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::ONE,
            beta,
            false,
            false,
            false,
            par,
        );
    }
}

/// Parallelism for a stand-alone product: all threads of the current rayon pool.
pub fn par_all() -> Parallelism {
    let t = rayon::current_num_threads();
    if t <= 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(t)
    }
}

/// Columns per panel of a [`PackedRhs`] (two AVX registers of f32).
const NR: usize = 16;
/// Rows per register tile (6 x 16 accumulators: 12 of the 16 AVX registers).
const MR: usize = 6;
/// Rows of the left operand swept per pass over the panels (48 rows x K stay in L1/L2 while
/// every panel of the right operand streams past them).
const ROWS_PER_SWEEP: usize = 48;

/// The right-hand operand of many row-block products, packed once: `n` columns cut into
/// panels of 16, each panel stored `[k][NR]` contiguously (zero-padded past `n`).
///
/// Why: I-JEPA's products are tall and narrow (M = batch x tokens in the thousands,
/// K, N = 64..1536). `gemm`, called per block of rows, re-packs both operands for every
/// block and needs its output zeroed or bias-filled first; a 6x16 FMA register tile that
/// reads the left operand in place, the right one from these panels packed once, starts from
/// the bias in registers and writes its output once is on par with `gemm` to ~15 % faster
/// per product on this project's machine (`cargo bench --bench matmul`) and removes those
/// passes. Products whose *left* operand is transposed (the weight gradient `xᵀ dy`,
/// `Pᵀ dO` in attention) stay on `gemm`: a first tiled `xᵀ dy` (transposing x in chunks)
/// was slower.
pub struct PackedRhs<'a> {
    k: usize,
    n: usize,
    panels: Vec<f32>,
    /// The unpacked operand: products without AVX2 + FMA go through `gemm` on it.
    view: View<'a>,
    fallback: bool,
    /// Panels read in place from `view` (row stride `view.rs`) instead of `panels`.
    borrowed: bool,
}

impl<'a> PackedRhs<'a> {
    /// Pack the `k x n` matrix `rhs` (any strides). Without AVX2 + FMA nothing is packed and
    /// products go through `gemm`.
    pub fn new(rhs: View<'a>, k: usize, n: usize) -> Self {
        Self::build(rhs, k, n, register_tiles())
    }

    /// Like [`PackedRhs::new`], but when the rows of `rhs` are contiguous and `n` is a multiple
    /// of 16 the tiles read it in place (no copy). For small operands used once, such as an
    /// attention head's V or K, where packing would cost as much as the product.
    pub fn in_place(rhs: View<'a>, k: usize, n: usize) -> Self {
        if register_tiles() && k > 0 && n > 0 && rhs.cs == 1 && n.is_multiple_of(NR) {
            assert!((k - 1) * rhs.rs + n <= rhs.data.len(), "rhs out of bounds");
            return Self {
                k,
                n,
                panels: Vec::new(),
                view: rhs,
                fallback: false,
                borrowed: true,
            };
        }
        Self::new(rhs, k, n)
    }

    /// Columns of the operand (`n`).
    pub fn cols(&self) -> usize {
        self.n
    }

    fn build(rhs: View<'a>, k: usize, n: usize, tiles: bool) -> Self {
        if !tiles || k == 0 || n == 0 {
            return Self {
                k,
                n,
                panels: Vec::new(),
                view: rhs,
                fallback: true,
                borrowed: false,
            };
        }
        assert!(
            (k - 1) * rhs.rs + (n - 1) * rhs.cs < rhs.data.len(),
            "rhs out of bounds"
        );
        // Every element is written below (the zero padding past `n` included): no zeroing
        // pass first (a serial memset of the whole operand on the calling thread).
        let mut panels = super::uninit(n.div_ceil(NR) * k * NR);
        let pack = |(p, panel): (usize, &mut [std::mem::MaybeUninit<f32>])| {
            let c0 = p * NR;
            let cols = (n - c0).min(NR);
            if rhs.cs == 1 {
                // rows of the operand are contiguous: 16-float row pieces
                for (t, row) in panel.chunks_exact_mut(NR).enumerate() {
                    let src = &rhs.data[t * rhs.rs + c0..t * rhs.rs + c0 + cols];
                    for (v, &x) in row.iter_mut().zip(src) {
                        v.write(x);
                    }
                    row[cols..].iter_mut().for_each(|v| {
                        v.write(0.0);
                    });
                }
            } else if rhs.rs == 1 {
                // a transposed view (its columns are contiguous): each panel row gathers one
                // float from each of `cols` columns, written in order (writing down the
                // columns instead, 16 floats apart, was twice as slow)
                let srcs: [&[f32]; NR] = std::array::from_fn(|j| {
                    let j = j.min(cols - 1);
                    &rhs.data[(c0 + j) * rhs.cs..(c0 + j) * rhs.cs + k]
                });
                for (t, row) in panel.chunks_exact_mut(NR).enumerate() {
                    for (j, (v, src)) in row.iter_mut().zip(&srcs).enumerate() {
                        v.write(if j < cols { src[t] } else { 0.0 });
                    }
                }
            } else {
                for (t, row) in panel.chunks_exact_mut(NR).enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        v.write(if j < cols {
                            rhs.data[t * rhs.rs + (c0 + j) * rhs.cs]
                        } else {
                            0.0
                        });
                    }
                }
            }
        };
        // Small operands (attention heads, inside an already-parallel loop) pack serially.
        if k * n < 1 << 16 {
            panels.chunks_mut(k * NR).enumerate().for_each(pack);
        } else {
            panels.par_chunks_mut(k * NR).enumerate().for_each(pack);
        }
        // SAFETY: each panel's k rows of NR were written above (values, then zero padding).
        let panels = unsafe { super::assume_init(panels) };
        Self {
            k,
            n,
            panels,
            view: rhs,
            fallback: false,
            borrowed: false,
        }
    }
}

/// `true` when the register-tiled AVX2 + FMA kernel can run on this CPU.
fn register_tiles() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::math::avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `dst[rows x n] = lhs[rows x k] · rhs (+ bias broadcast over rows)`, single-threaded (for use
/// inside a parallel loop over row blocks). `lhs` is row-major with row stride `lda`, `dst`
/// contiguous `[rows, n]`. Every element of `dst` is written, none is read: `dst` may be
/// uninitialised; the initialised view is returned.
pub fn gemm_rows<'d>(
    rows: usize,
    lhs: &[f32],
    lda: usize,
    rhs: &PackedRhs<'_>,
    bias: Option<&[f32]>,
    dst: &'d mut [std::mem::MaybeUninit<f32>],
) -> &'d mut [f32] {
    assert_eq!(dst.len(), rows * rhs.n, "dst must be [rows, n]");
    gemm_rows_strided(rows, lhs, lda, rhs, bias, dst, rhs.n);
    // SAFETY: `gemm_rows_strided` wrote every (row, column) of dst, which has no gaps.
    unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// `dst = residual + (lhs · rhs + bias)`, as [`gemm_rows`] with `residual [rows, n]` added to
/// each tile as it is stored: the same floats as the sum of the two done apart (the product
/// and bias are rounded first, then the addition), without a pass of its own over `dst`.
pub fn gemm_rows_plus<'d>(
    rows: usize,
    lhs: &[f32],
    lda: usize,
    rhs: &PackedRhs<'_>,
    bias: Option<&[f32]>,
    residual: &[f32],
    dst: &'d mut [std::mem::MaybeUninit<f32>],
) -> &'d mut [f32] {
    assert_eq!(dst.len(), rows * rhs.n, "dst must be [rows, n]");
    assert_eq!(residual.len(), rows * rhs.n, "residual must be [rows, n]");
    product(rows, lhs, lda, rhs, bias, Some(residual), dst, rhs.n);
    // SAFETY: `product` wrote every (row, column) of dst, which has no gaps.
    unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// As [`gemm_rows`] into the `[rows, n]` sub-matrix of `dst` with row stride `ldc`: every
/// element of the sub-matrix is written, none is read; elements between its rows are left
/// untouched.
pub fn gemm_rows_strided(
    rows: usize,
    lhs: &[f32],
    lda: usize,
    rhs: &PackedRhs<'_>,
    bias: Option<&[f32]>,
    dst: &mut [std::mem::MaybeUninit<f32>],
    ldc: usize,
) {
    product(rows, lhs, lda, rhs, bias, None, dst, ldc)
}

/// The products of [`gemm_rows_strided`] and [`gemm_rows_plus`]; `residual`, when given, is
/// `[rows, n]` contiguous.
#[allow(clippy::too_many_arguments)]
fn product(
    rows: usize,
    lhs: &[f32],
    lda: usize,
    rhs: &PackedRhs<'_>,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    dst: &mut [std::mem::MaybeUninit<f32>],
    ldc: usize,
) {
    let (k, n) = (rhs.k, rhs.n);
    if rows == 0 || n == 0 {
        return;
    }
    assert!(rows == 1 || ldc >= n, "dst rows overlap");
    assert!((rows - 1) * ldc + n <= dst.len(), "dst out of bounds");
    check_operands(rows, lhs, lda, rhs, bias);
    if rhs.fallback || k == 0 {
        // the portable path: `gemm` into a contiguous buffer, copied into the rows
        let mut tmp = vec![0.0f32; rows * n];
        if let Some(b) = bias {
            tmp.chunks_exact_mut(n)
                .for_each(|row| row.copy_from_slice(b));
        }
        if k > 0 {
            let lhs = View::rows(lhs, lda);
            let acc = bias.is_some();
            gemm_strided(
                rows,
                n,
                k,
                &mut tmp,
                n,
                acc,
                lhs,
                rhs.view,
                1.0,
                Parallelism::None,
            );
        }
        for (i, row) in tmp.chunks_exact(n).enumerate() {
            let out = dst[i * ldc..i * ldc + n].iter_mut().zip(row);
            match residual {
                Some(r) => out.zip(&r[i * n..(i + 1) * n]).for_each(|((d, &v), &r)| {
                    d.write(r + v);
                }),
                None => out.for_each(|(d, &v)| {
                    d.write(v);
                }),
            }
        }
        return;
    }
    // SAFETY: tile path available; operands checked; dst bounds asserted above; the residual
    // (asserted [rows, n] by the caller) is read at the same offsets as a contiguous dst.
    unsafe {
        tiles(
            rows,
            lhs,
            lda,
            rhs,
            bias,
            residual.map_or(std::ptr::null(), |r| r.as_ptr()),
            dst.as_mut_ptr().cast(),
            ldc,
        )
    };
}

fn check_operands(rows: usize, lhs: &[f32], lda: usize, rhs: &PackedRhs<'_>, bias: Option<&[f32]>) {
    if let Some(b) = bias {
        assert_eq!(b.len(), rhs.n, "bias must be [n]");
    }
    let k = rhs.k;
    assert!(
        k == 0 || rows == 0 || (rows - 1) * lda + k <= lhs.len(),
        "lhs out of bounds"
    );
}

/// The register-tile sweep: writes `c[i * ldc + j]` for every `i < rows`, `j < n`, plus
/// `res[i * n + j]` when `res` is not null.
///
/// # Safety
/// `rhs` packed (not fallback, k > 0); `lhs` checked by `check_operands`; `c` writable for
/// `rows` rows of `n` at stride `ldc`; `res` null or readable for `rows * n` floats.
#[allow(unused_variables, clippy::too_many_arguments)]
unsafe fn tiles(
    rows: usize,
    lhs: &[f32],
    lda: usize,
    rhs: &PackedRhs<'_>,
    bias: Option<&[f32]>,
    res: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let (k, n) = (rhs.k, rhs.n);
        let mut padded_bias = [0.0f32; NR];
        let mut tile = [0.0f32; MR * NR];
        for r0 in (0..rows).step_by(ROWS_PER_SWEEP) {
            let sweep = (rows - r0).min(ROWS_PER_SWEEP);
            for p in 0..n.div_ceil(NR) {
                let c0 = p * NR;
                let cols = (n - c0).min(NR);
                let (panel, ldb) = if rhs.borrowed {
                    let rs = rhs.view.rs;
                    (&rhs.view.data[c0..c0 + (k - 1) * rs + NR], rs)
                } else {
                    (&rhs.panels[p * k * NR..(p + 1) * k * NR], NR)
                };
                let bias = bias.map(|b| {
                    padded_bias[..cols].copy_from_slice(&b[c0..c0 + cols]);
                    &padded_bias
                });
                for i0 in (r0..r0 + sweep).step_by(MR) {
                    let mr = (r0 + sweep - i0).min(MR);
                    let a = &lhs[i0 * lda..(i0 + mr - 1) * lda + k];
                    // SAFETY (both calls): AVX2 + FMA present (packed implies
                    // register_tiles); `a` holds mr rows of k at stride lda, `panel` k rows
                    // of NR at stride ldb;
                    // the destination is inside `c`'s extent (caller) or the local tile.
                    unsafe {
                        let res = if res.is_null() {
                            res
                        } else {
                            res.add(i0 * n + c0)
                        };
                        if cols == NR {
                            let c = c.add(i0 * ldc + c0);
                            tile_avx2(mr, a, lda, panel, ldb, k, bias, res, n, c, ldc);
                        } else {
                            let t = tile.as_mut_ptr();
                            tile_avx2(mr, a, lda, panel, ldb, k, bias, std::ptr::null(), 0, t, NR);
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
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("register tiles are x86-64 only")
}

/// One `mr x 16` tile (`mr <= 6`): `c = a · panel (+ bias)`, accumulated in registers over `k`,
/// then `res` (its rows at stride `ldr`) added when not null.
///
/// # Safety
/// AVX2 and FMA available; `a` readable for `mr` rows of `k` at stride `lda`; `panel` holds
/// `k` rows of 16 floats at stride `ldb`; `res` null or readable for `mr` rows of 16 at stride
/// `ldr`; `c` writable for `mr` rows of 16 at stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    mr: usize,
    a: &[f32],
    lda: usize,
    panel: &[f32],
    ldb: usize,
    k: usize,
    bias: Option<&[f32; NR]>,
    res: *const f32,
    ldr: usize,
    c: *mut f32,
    ldc: usize,
) {
    let (a, b) = (a.as_ptr(), panel.as_ptr());
    // SAFETY: forwarded from the caller.
    unsafe {
        match mr {
            6 => tile_n::<6>(a, lda, b, ldb, k, bias, res, ldr, c, ldc),
            5 => tile_n::<5>(a, lda, b, ldb, k, bias, res, ldr, c, ldc),
            4 => tile_n::<4>(a, lda, b, ldb, k, bias, res, ldr, c, ldc),
            3 => tile_n::<3>(a, lda, b, ldb, k, bias, res, ldr, c, ldc),
            2 => tile_n::<2>(a, lda, b, ldb, k, bias, res, ldr, c, ldc),
            _ => tile_n::<1>(a, lda, b, ldb, k, bias, res, ldr, c, ldc),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_n<const ROWS: usize>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    k: usize,
    bias: Option<&[f32; NR]>,
    res: *const f32,
    ldr: usize,
    c: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the extents (see tile_avx2).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::kernels::as_uninit;
    use crate::ops::kernels::testutil::*;

    /// `gemm_rows` against an f64 reference: edge rows (m % 6) and columns (n % 16), k = 0,
    /// bias or none, a transposed (strided) right operand, both the register-tile path and
    /// the portable `gemm` path.
    #[test]
    fn gemm_rows_vs_f64() {
        let mut rg = rng(7);
        let shapes = [
            (1, 1, 1),
            (5, 3, 17),
            (6, 16, 16),
            (7, 0, 5),
            (13, 33, 40),
            (50, 128, 100),
            (20, 40, 48),
        ];
        for &(m, k, n) in &shapes {
            for transposed in [false, true] {
                for with_bias in [false, true] {
                    for tiles in [false, register_tiles()] {
                        let lda = k + 3; // a row stride wider than k
                        let a = uniform(&mut rg, m * lda, 1.0);
                        let b = uniform(&mut rg, k * n, 1.0);
                        let bias = uniform(&mut rg, n, 1.0);
                        // B as [k, n] row-major, or stored transposed as [n, k]
                        let (bv, get): (View<'_>, Box<dyn Fn(usize, usize) -> f64>) = if transposed
                        {
                            (View::t(&b, k), Box::new(|p, j| b[j * k + p] as f64))
                        } else {
                            (View::rows(&b, n), Box::new(|p, j| b[p * n + j] as f64))
                        };
                        let rhs = PackedRhs::build(bv, k, n, tiles);
                        let mut dst = crate::ops::kernels::uninit(m * n);
                        let got =
                            gemm_rows(m, &a, lda, &rhs, with_bias.then_some(&bias[..]), &mut dst);
                        let want: Vec<f64> = (0..m * n)
                            .map(|e| {
                                let (i, j) = (e / n, e % n);
                                let dot: f64 =
                                    (0..k).map(|p| a[i * lda + p] as f64 * get(p, j)).sum();
                                dot + if with_bias { bias[j] as f64 } else { 0.0 }
                            })
                            .collect();
                        assert_close(
                            &format!("{m}x{k}x{n} t={transposed} bias={with_bias} tiles={tiles}"),
                            got,
                            &want,
                            1e-6,
                        );
                        // with a residual: the product's floats plus the residual, bitwise
                        let got = got.to_vec();
                        let res = uniform(&mut rg, m * n, 2.0);
                        let mut dst = crate::ops::kernels::uninit(m * n);
                        let b = with_bias.then_some(&bias[..]);
                        let plus = gemm_rows_plus(m, &a, lda, &rhs, b, &res, &mut dst);
                        let apart: Vec<f32> = got.iter().zip(&res).map(|(&y, &r)| r + y).collect();
                        assert_eq!(plus, &apart[..], "{m}x{k}x{n} residual tiles={tiles}");
                        // strided destination: the gaps between rows keep their values;
                        // returns (the product's rows, the whole destination)
                        let ldc = n + 2;
                        let b = with_bias.then_some(&bias[..]);
                        let strided = |rhs: &PackedRhs<'_>| {
                            let mut dst = vec![7.0f32; m * ldc];
                            // SAFETY: the product only writes floats.
                            let out = unsafe { as_uninit(&mut dst) };
                            gemm_rows_strided(m, &a, lda, rhs, b, out, ldc);
                            let got: Vec<f32> = dst
                                .chunks_exact(ldc)
                                .flat_map(|r| r[..n].iter().copied())
                                .collect();
                            (got, dst)
                        };
                        let (got, dst) = strided(&rhs);
                        assert_close(&format!("strided {m}x{k}x{n}"), &got, &want, 1e-6);
                        assert!(dst.chunks_exact(ldc).all(|r| r[n..] == [7.0, 7.0]));
                        // read in place (row-contiguous operands with n % 16 == 0), else packed
                        let (got, _) = strided(&PackedRhs::in_place(bv, k, n));
                        assert_close(&format!("in place {m}x{k}x{n}"), &got, &want, 1e-6);
                    }
                }
            }
        }
    }
}
