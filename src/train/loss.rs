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
/// Written as `q (|d| - q/2)` with `q = min(|d|, 1)`, which has the right gradient everywhere.
pub fn smooth_l1<B: crate::ops::IjepaBackend, const D: usize>(
    pred: Tensor<B, D>,
    target: Tensor<B, D>,
) -> Tensor<B, 1> {
    let ad = (pred - target).abs();
    let q = ad.clone().clamp_max(1.0);
    (q.clone() * (ad - q.mul_scalar(0.5))).mean()
}

/// Mean squared error.
pub fn l2<B: crate::ops::IjepaBackend, const D: usize>(
    pred: Tensor<B, D>,
    target: Tensor<B, D>,
) -> Tensor<B, 1> {
    let d = pred - target;
    (d.clone() * d).mean()
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
