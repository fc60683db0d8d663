use std::path::PathBuf;

use anyhow::Result;
use ijepa::train::config::TrainConfig;
use ijepa::train::trainer::{PretrainOptions, pretrain};

/// Pretrain an I-JEPA encoder: EMA target, masks, schedules, checkpoints, log, loss curve.
#[derive(clap::Args)]
pub struct Args {
    /// Training configuration (official YAML layout; see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a configuration value, e.g. `--set optimization.lr=5e-4` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Folder for checkpoints (`latest.safetensors`, `epN.safetensors`), `log.csv`, `loss.png`.
    #[arg(long)]
    pub output: PathBuf,
    /// Continue from OUTPUT/latest.safetensors exactly where it stopped.
    #[arg(long)]
    pub resume: bool,
    /// Stop (with a checkpoint) once the run has taken this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Compute threads (default: meta.threads, else all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop on an unreadable image instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Testing aid: treat the loss of this step as NaN.
    #[arg(long, hide = true)]
    pub inject_nan_at: Option<u64>,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = TrainConfig::from_file(&a.config, &a.overrides)?;
    crate::common::set_threads(a.threads.or(cfg.meta.threads))?;
    if cfg.meta.use_bfloat16 {
        eprintln!("note: meta.use_bfloat16 applies to GPUs; this CPU run trains in f32");
    }
    let opts = PretrainOptions {
        output: a.output.clone(),
        resume: a.resume,
        max_steps: a.max_steps,
        strict: a.strict,
        progress: !a.quiet,
        inject_nan_at: a.inject_nan_at,
    };
    let s = pretrain::<ijepa::CpuAutodiff>(&cfg, &opts, &Default::default())?;
    println!(
        "trained {} steps ({} epochs complete), last loss {:.5}, {:.1} img/s (data pipeline {:.0} img/s), {} unreadable images skipped; checkpoint {}",
        s.steps,
        s.epochs_completed,
        s.last_loss,
        s.train_img_per_s,
        s.data_img_per_s,
        s.skipped_images,
        s.checkpoint.display()
    );
    Ok(())
}
