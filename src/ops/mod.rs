//! The few coarse operations the I-JEPA networks spend their time in, as a burn backend
//! extension (burn's documented pattern for custom kernels): the Linear layer, Linear+GELU
//! (the MLP's first half), multi-head attention on the fused qkv projection, and LayerNorm.
//!
//! Every backend gets the default implementations, written with burn's tensor ops (on an
//! autodiff backend burn differentiates them; GELU is written with `erf` so that its gradient
//! is the exact one on every backend). The CPU backend (`Flex`) and its autodiff wrapper
//! override them with the fused kernels of [`kernels`] and hand-written backward passes:
//! no permute copies in attention, one pass for LayerNorm each way, a vectorised erf, the bias
//! folded into the GEMM.

mod autocast;
mod autodiff;
#[cfg(feature = "cube-kernels")]
pub mod cube;
mod flex;
pub mod kernels;
mod node;

pub use autocast::{Precision, with_precision};

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn unwrap<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// `false` when `IJEPA_KERNELS=composed`: the CPU backend then runs the composed (stock burn)
/// implementations instead of its fused kernels, to measure what the kernels buy
/// (docs/performance.md) or to rule them out when chasing a numerical difference.
pub fn fused_kernels() -> bool {
    static FUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FUSED.get_or_init(|| std::env::var("IJEPA_KERNELS").map_or(true, |v| v != "composed"))
}

/// The precision of a CPU run asked for bf16 autocast (`meta.use_bfloat16`, `bench --bf16`):
/// bf16 where the fused kernels have bf16 products (AVX-512 BF16), or else the reason it trains
/// in f32 (the note to print).
pub fn cpu_bf16() -> Result<Precision, String> {
    if !fused_kernels() {
        return Err("bf16 on the CPU needs the fused kernels (IJEPA_KERNELS=composed is set); this run computes in f32".into());
    }
    if kernels::cpu::bf16_products() {
        return Ok(Precision::Bf16);
    }
    let why = match kernels::cpu::path() {
        kernels::cpu::KernelPath::Avx512 => "this CPU has no avx512_bf16",
        _ => "bf16 products need the avx512 kernel path with avx512_bf16",
    };
    Err(format!(
        "bf16 autocast asked, but {why}; this run computes in f32"
    ))
}

/// Exact GELU `x/2 (1 + erf(x / sqrt 2))` from primitive ops.
pub fn gelu_erf<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone()
        .mul((x.div_scalar(std::f64::consts::SQRT_2).erf() + 1.0).mul_scalar(0.5))
}

/// The composed (backend-independent) implementations. The products follow the precision in
/// force ([`with_precision`]): under bf16 autocast they are [`autocast`]'s.
pub mod composed {
    use super::*;

    pub fn linear<B: Backend>(
        x: FloatTensor<B>,
        w: FloatTensor<B>,
        b: Option<FloatTensor<B>>,
    ) -> FloatTensor<B> {
        let (x, w, b) = (wrap::<B, 2>(x), wrap(w), b.map(wrap::<B, 1>));
        unwrap(match autocast::active() {
            Precision::F32 => burn::tensor::module::linear(x, w, b),
            Precision::Bf16 => autocast::linear(x, w, b),
        })
    }

    pub fn linear_gelu<B: Backend>(
        x: FloatTensor<B>,
        w: FloatTensor<B>,
        b: Option<FloatTensor<B>>,
    ) -> FloatTensor<B> {
        unwrap(gelu_erf(wrap::<B, 2>(linear::<B>(x, w, b))))
    }

    /// `r + (x w + b)`, the addition after the product (the fused kernels give the same
    /// floats).
    pub fn linear_residual<B: Backend>(
        x: FloatTensor<B>,
        w: FloatTensor<B>,
        b: Option<FloatTensor<B>>,
        r: FloatTensor<B>,
    ) -> FloatTensor<B> {
        unwrap(wrap::<B, 2>(r) + wrap::<B, 2>(linear::<B>(x, w, b)))
    }

    pub fn attention<B: Backend>(qkv: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
        let qkv = wrap::<B, 3>(qkv);
        let n = qkv.dims()[1];
        attention_keys(qkv, heads, n)
    }

    /// [`attention`] in which only the first `keys` tokens act as keys and values: the
    /// scores of the others get [`MASKED_SCORE`] added, so their softmax weight (and the
    /// gradient through it) is exactly zero.
    pub fn attention_masked<B: Backend>(
        qkv: FloatTensor<B>,
        heads: usize,
        keys: usize,
    ) -> FloatTensor<B> {
        attention_keys(wrap::<B, 3>(qkv), heads, keys)
    }

    /// Under bf16 autocast, [`autocast::attention`].
    fn attention_keys<B: Backend>(qkv: Tensor<B, 3>, heads: usize, keys: usize) -> FloatTensor<B> {
        if autocast::active() == Precision::Bf16 {
            return unwrap(autocast::attention(qkv, heads, keys));
        }
        let [b, n, d3] = qkv.dims();
        let d = d3 / 3;
        let hd = d / heads;
        let qkv = qkv.reshape([b, n, 3, heads, hd]).permute([2, 0, 3, 1, 4]);
        let q = qkv.clone().narrow(0, 0, 1).reshape([b, heads, n, hd]);
        let k = qkv.clone().narrow(0, 1, 1).reshape([b, heads, n, hd]);
        let v = qkv.narrow(0, 2, 1).reshape([b, heads, n, hd]);
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar((hd as f64).powf(-0.5));
        let scores = match key_bias::<B>(n, keys, &scores.device()) {
            Some(bias) => scores + bias,
            None => scores,
        };
        unwrap(
            softmax(scores, 3)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([b, n, d]),
        )
    }

    /// `[1, 1, 1, n]`: 0 for the first `keys` tokens, [`MASKED_SCORE`] for the others;
    /// `None` when every token is a key.
    pub(crate) fn key_bias<B: Backend>(
        n: usize,
        keys: usize,
        device: &B::Device,
    ) -> Option<Tensor<B, 4>> {
        (keys < n).then(|| {
            let bias: Vec<f32> = (0..n)
                .map(|j| if j < keys { 0.0 } else { MASKED_SCORE })
                .collect();
            Tensor::from_data(burn::tensor::TensorData::new(bias, [1, 1, 1, n]), device)
        })
    }

    /// Added to the attention scores of padding keys: `exp` of it (minus any finite maximum)
    /// is exactly 0 in f32, and unlike `-inf` it can never make a NaN.
    pub const MASKED_SCORE: f32 = -1e30;

    pub fn layer_norm<B: Backend>(
        x: FloatTensor<B>,
        w: Option<FloatTensor<B>>,
        b: Option<FloatTensor<B>>,
        eps: f64,
    ) -> FloatTensor<B> {
        let x = wrap::<B, 2>(x);
        let gamma = w.unwrap_or_else(|| unwrap(Tensor::<B, 1>::ones([x.dims()[1]], &x.device())));
        B::layer_norm(unwrap(x), gamma, b, eps)
    }

    /// One AdamW step as tensor ops, element for element the formulas (and the rounding) of
    /// [`kernels::optim::adamw_step`].
    pub fn adamw<B: Backend>(
        p: FloatTensor<B>,
        g: FloatTensor<B>,
        m: FloatTensor<B>,
        v: FloatTensor<B>,
        hp: &kernels::optim::AdamW,
        step: u64,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let s = kernels::optim::Scalars::new(hp, step);
        let (p, g) = (wrap::<B, 1>(p), wrap::<B, 1>(g));
        let (m, v) = (wrap::<B, 1>(m), wrap::<B, 1>(v));
        let p = match s.decay {
            Some(decay) => p.mul_scalar(decay),
            None => p,
        };
        // torch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
        let m = m.clone() + (g.clone() - m).mul_scalar(s.w1);
        let v = v.mul_scalar(s.b2) + g.clone().mul_scalar(s.w2) * g;
        let denom = v.clone().sqrt().div_scalar(s.bc2_sqrt).add_scalar(s.eps);
        let p = p - (m.clone() / denom).mul_scalar(s.step_size);
        (unwrap(p), unwrap(m), unwrap(v))
    }

    /// The EMA update `target·m + online·(1 - m)` as tensor ops.
    pub fn ema<B: Backend>(
        target: FloatTensor<B>,
        online: FloatTensor<B>,
        momentum: f64,
    ) -> FloatTensor<B> {
        let (m, om) = kernels::optim::ema_factors(momentum);
        unwrap(wrap::<B, 1>(target).mul_scalar(m) + wrap::<B, 1>(online).mul_scalar(om))
    }
}

/// Backends the I-JEPA networks run on.
pub trait IjepaBackend: Backend {
    /// `x [M, K] @ w [K, N] + b`.
    fn ijepa_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        composed::linear::<Self>(x, w, b)
    }

    /// `r + (x @ w + b)` with `r [M, N]`: a residual branch closed by a Linear (the
    /// transformer block's attention projection and MLP output), the sum computed with the
    /// product instead of in a pass of its own.
    fn ijepa_linear_residual(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
        r: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::linear_residual::<Self>(x, w, b, r)
    }

    /// [`IjepaBackend::ijepa_linear`] for a Linear whose output only the products of bf16
    /// autocast read (the qkv projection, read by attention's products alone): under bf16
    /// autocast a backend may store the output in bf16, the rounding those products apply to
    /// it anyway (the same values, half the bytes). By default the plain Linear.
    fn ijepa_linear_into_products(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        Self::ijepa_linear(x, w, b)
    }

    /// `gelu(x @ w + b)` with the exact (erf) GELU.
    fn ijepa_linear_gelu(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        composed::linear_gelu::<Self>(x, w, b)
    }

    /// Softmax attention on `qkv [B, N, 3D]` (q, k, v blocks of D columns; head h uses
    /// columns `h*hd..(h+1)*hd` of each), heads merged back: `[B, N, D]`. By default
    /// [`IjepaBackend::ijepa_attention_masked`] with every token a key.
    fn ijepa_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        let n = burn::tensor::TensorMetadata::shape(&qkv)[1];
        Self::ijepa_attention_masked(qkv, heads, n)
    }

    /// [`IjepaBackend::ijepa_attention`] with only the first `keys < N` tokens as keys and
    /// values (the others are padding, see [`crate::model::padding`]): every query's output
    /// is that of attention over those `keys` tokens alone, and no gradient reaches the
    /// padding through its role as key or value.
    fn ijepa_attention_masked(
        qkv: FloatTensor<Self>,
        heads: usize,
        keys: usize,
    ) -> FloatTensor<Self> {
        composed::attention_masked::<Self>(qkv, heads, keys)
    }

    /// LayerNorm over the last axis of `x [M, D]`; no affine parameters when `w` is `None`.
    fn ijepa_layer_norm(
        x: FloatTensor<Self>,
        w: Option<FloatTensor<Self>>,
        b: Option<FloatTensor<Self>>,
        eps: f64,
    ) -> FloatTensor<Self> {
        composed::layer_norm::<Self>(x, w, b, eps)
    }

    /// [`IjepaBackend::ijepa_layer_norm`] for a LayerNorm whose output only the products of
    /// bf16 autocast read (a block's norm1 and norm2, read by qkv and fc1 alone): as
    /// [`IjepaBackend::ijepa_linear_into_products`], a backend may store it in bf16 under bf16
    /// autocast. By default the plain LayerNorm.
    fn ijepa_layer_norm_into_products(
        x: FloatTensor<Self>,
        w: Option<FloatTensor<Self>>,
        b: Option<FloatTensor<Self>>,
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::ijepa_layer_norm(x, w, b, eps)
    }

    /// One AdamW step (torch's `AdamW`, decoupled weight decay) on one parameter `p` with
    /// gradient `g` and moments `m`, `v`, all flat and of one length: the new `(p, m, v)`.
    /// `step` is 1-based.
    fn ijepa_adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        hp: &kernels::optim::AdamW,
        step: u64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::adamw::<Self>(p, g, m, v, hp, step)
    }

    /// The EMA target update `target·m + online·(1 - m)` on flat tensors of one length.
    fn ijepa_ema(
        target: FloatTensor<Self>,
        online: FloatTensor<Self>,
        momentum: f64,
    ) -> FloatTensor<Self> {
        composed::ema::<Self>(target, online, momentum)
    }
}

/// Tensor-level entry points used by the model. Under bf16 autocast ([`with_precision`]) the
/// backends' products take bf16 operands: the CPU's fused kernels where the CPU has bf16
/// products ([`kernels::cpu::bf16_products`]), [`autocast`]'s composed ops elsewhere.
pub fn linear<B: IjepaBackend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    wrap(B::ijepa_linear(unwrap(x), unwrap(w), b.map(unwrap)))
}

/// `r + linear(x, w, b)`.
pub fn linear_residual<B: IjepaBackend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
    r: Tensor<B, 2>,
) -> Tensor<B, 2> {
    wrap(B::ijepa_linear_residual(
        unwrap(x),
        unwrap(w),
        b.map(unwrap),
        unwrap(r),
    ))
}

/// [`linear`] for a Linear whose output only bf16 autocast's products read
/// ([`IjepaBackend::ijepa_linear_into_products`]).
pub fn linear_into_products<B: IjepaBackend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    wrap(B::ijepa_linear_into_products(
        unwrap(x),
        unwrap(w),
        b.map(unwrap),
    ))
}

pub fn linear_gelu<B: IjepaBackend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    wrap(B::ijepa_linear_gelu(unwrap(x), unwrap(w), b.map(unwrap)))
}

/// Multi-head attention on the fused `qkv [B, N, 3D]`; with `keys: Some(k)`, `k < N`, only
/// the first `k` tokens are keys and values (the rest is padding).
pub fn attention<B: IjepaBackend>(
    qkv: Tensor<B, 3>,
    heads: usize,
    keys: Option<usize>,
) -> Tensor<B, 3> {
    let n = qkv.dims()[1];
    match keys.filter(|&k| k < n) {
        None => wrap(B::ijepa_attention(unwrap(qkv), heads)),
        Some(k) => wrap(B::ijepa_attention_masked(unwrap(qkv), heads, k)),
    }
}

pub fn layer_norm<B: IjepaBackend>(
    x: Tensor<B, 2>,
    w: Option<Tensor<B, 1>>,
    b: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, 2> {
    wrap(B::ijepa_layer_norm(
        unwrap(x),
        w.map(unwrap),
        b.map(unwrap),
        eps,
    ))
}

/// [`layer_norm`] for a LayerNorm whose output only bf16 autocast's products read
/// ([`IjepaBackend::ijepa_layer_norm_into_products`]).
pub fn layer_norm_into_products<B: IjepaBackend>(
    x: Tensor<B, 2>,
    w: Option<Tensor<B, 1>>,
    b: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, 2> {
    wrap(B::ijepa_layer_norm_into_products(
        unwrap(x),
        w.map(unwrap),
        b.map(unwrap),
        eps,
    ))
}

// burn's CUDA and wgpu backends (`CubeBackend`) take the kernels of [`cube`]; with burn's
// fusion on (`cuda-fusion`) the CUDA backend is another type, which runs the composed ops.
#[cfg(feature = "cuda-fusion")]
impl IjepaBackend for burn::backend::Cuda {}
#[cfg(feature = "cuda-fusion")]
impl<C: burn_autodiff::checkpoint::strategy::CheckpointStrategy> IjepaBackend
    for burn::backend::Autodiff<burn::backend::Cuda, C>
{
}

/// An autodiff backend for training: both it and its inner (no-grad) backend have the ops.
pub trait TrainBackend:
    burn::tensor::backend::AutodiffBackend<InnerBackend: IjepaBackend> + IjepaBackend
{
}

impl<B> TrainBackend for B
where
    B: burn::tensor::backend::AutodiffBackend + IjepaBackend,
    B::InnerBackend: IjepaBackend,
{
}
