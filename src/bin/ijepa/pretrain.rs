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
        static_shapes: cfg
            .meta
            .static_shapes
            .enabled(matches!(devices[0], DeviceSpec::Cuda(_))),
        gpu_kernel_cache: match devices[0] {
            DeviceSpec::Cuda(_) => ijepa::kernel_cache::dir().ok(),
            DeviceSpec::Cpu => None,
        },
    };
    let job = Job {
        cfg: &cfg,
        opts: &opts,
        cluster: &cluster,
        args: &a,
    };
    let summary = match devices[0] {
        DeviceSpec::Cpu => run_on::<ijepa::CpuAutodiff>(&job, vec![Default::default()])?,
        DeviceSpec::Cuda(_) => run_cuda(&job, &devices)?,
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

/// What a training process runs: its settings, options, place in the cluster and command line.
struct Job<'a> {
    cfg: &'a TrainConfig,
    opts: &'a PretrainOptions,
    cluster: &'a Cluster,
    /// Read by the data-parallel path only.
    #[cfg_attr(not(feature = "collective"), allow(dead_code))]
    args: &'a Args,
}

#[cfg(feature = "cuda")]
fn run_cuda(job: &Job, devices: &[DeviceSpec]) -> Result<PretrainSummary> {
    let mut cuda = Vec::new();
    for d in devices {
        if let DeviceSpec::Cuda(i) = d {
            cuda.push(ijepa::device::cuda_device(*i)?);
        }
    }
    if job.opts.progress {
        eprintln!(
            "note: the first step of each new shape on a GPU compiles (NVRTC) and autotunes its kernels; the results are kept in {} for later runs",
            ijepa::kernel_cache::dir()?.display()
        );
    }
    run_on::<burn::backend::Autodiff<burn::backend::Cuda>>(job, cuda)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &Job, devices: &[DeviceSpec]) -> Result<PretrainSummary> {
    let DeviceSpec::Cuda(i) = devices[0] else {
        anyhow::bail!("no CUDA device given")
    };
    match ijepa::device::cuda_device(i)? {}
}

/// One process, one device: the plain trainer. Otherwise one peer per local device, joined
/// with the other processes through burn-collective.
fn run_on<B: TrainBackend>(job: &Job, devices: Vec<B::Device>) -> Result<PretrainSummary> {
    if job.cluster.world() == 1 {
        return Ok(pretrain::<B>(job.cfg, job.opts, &devices[0])?);
    }
    run_collective::<B>(job, devices)
}

#[cfg(feature = "collective")]
fn run_collective<B: TrainBackend>(job: &Job, devices: Vec<B::Device>) -> Result<PretrainSummary> {
    let Job {
        cfg,
        opts,
        cluster,
        args: a,
    } = *job;
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
fn run_collective<B: TrainBackend>(_: &Job, _: Vec<B::Device>) -> Result<PretrainSummary> {
    anyhow::bail!("several devices or nodes need the `collective` cargo feature (on by default)")
}
