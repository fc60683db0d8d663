use std::path::PathBuf;

use anyhow::Result;
use ijepa::bench::{BenchResult, BenchSpec, compare_bf16, run};
use ijepa::device::DeviceSpec;
use ijepa::masks::MaskSampler;
use ijepa::model::padding::StaticShapes;
use ijepa::model::{EncoderConfig, PredictorConfig};
use ijepa::ops::Precision;
use ijepa::train::config::TrainConfig;
use ijepa::train::loss::LossKind;
use ijepa::train::objective::Objective;

/// Time the training iteration and inference (flags of shared/bench/torch_ijepa_step.py).
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    #[arg(long, default_value_t = 4)]
    patch_size: usize,
    #[arg(long, default_value_t = 1)]
    in_chans: usize,
    #[arg(long, default_value_t = 128)]
    embed_dim: usize,
    #[arg(long, default_value_t = 6)]
    depth: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 64)]
    pred_dim: usize,
    #[arg(long, default_value_t = 3)]
    pred_depth: usize,
    #[arg(long, default_value_t = 4)]
    pred_heads: usize,
    #[arg(long, default_value_t = 2)]
    npred: usize,
    #[arg(long, default_value_t = 27)]
    k_enc: usize,
    #[arg(long, default_value_t = 11)]
    k_pred: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 256)]
    infer_batch_size: usize,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Take shapes and masks (from the real sampler) from a training config instead.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `cpu` or `cuda:N` (a binary built with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// bf16 autocast of the forward passes' matrix products (as the PyTorch script's --bf16).
    #[arg(long, conflicts_with = "compare_bf16")]
    bf16: bool,
    /// Time f32 and bf16 autocast alternating step by step in this one process (same networks,
    /// same masks) and print the median of the paired speed-ups: the bf16 gain without the
    /// machine's drift between two runs (CPU only).
    #[arg(long)]
    compare_bf16: bool,
    /// Let f32 matrix products run as TF32 on NVIDIA tensor cores.
    #[arg(long)]
    tf32: bool,
    /// Print every iteration's time (warm-up included) to stderr.
    #[arg(long)]
    verbose: bool,
    /// Pad the masks' token counts to bucket sizes as `pretrain` does (`auto`: on a GPU, with
    /// the real sampler's masks of `--config`; the fixed `--k-enc` / `--k-pred` are static
    /// already), `on` or `off`.
    #[arg(long, default_value = "auto")]
    static_shapes: String,
}

pub fn run_cli(a: Args) -> Result<()> {
    crate::common::set_threads(Some(a.threads))?;
    let (encoder, predictor, sampler, batch_size, objective) = match &a.config {
        Some(path) => {
            let cfg = TrainConfig::from_file(path, &[])?;
            let sampler = MaskSampler::new(cfg.mask_config()?, cfg.meta.seed)?;
            (
                cfg.encoder_config()?,
                cfg.predictor_config()?,
                Some(sampler),
                cfg.data.batch_size,
                cfg.objective(),
            )
        }
        None => {
            let encoder = EncoderConfig {
                image_size: a.image_size,
                patch_size: a.patch_size,
                in_chans: a.in_chans,
                embed_dim: a.embed_dim,
                depth: a.depth,
                num_heads: a.heads,
                mlp_hidden: a.embed_dim * 4,
                qkv_bias: true,
                layer_norm_eps: 1e-6,
                patch_embed: ijepa::model::config::PatchEmbedKind::Shared,
            };
            encoder.validate()?;
            let predictor =
                PredictorConfig::for_encoder(&encoder, a.pred_dim, a.pred_depth, a.pred_heads)?;
            (
                encoder,
                predictor,
                None,
                a.batch_size,
                Objective::official(LossKind::SmoothL1),
            )
        }
    };
    let mut spec = BenchSpec {
        encoder,
        predictor,
        npred: a.npred,
        k_enc: a.k_enc,
        k_pred: a.k_pred,
        batch_size,
        infer_batch_size: a.infer_batch_size,
        steps: a.steps.max(1),
        warmup: a.warmup,
        seed: a.seed,
        sampler,
        precision: if a.bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        },
        verbose: a.verbose,
        static_shapes: false,
        objective,
    };
    ijepa::device::allow_tf32(a.tf32);
    let device: DeviceSpec = a.device.parse()?;
    let gpu = matches!(device, DeviceSpec::Cuda(_));
    spec.static_shapes = a
        .static_shapes
        .parse::<StaticShapes>()
        .map_err(anyhow::Error::msg)?
        .enabled(gpu && spec.sampler.is_some());
    if gpu && a.verbose {
        eprintln!(
            "the first iterations compile and autotune GPU kernels (cached in {})",
            ijepa::kernel_cache::dir()?.display()
        );
    }
    if device == DeviceSpec::Cpu && spec.precision == Precision::Bf16 {
        spec.precision = ijepa::ops::cpu_bf16().unwrap_or_else(|note| {
            eprintln!("note: --bf16: {note}");
            Precision::F32
        });
    }
    println!(
        "ijepa {} backend {} {} threads {} tokens {} batch {}",
        env!("CARGO_PKG_VERSION"),
        match device {
            DeviceSpec::Cpu => "flex".to_string(),
            DeviceSpec::Cuda(i) => format!("cuda:{i}"),
        },
        match (spec.precision, a.tf32) {
            (Precision::Bf16, _) => "bf16",
            (Precision::F32, true) => "tf32",
            (Precision::F32, false) => "f32",
        },
        rayon::current_num_threads(),
        spec.encoder.num_patches(),
        spec.batch_size
    );
    if device == DeviceSpec::Cpu {
        println!("{}", ijepa::ops::kernels::cpu::describe());
    }
    if a.compare_bf16 {
        anyhow::ensure!(
            device == DeviceSpec::Cpu,
            "--compare-bf16 runs on the CPU only (a GPU run: --bf16 against none)"
        );
        if let Err(note) = ijepa::ops::cpu_bf16() {
            anyhow::bail!("--compare-bf16: {note}");
        }
        let c = compare_bf16::<ijepa::CpuAutodiff>(&spec, &Default::default())?;
        for (what, r) in [("f32", &c.f32), ("bf16", &c.bf16)] {
            print_result(&format!("_{what}"), r);
        }
        println!(
            "RESULT bf16_speedup train={:.3} infer={:.3} (median of {} step pairs)",
            c.train_speedup, c.infer_speedup, spec.steps
        );
        println!(
            "RESULT peak_rss_mb={:.0} (both precisions)",
            c.bf16.peak_rss_mb
        );
        return Ok(());
    }
    let r = match device {
        DeviceSpec::Cpu => run::<ijepa::CpuAutodiff>(&spec, &Default::default())?,
        DeviceSpec::Cuda(i) => run_cuda(&spec, i)?,
    };
    print_result("", &r);
    println!("RESULT peak_rss_mb={:.0}", r.peak_rss_mb);
    Ok(())
}

/// The PyTorch script's RESULT lines (`train_step{tag}`, `infer{tag}`).
fn print_result(tag: &str, r: &BenchResult) {
    println!(
        "RESULT train_step{tag} median_ms={:.1} img_per_s={:.1}",
        r.train_median_ms, r.train_img_per_s
    );
    println!(
        "RESULT infer{tag} median_ms={:.1} img_per_s={:.1}",
        r.infer_median_ms, r.infer_img_per_s
    );
}

#[cfg(feature = "cuda")]
fn run_cuda(spec: &BenchSpec, index: usize) -> Result<BenchResult> {
    let device = ijepa::device::cuda_device(index)?;
    Ok(run::<ijepa::CudaAutodiff>(spec, &device)?)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &BenchSpec, index: usize) -> Result<BenchResult> {
    match ijepa::device::cuda_device(index)? {}
}
