//! The fused kernels on the CPU backend (inference and the inner side of autodiff).

use burn::backend::Flex;
use burn::tensor::{DType, TensorData};
use burn_flex::FlexTensor;

use super::kernels::{attention, cpu, layernorm, linear, optim};
use super::{IjepaBackend, Precision, autocast, composed, fused_kernels};

/// The precision of the fused products in force ([`super::with_precision`]), or `None` where
/// the fused kernels cannot run it (bf16 autocast on a CPU without bf16 products, or the fused
/// kernels switched off): the composed implementations (bf16 autocast ops) run instead.
pub(super) fn fused_precision() -> Option<Precision> {
    if !fused_kernels() {
        return None;
    }
    match autocast::active() {
        Precision::Bf16 if !cpu::bf16_products() => None,
        p => Some(p),
    }
}

/// A contiguous f32 view (copying only when the layout is strided), or `None` for other dtypes.
pub(super) fn f32s(t: &FlexTensor) -> Option<std::borrow::Cow<'_, [f32]>> {
    contiguous::<f32>(t)
}

/// A contiguous view of elements `E` (copying only when the layout is strided), or `None` when
/// the tensor holds another dtype.
fn contiguous<E: burn::tensor::Element + bytemuck::Pod>(
    t: &FlexTensor,
) -> Option<std::borrow::Cow<'_, [E]>> {
    if t.dtype() != E::dtype() {
        return None;
    }
    match t.as_slice::<E>() {
        Some(s) => Some(std::borrow::Cow::Borrowed(s)),
        None => t
            .to_contiguous()
            .as_slice::<E>()
            .map(|s| std::borrow::Cow::Owned(s.to_vec())),
    }
}

/// The left operand of a Linear: f32, or bf16 from a producer that rounded it for bf16
/// products ([`linear::linear_gelu_forward_bf16`]; pairs along whole rows: an even width).
pub(super) enum RowValues<'a> {
    F32(std::borrow::Cow<'a, [f32]>),
    Bf16(std::borrow::Cow<'a, [half::bf16]>),
}

impl RowValues<'_> {
    pub(super) fn of(t: &FlexTensor) -> Option<RowValues<'_>> {
        match t.dtype() {
            DType::F32 => Some(RowValues::F32(f32s(t)?)),
            DType::BF16 if dims(t).last().is_some_and(|k| k % 2 == 0) => {
                Some(RowValues::Bf16(contiguous(t)?))
            }
            _ => None,
        }
    }

    pub(super) fn rows(&self) -> linear::Rows<'_> {
        match self {
            RowValues::F32(x) => linear::Rows::F32(x),
            RowValues::Bf16(x) => linear::Rows::Bf16(x),
        }
    }
}

pub(super) fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

/// `t` as a tensor whose whole storage is its f32 values in order (copied when it is a strided
/// or offset view), or `None` for other dtypes. Its storage can then be updated in place
/// (`storage_mut` copies it first only if another tensor shares it).
fn owned_f32s(t: FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let whole = t.layout().contiguous_offsets() == Some((0, t.storage::<f32>().len()));
    Some(if whole { t } else { t.to_contiguous() })
}

pub(super) fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// A Linear's operands as f32 slices with `x [m, k]`, `w [k, n]`; `None` when a dtype is not f32.
struct LinearOperands<'a> {
    xs: RowValues<'a>,
    ws: std::borrow::Cow<'a, [f32]>,
    bs: Option<std::borrow::Cow<'a, [f32]>>,
    m: usize,
    k: usize,
    n: usize,
}

fn linear_operands<'a>(
    x: &'a FlexTensor,
    w: &'a FlexTensor,
    b: Option<&'a FlexTensor>,
) -> Option<LinearOperands<'a>> {
    let bs = match b {
        Some(b) => Some(f32s(b)?),
        None => None,
    };
    let xs = RowValues::of(x)?;
    if matches!(xs, RowValues::Bf16(_)) && fused_precision() != Some(Precision::Bf16) {
        return None;
    }
    Some(LinearOperands {
        xs,
        ws: f32s(w)?,
        bs,
        m: dims(x)[0],
        k: dims(x)[1],
        n: dims(w)[1],
    })
}

/// What a Linear node computes after its product.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum LinearKind {
    /// `x W + b`, in f32.
    Plain,
    /// `x W + b` for readers that are bf16 products only: in bf16 under bf16 products (an even
    /// width; [`linear::linear_forward_to_bf16`]).
    IntoProducts,
    /// `gelu(x W + b)`: with bf16 products (and an even width) in bf16 for the next Linear,
    /// its only reader ([`linear::linear_gelu_forward_bf16`]).
    Gelu,
}

/// Linear forward on flex tensors, the product in precision `p`; `None` when a dtype is not
/// f32 (or, for `x`, bf16 under bf16 products). With [`LinearKind::Gelu`], the second value is
/// GELU's slope at the pre-activation when `with_slope` (what the backward needs).
pub(super) fn linear_fwd(
    x: &FlexTensor,
    w: &FlexTensor,
    b: Option<&FlexTensor>,
    kind: LinearKind,
    with_slope: bool,
    p: Precision,
) -> Option<(FlexTensor, Option<FlexTensor>)> {
    let LinearOperands {
        xs,
        ws,
        bs,
        m,
        k,
        n,
    } = linear_operands(x, w, b)?;
    let (x, bs) = (xs.rows(), bs.as_deref());
    #[cfg(target_arch = "x86_64")]
    if kind == LinearKind::IntoProducts && p == Precision::Bf16 && n.is_multiple_of(2) {
        let y = linear::linear_forward_to_bf16(x, &ws, bs, m, k, n);
        return Some((FlexTensor::from_data(TensorData::new(y, vec![m, n])), None));
    }
    if kind == LinearKind::Gelu {
        #[cfg(target_arch = "x86_64")]
        if p == Precision::Bf16 && n % 2 == 0 {
            let (act, slope) = linear::linear_gelu_forward_bf16(x, &ws, bs, m, k, n, with_slope);
            return Some((
                FlexTensor::from_data(TensorData::new(act, vec![m, n])),
                slope.map(|s| tensor(s, vec![m, n])),
            ));
        }
        let (act, slope) = linear::linear_gelu_forward(x, &ws, bs, m, k, n, with_slope, p);
        Some((
            tensor(act, vec![m, n]),
            slope.map(|s| tensor(s, vec![m, n])),
        ))
    } else {
        let y = linear::linear_forward(x, &ws, bs, m, k, n, p);
        Some((tensor(y, vec![m, n]), None))
    }
}

/// `r + (x W + b)` on flex tensors, the product in precision `p`; `None` when a dtype is not
/// f32.
pub(super) fn linear_residual_fwd(
    x: &FlexTensor,
    w: &FlexTensor,
    b: Option<&FlexTensor>,
    r: &FlexTensor,
    p: Precision,
) -> Option<FlexTensor> {
    let LinearOperands {
        xs,
        ws,
        bs,
        m,
        k,
        n,
    } = linear_operands(x, w, b)?;
    if dims(r) != [m, n] {
        return None;
    }
    let rs = f32s(r)?;
    let y = linear::linear_residual_forward(xs.rows(), &ws, bs.as_deref(), &rs, m, k, n, p);
    Some(tensor(y, vec![m, n]))
}

/// Attention forward: `(out, lse)`; `qkv` in f32, or in bf16 from
/// [`LinearKind::IntoProducts`] under bf16 products.
pub(super) fn attention_fwd(
    qkv: &FlexTensor,
    heads: usize,
    p: Precision,
) -> Option<(FlexTensor, Vec<f32>)> {
    let [b, n, d3] = <[usize; 3]>::try_from(dims(qkv)).ok()?;
    let (out, lse) = match RowValues::of(qkv)? {
        RowValues::F32(q) => attention::attention_forward(&q, b, n, heads, p),
        RowValues::Bf16(_) if p != Precision::Bf16 => return None,
        RowValues::Bf16(q) => attention::attention_forward_rounded(&q, b, n, heads),
    };
    Some((tensor(out, vec![b, n, d3 / 3]), lse))
}

/// LayerNorm forward: `(y, mean, rstd)`. With `into_products` (its only readers are bf16
/// products) and bf16 products in force, affine and of an even width, `y` comes out in bf16
/// ([`layernorm::layer_norm_affine_forward_bf16`]).
pub(super) fn layer_norm_fwd(
    x: &FlexTensor,
    w: Option<&FlexTensor>,
    b: Option<&FlexTensor>,
    eps: f64,
    into_products: bool,
) -> Option<(FlexTensor, Vec<f32>, Vec<f32>)> {
    let xs = f32s(x)?;
    let d = dims(x)[1];
    #[cfg(target_arch = "x86_64")]
    if let (true, Some(w), Some(b)) = (into_products, w, b)
        && fused_precision() == Some(Precision::Bf16)
        && d.is_multiple_of(2)
    {
        let (w, b) = (f32s(w)?, f32s(b)?);
        let (y, mean, rstd) = layernorm::layer_norm_affine_forward_bf16(&xs, &w, &b, d, eps as f32);
        return Some((
            FlexTensor::from_data(TensorData::new(y, dims(x))),
            mean,
            rstd,
        ));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = into_products;
    let (y, mean, rstd) = match (w, b) {
        (Some(w), Some(b)) => {
            layernorm::layer_norm_affine_forward(&xs, &f32s(w)?, &f32s(b)?, d, eps as f32)
        }
        (None, None) => layernorm::layer_norm_forward(&xs, d, eps as f32),
        _ => return None,
    };
    Some((tensor(y, dims(x)), mean, rstd))
}

fn layer_norm(
    x: FlexTensor,
    w: Option<FlexTensor>,
    b: Option<FlexTensor>,
    eps: f64,
    into_products: bool,
) -> FlexTensor {
    if !fused_kernels() {
        return composed::layer_norm::<Flex>(x, w, b, eps);
    }
    match layer_norm_fwd(&x, w.as_ref(), b.as_ref(), eps, into_products) {
        Some((y, _, _)) => y,
        None => composed::layer_norm::<Flex>(x, w, b, eps),
    }
}

impl IjepaBackend for Flex {
    fn ijepa_linear(x: FlexTensor, w: FlexTensor, b: Option<FlexTensor>) -> FlexTensor {
        let Some(p) = fused_precision() else {
            return composed::linear::<Self>(x, w, b);
        };
        match linear_fwd(&x, &w, b.as_ref(), LinearKind::Plain, false, p) {
            Some((y, _)) => y,
            None => composed::linear::<Self>(x, w, b),
        }
    }

    fn ijepa_linear_into_products(
        x: FlexTensor,
        w: FlexTensor,
        b: Option<FlexTensor>,
    ) -> FlexTensor {
        let Some(p) = fused_precision() else {
            return composed::linear::<Self>(x, w, b);
        };
        match linear_fwd(&x, &w, b.as_ref(), LinearKind::IntoProducts, false, p) {
            Some((y, _)) => y,
            None => composed::linear::<Self>(x, w, b),
        }
    }

    fn ijepa_linear_residual(
        x: FlexTensor,
        w: FlexTensor,
        b: Option<FlexTensor>,
        r: FlexTensor,
    ) -> FlexTensor {
        let Some(p) = fused_precision() else {
            return composed::linear_residual::<Self>(x, w, b, r);
        };
        match linear_residual_fwd(&x, &w, b.as_ref(), &r, p) {
            Some(y) => y,
            None => composed::linear_residual::<Self>(x, w, b, r),
        }
    }

    fn ijepa_linear_gelu(x: FlexTensor, w: FlexTensor, b: Option<FlexTensor>) -> FlexTensor {
        let Some(p) = fused_precision() else {
            return composed::linear_gelu::<Self>(x, w, b);
        };
        match linear_fwd(&x, &w, b.as_ref(), LinearKind::Gelu, false, p) {
            Some((y, _)) => y,
            None => composed::linear_gelu::<Self>(x, w, b),
        }
    }

    /// Under bf16 autocast (where the CPU has bf16 products) the products take bf16 operands,
    /// as autocast's `bmm`; softmax stays f32.
    fn ijepa_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        let Some(p) = fused_precision() else {
            return composed::attention::<Self>(qkv, heads);
        };
        match attention_fwd(&qkv, heads, p) {
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
        layer_norm(x, w, b, eps, false)
    }

    fn ijepa_layer_norm_into_products(
        x: FlexTensor,
        w: Option<FlexTensor>,
        b: Option<FlexTensor>,
        eps: f64,
    ) -> FlexTensor {
        layer_norm(x, w, b, eps, true)
    }

    /// One fused pass over the four buffers, in place and on the pool (burn's ops would make
    /// about a dozen passes, each allocating, on one thread).
    fn ijepa_adamw(
        p: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        hp: &optim::AdamW,
        step: u64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let all_f32 = [&p, &g, &m, &v].iter().all(|t| t.dtype() == DType::F32);
        if !fused_kernels() || !all_f32 {
            return composed::adamw::<Self>(p, g, m, v, hp, step);
        }
        let (Some(mut p), Some(gs), Some(mut m), Some(mut v)) =
            (owned_f32s(p), f32s(&g), owned_f32s(m), owned_f32s(v))
        else {
            unreachable!("all four are f32");
        };
        optim::adamw_step(
            p.storage_mut(),
            &gs,
            m.storage_mut(),
            v.storage_mut(),
            hp,
            step,
        );
        (p, m, v)
    }

    fn ijepa_ema(target: FlexTensor, online: FlexTensor, momentum: f64) -> FlexTensor {
        let all_f32 = target.dtype() == DType::F32 && online.dtype() == DType::F32;
        if !fused_kernels() || !all_f32 {
            return composed::ema::<Self>(target, online, momentum);
        }
        let (Some(mut target), Some(online)) = (owned_f32s(target), f32s(&online)) else {
            unreachable!("both are f32");
        };
        optim::ema_update(target.storage_mut(), &online, momentum);
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::kernels::testutil::{bits, rng, uniform};

    fn values(t: &FlexTensor) -> Vec<f32> {
        f32s(t).expect("f32").into_owned()
    }

    #[test]
    fn fused_optimizer_updates_are_bitwise_the_composed_ones() {
        let mut r = rng(60);
        let n = 70_001;
        let p = uniform(&mut r, n, 1.0);
        let g = uniform(&mut r, n, 1e-2);
        let m = uniform(&mut r, n, 1e-2);
        let v: Vec<f32> = uniform(&mut r, n, 1e-4).iter().map(|x| x.abs()).collect();
        let t = |x: &[f32]| tensor(x.to_vec(), vec![x.len()]);
        for wd in [0.05, 0.0] {
            for step in [1u64, 7] {
                let hp = optim::AdamW {
                    lr: 1.5e-3,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: wd,
                };
                // the parameter is shared with another tensor, and the moments come in as
                // offset views into larger buffers: both must be handled without touching
                // the other tensor
                let shared = t(&p);
                let keep = shared.clone();
                let padded = |x: &[f32]| {
                    let mut y = vec![9.0f32; 3];
                    y.extend_from_slice(x);
                    tensor(y, vec![n + 3]).narrow(0, 3, n)
                };
                let fused = Flex::ijepa_adamw(shared, t(&g), padded(&m), padded(&v), &hp, step);
                let want = composed::adamw::<Flex>(t(&p), t(&g), t(&m), t(&v), &hp, step);
                for (what, a, b) in [
                    ("p", &fused.0, &want.0),
                    ("m", &fused.1, &want.1),
                    ("v", &fused.2, &want.2),
                ] {
                    assert_eq!(
                        bits(&values(a)),
                        bits(&values(b)),
                        "{what} wd={wd} t={step}"
                    );
                }
                assert_eq!(
                    bits(&values(&keep)),
                    bits(&p),
                    "a shared input was modified"
                );
            }
        }
        let online = uniform(&mut r, n, 1.0);
        for momentum in [0.996, 1.0] {
            let fused = Flex::ijepa_ema(t(&p), t(&online), momentum);
            let want = composed::ema::<Flex>(t(&p), t(&online), momentum);
            assert_eq!(
                bits(&values(&fused)),
                bits(&values(&want)),
                "ema {momentum}"
            );
        }
    }
}
