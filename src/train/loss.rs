//! The I-JEPA objective (spec 1.9): targets are the target encoder's full-image output,
//! layer-normed again without affine parameters (eps 1e-5), gathered at the target blocks;
//! the loss is smooth-L1 (beta 1, mean over every element) as the official code, or the
//! paper's L2 (mean squared error).
//!
//! Options (off by default): the loss may be L1 (`|d|`, mean over every element, as V-JEPA 2),
//! and the targets may be normalised by `tanh(alpha h)` instead of the layer norm (DynTanh,
//! Colton 2025: the targets keep the relative norms of their tokens, which the layer norm
//! equalises) or not at all.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::model::gather::{MaskIndices, apply_masks};
use crate::model::layers::layer_norm_no_affine;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    #[default]
    SmoothL1,
    L2,
    L1,
}

impl std::str::FromStr for LossKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "smooth_l1" | "smooth-l1" => Ok(Self::SmoothL1),
            "l2" | "mse" => Ok(Self::L2),
            "l1" => Ok(Self::L1),
            other => Err(format!("unknown loss '{other}' (smooth_l1, l1 or l2)")),
        }
    }
}

/// `meta.target_norm`: how the targets are normalised (the scale of `dyntanh` is a key of
/// its own, `meta.target_dyntanh_alpha`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetNormKind {
    #[default]
    LayerNorm,
    Dyntanh,
    None,
}

/// How the target encoder's output is normalised before it becomes the target.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum TargetNorm {
    /// `F.layer_norm(h, (D,))`, eps 1e-5, no affine parameters (the official code).
    #[default]
    LayerNorm,
    /// `tanh(alpha h)` element-wise (DynTanh with a fixed scale; the targets carry no
    /// gradient, so nothing would learn the scale): bounded, but a token's norm still
    /// reflects its energy.
    Dyntanh { alpha: f64 },
    /// The target encoder's output as it is (its own final LayerNorm applied).
    None,
}

/// `F.layer_norm(h, (D,))` of the target encoder's output.
pub fn normalize_targets<B: crate::ops::IjepaBackend>(target_raw: Tensor<B, 3>) -> Tensor<B, 3> {
    layer_norm_no_affine(target_raw, 1e-5)
}

/// The targets under `norm`.
pub fn normalize_targets_with<B: crate::ops::IjepaBackend, const D: usize>(
    target_raw: Tensor<B, D>,
    norm: TargetNorm,
) -> Tensor<B, D> {
    match norm {
        TargetNorm::LayerNorm => layer_norm_no_affine(target_raw, 1e-5),
        TargetNorm::Dyntanh { alpha } => dyntanh(target_raw, alpha),
        TargetNorm::None => target_raw,
    }
}

/// `tanh(alpha x)` element-wise.
pub fn dyntanh<B: burn::tensor::backend::Backend, const D: usize>(
    x: Tensor<B, D>,
    alpha: f64,
) -> Tensor<B, D> {
    x.mul_scalar(alpha).tanh()
}

/// `repeat_interleave_batch(apply_masks(h, masks_pred), B, nenc)`.
pub fn gather_targets<B: crate::ops::IjepaBackend>(
    h: Tensor<B, 3>,
    masks_pred: &MaskIndices,
    nenc: usize,
) -> Tensor<B, 3> {
    apply_masks(h, masks_pred, nenc)
}

/// Smooth-L1 with beta 1, mean over all elements: `0.5 d^2` for `|d| < 1`, `|d| - 0.5` else.
pub fn smooth_l1<B: crate::ops::IjepaBackend, const D: usize>(
    pred: Tensor<B, D>,
    target: Tensor<B, D>,
) -> Tensor<B, 1> {
    elementwise(LossKind::SmoothL1, pred, target).mean()
}

/// Mean squared error.
pub fn l2<B: crate::ops::IjepaBackend, const D: usize>(
    pred: Tensor<B, D>,
    target: Tensor<B, D>,
) -> Tensor<B, 1> {
    elementwise(LossKind::L2, pred, target).mean()
}

/// The loss of every element. Smooth-L1 is written as `q (|d| - q/2)` with `q = min(|d|, 1)`,
/// which has the right gradient everywhere.
fn elementwise<B: crate::ops::IjepaBackend, const D: usize>(
    kind: LossKind,
    pred: Tensor<B, D>,
    target: Tensor<B, D>,
) -> Tensor<B, D> {
    let d = pred - target;
    match kind {
        LossKind::SmoothL1 => {
            let ad = d.abs();
            let q = ad.clone().clamp_max(1.0);
            q.clone() * (ad - q.mul_scalar(0.5))
        }
        LossKind::L2 => d.clone() * d,
        LossKind::L1 => d.abs(),
    }
}

/// Mean absolute error (V-JEPA 2's loss).
pub fn l1<B: crate::ops::IjepaBackend, const D: usize>(
    pred: Tensor<B, D>,
    target: Tensor<B, D>,
) -> Tensor<B, 1> {
    (pred - target).abs().mean()
}

pub fn loss<B: crate::ops::IjepaBackend, const D: usize>(
    kind: LossKind,
    pred: Tensor<B, D>,
    target: Tensor<B, D>,
) -> Tensor<B, 1> {
    match kind {
        LossKind::SmoothL1 => smooth_l1(pred, target),
        LossKind::L2 => l2(pred, target),
        LossKind::L1 => l1(pred, target),
    }
}

/// [`loss`] of `pred`, `target` `[rows, K, D]` over the first `valid` tokens of every row
/// only (the others are padding, see [`MaskIndices::padded`]): the mean over the real
/// elements, and exactly zero gradient for the padding. `valid == K` is [`loss`] itself.
pub fn loss_valid<B: crate::ops::IjepaBackend>(
    kind: LossKind,
    pred: Tensor<B, 3>,
    target: Tensor<B, 3>,
    valid: usize,
) -> Tensor<B, 1> {
    let [rows, k, d] = pred.dims();
    if valid >= k {
        return loss(kind, pred, target);
    }
    let per_element = elementwise(kind, pred, target);
    let keep: Vec<f32> = (0..k).map(|j| if j < valid { 1.0 } else { 0.0 }).collect();
    let keep = Tensor::<B, 3>::from_data(
        burn::tensor::TensorData::new(keep, [1, k, 1]),
        &per_element.device(),
    );
    (per_element * keep)
        .sum()
        .div_scalar((rows * valid * d) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuAutodiff;
    use burn::tensor::TensorData;

    type B = CpuAutodiff;

    /// Deterministic values in about [-2.5, 2.5], some beyond the smooth-L1 knee.
    fn values(n: usize, salt: usize) -> Vec<f64> {
        (0..n)
            .map(|i| (((i * 7919 + salt * 104729) % 1000) as f64 / 200.0) - 2.5)
            .collect()
    }

    fn tensor(v: &[f64], shape: [usize; 3]) -> Tensor<B, 3> {
        let f: Vec<f32> = v.iter().map(|x| *x as f32).collect();
        Tensor::from_data(TensorData::new(f, shape), &Default::default()).require_grad()
    }

    fn host(t: Tensor<burn::backend::Flex, 3>) -> Vec<f64> {
        t.into_data()
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// Value and gradient (w.r.t. the prediction) of every loss against f64 sums of the
    /// element-wise formulas: smooth-L1 `0.5 d^2` (|d| < 1) else `|d| - 0.5`; L2 `d^2`;
    /// L1 `|d|`; each averaged over all elements.
    #[test]
    fn losses_and_their_gradients_match_f64() {
        let shape = [2, 3, 5];
        let n = 30;
        let (p, t) = (values(n, 1), values(n, 2));
        type F = fn(f64) -> (f64, f64); // d -> (value, derivative)
        let cases: [(LossKind, F); 3] = [
            (LossKind::SmoothL1, |d| {
                if d.abs() < 1.0 {
                    (0.5 * d * d, d)
                } else {
                    (d.abs() - 0.5, d.signum())
                }
            }),
            (LossKind::L2, |d| (d * d, 2.0 * d)),
            (LossKind::L1, |d| (d.abs(), d.signum())),
        ];
        for (kind, f) in cases {
            let pred = tensor(&p, shape);
            let target = tensor(&t, shape).detach();
            let out = loss(kind, pred.clone(), target);
            let got: f64 = out.clone().into_scalar().into();
            let grads = out.backward();
            let g = host(pred.grad(&grads).unwrap());
            let want: f64 = p.iter().zip(&t).map(|(a, b)| f(a - b).0).sum::<f64>() / n as f64;
            let want_g: Vec<f64> = p
                .iter()
                .zip(&t)
                .map(|(a, b)| f(a - b).1 / n as f64)
                .collect();
            close(&[got], &[want], 1e-6, &format!("{kind:?} value"));
            close(&g, &want_g, 1e-6, &format!("{kind:?} gradient"));
        }
    }

    /// DynTanh targets: `tanh(alpha h)` and its derivative `alpha (1 - tanh^2)`; `none` is
    /// the identity; `layer_norm` gives every token mean 0 and variance 1 (biased, eps 1e-5).
    #[test]
    fn target_normalisations_match_f64() {
        let shape = [1, 4, 6];
        let h = values(24, 3);
        let alpha = 0.7;
        let x = tensor(&h, shape);
        let y = normalize_targets_with(x.clone(), TargetNorm::Dyntanh { alpha });
        let grads = y.clone().sum().backward();
        close(
            &host(y.inner()),
            &h.iter().map(|v| (alpha * v).tanh()).collect::<Vec<_>>(),
            1e-6,
            "dyntanh",
        );
        close(
            &host(x.grad(&grads).unwrap()),
            &h.iter()
                .map(|v| alpha * (1.0 - (alpha * v).tanh().powi(2)))
                .collect::<Vec<_>>(),
            1e-5,
            "dyntanh gradient",
        );
        let id = normalize_targets_with(tensor(&h, shape), TargetNorm::None);
        close(&host(id.inner()), &h, 1e-7, "none");
        let ln = host(normalize_targets_with(tensor(&h, shape), TargetNorm::LayerNorm).inner());
        let want: Vec<f64> = h
            .chunks(6)
            .flat_map(|row| {
                let m = row.iter().sum::<f64>() / 6.0;
                let v = row.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 6.0;
                row.iter()
                    .map(move |x| (x - m) / (v + 1e-5).sqrt())
                    .collect::<Vec<_>>()
            })
            .collect();
        close(&ln, &want, 1e-5, "layer_norm");
    }
}
