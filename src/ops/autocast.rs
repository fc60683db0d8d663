//! Mixed precision, as the official `meta.use_bfloat16` (`torch.cuda.amp.autocast(dtype=
//! torch.bfloat16)` around the forward passes and the loss): the matrix products of the
//! networks take bf16 operands and accumulate in f32; their results come back as f32, so
//! LayerNorm, softmax, GELU, the residual stream, the loss, the gradients, AdamW and the EMA
//! all stay f32, and the weights are f32 master copies (the casts are differentiated: each
//! gradient reaches its f32 weight as f32). The CPU's fused kernels keep in bf16 the
//! activations whose only readers are bf16 products, which round them to bf16 anyway: the
//! MLP's GELU output (read by fc2; `kernels::linear::linear_gelu_forward_bf16`), a block's
//! norm1 and norm2 outputs (read by qkv and fc1) and the qkv output (read by attention's
//! products) (`IjepaBackend::ijepa_layer_norm_into_products`, `ijepa_linear_into_products`):
//! the same values, half the bytes, no conversion pass.
//!
//! The setting is per thread and scoped ([`with_precision`]), as torch's autocast context.

use std::cell::Cell;

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

/// Arithmetic of the matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32 (the parity tests' setting).
    #[default]
    F32,
    /// bf16 operands, f32 accumulation and results (tensor cores on GPUs).
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16 autocast",
        })
    }
}

thread_local! {
    static ACTIVE: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision in force on this thread.
pub fn active() -> Precision {
    ACTIVE.with(Cell::get)
}

/// Run `f` with `precision` in force on this thread (restored afterwards, also on panic).
pub fn with_precision<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ACTIVE.with(|a| a.replace(precision)));
    f()
}

fn low<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    t.cast(FloatDType::BF16)
}

fn full<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    t.cast(FloatDType::F32)
}

/// `x @ w + b` with bf16 operands, f32 result.
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    full(burn::tensor::module::linear(low(x), low(w), b.map(low)))
}

/// Attention with both products (`q k^T` and `attn v`) in bf16, the softmax in f32; only the
/// first `keys` tokens are keys and values (all `N` when not padded).
pub fn attention<B: Backend>(qkv: Tensor<B, 3>, heads: usize, keys: usize) -> Tensor<B, 3> {
    let [b, n, d3] = qkv.dims();
    let d = d3 / 3;
    let hd = d / heads;
    let qkv = low(qkv)
        .reshape([b, n, 3, heads, hd])
        .permute([2, 0, 3, 1, 4]);
    let q = qkv.clone().narrow(0, 0, 1).reshape([b, heads, n, hd]);
    let k = qkv.clone().narrow(0, 1, 1).reshape([b, heads, n, hd]);
    let v = qkv.narrow(0, 2, 1).reshape([b, heads, n, hd]);
    let scores = full(q.matmul(k.swap_dims(2, 3))).mul_scalar((hd as f64).powf(-0.5));
    let scores = match super::composed::key_bias::<B>(n, keys, &scores.device()) {
        Some(bias) => scores + bias,
        None => scores,
    };
    let attn = low(softmax(scores, 3));
    full(attn.matmul(v).swap_dims(1, 2).reshape([b, n, d]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_is_scoped_and_restored_after_a_panic() {
        assert_eq!(active(), Precision::F32);
        let inner = with_precision(Precision::Bf16, || {
            let nested = with_precision(Precision::F32, active);
            (active(), nested)
        });
        assert_eq!(inner, (Precision::Bf16, Precision::F32));
        assert_eq!(active(), Precision::F32);
        let caught =
            std::panic::catch_unwind(|| with_precision(Precision::Bf16, || panic!("boom")));
        assert!(caught.is_err());
        assert_eq!(active(), Precision::F32);
    }

    #[test]
    fn bf16_linear_rounds_operands_but_returns_f32() {
        use burn::tensor::{DType, TensorData};
        type B = crate::Cpu;
        let dev = Default::default();
        // 1 + 2^-10 is not representable in bf16 (8-bit mantissa): it rounds to 1.
        let x =
            Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32 + 2f32.powi(-10)], [1, 1]), &dev);
        let w = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32], [1, 1]), &dev);
        let y = linear(x.clone(), w.clone(), None);
        assert_eq!(y.dtype(), DType::F32);
        assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![1.0]);
        let exact = burn::tensor::module::linear(x, w, None);
        assert_eq!(
            exact.into_data().to_vec::<f32>().unwrap(),
            vec![1.0 + 2f32.powi(-10)]
        );
    }
}
