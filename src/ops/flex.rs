//! The fused kernels on the CPU backend (inference and the inner side of autodiff).

use burn::backend::Flex;
use burn::tensor::{DType, TensorData};
use burn_flex::FlexTensor;

use super::kernels::{attention, layernorm, linear};
use super::{IjepaBackend, composed, fused_kernels};

/// A contiguous f32 view (copying only when the layout is strided), or `None` for other dtypes.
pub(super) fn f32s(t: &FlexTensor) -> Option<std::borrow::Cow<'_, [f32]>> {
    if t.dtype() != DType::F32 {
        return None;
    }
    match t.as_slice::<f32>() {
        Some(s) => Some(std::borrow::Cow::Borrowed(s)),
        None => t
            .to_contiguous()
            .as_slice::<f32>()
            .map(|s| std::borrow::Cow::Owned(s.to_vec())),
    }
}

pub(super) fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

pub(super) fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Linear forward on flex tensors; `None` when a dtype is not f32. With `gelu`, the second
/// value is GELU's slope at the pre-activation when `with_slope` (what the backward needs).
pub(super) fn linear_fwd(
    x: &FlexTensor,
    w: &FlexTensor,
    b: Option<&FlexTensor>,
    gelu: bool,
    with_slope: bool,
) -> Option<(FlexTensor, Option<FlexTensor>)> {
    let (xs, ws) = (f32s(x)?, f32s(w)?);
    let bs = match b {
        Some(b) => Some(f32s(b)?),
        None => None,
    };
    let (m, k) = (dims(x)[0], dims(x)[1]);
    let n = dims(w)[1];
    if gelu {
        let (act, slope) =
            linear::linear_gelu_forward(&xs, &ws, bs.as_deref(), m, k, n, with_slope);
        Some((
            tensor(act, vec![m, n]),
            slope.map(|s| tensor(s, vec![m, n])),
        ))
    } else {
        Some((
            tensor(
                linear::linear_forward(&xs, &ws, bs.as_deref(), m, k, n),
                vec![m, n],
            ),
            None,
        ))
    }
}

/// Attention forward: `(out, lse)`.
pub(super) fn attention_fwd(qkv: &FlexTensor, heads: usize) -> Option<(FlexTensor, Vec<f32>)> {
    let q = f32s(qkv)?;
    let [b, n, d3] = <[usize; 3]>::try_from(dims(qkv)).ok()?;
    let (out, lse) = attention::attention_forward(&q, b, n, heads);
    Some((tensor(out, vec![b, n, d3 / 3]), lse))
}

/// LayerNorm forward: `(y, mean, rstd)`.
pub(super) fn layer_norm_fwd(
    x: &FlexTensor,
    w: Option<&FlexTensor>,
    b: Option<&FlexTensor>,
    eps: f64,
) -> Option<(FlexTensor, Vec<f32>, Vec<f32>)> {
    let xs = f32s(x)?;
    let d = dims(x)[1];
    let (y, mean, rstd) = match (w, b) {
        (Some(w), Some(b)) => {
            layernorm::layer_norm_affine_forward(&xs, &f32s(w)?, &f32s(b)?, d, eps as f32)
        }
        (None, None) => layernorm::layer_norm_forward(&xs, d, eps as f32),
        _ => return None,
    };
    Some((tensor(y, dims(x)), mean, rstd))
}

impl IjepaBackend for Flex {
    fn ijepa_linear(x: FlexTensor, w: FlexTensor, b: Option<FlexTensor>) -> FlexTensor {
        if !fused_kernels() {
            return composed::linear::<Self>(x, w, b);
        }
        match linear_fwd(&x, &w, b.as_ref(), false, false) {
            Some((y, _)) => y,
            None => composed::linear::<Self>(x, w, b),
        }
    }

    fn ijepa_linear_gelu(x: FlexTensor, w: FlexTensor, b: Option<FlexTensor>) -> FlexTensor {
        if !fused_kernels() {
            return composed::linear_gelu::<Self>(x, w, b);
        }
        match linear_fwd(&x, &w, b.as_ref(), true, false) {
            Some((y, _)) => y,
            None => composed::linear_gelu::<Self>(x, w, b),
        }
    }

    fn ijepa_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        if !fused_kernels() {
            return composed::attention::<Self>(qkv, heads);
        }
        match attention_fwd(&qkv, heads) {
            Some((out, _)) => out,
            None => composed::attention::<Self>(qkv, heads),
        }
    }

    fn ijepa_layer_norm(
        x: FlexTensor,
        w: Option<FlexTensor>,
        b: Option<FlexTensor>,
        eps: f64,
    ) -> FlexTensor {
        if !fused_kernels() {
            return composed::layer_norm::<Self>(x, w, b, eps);
        }
        match layer_norm_fwd(&x, w.as_ref(), b.as_ref(), eps) {
            Some((y, _, _)) => y,
            None => composed::layer_norm::<Self>(x, w, b, eps),
        }
    }
}
