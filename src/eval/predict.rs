//! What the predictor predicts for chosen blocks: one forward pass of the training objective
//! with every intermediate kept (the arrays of the official reference).

use burn::tensor::{ElementConversion, Tensor};

use crate::checkpoint::{Checkpoint, EncoderChoice, HostTensor};
use crate::device::{DeviceSpec, on_device};
use crate::error::Result;
use crate::model::{MaskIndexError, MaskIndices};
use crate::ops::IjepaBackend;
use crate::train::loss;

pub struct Prediction {
    /// `target_encoder(x)`: `[B, N, D]`.
    pub target_raw: HostTensor,
    /// `target_encoder(x)`, layer-normed (eps 1e-5, no affine): `[B, N, D]`.
    pub target_h: HostTensor,
    /// `target_h` at the target blocks: `[npred*nenc*B, K_pred, D]`.
    pub targets: HostTensor,
    /// `encoder(x, masks_enc)`: `[nenc*B, K_enc, D]`.
    pub context_z: HostTensor,
    /// `predictor(z, masks_enc, masks_pred)`: same shape as `targets`.
    pub pred: HostTensor,
    pub smooth_l1: f64,
    pub l2: f64,
}

/// Run the objective on `x [B, C, H, W]` with the given context and target masks, on `device`.
pub fn predict(
    ck: &Checkpoint,
    x: &HostTensor,
    masks_enc: &MaskIndices,
    masks_pred: &MaskIndices,
    device: DeviceSpec,
) -> Result<Prediction> {
    let batch = x.shape[0];
    for (name, m) in [("masks-enc", masks_enc), ("masks-pred", masks_pred)] {
        if m.batch() != batch {
            return Err(MaskIndexError::Batch {
                name: format!("--{name}"),
                found: m.batch(),
                expected_from: "the input",
                expected: batch,
            }
            .into());
        }
    }
    on_device!(device, B, dev => predict_on::<B>(ck, x, masks_enc, masks_pred, dev))
}

fn predict_on<B: IjepaBackend>(
    ck: &Checkpoint,
    x: &HostTensor,
    masks_enc: &MaskIndices,
    masks_pred: &MaskIndices,
    dev: &B::Device,
) -> Result<Prediction> {
    let context = ck.build_encoder::<B>(EncoderChoice::Context, dev)?;
    let target = ck.build_encoder::<B>(EncoderChoice::Target, dev)?;
    let predictor = ck.build_predictor::<B>(dev)?;
    let x: Tensor<B, 4> = x.to_tensor(dev);
    let raw = target.forward(x.clone(), None);
    let h = loss::normalize_targets(raw.clone());
    let targets = loss::gather_targets(h.clone(), masks_pred, masks_enc.n_masks());
    let z = context.forward(x, Some(masks_enc));
    let pred = predictor.forward(z.clone(), masks_enc, masks_pred);
    let smooth_l1: f64 = loss::smooth_l1(pred.clone(), targets.clone())
        .into_scalar()
        .elem();
    let l2: f64 = loss::l2(pred.clone(), targets.clone()).into_scalar().elem();
    Ok(Prediction {
        target_raw: HostTensor::from_tensor(raw),
        target_h: HostTensor::from_tensor(h),
        targets: HostTensor::from_tensor(targets),
        context_z: HostTensor::from_tensor(z),
        pred: HostTensor::from_tensor(pred),
        smooth_l1,
        l2,
    })
}
