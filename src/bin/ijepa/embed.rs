use std::path::PathBuf;

use anyhow::Result;
use ijepa::checkpoint::EncoderChoice;
use ijepa::eval::features::{EmbedRequest, Pool};

use crate::common::ModelArgs;

/// Embed images with the target (default) or context encoder.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Which encoder of a training checkpoint to use (HF directories only have `context`).
    #[arg(long, value_enum)]
    pub encoder: Option<EncoderArg>,
    /// Image files, folders of images, or one .npy float32 [N, C, H, W] of preprocessed pixels.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output .npy (float32): [N, D] with --pool mean, [N, tokens, D] with --pool none.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "mean")]
    pub pool: PoolArg,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_parser = crate::common::positive)]
    pub batch_size: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EncoderArg {
    Target,
    Context,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PoolArg {
    Mean,
    None,
}

pub fn run(a: Args) -> Result<()> {
    let ck = a.model.read()?;
    let request = EmbedRequest {
        encoder: a.encoder.map(|e| match e {
            EncoderArg::Target => EncoderChoice::Target,
            EncoderArg::Context => EncoderChoice::Context,
        }),
        pool: match a.pool {
            PoolArg::Mean => Pool::Mean,
            PoolArg::None => Pool::None,
        },
        batch_size: a.batch_size,
    };
    let out = ijepa::eval::features::embed_paths(&ck, &a.input, &request)?;
    ijepa::npy::write_host(&a.output, &out.features)?;
    eprintln!(
        "embedded {} inputs with the {:?} encoder of {} -> {} {:?}",
        out.features.shape[0],
        out.encoder,
        ck.path.display(),
        a.output.display(),
        out.features.shape
    );
    Ok(())
}
