//! Training checkpoints: the native checkpoint file plus everything needed to continue
//! exactly: AdamW moments (`optimizer.exp_avg.<name>`, `optimizer.exp_avg_sq.<name>`, official
//! layout), and in the description the position in the run (epoch, step, global step =
//! schedule position = mask-sampler counter) and the resolved config. Every random stream of
//! the trainer (data order, augmentation, mask sizes and positions) is a pure function of
//! `(seed, epoch, step, replica)`, so the position *is* the RNG state.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::optim::{AdamW, TensorMap, to_host};
use super::step::Networks;
use crate::checkpoint::native::{self, Description};
use crate::checkpoint::tensors::{is_linear_weight, parameter_shapes};
use crate::checkpoint::{HostTensor, NamedTensors, encoder_state, predictor_state, prefixed};
use crate::error::{CheckpointError, Result, ShapeMismatch};

/// Where a run stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Epoch in progress (0-based); equals the number of completed epochs at an epoch end.
    pub epoch: usize,
    /// Optimizer steps already taken in `epoch`.
    pub step_in_epoch: usize,
    /// Optimizer steps taken in the whole run (the schedules' and the mask counter's position).
    pub global_step: u64,
    /// Iterations per epoch the run was started with.
    pub ipe: usize,
    /// Replicas per step (processes x accumulation steps) the data order was drawn for.
    pub replicas: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainingMeta {
    pub progress: Progress,
    /// Mean loss of each completed epoch.
    pub epoch_losses: Vec<f64>,
    /// Sum and count of the losses of the epoch in progress.
    #[serde(default)]
    pub epoch_loss_so_far: (f64, usize),
    /// Unreadable images replaced so far.
    pub skipped_images: u64,
    /// The resolved configuration (YAML) the run uses.
    pub config: String,
}

/// Shapes (official layout) of every trainable parameter, `encoder.` / `predictor.` prefixed.
pub fn trainable_shapes<B: crate::ops::TrainBackend>(
    nets: &Networks<B>,
) -> BTreeMap<String, Vec<usize>> {
    let mut shapes = BTreeMap::new();
    for (k, v) in parameter_shapes::<B, _>(&nets.encoder) {
        shapes.insert(format!("encoder.{k}"), v);
    }
    for (k, v) in parameter_shapes::<B, _>(&nets.predictor) {
        shapes.insert(format!("predictor.{k}"), v);
    }
    shapes
}

/// Write a training checkpoint atomically.
pub fn save<B: crate::ops::TrainBackend>(
    path: &Path,
    desc: &Description,
    nets: &Networks<B>,
    adam: &AdamW<B::InnerBackend>,
    meta: &TrainingMeta,
) -> Result<()> {
    let shapes = trainable_shapes(nets);
    let mut tensors = prefixed("encoder", encoder_state(&nets.encoder));
    tensors.extend(prefixed("predictor", predictor_state(&nets.predictor)));
    tensors.extend(prefixed("target_encoder", encoder_state(&nets.target)));
    tensors.extend(prefixed(
        "optimizer.exp_avg",
        to_host(&adam.exp_avg, &shapes),
    ));
    tensors.extend(prefixed(
        "optimizer.exp_avg_sq",
        to_host(&adam.exp_avg_sq, &shapes),
    ));
    let mut desc = desc.clone();
    let mut training = serde_json::to_value(meta)?;
    if let Some(obj) = training.as_object_mut() {
        obj.insert("adam_step".into(), adam.step.into());
    }
    desc.training = Some(training);
    native::write(path, &desc, &tensors)
}

/// AdamW state stored in a checkpoint, in burn's layout.
pub fn restore_adam<B: burn::tensor::backend::Backend>(
    raw: &NamedTensors,
    desc: &Description,
    shapes: &BTreeMap<String, Vec<usize>>,
    path: &Path,
    device: &B::Device,
) -> Result<AdamW<B>> {
    let step = desc
        .training
        .as_ref()
        .and_then(|t| t.get("adam_step"))
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let read = |prefix: &str| -> Result<TensorMap<B>> {
        let mut out = TensorMap::new();
        for (name, t) in native::section(raw, prefix) {
            let Some(shape) = shapes.get(&name) else {
                return Err(CheckpointError::OptimizerKey {
                    path: path.to_path_buf(),
                    name,
                }
                .into());
            };
            if &t.shape != shape {
                return Err(CheckpointError::Mismatch {
                    what: format!("{} (optimizer state)", path.display()),
                    missing: vec![],
                    unexpected: vec![],
                    wrong_shapes: vec![ShapeMismatch {
                        key: format!("{prefix}.{name}"),
                        expected: shape.clone(),
                        found: t.shape,
                    }],
                }
                .into());
            }
            let t = if is_linear_weight(&name, shape.len()) {
                t.transposed()
            } else {
                t
            };
            let n = t.data.len();
            out.insert(name, HostTensor::new(vec![n], t.data).to_tensor(device));
        }
        Ok(out)
    };
    Ok(AdamW {
        step,
        exp_avg: read("optimizer.exp_avg")?,
        exp_avg_sq: read("optimizer.exp_avg_sq")?,
        ..AdamW::default()
    })
}

/// The training metadata of a checkpoint written by [`save`].
pub fn training_meta(desc: &Description, path: &Path) -> Result<TrainingMeta> {
    let path = path.to_path_buf();
    let Some(t) = desc.training.clone() else {
        return Err(CheckpointError::NotTraining { path }.into());
    };
    serde_json::from_value(t).map_err(|error| CheckpointError::TrainingState { path, error }.into())
}
