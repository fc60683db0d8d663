//! Flags shared by several subcommands.

use std::path::PathBuf;

use anyhow::Result;
use ijepa::checkpoint::{Checkpoint, LoadOptions};

/// Which model to load.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// Official .pth.tar, Hugging Face directory, native .safetensors, or a training folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Encoder attention heads, for official checkpoints whose width is not an official preset.
    #[arg(long)]
    pub num_heads: Option<usize>,
    /// Predictor attention heads (default: the encoder's, as the official code).
    #[arg(long)]
    pub pred_num_heads: Option<usize>,
}

impl ModelArgs {
    pub fn read(&self) -> Result<Checkpoint> {
        let opts = LoadOptions {
            num_heads: self.num_heads,
            pred_num_heads: self.pred_num_heads,
        };
        Ok(Checkpoint::read(&self.model, &opts)?)
    }
}

/// Size the compute thread pool (rayon's global pool, which burn's CPU backend uses).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(t) = threads {
        anyhow::ensure!(t > 0, "--threads must be positive");
        // Fails only if the pool was already built, which cannot happen before this call.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global();
    }
    Ok(())
}

/// A whole number of at least 1 (batch sizes: 0 is refused, never quietly made 1).
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("'{s}': {e}")),
    }
}
