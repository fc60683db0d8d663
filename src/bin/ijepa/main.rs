//! `ijepa`: the command-line front end. Each subcommand lives in its own file and only parses
//! flags, calls the library and prints; the logic is in the `ijepa` crate.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod common;
mod coordinator;
mod curves;
mod embed;
mod evaluate;
mod export;
mod masks;
mod predict;
mod pretrain;
mod viz;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ijepa",
    version,
    about = "I-JEPA: masks, models, pretraining and evaluation in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain an encoder with I-JEPA (configs/fmnist_vit.yaml is the small-data recipe).
    Pretrain(pretrain::Args),
    /// Linear probe of frozen features (the paper's protocol).
    Probe(evaluate::ProbeArgs),
    /// Linear probe and kNN together (one feature pass).
    Eval(evaluate::KnnArgs),
    /// Weighted kNN classification of frozen features.
    Knn(evaluate::KnnArgs),
    /// Time the training iteration and inference (same flags as the PyTorch baseline script).
    Bench(bench::Args),
    /// Run the orchestrator of a multi-node pretraining run.
    Coordinator(coordinator::Args),
    /// Sample multi-block masks: statistics and a picture.
    Masks(masks::Args),
    /// Embed images (or a preprocessed .npy) with an official, Hugging Face or native model.
    Embed(embed::Args),
    /// Run encoder, target encoder and predictor on given masks; write every intermediate.
    Predict(predict::Args),
    /// Convert a checkpoint (to a Hugging Face directory or a native file).
    Export(export::Args),
    /// Draw loss, effective rank and online kNN of several runs against CPU time (PNG).
    Curves(curves::Args),
    /// Each image beside the first three principal components of its patch features (PNG).
    Viz(viz::Args),
}

/// Keep freed memory instead of returning it to the OS: a training step frees and re-allocates
/// the same large activation buffers every iteration, and re-faulting fresh zeroed pages cost
/// about 10 % of a step (36,000 page faults per 8 steps on the Fashion-MNIST shapes; 560 with
/// this setting). Peak memory is unchanged.
fn tune_allocator() {
    // mimalloc v2's `mi_option_purge_delay`; -1 disables purging.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting a mimalloc option is a plain store into its option table.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Warnings and errors of the networking crates only (burn-communication installs an INFO-level
/// logger unless one exists); `RUST_LOG` asks for more.
fn quiet_logging() {
    #[cfg(feature = "collective")]
    {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

fn main() -> ExitCode {
    tune_allocator();
    quiet_logging();
    let cli = Cli::parse();
    // An unusable IJEPA_CPU_KERNELS is reported here, before any work.
    if let Err(e) = ijepa::ops::kernels::cpu::check() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Pretrain(a) => pretrain::run(a),
        Command::Masks(a) => masks::run(a),
        Command::Coordinator(a) => coordinator::run(a),
        Command::Bench(a) => bench::run_cli(a),
        Command::Probe(a) => evaluate::run_probe(a),
        Command::Knn(a) => evaluate::run_knn(a),
        Command::Eval(a) => evaluate::run_both(a),
        Command::Embed(a) => embed::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Export(a) => export::run(a),
        Command::Curves(a) => curves::run(a),
        Command::Viz(a) => viz::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
