//! One training iteration in the official order (spec 1.9):
//! target encoder on the full image (no grad) -> layer norm -> gather the target blocks;
//! context encoder on the context tokens -> predictor -> loss; backward; AdamW; EMA.

use burn::module::AutodiffModule;
use burn::tensor::{ElementConversion, Tensor};

use super::distributed::GradReducer;
use super::loss::{self, LossKind};
use super::objective::{Objective, PooledView, StepKey};
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
    /// A second view of the same images (`[B, C, H, W]`), for the invariance term; the
    /// term uses `images` themselves when it is `None`.
    pub second_view: Option<Tensor<B::InnerBackend, 4>>,
}

/// Loss and gradients of one batch (before any optimizer update).
pub struct Gradients<B: crate::ops::TrainBackend> {
    pub loss: f64,
    /// The prediction loss alone (equal to `loss` unless a regulariser is on).
    pub prediction: f64,
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
    loss_and_grads_with(
        nets,
        batch,
        &Objective::official(kind),
        StepKey::default(),
        precision,
    )
}

/// [`loss_and_grads`] for any [`Objective`]; `key` names the random streams of the options
/// (unused by the official objective).
pub fn loss_and_grads_with<B: crate::ops::TrainBackend>(
    nets: &Networks<B>,
    batch: &Batch<B>,
    objective: &Objective,
    key: StepKey,
    precision: Precision,
) -> Gradients<B> {
    with_precision(precision, || forward_backward(nets, batch, objective, key))
}

fn forward_backward<B: crate::ops::TrainBackend>(
    nets: &Networks<B>,
    batch: &Batch<B>,
    objective: &Objective,
    key: StepKey,
) -> Gradients<B> {
    let nenc = batch.masks_enc.n_masks();
    // normalize(gather_targets(target(imgs))): row-wise ops commute with the gather. The
    // invariance term's target is the pooled target-encoder output of the second view (no
    // grad), or of the images themselves (`same`), then taken from the same pass.
    let (h, view_target) = match (objective.needs_view(), &batch.second_view) {
        (true, None) => {
            let (h, pooled) = nets.target.forward_kept_layers_pooled(
                batch.images.clone(),
                &batch.masks_pred,
                nenc,
                objective.target_layers,
            );
            (h, Some(pooled))
        }
        (on, view) => (
            nets.target.forward_kept_layers(
                batch.images.clone(),
                &batch.masks_pred,
                nenc,
                objective.target_layers,
            ),
            view.as_ref()
                .filter(|_| on)
                .map(|v| nets.target.forward(v.clone(), None).mean_dim(1)),
        ),
    };
    let targets = loss::normalize_targets_with(h, objective.target_norm);
    let images = Tensor::<B, 4>::from_inner(batch.images.clone());
    let z = nets.encoder.forward(images, Some(&batch.masks_enc));
    // The regularisers see the real context tokens only (padded ones come last in each row).
    let z_real = match batch.masks_enc.is_padded() {
        true => {
            let [rows, _, d] = z.dims();
            z.clone().slice([0..rows, 0..batch.masks_enc.valid(), 0..d])
        }
        false => z.clone(),
    };
    let mut regulariser = objective.regulariser(
        nets.predictor.regularised_features(z_real.clone()),
        &batch.masks_enc,
        key,
    );
    if let Some(t) = view_target {
        let features = nets.predictor.invariance_features(z_real.clone());
        let view = Tensor::<B, 3>::from_inner(t);
        if objective.invariance_weight > 0.0 {
            let term = objective.invariance(features.clone(), view.clone(), nenc);
            regulariser = Some(plus(regulariser, term));
        }
        if objective.msn_weight > 0.0 {
            // TrainConfig::predictor_config gives the predictor prototypes iff the weight is on.
            let prototypes = nets
                .predictor
                .prototypes
                .as_ref()
                .expect("msn_weight > 0 needs a predictor built with prototypes");
            let term = objective.msn(features, view, prototypes.val(), nenc);
            regulariser = Some(plus(regulariser, term));
        }
    }
    let targets = Tensor::<B, 3>::from_inner(targets);
    if objective.pooled_prediction_weight > 0.0 {
        let mean = match objective.pooled_prediction_view {
            PooledView::Context => z_real.clone().mean_dim(1),
            // one row per image and context block, as the targets are laid out
            PooledView::Full => {
                let full = nets
                    .encoder
                    .forward(Tensor::from_inner(batch.images.clone()), None)
                    .mean_dim(1);
                Tensor::cat(vec![full; nenc], 0)
            }
        };
        let pooled = nets.predictor.forward_pooled(mean, &batch.masks_pred);
        let term = loss::loss_valid(
            objective.loss,
            pooled,
            targets.clone(),
            batch.masks_pred.valid(),
        )
        .mul_scalar(objective.pooled_prediction_weight);
        regulariser = Some(plus(regulariser, term));
    }
    let [_, _, d] = z.dims();
    let noise = objective.stop_noise::<B>(
        [
            batch.masks_pred.n_masks() * z.dims()[0],
            batch.masks_pred.k(),
            d,
        ],
        key,
        &z.device(),
    );
    let pred = nets
        .predictor
        .forward_stop(z, &batch.masks_enc, &batch.masks_pred, noise);
    // Padded target rows (static shapes) are left out of the mean and the gradients.
    let prediction = loss::loss_valid(objective.loss, pred, targets, batch.masks_pred.valid());
    let prediction_value: f64 = prediction.clone().into_scalar().elem();
    let loss = match regulariser {
        Some(r) => prediction + r,
        None => prediction,
    };
    let value: f64 = loss.clone().into_scalar().elem();
    let grads = loss.backward();
    let mut map = collect_grads(&nets.encoder, &grads, "encoder");
    map.extend(collect_grads(&nets.predictor, &grads, "predictor"));
    Gradients {
        loss: value,
        prediction: prediction_value,
        grads: map,
    }
}

/// `sum + term`, or `term` when there is no sum yet.
fn plus<B: burn::tensor::backend::Backend>(
    sum: Option<Tensor<B, 1>>,
    term: Tensor<B, 1>,
) -> Tensor<B, 1> {
    match sum {
        Some(s) => s + term,
        None => term,
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
    /// The step's number in the run (1-based), for messages and the options' random streams.
    pub step: u64,
    pub objective: Objective,
    /// The run's seed, for the options' random streams.
    pub seed: u64,
    /// The replica number of this peer's first micro-batch (the options' streams are keyed
    /// by replica, so that peers and accumulated micro-batches draw different numbers).
    pub first_replica: u64,
    pub precision: Precision,
    pub hyper: UpdateHyper,
    /// Pad every micro-batch's context and target token counts to their buckets
    /// ([`crate::model::padding`]): the same loss and gradients, a few shapes per run.
    pub static_shapes: bool,
}

/// The losses of a step, averaged over its micro-batches and peers.
#[derive(Clone, Copy, Debug)]
pub struct StepLosses {
    /// What was minimised (prediction plus the regularisers, if any).
    pub loss: f64,
    /// The prediction loss alone, averaged over this peer's micro-batches only.
    pub prediction: f64,
}

/// The training step `ijepa pretrain` runs: loss and gradients of each of this peer's
/// micro-batches, summed and averaged over them, averaged over all peers by `reducer` (the
/// official AllReduce of the loss, DDP's gradient average), a finite-loss check (nothing is
/// updated on NaN / inf), then AdamW and the EMA. Returns the networks and the losses.
pub fn train_step<B: crate::ops::TrainBackend>(
    nets: Networks<B>,
    adam: &mut AdamW<B::InnerBackend>,
    micro_batches: &[Batch<B>],
    reducer: &dyn GradReducer<B::InnerBackend>,
    s: StepSettings,
) -> Result<(Networks<B>, StepLosses)> {
    let mut grads: Option<TensorMap<B::InnerBackend>> = None;
    let (mut loss_sum, mut prediction_sum) = (0.0, 0.0);
    let num_patches = nets.encoder.num_patches();
    for (i, batch) in micro_batches.iter().enumerate() {
        let padded;
        let batch = if s.static_shapes {
            let (masks_enc, masks_pred) =
                pad_batch(&batch.masks_enc, &batch.masks_pred, num_patches)?;
            padded = Batch::<B> {
                images: batch.images.clone(),
                masks_enc,
                masks_pred,
                second_view: batch.second_view.clone(),
            };
            &padded
        } else {
            batch
        };
        let key = StepKey {
            seed: s.seed,
            step: s.step,
            replica: s.first_replica + i as u64,
        };
        let g = loss_and_grads_with(&nets, batch, &s.objective, key, s.precision);
        loss_sum += g.loss;
        prediction_sum += g.prediction;
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
    let prediction = prediction_sum / accum as f64;
    Ok((nets, StepLosses { loss, prediction }))
}

#[cfg(test)]
mod tests;
