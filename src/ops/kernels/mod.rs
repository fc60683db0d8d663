//! Fused f32 CPU kernels for I-JEPA training on burn-flex.
//!
//! burn-flex loses most of its non-GEMM time to permute copies, decomposed
//! LayerNorm backward, scalar libm `erf`, broadcast bias adds and allocation. Each
//! module here is one fused kernel family on contiguous row-major f32 slices,
//! meant to be wrapped as custom backend ops (with autodiff backward nodes):
//!
//! - [`cpu`]: the kernel path of this process (AVX-512, AVX2 or portable), chosen once.
//! - [`attention`]: multi-head attention on the fused qkv output, lse-only backward.
//! - [`layernorm`]: affine and parameter-free LayerNorm, one pass per row each way.
//! - [`gelu`]: exact GELU and its derivative with a vectorisable erf.
//! - [`linear`]: `x W + b` with the bias folded into the GEMM, optionally fused with GELU.
//! - [`optim`]: AdamW (torch semantics) and the EMA target update, in place.
//! - [`math`]: branch-free `exp`, `exp2`, `erf` and lane-parallel reductions.
//! - [`matmul`]: the bounds-checked strided `gemm::gemm` wrapper and the register-tiled
//!   AVX2/FMA products on packed (or in-place) right operands.
//!
//! Conventions: row-major contiguous tensors; parallelism on the current rayon
//! pool, over independent rows or batch items; reductions over rows use a fixed
//! chunking and add partial sums in chunk order, so every result is bitwise
//! independent of the thread count. Outputs are returned as fresh `Vec`s.

pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod attention_bf16;
#[cfg(target_arch = "x86_64")]
mod attention_bf16_rows;
pub mod cpu;
pub mod gelu;
pub mod layernorm;
pub mod linear;
pub mod math;
pub mod matmul;
pub mod optim;

#[cfg(test)]
pub(crate) mod testutil;

/// An output buffer of `len` floats, not yet initialised: the kernel's own parallel loop
/// initialises each piece with [`zeroed`] right before computing it, while it is in cache,
/// instead of a separate zeroing pass over the whole (often larger than cache) buffer.
pub fn uninit(len: usize) -> Vec<std::mem::MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    v.resize_with(len, std::mem::MaybeUninit::uninit);
    v
}

/// Initialised floats viewed as possibly uninitialised ones, for a kernel that only writes.
///
/// # Safety
/// Nothing may store an uninitialised value through the returned slice (the kernels taking
/// `MaybeUninit` outputs only write floats), or `v` would hold uninitialised memory.
pub unsafe fn as_uninit(v: &mut [f32]) -> &mut [std::mem::MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller upholds the write contract.
    unsafe { &mut *(v as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) }
}

/// Zero `piece` and view it as initialised floats.
pub fn zeroed(piece: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    for x in piece.iter_mut() {
        x.write(0.0);
    }
    // SAFETY: every element was written just above; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(piece as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// The buffer of [`uninit`] once every piece of it went through [`zeroed`].
///
/// # Safety
/// Every element of `v` must have been initialised.
pub unsafe fn assume_init(v: Vec<std::mem::MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, same layout (MaybeUninit<f32> is repr(transparent)); the
    // caller guarantees initialisation.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}
