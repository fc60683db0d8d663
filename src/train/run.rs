//! Everything a pretraining run derives from its configuration, built once: the model
//! shapes, the data (dataset, augmentation, loader), the mask sampler, the schedules, this
//! peer's share of every step and the checkpoint's description of the model.

use std::ops::Range;

use super::config::TrainConfig;
use super::objective::Objective;
use super::schedule::Schedules;
use crate::checkpoint::native::Description;
use crate::data::augment::TrainTransform;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::transform::{Preprocess, Resize};
use crate::data::{DataSpec, Dataset, Split, with_max_images};
use crate::error::{ConfigError, Result};
use crate::masks::MaskSampler;
use crate::model::{EncoderConfig, PredictorConfig};

/// A run's fixed parts.
pub struct Run {
    pub encoder: EncoderConfig,
    pub predictor: PredictorConfig,
    pub sampler: MaskSampler,
    pub loader: Loader,
    pub schedules: Schedules,
    /// What every step minimises (the loss and the options on top of it).
    pub objective: Objective,
    /// Steps per epoch.
    pub ipe: usize,
    pub epochs: usize,
    /// Micro-batches of one step over all peers (peers x `accum_steps`).
    pub replicas: usize,
    /// The loader replicas this peer trains on.
    pub mine: Range<usize>,
    /// What every checkpoint says about the model, inference preprocessing included.
    pub description: Description,
}

impl Run {
    /// Builds the run of peer `rank` of `world` peers.
    pub fn build(cfg: &TrainConfig, rank: usize, world: usize, strict: bool) -> Result<Self> {
        let encoder = cfg.encoder_config()?;
        let predictor = cfg.predictor_config()?;
        let sampler = MaskSampler::new(cfg.mask_config()?, cfg.meta.seed)?;
        let d = &cfg.data;
        let accum = cfg.optimization.accum_steps;
        let replicas = accum * world;
        let spec = cfg.dataset_spec()?;
        let dataset = open_train_set(cfg, &spec)?;
        let n_images = dataset.len();
        let loader_cfg = LoaderConfig {
            batch_size: d.batch_size,
            seed: cfg.meta.seed,
            replicas,
            prefetch: d.prefetch.max(1),
            strict,
            second_view: cfg.second_view(),
        };
        let mut loader = Loader::new(dataset, train_transform(cfg), loader_cfg)?;
        if let Some(second) = second_view_transform(cfg) {
            loader = loader.with_second_view_transform(second)?;
        }
        let ipe = loader.ipe();
        if ipe == 0 {
            return Err(ConfigError::value(
                "data.batch_size",
                format!("at most {n_images} images / {replicas} replicas (the dataset's size)"),
                d.batch_size,
            )
            .into());
        }
        let o = &cfg.optimization;
        let schedules = Schedules::official(
            ipe,
            o.epochs,
            o.warmup,
            o.ipe_scale,
            (o.start_lr, o.lr, o.final_lr),
            (o.weight_decay, o.final_weight_decay),
            o.ema,
        );
        let description = Description::new(
            encoder.clone(),
            Some(predictor.clone()),
            inference_preprocess(cfg, &spec),
            "pretrain",
        );
        Ok(Run {
            encoder,
            predictor,
            sampler,
            loader,
            schedules,
            objective: cfg.objective(),
            ipe,
            epochs: o.epochs,
            replicas,
            mine: rank * accum..(rank + 1) * accum,
            description,
        })
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        (self.ipe * self.epochs) as u64
    }
}

/// The training augmentation the config describes (official `make_transforms`).
fn train_transform(cfg: &TrainConfig) -> TrainTransform {
    let (mean, std) = cfg.normalisation();
    let d = &cfg.data;
    TrainTransform {
        crop_size: d.crop_size,
        crop_scale: d.crop_scale,
        ratio: (3.0 / 4.0, 4.0 / 3.0),
        pad: d.pad,
        horizontal_flip: d.use_horizontal_flip,
        gaussian_blur: d.use_gaussian_blur,
        color_jitter: if d.use_color_distortion {
            d.color_jitter_strength
        } else {
            0.0
        },
        channels: d.in_chans,
        mean,
        std,
    }
}

/// How a model trained with `cfg` on `spec` wants its inputs at inference time.
pub fn inference_preprocess(cfg: &TrainConfig, spec: &DataSpec) -> Preprocess {
    let (mean, std) = cfg.normalisation();
    let d = &cfg.data;
    if spec.is_idx() {
        // Small fixed-size images: pad as in training, resize only if needed, no crop.
        Preprocess {
            size: d.crop_size,
            pad: d.pad,
            resize: Resize::Exact,
            center_crop: false,
            channels: d.in_chans,
            mean,
            std,
        }
    } else {
        Preprocess {
            size: d.crop_size,
            pad: 0,
            resize: Resize::ShorterSide {
                ratio: 256.0 / 224.0,
            },
            center_crop: true,
            channels: d.in_chans,
            mean,
            std,
        }
    }
}

/// Open the training split of `spec` as the config says.
pub fn open_train_set(cfg: &TrainConfig, spec: &DataSpec) -> Result<Box<dyn Dataset>> {
    let ds = spec.open(Split::Train, cfg.data.in_chans)?;
    Ok(match cfg.data.max_images {
        Some(n) => with_max_images(ds, n),
        None => ds,
    })
}

/// The `crop` view's transform where it differs from the first view's: the training
/// transform at `regularization.invariance_crop_scale`.
fn second_view_transform(cfg: &TrainConfig) -> Option<TrainTransform> {
    let scale = cfg.regularization.invariance_crop_scale?;
    Some(TrainTransform {
        crop_scale: scale,
        ..train_transform(cfg)
    })
}
