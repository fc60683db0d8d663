//! The I-JEPA objective (spec 1.9): targets are the target encoder's full-image output,
//! layer-normed again without affine parameters (eps 1e-5), gathered at the target blocks;
//! the loss is smooth-L1 (beta 1, mean over every element) as the official code, or the
//! paper's L2 (mean squared error).

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
}

impl std::str::FromStr for LossKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "smooth_l1" | "smooth-l1" => Ok(Self::SmoothL1),
            "l2" | "mse" => Ok(Self::L2),
            other => Err(format!("unknown loss '{other}' (smooth_l1 or l2)")),
        }
    }
}

/// `F.layer_norm(h, (D,))` of the target encoder's output.
pub fn normalize_targets<B: crate::ops::IjepaBackend>(target_raw: Tensor<B, 3>) -> Tensor<B, 3> {
    layer_norm_no_affine(target_raw, 1e-5)
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
    }
}

pub fn loss<B: crate::ops::IjepaBackend, const D: usize>(
    kind: LossKind,
    pred: Tensor<B, D>,
    target: Tensor<B, D>,
) -> Tensor<B, 1> {
    match kind {
        LossKind::SmoothL1 => smooth_l1(pred, target),
        LossKind::L2 => l2(pred, target),
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
