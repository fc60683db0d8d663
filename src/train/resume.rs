//! Resume or start: the networks, the optimizer state and the position of a run, either read
//! from the run's `latest` checkpoint (after checking that it belongs to this run) or fresh
//! from the seed (or from `meta.init_from`).

use std::path::Path;

use burn::module::AutodiffModule;

use super::config::TrainConfig;
use super::optim::AdamW;
use super::run::Run;
use super::state::{self, Progress, TrainingMeta};
use super::step::Networks;
use crate::checkpoint::{Checkpoint, EncoderChoice, LoadOptions, build_encoder, build_predictor};
use crate::error::{CheckpointError, Error, Result};
use crate::model::{Init, Predictor, VisionTransformer};

/// What training continues from.
pub struct Start<B: crate::ops::TrainBackend> {
    pub nets: Networks<B>,
    pub adam: AdamW<B::InnerBackend>,
    pub meta: TrainingMeta,
}

/// The state in `latest` when `resume`, else a fresh one; `meta.config` is `cfg`'s YAML.
pub fn resume_or_init<B: crate::ops::TrainBackend>(
    cfg: &TrainConfig,
    run: &Run,
    latest: &Path,
    resume: bool,
    device: &B::Device,
) -> Result<Start<B>> {
    let mut start = if resume {
        resume_from::<B>(run, latest, device)?
    } else {
        let meta = TrainingMeta {
            progress: Progress {
                ipe: run.ipe,
                replicas: run.replicas,
                ..Progress::default()
            },
            ..TrainingMeta::default()
        };
        Start {
            nets: fresh_networks::<B>(cfg, run, device)?,
            adam: AdamW::default(),
            meta,
        }
    };
    start.meta.config = cfg.to_yaml();
    Ok(start)
}

fn resume_from<B: crate::ops::TrainBackend>(
    run: &Run,
    latest: &Path,
    device: &B::Device,
) -> Result<Start<B>> {
    if !latest.is_file() {
        return Err(Error::io(
            latest,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no checkpoint to resume from"),
        ));
    }
    let ck = Checkpoint::read(latest, &LoadOptions::default())?;
    if ck.description.encoder != run.encoder
        || ck.description.predictor.as_ref() != Some(&run.predictor)
    {
        return Err(CheckpointError::OtherModel {
            path: latest.to_path_buf(),
        }
        .into());
    }
    let meta = state::training_meta(&ck.description, latest)?;
    if meta.progress.ipe != run.ipe || meta.progress.replicas != run.replicas {
        return Err(CheckpointError::OtherRun {
            path: latest.to_path_buf(),
            ipe: meta.progress.ipe,
            replicas: meta.progress.replicas,
            run_ipe: run.ipe,
            run_replicas: run.replicas,
        }
        .into());
    }
    let nets = Networks::<B> {
        encoder: ck.build_encoder(EncoderChoice::Context, device)?,
        predictor: ck.build_predictor(device)?,
        target: ck.build_encoder::<B::InnerBackend>(EncoderChoice::Target, device)?,
    };
    let adam = state::restore_adam::<B::InnerBackend>(
        &ck.raw,
        &ck.description,
        &state::trainable_shapes(&nets),
        latest,
        device,
    )?;
    Ok(Start { nets, adam, meta })
}

/// Networks initialised from the seed, or from `meta.init_from`.
fn fresh_networks<B: crate::ops::TrainBackend>(
    cfg: &TrainConfig,
    run: &Run,
    device: &B::Device,
) -> Result<Networks<B>> {
    let (enc_cfg, pred_cfg) = (&run.encoder, &run.predictor);
    let mut init = Init::new(cfg.meta.seed);
    let encoder = VisionTransformer::<B>::new(enc_cfg, &mut init, device);
    let predictor = Predictor::<B>::new(pred_cfg, &mut init, device);
    let target = encoder.valid();
    let mut nets = Networks {
        encoder,
        predictor,
        target,
    };
    if let Some(path) = &cfg.meta.init_from {
        let ck = Checkpoint::read(
            Path::new(path),
            &LoadOptions {
                num_heads: Some(enc_cfg.num_heads),
                pred_num_heads: Some(pred_cfg.num_heads),
            },
        )?;
        let what = |p: &str| format!("{path} ({p})");
        nets.encoder = build_encoder(enc_cfg, &ck.encoder, &what("encoder"), device)?;
        nets.target = build_encoder(
            enc_cfg,
            ck.encoder_tensors(EncoderChoice::Target)
                .unwrap_or(&ck.encoder),
            &what("target_encoder"),
            device,
        )?;
        let pred = ck
            .predictor
            .as_ref()
            .ok_or_else(|| CheckpointError::NoPredictor {
                path: ck.path.clone(),
            })?;
        nets.predictor = build_predictor(pred_cfg, pred, &what("predictor"), device)?;
    }
    Ok(nets)
}
