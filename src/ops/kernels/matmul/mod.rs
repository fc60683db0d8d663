//! Matrix products: a bounds-checked strided wrapper around `gemm::gemm` (the GEMM burn-flex
//! uses), and register-tiled products for the tall, narrow shapes of I-JEPA: AVX-512
//! ([`avx512`], `12 x 32` tiles) or AVX2 + FMA ([`avx2`], `6 x 16` tiles) as the kernel path
//! ([`super::cpu`]) says; on the portable path every product goes through `gemm`.
//!
//! Why: every kernel reads operands in place with arbitrary row/column strides
//! (heads inside the fused qkv buffer, transposed views of weights) instead of
//! materialising permuted copies. The `unsafe` calls stay here, behind explicit bounds
//! checks, so the kernels themselves stay safe code.

pub use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu::{KernelPath, path};

#[cfg(target_arch = "x86_64")]
#[macro_use]
mod tiles;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod bf16;
#[cfg(target_arch = "x86_64")]
pub mod bf16_pairs;

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

/// Columns per panel of a [`PackedRhs`] (two AVX registers or one AVX-512 register of f32;
/// the AVX-512 tiles take two panels side by side).
const NR: usize = 16;

/// Rows per register tile on the process's kernel path: a multiple of it keeps the last tile
/// of a block of rows full.
pub fn tile_rows() -> usize {
    match path() {
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512 => avx512::MR,
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => avx2::MR,
        _ => 6,
    }
}

/// Where the tiles read the right operand: panel `p` (16 columns) starts at `base + p·pstride`,
/// its rows `ldb` floats apart (packed: `ldb = 16`, `pstride = 16·k`; read in place from a
/// row-major operand: `ldb` its row stride, `pstride = 16`).
#[derive(Clone, Copy)]
struct Panels {
    base: *const f32,
    ldb: usize,
    pstride: usize,
}

impl Panels {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn panel(&self, p: usize) -> *const f32 {
        self.base.wrapping_add(p * self.pstride)
    }
}

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
    /// The unpacked operand: products on the portable path go through `gemm` on it.
    view: View<'a>,
    /// The kernel path of the tiles (`Portable`: no panels, `gemm` on `view`).
    path: KernelPath,
    /// Panels read in place from `view` (row stride `view.rs`) instead of `panels`.
    borrowed: bool,
    /// bf16 panels of pairs ([`bf16::pack`]) when the products take bf16 operands.
    pairs: Option<Vec<u32>>,
}

impl<'a> PackedRhs<'a> {
    /// Pack the `k x n` matrix `rhs` (any strides). On the portable path nothing is packed and
    /// products go through `gemm`.
    pub fn new(rhs: View<'a>, k: usize, n: usize) -> Self {
        Self::build(rhs, k, n, path())
    }

    /// Pack `rhs` for products with bf16 operands and f32 accumulation ([`bf16`]): the left
    /// operand's rows are rounded to bf16 as the products read them.
    ///
    /// # Panics
    /// Where the CPU has no bf16 products ([`super::cpu::bf16_products`]).
    pub fn new_bf16(rhs: View<'a>, k: usize, n: usize) -> Self {
        assert!(super::cpu::bf16_products(), "no bf16 products on this CPU");
        let mut packed = Self::build(rhs, k, n, KernelPath::Portable);
        #[cfg(target_arch = "x86_64")]
        if k > 0 && n > 0 {
            packed.pairs = Some(bf16::pack(rhs, k, n));
            packed.path = KernelPath::Avx512;
        }
        packed
    }

    /// Like [`PackedRhs::new`], but when the rows of `rhs` are contiguous and `n` is a multiple
    /// of 16 the tiles read it in place (no copy). For small operands used once, such as an
    /// attention head's V or K, where packing would cost as much as the product.
    pub fn in_place(rhs: View<'a>, k: usize, n: usize) -> Self {
        Self::in_place_on(rhs, k, n, path())
    }

    fn in_place_on(rhs: View<'a>, k: usize, n: usize, path: KernelPath) -> Self {
        if path != KernelPath::Portable && k > 0 && n > 0 && rhs.cs == 1 && n.is_multiple_of(NR) {
            assert!((k - 1) * rhs.rs + n <= rhs.data.len(), "rhs out of bounds");
            return Self {
                k,
                n,
                panels: Vec::new(),
                view: rhs,
                path,
                borrowed: true,
                pairs: None,
            };
        }
        Self::build(rhs, k, n, path)
    }

    /// Columns of the operand (`n`).
    pub fn cols(&self) -> usize {
        self.n
    }

    fn build(rhs: View<'a>, k: usize, n: usize, path: KernelPath) -> Self {
        if path == KernelPath::Portable || k == 0 || n == 0 {
            return Self {
                k,
                n,
                panels: Vec::new(),
                view: rhs,
                path: KernelPath::Portable,
                borrowed: false,
                pairs: None,
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
            path,
            borrowed: false,
            pairs: None,
        }
    }

    /// The panels the tiles read.
    fn panels(&self) -> Panels {
        if self.borrowed {
            Panels {
                base: self.view.data.as_ptr(),
                ldb: self.view.rs,
                pstride: NR,
            }
        } else {
            Panels {
                base: self.panels.as_ptr(),
                ldb: NR,
                pstride: self.k * NR,
            }
        }
    }
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
    product(rows, lhs, lda, rhs, bias, Some(residual), dst, rhs.n, None);
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
    product(rows, lhs, lda, rhs, bias, None, dst, ldc, None)
}

/// As [`gemm_rows`] with bf16 operands (`rhs` from [`PackedRhs::new_bf16`], no bias), also
/// writing the left operand's rows as bf16 pairs across rows into `pairs`
/// (`[rows.div_ceil(2)][ldp]`, zero-padded; [`bf16::pairs_across_into`]): the layout the
/// weight gradient reads `dy` in, made while `dy`'s rows are in cache for this product.
#[cfg(target_arch = "x86_64")]
pub fn gemm_rows_keeping_pairs<'d>(
    rows: usize,
    lhs: &[f32],
    lda: usize,
    rhs: &PackedRhs<'_>,
    dst: &'d mut [std::mem::MaybeUninit<f32>],
    pairs: &mut [std::mem::MaybeUninit<u32>],
    ldp: usize,
) -> &'d mut [f32] {
    assert!(rhs.pairs.is_some(), "bf16 operands only");
    assert_eq!(dst.len(), rows * rhs.n, "dst must be [rows, n]");
    assert!(ldp >= rhs.k, "pair rows must hold k columns");
    assert!(pairs.len() >= rows.div_ceil(2) * ldp, "pairs too short");
    product(
        rows,
        lhs,
        lda,
        rhs,
        None,
        None,
        dst,
        rhs.n,
        Some((pairs, ldp)),
    );
    // SAFETY: `product` wrote every (row, column) of dst, which has no gaps.
    unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// As [`gemm_rows`] (and with `residual [rows, n]`, [`gemm_rows_plus`]) on a left operand
/// already rounded to bf16 by its producer (`lhs` row-major, row stride `lda`; `k` and `lda`
/// even): the bf16 tiles read its rows in place as pairs, with no conversion pass (`rhs` from
/// [`PackedRhs::new_bf16`]).
#[cfg(target_arch = "x86_64")]
pub fn gemm_rows_bf16<'d>(
    rows: usize,
    lhs: &[half::bf16],
    lda: usize,
    rhs: &PackedRhs<'_>,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    dst: &'d mut [std::mem::MaybeUninit<f32>],
) -> &'d mut [f32] {
    let (k, n) = (rhs.k, rhs.n);
    let pairs = rhs.pairs.as_ref().expect("bf16 operands only");
    assert_eq!(dst.len(), rows * n, "dst must be [rows, n]");
    assert!(
        k.is_multiple_of(2) && lda.is_multiple_of(2),
        "rows of whole pairs"
    );
    assert!(
        rows == 0 || (rows - 1) * lda + k <= lhs.len(),
        "lhs out of bounds"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias must be [n]");
    }
    if let Some(r) = residual {
        assert_eq!(r.len(), rows * n, "residual must be [rows, n]");
    }
    if rows > 0 {
        let a = bf16::PairRows {
            base: lhs.as_ptr().cast(),
            row: lda / 2,
            step: 1,
        };
        let b = bf16::PairPanels {
            base: pairs.as_ptr(),
            ldb: NR,
            pstride: k / 2 * NR,
        };
        let bias = bias.map_or(std::ptr::null(), <[f32]>::as_ptr);
        let res = residual.map_or(std::ptr::null(), <[f32]>::as_ptr);
        // SAFETY: bf16 products present (`new_bf16` checked them); the tiles read rows < rows of
        // k / 2 pairs (inside `lhs`, asserted; unaligned reads), the panels `pack` made for
        // k x n, the bias and residual (lengths asserted), and write the rows x n of `dst`.
        unsafe {
            let c = dst.as_mut_ptr().cast::<f32>();
            bf16::sweep(rows, k / 2, n, a, b, bias, false, res, c, n)
        };
    }
    // SAFETY: the sweep wrote every (row, column) of dst, which has no gaps.
    unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// The left operand's rows as bf16 pairs across rows, to fill during a bf16 product: the
/// buffer and its row stride.
type KeepPairs<'p> = Option<(&'p mut [std::mem::MaybeUninit<u32>], usize)>;

/// The products of [`gemm_rows_strided`], [`gemm_rows_plus`] and [`gemm_rows_keeping_pairs`];
/// `residual`, when given, is `[rows, n]` contiguous.
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
    keep: KeepPairs<'_>,
) {
    let (k, n) = (rhs.k, rhs.n);
    if rows == 0 || n == 0 {
        return;
    }
    assert!(rows == 1 || ldc >= n, "dst rows overlap");
    assert!((rows - 1) * ldc + n <= dst.len(), "dst out of bounds");
    check_operands(rows, lhs, lda, rhs, bias);
    if rhs.path == KernelPath::Portable || k == 0 {
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
    let (a, c) = (lhs.as_ptr(), dst.as_mut_ptr().cast::<f32>());
    let bias = bias.map_or(std::ptr::null(), <[f32]>::as_ptr);
    let res = residual.map_or(std::ptr::null(), <[f32]>::as_ptr);
    #[cfg(target_arch = "x86_64")]
    if let Some(pairs) = &rhs.pairs {
        // SAFETY: as below; `new_bf16` checked the bf16 products.
        unsafe { bf16_product(rows, lhs, lda, k, n, pairs, bias, res, c, ldc, keep) };
        return;
    }
    let b = rhs.panels();
    #[cfg(target_arch = "x86_64")]
    let s = tiles::Sweep {
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
    };
    // SAFETY: the path's features are present (`path()` and `build` choose only supported
    // ones); the operands were checked above (lhs rows, bias length, dst extent; the residual
    // is [rows, n], asserted by the caller); the panels cover k rows of n columns, the last
    // one zero-padded (or read in place, n a multiple of 16, bounds asserted in `in_place`).
    match rhs.path {
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512 => unsafe { avx512::sweep(s) },
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => unsafe { avx2::sweep(s) },
        _ => unreachable!("the portable path has no tiles"),
    }
}

thread_local! {
    /// The left operand's rows as bf16 pairs, per sweep.
    static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The bf16 product of [`product`]: the left operand converted to pairs one sweep of rows at a
/// time (into a per-thread buffer, in cache), then the bf16 tiles.
///
/// # Safety
/// bf16 products available; `pairs` packed by [`bf16::pack`] for `k x n` (`k, n > 0`); the
/// other operands as the f32 sweeps take them (checked by [`product`]).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_product(
    rows: usize,
    lhs: &[f32],
    lda: usize,
    k: usize,
    n: usize,
    pairs: &[u32],
    bias: *const f32,
    res: *const f32,
    c: *mut f32,
    ldc: usize,
    mut keep: KeepPairs<'_>,
) {
    let kp = k.div_ceil(2);
    let b = bf16::PairPanels {
        base: pairs.as_ptr(),
        ldb: NR,
        pstride: kp * NR,
    };
    PAIRS.with_borrow_mut(|buf| {
        let sweep = bf16::ROWS_PER_SWEEP;
        if buf.len() < sweep * kp {
            buf.resize(sweep * kp, 0);
        }
        for r0 in (0..rows).step_by(sweep) {
            let r = (rows - r0).min(sweep);
            bf16::pairs_along(&lhs[r0 * lda..], r, k, lda, buf);
            if let Some((keep, ldp)) = keep.as_mut() {
                // the sweep's rows again, from cache (r0 is even: sweeps are whole pairs)
                let at = r0 / 2 * *ldp;
                bf16::pairs_across_into(&lhs[r0 * lda..], r, k, lda, &mut keep[at..], *ldp);
            }
            // the next sweep's rows fetched into cache while this one computes: converted right
            // before their sweep, they would stall on memory with nothing to overlap
            let next = (r0 + sweep).min(rows);
            let ahead = &lhs[next * lda..((next + sweep).min(rows) * lda).min(lhs.len())];
            for line in ahead.chunks(16) {
                // SAFETY: a prefetch of an address inside `lhs`; it reads nothing.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                        line.as_ptr().cast(),
                    )
                };
            }
            let a = bf16::PairRows {
                base: buf.as_ptr(),
                row: kp,
                step: 1,
            };
            // SAFETY: forwarded (rows r0.. of the destination and residual).
            unsafe {
                let res = tiles::offset_or_null(res, r0 * n);
                bf16::sweep(r, kp, n, a, b, bias, false, res, c.add(r0 * ldc), ldc);
            }
        }
    });
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

#[cfg(test)]
mod tests;
