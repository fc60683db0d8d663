use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use ijepa::device::{DeviceSpec, parse_devices};
use ijepa::ops::{Precision, TrainBackend};
use ijepa::train::config::TrainConfig;
use ijepa::train::distributed::Cluster;
use ijepa::train::trainer::{PretrainOptions, PretrainSummary, pretrain};

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
    /// Start afresh in a folder that holds a run, removing that run's checkpoints and log.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
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
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Several local GPUs, one replica each: `cuda:0,cuda:1`.
    #[arg(long)]
    pub devices: Option<String>,
    /// Machines (processes) in a multi-node run.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// This machine's index, 0..nodes.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// HOST:PORT of the global orchestrator; node 0 starts it unless --external-coordinator.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// The orchestrator runs elsewhere (`ijepa coordinator`): node 0 does not start one.
    #[arg(long)]
    pub external_coordinator: bool,
    /// HOST:PORT at which the other nodes reach this node's tensor service.
    #[arg(long)]
    pub node_address: Option<String>,
    /// Seconds a peer waits for the others before stopping with an error.
    #[arg(long, default_value_t = 300)]
    pub peer_timeout: u64,
    /// Let f32 matrix products run as TF32 on NVIDIA tensor cores (faster, ~1e-3 relative
    /// error; off by default, as in PyTorch).
    #[arg(long)]
    pub tf32: bool,
    /// Testing aid: treat the loss of this step as NaN.
    #[arg(long, hide = true)]
    pub inject_nan_at: Option<u64>,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = TrainConfig::from_file(&a.config, &a.overrides)?;
    crate::common::set_threads(a.threads.or(cfg.meta.threads))?;
    let devices = match &a.devices {
        Some(list) => parse_devices(list)?,
        None => vec![a.device.parse::<DeviceSpec>()?],
    };
    let cluster = Cluster {
        nodes: a.nodes,
        node_rank: a.node_rank,
        local_devices: devices.len(),
        coordinator: a.coordinator.clone(),
        node_address: a.node_address.clone(),
        timeout: Duration::from_secs(a.peer_timeout.max(1)),
    };
    cluster.validate()?;
    // bf16 autocast on GPUs (as torch.cuda.amp in the official code), and on CPUs with bf16
    // products (AVX-512 BF16); other CPUs train in f32, and say so.
    let precision = match (cfg.meta.use_bfloat16, devices[0]) {
        (true, DeviceSpec::Cuda(_)) => Precision::Bf16,
        (true, DeviceSpec::Cpu) => ijepa::ops::cpu_bf16().unwrap_or_else(|note| {
            eprintln!("note: meta.use_bfloat16: {note}");
            Precision::F32
        }),
        (false, _) => Precision::F32,
    };
    ijepa::device::allow_tf32(a.tf32);
    let opts = PretrainOptions {
        output: a.output.clone(),
        resume: a.resume,
        overwrite: a.overwrite,
        max_steps: a.max_steps,
        strict: a.strict,
        progress: !a.quiet,
        inject_nan_at: a.inject_nan_at,
        precision,
    };
    let summary = match devices[0] {
        DeviceSpec::Cpu => {
            run_on::<ijepa::CpuAutodiff>(&cfg, &opts, &cluster, vec![Default::default()], &a)?
        }
        DeviceSpec::Cuda(_) => run_cuda(&cfg, &opts, &cluster, &devices, &a)?,
    };
    if a.node_rank > 0 {
        println!(
            "node {}: trained {} steps, last loss {:.5}, {:.1} img/s on this node; node 0 wrote the checkpoints and log",
            a.node_rank, summary.steps, summary.last_loss, summary.train_img_per_s
        );
        return Ok(());
    }
    if summary.steps == 0 {
        println!(
            "no training step taken; checkpoint of the initial weights: {}",
            summary.checkpoint.display()
        );
        return Ok(());
    }
    println!(
        "trained {} steps ({} epochs complete), last loss {:.5}, {:.1} img/s (data pipeline {:.0} img/s), {} unreadable images skipped; checkpoint {}",
        summary.steps,
        summary.epochs_completed,
        summary.last_loss,
        summary.train_img_per_s,
        summary.data_img_per_s,
        summary.skipped_images,
        summary.checkpoint.display()
    );
    Ok(())
}

#[cfg(feature = "cuda")]
fn run_cuda(
    cfg: &TrainConfig,
    opts: &PretrainOptions,
    cluster: &Cluster,
    devices: &[DeviceSpec],
    a: &Args,
) -> Result<PretrainSummary> {
    let mut cuda = Vec::new();
    for d in devices {
        if let DeviceSpec::Cuda(i) = d {
            cuda.push(ijepa::device::cuda_device(*i)?);
        }
    }
    if opts.progress {
        // Measured on an H100: 70-105 s before the first ViT-S/ViT-B step, longer with bf16.
        eprintln!(
            "note: the first steps on a GPU compile (NVRTC) and autotune every kernel: expect a minute or two before the first step completes"
        );
    }
    run_on::<burn::backend::Autodiff<burn::backend::Cuda>>(cfg, opts, cluster, cuda, a)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(
    _: &TrainConfig,
    _: &PretrainOptions,
    _: &Cluster,
    devices: &[DeviceSpec],
    _: &Args,
) -> Result<PretrainSummary> {
    let DeviceSpec::Cuda(i) = devices[0] else {
        anyhow::bail!("no CUDA device given")
    };
    ijepa::device::cuda_device(i)?;
    anyhow::bail!("no CUDA support in this build")
}

/// One process, one device: the plain trainer. Otherwise one peer per local device, joined
/// with the other processes through burn-collective.
fn run_on<B: TrainBackend>(
    cfg: &TrainConfig,
    opts: &PretrainOptions,
    cluster: &Cluster,
    devices: Vec<B::Device>,
    a: &Args,
) -> Result<PretrainSummary> {
    if cluster.world() == 1 {
        return Ok(pretrain::<B>(cfg, opts, &devices[0])?);
    }
    run_collective::<B>(cfg, opts, cluster, devices, a)
}

#[cfg(feature = "collective")]
fn run_collective<B: TrainBackend>(
    cfg: &TrainConfig,
    opts: &PretrainOptions,
    cluster: &Cluster,
    devices: Vec<B::Device>,
    a: &Args,
) -> Result<PretrainSummary> {
    use ijepa::train::distributed::{CollectivePeer, run_coordinator};
    use ijepa::train::trainer::pretrain_peer;
    // burn-collective's network tasks panic when a peer's connection drops; the training
    // thread reports that as an error, so one line per task is enough (no backtraces).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("tokio-rt-worker") {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            eprintln!("note: a burn-collective network task stopped: {msg}");
        } else {
            default_hook(info);
        }
    }));
    if cluster.nodes > 1 && cluster.node_rank == 0 && !a.external_coordinator {
        let port = a
            .coordinator
            .as_deref()
            .and_then(|c| c.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| anyhow::anyhow!("--coordinator must be HOST:PORT"))?;
        std::thread::spawn(move || {
            if let Err(e) = run_coordinator(port) {
                eprintln!("error: coordinator: {e}");
            }
        });
    }
    let results: Vec<ijepa::Result<PretrainSummary>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .into_iter()
            .enumerate()
            .map(|(i, device)| {
                scope.spawn(move || -> ijepa::Result<PretrainSummary> {
                    let peer = CollectivePeer::join::<B::InnerBackend>(cluster, i, device.clone())?;
                    let mut o = opts.clone();
                    o.progress &= i == 0;
                    pretrain_peer::<B>(cfg, &o, &device, &peer)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(ijepa::train::distributed::PeerError::Panicked.into()))
            })
            .collect()
    });
    let mut first = None;
    for r in results {
        let s = r?;
        first.get_or_insert(s);
    }
    first.ok_or_else(|| anyhow::anyhow!("no device trained"))
}

#[cfg(not(feature = "collective"))]
fn run_collective<B: TrainBackend>(
    _: &TrainConfig,
    _: &PretrainOptions,
    _: &Cluster,
    _: Vec<B::Device>,
    _: &Args,
) -> Result<PretrainSummary> {
    anyhow::bail!("several devices or nodes need the `collective` cargo feature (on by default)")
}
