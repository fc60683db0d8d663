//! Bounds-checked strided wrapper around `gemm::gemm` (the GEMM burn-flex uses).
//!
//! Why: every kernel reads operands in place with arbitrary row/column strides
//! (heads inside the fused qkv buffer, transposed views of weights) instead of
//! materialising permuted copies. Keeping the single `unsafe` call here, behind
//! explicit bounds checks, lets the kernels themselves stay safe code.

pub use gemm::Parallelism;

/// A read-only strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Row-major view with row stride `rs` (column stride 1).
    pub fn rows(data: &'a [f32], rs: usize) -> Self {
        Self { data, rs, cs: 1 }
    }
    /// Transposed view of a row-major matrix with row stride `rs`:
    /// element `(i, j)` of the view is element `(j, i)` of the matrix.
    pub fn t(data: &'a [f32], rs: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: rs,
        }
    }
}

/// `dst[m x n] (row stride dst_rs, col stride 1) = [dst +] beta * lhs[m x k] * rhs[k x n]`.
///
/// With `accumulate == false` the previous content of `dst` is ignored (never read).
/// Panics if any accessed element lies outside its slice.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    beta: f32,
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
                dst[i * dst_rs..i * dst_rs + n].fill(0.0);
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
            1.0,
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
