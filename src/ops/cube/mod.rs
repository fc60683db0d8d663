//! The fused operations as cubecl kernels, for every cubecl runtime (CUDA on NVIDIA GPUs,
//! wgpu: Vulkan, Metal, DX12, and Mesa's software Vulkan on which CI tests them): the same
//! [`IjepaBackend`] extension point as the CPU kernels, on burn's `CubeBackend` and its
//! autodiff wrapper ([`autodiff`]).
//!
//! | op | forward | backward |
//! |---|---|---|
//! | attention | flash (online softmax, no `N x N` matrix), padding keys skipped | flash, from the saved log-sum-exp |
//! | LayerNorm | one cube per row | one cube per row (+ column sums for `dw`, `db`) |
//! | Linear + GELU | matrix product, then bias + exact GELU in one pass | `gelu'` in one pass, then the products |
//! | Linear + residual | matrix product, then bias + residual add in one pass | composed |
//! | AdamW, EMA | one pass per parameter | - |
//!
//! The matrix products are burn's (autotuned). Everything is f32; other dtypes and head
//! dimensions above [`attention::MAX_HEAD_DIM`] take the composed path, as does everything with
//! `IJEPA_KERNELS=composed`.

pub mod attention;
mod autodiff;
pub mod norm;
pub mod pointwise;

use burn::tensor::DType;
use burn::tensor::ops::FloatTensorOps;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::kernels::optim::AdamW;
use super::{IjepaBackend, composed, fused_kernels};

/// A contiguous f32 tensor on `like`'s device.
pub(crate) fn empty_f32<R: CubeRuntime>(like: &CubeTensor<R>, shape: Vec<usize>) -> CubeTensor<R> {
    burn_cubecl::ops::numeric::empty_device_contiguous_dtype::<R>(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        DType::F32,
    )
}

/// `t` as a kernel argument.
pub(crate) fn arg<R: CubeRuntime>(t: &CubeTensor<R>) -> TensorArg<R> {
    t.clone().into_tensor_arg()
}

/// `t` as a kernel argument, or without it an unread (or unwritten) one-element placeholder
/// on `like`'s device.
pub(crate) fn optional_arg<R: CubeRuntime>(
    t: Option<&CubeTensor<R>>,
    like: &CubeTensor<R>,
) -> TensorArg<R> {
    t.map_or_else(|| arg(&empty_f32(like, vec![1])), arg)
}

/// `t` laid out contiguously (unchanged when it already is).
pub(crate) fn contiguous<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    burn_cubecl::kernel::into_contiguous(t)
}

/// Cubes for `count` independent units of work (one cube each), over two axes when there are
/// more than one axis may hold; the kernel finds its unit with [`row_index`].
pub(crate) fn row_grid(count: usize) -> CubeCount {
    const MAX: usize = 65_535;
    let x = count.clamp(1, MAX);
    CubeCount::Static(x as u32, count.div_ceil(x).max(1) as u32, 1)
}

/// This cube's unit of work under [`row_grid`]; the cubes past the `count` units stop here.
#[cube]
pub(crate) fn row_index(count: usize) -> usize {
    let unit = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    if unit >= count {
        terminate!();
    }
    unit
}

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// The Linear's product `x @ w` on burn's (autotuned) matrix multiplication, contiguous.
fn product<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
) -> CubeTensor<R> {
    contiguous(<Cube<R, F, I, BT> as FloatTensorOps<Cube<R, F, I, BT>>>::float_matmul(x, w))
}

/// Whether the fused products run: the kernels are on and no bf16 autocast is in force (under
/// it, the composed ops run the products with bf16 operands, [`super::autocast`]).
fn fused_products() -> bool {
    fused_kernels() && super::autocast::active() == super::Precision::F32
}

/// Whether all of `ts` are f32 (the kernels' type; others take the composed path).
fn all_f32<R: CubeRuntime, const K: usize>(ts: [&CubeTensor<R>; K]) -> bool {
    ts.iter().all(|t| t.dtype == DType::F32)
}

/// Whether the fused Linear (+ GELU, + residual) kernels take `x`, `w` and the bias.
fn linear_fused<R: CubeRuntime>(
    x: &CubeTensor<R>,
    w: &CubeTensor<R>,
    b: Option<&CubeTensor<R>>,
) -> bool {
    fused_products() && all_f32([x, w]) && b.is_none_or(|b| all_f32([b]))
}

/// Whether the attention kernels take this `qkv`.
fn attention_fused<R: CubeRuntime>(qkv: &CubeTensor<R>, heads: usize, keys: usize) -> bool {
    let dims = qkv.meta.shape().to_vec();
    fused_products() && attention::supported(&dims, heads, keys) && all_f32([qkv])
}

/// Whether the LayerNorm kernels take `x` and the affine parameters (both or neither).
fn layer_norm_fused<R: CubeRuntime>(
    x: &CubeTensor<R>,
    w: Option<&CubeTensor<R>>,
    b: Option<&CubeTensor<R>>,
) -> bool {
    let affine_f32 = match (w, b) {
        (Some(w), Some(b)) => all_f32([w, b]),
        (None, None) => true,
        _ => false,
    };
    fused_kernels() && all_f32([x]) && affine_f32
}

impl<R, F, I, BT> IjepaBackend for Cube<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn ijepa_linear_residual(
        x: CubeTensor<R>,
        w: CubeTensor<R>,
        b: Option<CubeTensor<R>>,
        r: CubeTensor<R>,
    ) -> CubeTensor<R> {
        if !linear_fused(&x, &w, b.as_ref()) || !all_f32([&r]) {
            return composed::linear_residual::<Self>(x, w, b, r);
        }
        let p = product::<R, F, I, BT>(x, w);
        let b = b.map(contiguous);
        pointwise::bias_residual_forward(&p, b.as_ref(), &contiguous(r))
    }

    fn ijepa_linear_gelu(
        x: CubeTensor<R>,
        w: CubeTensor<R>,
        b: Option<CubeTensor<R>>,
    ) -> CubeTensor<R> {
        if !linear_fused(&x, &w, b.as_ref()) {
            return composed::linear_gelu::<Self>(x, w, b);
        }
        let p = product::<R, F, I, BT>(x, w);
        let b = b.map(contiguous);
        pointwise::bias_gelu_forward(&p, b.as_ref(), false).0
    }

    fn ijepa_attention_masked(qkv: CubeTensor<R>, heads: usize, keys: usize) -> CubeTensor<R> {
        if !attention_fused(&qkv, heads, keys) {
            return composed::attention_masked::<Self>(qkv, heads, keys);
        }
        attention::forward(&contiguous(qkv), heads, keys).0
    }

    fn ijepa_layer_norm(
        x: CubeTensor<R>,
        w: Option<CubeTensor<R>>,
        b: Option<CubeTensor<R>>,
        eps: f64,
    ) -> CubeTensor<R> {
        if !layer_norm_fused(&x, w.as_ref(), b.as_ref()) {
            return composed::layer_norm::<Self>(x, w, b, eps);
        }
        let affine = w.zip(b).map(|(w, b)| (contiguous(w), contiguous(b)));
        norm::forward(&contiguous(x), affine.as_ref().map(|(w, b)| (w, b)), eps).0
    }

    fn ijepa_adamw(
        p: CubeTensor<R>,
        g: CubeTensor<R>,
        m: CubeTensor<R>,
        v: CubeTensor<R>,
        hp: &AdamW,
        step: u64,
    ) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
        if !fused_kernels() || !all_f32([&p, &g, &m, &v]) {
            return composed::adamw::<Self>(p, g, m, v, hp, step);
        }
        let c = contiguous;
        pointwise::adamw_step(&c(p), &c(g), &c(m), &c(v), hp, step)
    }

    fn ijepa_ema(target: CubeTensor<R>, online: CubeTensor<R>, momentum: f64) -> CubeTensor<R> {
        if !fused_kernels() || !all_f32([&target, &online]) {
            return composed::ema::<Self>(target, online, momentum);
        }
        pointwise::ema_step(&contiguous(target), &contiguous(online), momentum)
    }
}
