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
