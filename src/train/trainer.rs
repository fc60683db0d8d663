//! `ijepa pretrain`: the loop around [`super::step::train_step`]. The run is built from the
//! config once ([`super::run`]), resumed or started ([`super::resume`]); then every step
//! draws this peer's micro-batches and masks, takes the step, logs it ([`super::log`]) and
//! leaves checkpointing to [`super::checkpoints`]; every epoch ends with a checkpoint and the
//! monitors (collapse: spread and effective rank; quality: online kNN top-1 when the data has
//! labels) in `monitor.csv`, the run with the loss and monitor curves.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};

use super::checkpoints::Checkpoints;
use super::config::TrainConfig;
use super::distributed::{GradReducer, Single};
use super::knn_monitor::KnnMonitor;
use super::log::{LogRow, LogWriter};
use super::monitor::{self, EpochRecord, Health};
use super::run::Run;
use super::state::TrainingMeta;
use super::step::{Batch, Networks, StepSettings, UpdateHyper, train_step};
use crate::data::Dataset;
use crate::data::transform::Preprocess;
use crate::error::{ConfigError, Error, Result};
use crate::fsutil::{self, write_bytes_atomic};
use crate::model::MaskIndices;
use crate::model::padding::bucket;

pub use super::checkpoints::LATEST;
pub use super::log::LOG;
pub use super::run::{inference_preprocess, open_train_set};

/// Run options that are not part of the experiment's configuration.
#[derive(Clone, Debug, Default)]
pub struct PretrainOptions {
    pub output: PathBuf,
    /// Continue from `output/latest.safetensors`.
    pub resume: bool,
    /// Start afresh in a folder that holds a run, removing that run's files.
    pub overwrite: bool,
    /// Stop (with a checkpoint) once this many optimizer steps of the run are done.
    pub max_steps: Option<u64>,
    /// Unreadable images are fatal instead of replaced and counted.
    pub strict: bool,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Test hook: the images of this step are all NaN (so its loss is).
    pub inject_nan_at: Option<u64>,
    /// Arithmetic of the forward passes' matrix products (bf16 autocast for
    /// `meta.use_bfloat16` on a GPU).
    pub precision: crate::ops::Precision,
    /// Pad the batches' token counts to bucket sizes (`meta.static_shapes` resolved for the
    /// device: see [`crate::model::padding`]).
    pub static_shapes: bool,
    /// On a GPU, the kernel cache folder ([`crate::kernel_cache`]): the progress line then
    /// says when a step compiles and autotunes kernels for a shape it has not seen.
    pub gpu_kernel_cache: Option<PathBuf>,
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

/// The resolved configuration, written into every run folder.
pub const PARAMS: &str = "params-ijepa.yaml";

/// The collapse monitor's fixed batch: the first (up to) 256 images, preprocessed for inference.
fn monitor_batch(ds: &dyn Dataset, pre: &Preprocess) -> (Vec<f32>, [usize; 4]) {
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
    (pixels, [used, pre.channels, pre.size, pre.size])
}

/// The per-epoch monitors of the writing peer: the collapse monitor's fixed batch and the
/// online kNN's labelled subset (when the data has labels).
struct Monitors {
    fixed_batch: (Vec<f32>, [usize; 4]),
    knn: Option<KnnMonitor>,
}

impl Monitors {
    fn new(cfg: &TrainConfig, run: &Run, writer: bool) -> Self {
        let ds = run.loader.dataset();
        let pre = &run.description.preprocess;
        let lg = &cfg.logging;
        Monitors {
            fixed_batch: monitor_batch(ds.as_ref(), pre),
            knn: writer
                .then(|| {
                    KnnMonitor::new(
                        ds.as_ref(),
                        pre,
                        lg.knn_monitor_bank,
                        lg.knn_monitor_queries,
                    )
                })
                .flatten(),
        }
    }

    /// The target encoder's health on the fixed batch (warning on collapse) and its online
    /// kNN top-1.
    fn measure<B: crate::ops::TrainBackend>(
        &self,
        nets: &Networks<B>,
        device: &B::Device,
    ) -> Result<(Health, Option<f64>)> {
        let health = monitor::health::<B::InnerBackend>(&nets.target, &self.fixed_batch, device);
        let knn = match &self.knn {
            Some(k) => Some(k.top1::<B::InnerBackend>(&nets.target, device)?),
            None => None,
        };
        Ok((health, knn))
    }
}

fn progress_bar(show: bool, total: u64, at: u64) -> indicatif::ProgressBar {
    let bar = if show {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(at);
    bar
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
    crate::ops::kernels::cpu::check()?;
    let out = &opts.output;
    let writer = reducer.rank() == 0;
    let resume = opts.resume || cfg.meta.load_checkpoint;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if writer {
        fsutil::remove_stale_temps(out)?;
        prepare_folder(out, resume, opts.overwrite)?;
    }
    let run = Run::build(cfg, reducer.rank(), reducer.world(), opts.strict)?;
    let checkpoints = Checkpoints::new(
        out,
        run.description.clone(),
        writer,
        cfg.logging.keep_epochs,
        cfg.logging.checkpoint_every,
    );
    let start = super::resume::resume_or_init::<B>(cfg, &run, &checkpoints.latest, resume, device)?;
    let (mut nets, mut adam, mut meta) = (start.nets, start.adam, start.meta);
    let monitors = Monitors::new(cfg, &run, writer);
    // Training time so far (the monitors' own time left out), continued on resume.
    let (mut train_secs, mut train_cpu) = (0.0, 0.0);
    // Written once the run is known to start: a refused resume or bad data leaves the
    // folder's settings alone; a read-only or full folder still fails before any step.
    if writer {
        write_bytes_atomic(&out.join(PARAMS), cfg.to_yaml().as_bytes())?;
        if let Some(k) = &monitors.knn {
            eprintln!("online kNN monitor: {}", k.describe());
        }
        let epoch = if resume { meta.progress.epoch } else { 0 };
        (train_secs, train_cpu) = monitor::resume_records(out, epoch)?;
        if resume {
            checkpoints.restore_epoch_copy(&nets, &adam, &meta)?;
            // A run killed between its epoch's checkpoint and its monitor row gets the row
            // now (its loss and clocks as far as they are known).
            let logged = monitor::read_records(&out.join(monitor::MONITOR)).unwrap_or_default();
            if epoch > 0 && !logged.iter().any(|r| r.epoch == epoch) {
                let (health, knn_top1) = monitors.measure::<B>(&nets, device)?;
                monitor::append_record(
                    out,
                    &EpochRecord {
                        epoch,
                        step: meta.progress.global_step,
                        seconds: train_secs,
                        cpu_seconds: monitor::process_cpu_seconds().map(|_| train_cpu),
                        loss: meta.epoch_losses.last().copied().unwrap_or(f64::NAN),
                        prediction_loss: f64::NAN,
                        health,
                        knn_top1,
                    },
                )?;
            }
        }
    }
    let mut clock = (Instant::now(), monitor::process_cpu_seconds());
    let signals = Signals::register(out)?;
    let mut log = match writer {
        true => Some(LogWriter::start(
            &out.join(LOG),
            resume.then_some(meta.progress.global_step),
        )?),
        false => None,
    };
    let bar = progress_bar(
        opts.progress && writer,
        run.total_steps(),
        meta.progress.global_step,
    );
    let summary =
        |meta: &TrainingMeta, last_loss: f64, img_per_s: f64, data: f64| PretrainSummary {
            steps: meta.progress.global_step,
            epochs_completed: meta.progress.epoch,
            last_loss,
            train_img_per_s: img_per_s,
            data_img_per_s: data,
            skipped_images: meta.skipped_images,
            checkpoint: checkpoints.latest.clone(),
        };
    if opts
        .max_steps
        .is_some_and(|m| meta.progress.global_step >= m)
    {
        // Nothing to do (e.g. `--max-steps 0`: a checkpoint of the initial weights).
        checkpoints.save_latest(&nets, &adam, &meta)?;
        bar.finish_and_clear();
        return Ok(summary(&meta, f64::NAN, 0.0, 0.0));
    }

    let (b, c, s) = (cfg.data.batch_size, cfg.data.in_chans, cfg.data.crop_size);
    let n = run.encoder.num_patches();
    let o = &cfg.optimization;
    let mut last_loss = f64::NAN;
    let run_start = Instant::now();
    let mut images_done = 0u64;
    let mut data_rate = 0.0;
    let mut shapes_seen = std::collections::HashSet::new();
    'epochs: for epoch in meta.progress.epoch..run.epochs {
        let epoch_start = Instant::now();
        // This peer's prediction loss alone (without the regularisers), since the epoch
        // (re)started.
        let mut epoch_prediction = (0.0, 0usize);
        let mut batches =
            run.loader
                .epoch_replicas(epoch as u64, meta.progress.step_in_epoch, run.mine.clone());
        while let Some(step_batches) = batches.next() {
            let step_batches = step_batches?;
            let t0 = Instant::now();
            let global = meta.progress.global_step + 1;
            let itr = meta.progress.step_in_epoch;
            let mut micro = Vec::with_capacity(step_batches.len());
            for (replica, batch) in run.mine.clone().zip(step_batches) {
                for name in &batch.skipped {
                    bar.suspend(|| eprintln!("warning: skipped unreadable image {name}"));
                    meta.skipped_images += 1;
                }
                let masks = run.sampler.sample(global - 1, replica as u64, b)?;
                let mut pixels = batch.pixels;
                if opts.inject_nan_at == Some(global) {
                    pixels.fill(f32::NAN);
                }
                let batch = Batch::<B> {
                    images: Tensor::from_data(TensorData::new(pixels, [b, c, s, s]), device),
                    masks_enc: MaskIndices::new(&masks.enc, n)?,
                    masks_pred: MaskIndices::new(&masks.pred, n)?,
                    second_view: batch
                        .second_view
                        .map(|px| Tensor::from_data(TensorData::new(px, [b, c, s, s]), device)),
                };
                // The shape train_step runs (padded to buckets with static shapes).
                let (ke, kp) = (batch.masks_enc.k(), batch.masks_pred.k());
                let shape = match opts.static_shapes {
                    true => (bucket(ke, n), bucket(kp, n)),
                    false => (ke, kp),
                };
                if let Some(cache) = &opts.gpu_kernel_cache
                    && shapes_seen.insert(shape)
                {
                    bar.set_message(format!(
                        "compiling / autotuning GPU kernels for {} + {} tokens (new shape; cached in {})",
                        shape.0,
                        shape.1,
                        cache.display()
                    ));
                    bar.tick();
                }
                micro.push(batch);
            }
            let (k_enc, k_pred) = micro
                .last()
                .map_or((0, 0), |m| (m.masks_enc.k(), m.masks_pred.k()));
            let hyper = UpdateHyper {
                lr: run.schedules.lr(global),
                weight_decay: run.schedules.wd(global),
                momentum: run.schedules.momentum(global),
                grad_clip: o.grad_clip,
            };
            let settings = StepSettings {
                step: global,
                objective: run.objective,
                seed: cfg.meta.seed,
                first_replica: run.mine.start as u64,
                precision: opts.precision,
                hyper,
                static_shapes: opts.static_shapes,
            };
            let loss = match train_step(nets, &mut adam, &micro, reducer, settings) {
                Ok((next, losses)) => {
                    nets = next;
                    epoch_prediction = (
                        epoch_prediction.0 + losses.prediction,
                        epoch_prediction.1 + 1,
                    );
                    losses.loss
                }
                Err(e) => {
                    bar.abandon();
                    if matches!(e, Error::Diverged { .. }) {
                        eprintln!(
                            "note: epoch {}, itr {itr}; the last checkpoint {} is untouched",
                            epoch + 1,
                            checkpoints.latest.display()
                        );
                    }
                    return Err(e);
                }
            };
            meta.progress.global_step = global;
            meta.progress.step_in_epoch += 1;
            meta.epoch_loss_so_far = (
                meta.epoch_loss_so_far.0 + loss,
                meta.epoch_loss_so_far.1 + 1,
            );
            last_loss = loss;
            images_done += (b * run.replicas) as u64;
            if let Some(log) = log.as_mut() {
                log.append(&LogRow {
                    epoch: epoch + 1,
                    itr,
                    step: global,
                    loss,
                    mask_a: k_enc,
                    mask_b: k_pred,
                    time_ms: t0.elapsed().as_millis() as u64,
                    lr: hyper.lr,
                    wd: hyper.weight_decay,
                    momentum: hyper.momentum,
                })?;
            }
            let rate = images_done as f64 / run_start.elapsed().as_secs_f64();
            data_rate = batches.stats().images_per_sec();
            bar.set_message(format!(
                "epoch {}/{} loss {loss:.4} lr {:.2e} {rate:.0} img/s",
                epoch + 1,
                run.epochs,
                hyper.lr
            ));
            bar.inc(1);

            let stop = opts.max_steps.is_some_and(|m| global >= m);
            if let Some(signal) = signals.received() {
                checkpoints.save_latest(&nets, &adam, &meta)?;
                bar.abandon();
                return Err(Error::Interrupted {
                    signal,
                    step: global,
                    checkpoint: checkpoints.latest.clone(),
                });
            }
            if stop {
                checkpoints.save_latest(&nets, &adam, &meta)?;
                bar.abandon_with_message(format!(
                    "stopped after step {global} (--max-steps); resume with --resume"
                ));
                break 'epochs;
            }
            if meta.progress.step_in_epoch < run.ipe {
                checkpoints.after_step(global, &nets, &adam, &meta)?;
            }
        }
        drop(batches);
        // Epoch complete.
        let (sum, count) = meta.epoch_loss_so_far;
        let mean_loss = sum / count.max(1) as f64;
        meta.epoch_losses.push(mean_loss);
        meta.progress.epoch = epoch + 1;
        meta.progress.step_in_epoch = 0;
        meta.epoch_loss_so_far = (0.0, 0);
        checkpoints.after_epoch(&nets, &adam, &meta)?;
        let secs = epoch_start.elapsed().as_secs_f64();
        train_secs += clock.0.elapsed().as_secs_f64();
        let cpu_now = monitor::process_cpu_seconds();
        if let (Some(now), Some(then)) = (cpu_now, clock.1) {
            train_cpu += now - then;
        }
        let mut shown = String::new();
        if writer {
            let (health, knn_top1) = monitors.measure::<B>(&nets, device)?;
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
                run.epochs,
                (count * b * run.replicas) as f64 / secs,
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
            let curve = super::curves::Run {
                label: out.display().to_string(),
                records,
            };
            super::curves::plot_runs(&[curve], &out.join(MONITOR_PNG))?;
        }
    }
    Ok(summary(
        &meta,
        last_loss,
        images_done as f64 / elapsed.max(1e-9),
        data_rate,
    ))
}

/// The monitor curves (loss, effective rank, online kNN against CPU time) of a run.
pub const MONITOR_PNG: &str = "monitor.png";

/// Files of a run in its folder (besides the `epN` copies).
const RUN_FILES: [&str; 7] = [
    LATEST,
    "latest.json",
    LOG,
    monitor::MONITOR,
    "loss.png",
    MONITOR_PNG,
    PARAMS,
];

/// A folder that holds a run is only trained in with `--resume` (continue it) or
/// `--overwrite` (remove its files first): never a new run over an old one's files.
fn prepare_folder(out: &std::path::Path, resume: bool, overwrite: bool) -> Result<()> {
    let holds_run = out.join(LATEST).is_file() || out.join(LOG).is_file();
    if resume || !holds_run {
        return Ok(());
    }
    if !overwrite {
        return Err(ConfigError::RunExists {
            folder: out.to_path_buf(),
        }
        .into());
    }
    let entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let epoch_copy = name.starts_with("ep")
            && (name.ends_with(".safetensors") || name.ends_with(".json"))
            && name[2..]
                .split('.')
                .next()
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if epoch_copy || RUN_FILES.contains(&name.as_str()) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// SIGTERM and SIGINT (SLURM's requeue, Ctrl-C): noted, and acted on after the current step
/// (which ends with a checkpoint), so no write is cut short. A second SIGINT ends the
/// process at once.
struct Signals {
    term: std::sync::Arc<std::sync::atomic::AtomicBool>,
    int: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Signals {
    fn register(out: &std::path::Path) -> Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let signals = Signals {
            term: Default::default(),
            int: Default::default(),
        };
        let io = |e| Error::io(out, e);
        signal_hook::flag::register_conditional_shutdown(SIGINT, 130, signals.int.clone())
            .map_err(io)?;
        signal_hook::flag::register(SIGTERM, signals.term.clone()).map_err(io)?;
        signal_hook::flag::register(SIGINT, signals.int.clone()).map_err(io)?;
        Ok(signals)
    }

    fn received(&self) -> Option<&'static str> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.term.load(Relaxed) {
            Some("SIGTERM")
        } else if self.int.load(Relaxed) {
            Some("SIGINT")
        } else {
            None
        }
    }
}
