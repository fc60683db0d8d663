//! Fused f32 CPU kernels for I-JEPA training on burn-flex.
//!
//! burn-flex loses most of its non-GEMM time to permute copies, decomposed
//! LayerNorm backward, scalar libm `erf`, broadcast bias adds and allocation. Each
//! module here is one fused kernel family on contiguous row-major f32 slices,
//! meant to be wrapped as custom backend ops (with autodiff backward nodes):
//!
//! - [`attention`]: multi-head attention on the fused qkv output, lse-only backward.
//! - [`layernorm`]: affine and parameter-free LayerNorm, one pass per row each way.
//! - [`gelu`]: exact GELU and its derivative with a vectorisable erf.
//! - [`linear`]: `x W + b` with the bias folded into the GEMM, optionally fused with GELU.
//! - [`optim`]: AdamW (torch semantics) and the EMA target update, in place.
//! - [`math`]: branch-free `exp`, `exp2`, `erf` and lane-parallel reductions.
//! - [`matmul`]: the bounds-checked strided `gemm::gemm` wrapper (the only `unsafe`).
//!
//! Conventions: row-major contiguous tensors; parallelism on the current rayon
//! pool, over independent rows or batch items; reductions over rows use a fixed
//! chunking and add partial sums in chunk order, so every result is bitwise
//! independent of the thread count. Outputs are returned as fresh `Vec`s.

pub mod attention;
pub mod gelu;
pub mod layernorm;
pub mod linear;
pub mod math;
pub mod matmul;
pub mod optim;

#[cfg(test)]
mod testutil;

/// A zeroed buffer of `len` floats, zeroed by the thread pool in pieces of `chunk`: the
/// serial memset inside `vec![0.0; len]` of the large activation buffers was ~5 % of a
/// training step's CPU time, with the other cores idle.
pub fn zeros_par(len: usize, chunk: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .for_each(|c| {
            for x in c {
                x.write(0.0);
            }
        });
    // SAFETY: the first `len` elements were all initialised just above.
    unsafe { v.set_len(len) };
    v
}
