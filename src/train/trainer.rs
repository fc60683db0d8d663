//! `ijepa pretrain`: the training loop around [`super::step`]: data, masks, schedules,
//! checkpoints that resume exactly, the CSV log, the progress display, the collapse monitor
//! and the loss curve.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};

use super::config::TrainConfig;
use super::distributed::{GradReducer, Single};
use super::knn_monitor::KnnMonitor;
use super::monitor::{self, EpochRecord};
use super::objective::StepKey;
use super::optim::AdamW;
use super::schedule::Schedules;
use super::state::{self, Progress, TrainingMeta};
use super::step::{Batch, Networks, UpdateHyper, apply_update, check_finite, loss_and_grads_with};
use crate::checkpoint::native::{self, Description};
use crate::checkpoint::{Checkpoint, EncoderChoice, LoadOptions, build_encoder, build_predictor};
use crate::data::augment::TrainTransform;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::transform::{Preprocess, Resize};
use crate::data::{Dataset, Split, open_source, with_max_images};
use crate::error::{Error, Result};
use crate::fsutil::write_bytes_atomic;
use crate::masks::MaskSampler;
use crate::model::{Init, MaskIndices, Predictor, VisionTransformer};

/// Run options that are not part of the experiment's configuration.
#[derive(Clone, Debug, Default)]
pub struct PretrainOptions {
    pub output: PathBuf,
    /// Continue from `output/latest.safetensors`.
    pub resume: bool,
    /// Stop (with a checkpoint) once this many optimizer steps of the run are done.
    pub max_steps: Option<u64>,
    /// Unreadable images are fatal instead of replaced and counted.
    pub strict: bool,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Test hook: pretend the loss of this step is NaN.
    pub inject_nan_at: Option<u64>,
    /// Arithmetic of the forward passes' matrix products (bf16 autocast for
    /// `meta.use_bfloat16` on a GPU).
    pub precision: crate::ops::Precision,
}

#[derive(Clone, Debug)]
pub struct PretrainSummary {
    pub steps: u64,
    pub epochs_completed: usize,
    pub last_loss: f64,
    pub train_img_per_s: f64,
    pub data_img_per_s: f64,
    pub skipped_images: u64,
    pub checkpoint: PathBuf,
}

pub const LATEST: &str = "latest.safetensors";
pub const LOG: &str = "log.csv";
pub const PARAMS: &str = "params-ijepa.yaml";

const CSV_HEADER: &str = "epoch,itr,step,loss,mask-A,mask-B,time (ms),lr,wd,momentum\n";

/// How a model trained with `cfg` wants its inputs at inference time.
pub fn inference_preprocess(cfg: &TrainConfig) -> Preprocess {
    let (mean, std) = cfg.normalisation();
    let d = &cfg.data;
    let source = cfg.dataset_source().unwrap_or_default();
    let is_idx = ["fmnist:", "mnist:", "idx:"]
        .iter()
        .any(|p| source.starts_with(p));
    if is_idx {
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

/// Open the training split named by the config.
pub fn open_train_set(cfg: &TrainConfig) -> Result<Box<dyn Dataset>> {
    let source = cfg.dataset_source()?;
    let ds = open_source(&source, Split::Train, cfg.data.in_chans)
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(match cfg.data.max_images {
        Some(n) => with_max_images(ds, n),
        None => ds,
    })
}

fn fresh_networks<B: crate::ops::TrainBackend>(
    cfg: &TrainConfig,
    device: &B::Device,
) -> Result<Networks<B>> {
    let enc_cfg = cfg.encoder_config()?;
    let pred_cfg = cfg.predictor_config()?;
    let mut init = Init::new(cfg.meta.seed);
    let encoder = VisionTransformer::<B>::new(&enc_cfg, &mut init, device);
    let predictor = Predictor::<B>::new(&pred_cfg, &mut init, device);
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
        nets.encoder = build_encoder(&enc_cfg, &ck.encoder, &what("encoder"), device)?;
        nets.target = build_encoder(
            &enc_cfg,
            ck.encoder_tensors(EncoderChoice::Target)
                .unwrap_or(&ck.encoder),
            &what("target_encoder"),
            device,
        )?;
        let pred = ck
            .predictor
            .as_ref()
            .ok_or_else(|| Error::format(path, "holds no predictor to start from"))?;
        nets.predictor = build_predictor(&pred_cfg, pred, &what("predictor"), device)?;
    }
    Ok(nets)
}

fn csv_start(path: &Path, resume_step: Option<u64>) -> Result<std::fs::File> {
    let io = |e| Error::io(path, e);
    let kept = match (resume_step, std::fs::read_to_string(path)) {
        (Some(step), Ok(text)) => {
            // Rows after the checkpoint belong to steps that will be redone.
            let mut out = String::from(CSV_HEADER);
            for line in text.lines().skip(1) {
                let row_step = line.split(',').nth(2).and_then(|v| v.parse::<u64>().ok());
                if row_step.is_some_and(|s| s <= step) {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            out
        }
        _ => CSV_HEADER.to_string(),
    };
    write_bytes_atomic(path, kept.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io)
}

fn to_images<B: crate::ops::TrainBackend>(
    pixels: Vec<f32>,
    b: usize,
    c: usize,
    s: usize,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 4> {
    Tensor::from_data(TensorData::new(pixels, [b, c, s, s]), device)
}

/// The collapse monitor's fixed batch: the first (up to) 256 images, preprocessed for inference.
fn monitor_batch(ds: &dyn Dataset, pre: &Preprocess) -> Result<(Vec<f32>, [usize; 4])> {
    let n = ds.len().min(256);
    let mut pixels = Vec::with_capacity(n * pre.channels * pre.size * pre.size);
    let mut used = 0;
    for i in 0..ds.len() {
        if used == n {
            break;
        }
        // Unreadable images are simply left out of the monitor batch.
        if let Ok(img) = ds.get(i) {
            pixels.extend(pre.apply_raw(&img));
            used += 1;
        }
    }
    Ok((pixels, [used, pre.channels, pre.size, pre.size]))
}

/// Pretrain with `cfg` in one process on one device; see [`PretrainOptions`].
pub fn pretrain<B: crate::ops::TrainBackend>(
    cfg: &TrainConfig,
    opts: &PretrainOptions,
    device: &B::Device,
) -> Result<PretrainSummary> {
    pretrain_peer::<B>(cfg, opts, device, &Single)
}

/// Pretrain as one peer of a data-parallel run: this peer trains on its share of every step,
/// `reducer` averages gradients and losses over all peers, every peer applies the same update;
/// only peer 0 writes files.
pub fn pretrain_peer<B: crate::ops::TrainBackend>(
    cfg: &TrainConfig,
    opts: &PretrainOptions,
    device: &B::Device,
    reducer: &dyn GradReducer<B::InnerBackend>,
) -> Result<PretrainSummary> {
    let out = &opts.output;
    let writer = reducer.rank() == 0;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Written first: a read-only or full output folder fails here, before any work.
    if writer {
        write_bytes_atomic(&out.join(PARAMS), cfg.to_yaml().as_bytes())?;
    }

    let enc_cfg = cfg.encoder_config()?;
    let pred_cfg = cfg.predictor_config()?;
    let sampler = MaskSampler::new(cfg.mask_config()?, cfg.meta.seed)?;
    let (mean, std) = cfg.normalisation();
    let d = &cfg.data;
    let transform = TrainTransform {
        crop_size: d.crop_size,
        crop_scale: d.crop_scale,
        ratio: (3.0 / 4.0, 4.0 / 3.0),
        pad: d.pad,
        horizontal_flip: d.use_horizontal_flip,
        color_jitter: if d.use_color_distortion {
            d.color_jitter_strength
        } else {
            0.0
        },
        gaussian_blur: d.use_gaussian_blur,
        channels: d.in_chans,
        mean,
        std,
    };
    // Replicas of a step: every peer's micro-batches; this peer takes `mine`.
    let accum = cfg.optimization.accum_steps;
    let replicas = accum * reducer.world();
    let mine = reducer.rank() * accum..(reducer.rank() + 1) * accum;
    let dataset = open_train_set(cfg)?;
    let n_images = dataset.len();
    let loader_cfg = LoaderConfig {
        batch_size: d.batch_size,
        seed: cfg.meta.seed,
        replicas,
        prefetch: d.prefetch.max(1),
        strict: opts.strict,
    };
    let loader =
        Loader::new(dataset, transform, loader_cfg).map_err(|e| Error::Config(e.to_string()))?;
    let ipe = loader.ipe();
    if ipe == 0 {
        return Err(Error::Config(format!(
            "the dataset has {n_images} images, fewer than one step needs ({} x {replicas})",
            d.batch_size
        )));
    }
    let objective = cfg.objective();
    let o = &cfg.optimization;
    let sched = Schedules::official(
        ipe,
        o.epochs,
        o.warmup,
        o.ipe_scale,
        (o.start_lr, o.lr, o.final_lr),
        (o.weight_decay, o.final_weight_decay),
        o.ema,
    );
    let total_steps = (ipe * o.epochs) as u64;
    let desc = Description::new(
        enc_cfg.clone(),
        Some(pred_cfg.clone()),
        inference_preprocess(cfg),
        "pretrain",
    );

    // Start fresh or resume.
    let latest = out.join(LATEST);
    let resume = opts.resume || cfg.meta.load_checkpoint;
    let (mut nets, mut adam, mut meta) = if resume {
        if !latest.is_file() {
            return Err(Error::io(
                &latest,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no checkpoint to resume from"),
            ));
        }
        let ck = Checkpoint::read(&latest, &LoadOptions::default())?;
        if ck.description.encoder != enc_cfg || ck.description.predictor.as_ref() != Some(&pred_cfg)
        {
            return Err(Error::format(
                &latest,
                "was trained with other model shapes than the configuration says; resume with the same config",
            ));
        }
        let meta = state::training_meta(&ck.description, &latest)?;
        if meta.progress.ipe != ipe || meta.progress.replicas != replicas {
            return Err(Error::format(
                &latest,
                format!(
                    "was written for {} steps per epoch x {} replicas (ranks x optimization.accum_steps), this run has {ipe} x {replicas}: resume with the same dataset and batch size, and ranks x accum_steps = {} (e.g. 2 ranks -> 1 process with accum_steps 2)",
                    meta.progress.ipe, meta.progress.replicas, meta.progress.replicas
                ),
            ));
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
            device,
        )?;
        (nets, adam, meta)
    } else {
        let meta = TrainingMeta {
            progress: Progress {
                ipe,
                replicas,
                ..Progress::default()
            },
            config: cfg.to_yaml(),
            ..TrainingMeta::default()
        };
        (fresh_networks::<B>(cfg, device)?, AdamW::default(), meta)
    };
    meta.config = cfg.to_yaml();
    let mut csv = if writer {
        Some(csv_start(
            &out.join(LOG),
            resume.then_some(meta.progress.global_step),
        )?)
    } else {
        None
    };

    let save = |nets: &Networks<B>,
                adam: &AdamW<B::InnerBackend>,
                meta: &TrainingMeta,
                epoch_copy: bool|
     -> Result<()> {
        if !writer {
            return Ok(());
        }
        state::save(&latest, &desc, nets, adam, meta)?;
        if epoch_copy && cfg.logging.keep_epochs {
            let path = out.join(format!("ep{}.{}", meta.progress.epoch, native::EXTENSION));
            state::save(&path, &desc, nets, adam, meta)?;
        }
        Ok(())
    };

    let bar = if opts.progress && writer {
        indicatif::ProgressBar::new(total_steps)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(meta.progress.global_step);

    let (b, c, s) = (d.batch_size, d.in_chans, d.crop_size);
    let fixed_batch = monitor_batch(loader.dataset().as_ref(), &desc.preprocess)?;
    let lg = &cfg.logging;
    let knn = if writer {
        KnnMonitor::new(
            loader.dataset().as_ref(),
            &desc.preprocess,
            lg.knn_monitor_bank,
            lg.knn_monitor_queries,
        )
    } else {
        None
    };
    if let Some(k) = &knn {
        bar.suspend(|| eprintln!("online kNN monitor: {}", k.describe()));
    }
    // Training time so far (the monitors' own time left out), continued on resume.
    let (mut train_secs, mut train_cpu) = if writer {
        monitor::resume_records(out, if resume { meta.progress.epoch } else { 0 })?
    } else {
        (0.0, 0.0)
    };
    let mut clock = (Instant::now(), monitor::process_cpu_seconds());
    let n = enc_cfg.num_patches();
    let mut last_loss = f64::NAN;
    let run_start = Instant::now();
    let mut images_done = 0u64;
    let mut data_rate = 0.0;
    let start_epoch = meta.progress.epoch;
    if opts
        .max_steps
        .is_some_and(|m| meta.progress.global_step >= m)
    {
        // Nothing to do (e.g. `--max-steps 0`: a checkpoint of the initial weights).
        save(&nets, &adam, &meta, false)?;
        bar.finish_and_clear();
        return Ok(PretrainSummary {
            steps: meta.progress.global_step,
            epochs_completed: meta.progress.epoch,
            last_loss: f64::NAN,
            train_img_per_s: 0.0,
            data_img_per_s: 0.0,
            skipped_images: meta.skipped_images,
            checkpoint: latest,
        });
    }
    'epochs: for epoch in start_epoch..o.epochs {
        let epoch_start = Instant::now();
        let mut epoch_loss = meta.epoch_loss_so_far;
        // This peer's prediction loss alone (without the regularisers), since the epoch
        // (re)started.
        let mut epoch_prediction = (0.0, 0usize);
        let mut batches =
            loader.epoch_replicas(epoch as u64, meta.progress.step_in_epoch, mine.clone());
        while let Some(step_batches) = batches.next() {
            let step_batches = step_batches.map_err(|e| Error::Config(e.to_string()))?;
            let t0 = Instant::now();
            let global = meta.progress.global_step + 1;
            let itr = meta.progress.step_in_epoch;
            let mut grads_sum: Option<super::optim::TensorMap<B::InnerBackend>> = None;
            let mut loss_sum = 0.0;
            let (mut k_enc, mut k_pred) = (0, 0);
            for (replica, batch) in mine.clone().zip(step_batches) {
                for name in &batch.skipped {
                    bar.suspend(|| eprintln!("warning: skipped unreadable image {name}"));
                    meta.skipped_images += 1;
                }
                let masks = sampler.sample(global - 1, replica as u64, b)?;
                let masks_enc = MaskIndices::new(&masks.enc, n)?;
                let masks_pred = MaskIndices::new(&masks.pred, n)?;
                (k_enc, k_pred) = (masks_enc.k(), masks_pred.k());
                let batch = Batch::<B> {
                    images: to_images::<B>(batch.pixels, b, c, s, device),
                    masks_enc,
                    masks_pred,
                };
                let key = StepKey {
                    seed: cfg.meta.seed,
                    step: global,
                    replica: replica as u64,
                };
                let g = loss_and_grads_with(&nets, &batch, &objective, key, opts.precision);
                loss_sum += g.loss;
                epoch_prediction = (epoch_prediction.0 + g.prediction, epoch_prediction.1 + 1);
                grads_sum = Some(match grads_sum {
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
            let mut grads = grads_sum.unwrap_or_default();
            if accum > 1 {
                for v in grads.values_mut() {
                    *v = v.clone().div_scalar(accum as f32);
                }
            }
            // Mean over all peers (the official AllReduce of the loss; DDP's gradient average).
            let (grads, mut loss) = reducer.all_reduce_mean(grads, loss_sum / accum as f64)?;
            if opts.inject_nan_at == Some(global) {
                loss = f64::NAN;
            }
            if let Err(e) = check_finite(loss) {
                bar.abandon();
                return Err(Error::Config(format!(
                    "step {global} (epoch {}, itr {itr}): {e}; the last checkpoint {} is untouched",
                    epoch + 1,
                    latest.display()
                )));
            }
            let h = UpdateHyper {
                lr: sched.lr(global),
                weight_decay: sched.wd(global),
                momentum: sched.momentum(global),
                grad_clip: o.grad_clip,
            };
            nets = apply_update(nets, &mut adam, grads, h).0;
            let ms = t0.elapsed().as_secs_f64() * 1e3;

            meta.progress.global_step = global;
            meta.progress.step_in_epoch += 1;
            last_loss = loss;
            epoch_loss = (epoch_loss.0 + loss, epoch_loss.1 + 1);
            meta.epoch_loss_so_far = epoch_loss;
            images_done += (b * replicas) as u64;
            if let Some(csv) = csv.as_mut() {
                writeln!(
                    csv,
                    "{},{itr},{global},{loss:.8},{k_enc},{k_pred},{ms:.0},{:.6e},{:.6e},{:.8}",
                    epoch + 1,
                    h.lr,
                    h.weight_decay,
                    h.momentum
                )
                .map_err(|e| Error::io(out.join(LOG), e))?;
            }
            let rate = images_done as f64 / run_start.elapsed().as_secs_f64();
            data_rate = batches.stats().images_per_sec();
            bar.set_message(format!(
                "epoch {}/{} loss {loss:.4} lr {:.2e} {rate:.0} img/s",
                epoch + 1,
                o.epochs,
                h.lr
            ));
            bar.inc(1);

            let stop = opts.max_steps.is_some_and(|m| global >= m);
            let periodic =
                cfg.logging.checkpoint_every > 0 && global % cfg.logging.checkpoint_every == 0;
            if stop || (periodic && meta.progress.step_in_epoch < ipe) {
                save(&nets, &adam, &meta, false)?;
            }
            if stop {
                bar.abandon_with_message(format!(
                    "stopped after step {global} (--max-steps); resume with --resume"
                ));
                break 'epochs;
            }
        }
        drop(batches);
        // Epoch complete.
        let mean_loss = epoch_loss.0 / epoch_loss.1.max(1) as f64;
        meta.epoch_losses.push(mean_loss);
        meta.progress.epoch = epoch + 1;
        meta.progress.step_in_epoch = 0;
        meta.epoch_loss_so_far = (0.0, 0);
        save(&nets, &adam, &meta, true)?;
        let secs = epoch_start.elapsed().as_secs_f64();
        train_secs += clock.0.elapsed().as_secs_f64();
        let cpu_now = monitor::process_cpu_seconds();
        if let (Some(now), Some(then)) = (cpu_now, clock.1) {
            train_cpu += now - then;
        }
        let mut shown = String::new();
        if writer {
            let health = monitor::health::<B::InnerBackend>(&nets.target, &fixed_batch, device);
            let knn_top1 = match &knn {
                Some(k) => Some(k.top1::<B::InnerBackend>(&nets.target, device)?),
                None => None,
            };
            monitor::append_record(
                out,
                &EpochRecord {
                    epoch: epoch + 1,
                    step: meta.progress.global_step,
                    seconds: train_secs,
                    cpu_seconds: cpu_now.map(|_| train_cpu),
                    loss: mean_loss,
                    prediction_loss: epoch_prediction.0 / epoch_prediction.1.max(1) as f64,
                    health,
                    knn_top1,
                },
            )?;
            shown = format!(
                ", target features std {:.3} effective rank {:.1}",
                health.std, health.effective_rank
            );
            if let Some(t) = knn_top1 {
                shown.push_str(&format!(", online kNN top-1 {t:.2} %"));
            }
        }
        bar.suspend(|| {
            eprintln!(
                "epoch {}/{}: loss {mean_loss:.5}, {secs:.1} s, {:.0} img/s (data pipeline alone: {data_rate:.0} img/s){shown}",
                epoch + 1,
                o.epochs,
                (epoch_loss.1 * b * replicas) as f64 / secs,
            )
        });
        // The monitors' time is not training time.
        clock = (Instant::now(), monitor::process_cpu_seconds());
    }
    bar.finish_and_clear();
    let elapsed = run_start.elapsed().as_secs_f64();
    if writer {
        monitor::plot_losses(&out.join(LOG), &out.join("loss.png"))?;
        let records = monitor::read_records(&out.join(monitor::MONITOR)).unwrap_or_default();
        if !records.is_empty() {
            let run = super::curves::Run {
                label: out.display().to_string(),
                records,
            };
            super::curves::plot_runs(&[run], &out.join("monitor.png"))?;
        }
    }
    Ok(PretrainSummary {
        steps: meta.progress.global_step,
        epochs_completed: meta.progress.epoch,
        last_loss,
        train_img_per_s: images_done as f64 / elapsed.max(1e-9),
        data_img_per_s: data_rate,
        skipped_images: meta.skipped_images,
        checkpoint: latest,
    })
}
