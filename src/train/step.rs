//! One training iteration in the official order (spec 1.9):
//! target encoder on the full image (no grad) -> layer norm -> gather the target blocks;
//! context encoder on the context tokens -> predictor -> loss; backward; AdamW; EMA.

use burn::module::AutodiffModule;
use burn::tensor::{ElementConversion, Tensor};

use super::distributed::GradReducer;
use super::loss::{self, LossKind};
use super::optim::{AdamW, StepHyper, TensorMap, collect_grads, grad_norm};
use crate::error::{Error, Result};
use crate::model::padding::pad_batch;
use crate::model::{MaskIndices, Predictor, VisionTransformer};
use crate::ops::{Precision, with_precision};

/// The three networks of I-JEPA: the context encoder and the predictor train; the target
/// encoder is their EMA and lives on the inner (non-autodiff) backend.
pub struct Networks<B: crate::ops::TrainBackend> {
    pub encoder: VisionTransformer<B>,
    pub predictor: Predictor<B>,
    pub target: VisionTransformer<B::InnerBackend>,
}

/// A batch: pixels `[B, C, H, W]` and the collator's masks.
pub struct Batch<B: crate::ops::TrainBackend> {
    pub images: Tensor<B::InnerBackend, 4>,
    pub masks_enc: MaskIndices,
    pub masks_pred: MaskIndices,
}

/// Loss and gradients of one batch (before any optimizer update).
pub struct Gradients<B: crate::ops::TrainBackend> {
    pub loss: f64,
    /// `encoder.<name>` / `predictor.<name>`.
    pub grads: TensorMap<B::InnerBackend>,
}

/// Forward and backward of the objective on one batch; the forward passes run under
/// `precision` (bf16 autocast as the official `use_bfloat16`, or f32).
pub fn loss_and_grads<B: crate::ops::TrainBackend>(
    nets: &Networks<B>,
    batch: &Batch<B>,
    kind: LossKind,
    precision: Precision,
) -> Gradients<B> {
    with_precision(precision, || forward_backward(nets, batch, kind))
}

fn forward_backward<B: crate::ops::TrainBackend>(
    nets: &Networks<B>,
    batch: &Batch<B>,
    kind: LossKind,
) -> Gradients<B> {
    let nenc = batch.masks_enc.n_masks();
    let targets = {
        // normalize_targets(gather_targets(target(imgs))): row-wise ops commute with the gather
        let h = nets
            .target
            .forward_kept(batch.images.clone(), &batch.masks_pred, nenc);
        loss::normalize_targets(h)
    };
    let images = Tensor::<B, 4>::from_inner(batch.images.clone());
    let z = nets.encoder.forward(images, Some(&batch.masks_enc));
    let pred = nets
        .predictor
        .forward(z, &batch.masks_enc, &batch.masks_pred);
    let loss = loss::loss_valid(
        kind,
        pred,
        Tensor::from_inner(targets),
        batch.masks_pred.valid(),
    );
    let value: f64 = loss.clone().into_scalar().elem();
    let grads = loss.backward();
    let mut map = collect_grads(&nets.encoder, &grads, "encoder");
    map.extend(collect_grads(&nets.predictor, &grads, "predictor"));
    Gradients {
        loss: value,
        grads: map,
    }
}

/// Settings of the update that follows the gradients.
#[derive(Clone, Copy, Debug)]
pub struct UpdateHyper {
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    /// Clip the global gradient norm to this value (off when `None`, as the official code).
    pub grad_clip: Option<f64>,
}

/// AdamW on encoder and predictor, then the EMA of the target. Returns the gradient norm
/// when clipping is on (computing it costs a pass over every gradient).
pub fn apply_update<B: crate::ops::TrainBackend>(
    nets: Networks<B>,
    adam: &mut AdamW<B::InnerBackend>,
    mut grads: TensorMap<B::InnerBackend>,
    h: UpdateHyper,
) -> (Networks<B>, Option<f64>) {
    let mut norm = None;
    if let Some(max) = h.grad_clip {
        let total = grad_norm(&grads);
        norm = Some(total);
        let factor = max / (total + 1e-6);
        if factor < 1.0 {
            for g in grads.values_mut() {
                *g = g.clone().mul_scalar(factor as f32);
            }
        }
    }
    let hyper = StepHyper {
        lr: h.lr,
        weight_decay: h.weight_decay,
    };
    adam.begin_step();
    let encoder = adam.update::<B, _>(nets.encoder, "encoder", &grads, hyper);
    let predictor = adam.update::<B, _>(nets.predictor, "predictor", &grads, hyper);
    let target = super::ema::ema_update(nets.target, &encoder.valid(), h.momentum);
    (
        Networks {
            encoder,
            predictor,
            target,
        },
        norm,
    )
}

/// How the step computes: the objective, the arithmetic of the forward passes, the update.
#[derive(Clone, Copy, Debug)]
pub struct StepSettings {
    /// The step's number in the run (1-based), for messages.
    pub step: u64,
    pub loss: LossKind,
    pub precision: Precision,
    pub hyper: UpdateHyper,
    /// Pad every micro-batch's context and target token counts to their buckets
    /// ([`crate::model::padding`]): the same loss and gradients, a few shapes per run.
    pub static_shapes: bool,
}

/// The training step `ijepa pretrain` runs: loss and gradients of each of this peer's
/// micro-batches, summed and averaged over them, averaged over all peers by `reducer` (the
/// official AllReduce of the loss, DDP's gradient average), a finite-loss check (nothing is
/// updated on NaN / inf), then AdamW and the EMA. Returns the networks and the mean loss.
pub fn train_step<B: crate::ops::TrainBackend>(
    nets: Networks<B>,
    adam: &mut AdamW<B::InnerBackend>,
    micro_batches: &[Batch<B>],
    reducer: &dyn GradReducer<B::InnerBackend>,
    s: StepSettings,
) -> Result<(Networks<B>, f64)> {
    let mut grads: Option<TensorMap<B::InnerBackend>> = None;
    let mut loss_sum = 0.0;
    let num_patches = nets.encoder.num_patches();
    for batch in micro_batches {
        let padded;
        let batch = if s.static_shapes {
            let (masks_enc, masks_pred) =
                pad_batch(&batch.masks_enc, &batch.masks_pred, num_patches)?;
            padded = Batch::<B> {
                images: batch.images.clone(),
                masks_enc,
                masks_pred,
            };
            &padded
        } else {
            batch
        };
        let g = loss_and_grads(&nets, batch, s.loss, s.precision);
        loss_sum += g.loss;
        grads = Some(match grads {
            None => g.grads,
            Some(mut acc) => {
                for (k, v) in g.grads {
                    if let Some(a) = acc.remove(&k) {
                        acc.insert(k, a + v);
                    }
                }
                acc
            }
        });
    }
    let accum = micro_batches.len().max(1);
    let mut grads = grads.unwrap_or_default();
    if accum > 1 {
        for v in grads.values_mut() {
            *v = v.clone().div_scalar(accum as f32);
        }
    }
    let (grads, loss) = reducer.all_reduce_mean(grads, loss_sum / accum as f64)?;
    if !loss.is_finite() {
        return Err(Error::Diverged { step: s.step, loss });
    }
    let (nets, _) = apply_update(nets, adam, grads, s.hyper);
    Ok((nets, loss))
}
