//! `ijepa viz`: each image beside the first three principal components of its patch features.

use std::path::PathBuf;

use anyhow::Result;
use ijepa::checkpoint::EncoderChoice;
use ijepa::viz::{Layout, visualise};

use crate::common::ModelArgs;
use crate::embed::EncoderArg;

/// Picture of what an encoder learned: every image beside a map of its patch tokens, coloured
/// by their first three principal components (red, green, blue), fitted on all the images
/// together.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files or folders, or one labelled set (`fmnist:DIR`, `mnist:DIR`, `idx:FILE`:
    /// the first --count images of its test split).
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<String>,
    /// Output PNG.
    #[arg(long)]
    pub output: PathBuf,
    /// At most this many images.
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    /// Encoder (default: the target encoder when the checkpoint has one).
    #[arg(long, value_enum)]
    pub encoder: Option<EncoderArg>,
    /// Side of each picture in pixels (at least the patch grid).
    #[arg(long, default_value_t = 112)]
    pub cell: usize,
    /// Image / map pairs per row.
    #[arg(long, default_value_t = 4)]
    pub per_row: usize,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(a.count > 0, "--count must be positive");
    let ck = a.model.read()?;
    let encoder = a.encoder.map(|e| match e {
        EncoderArg::Target => EncoderChoice::Target,
        EncoderArg::Context => EncoderChoice::Context,
    });
    let layout = Layout {
        cell: a.cell,
        pairs_per_row: a.per_row,
    };
    let s = visualise(&ck, &a.input, a.count, encoder, layout, &a.output)?;
    eprintln!(
        "{} images, {:?} encoder of {}, {}x{} patch grid -> {}",
        s.images,
        s.encoder,
        ck.path.display(),
        s.grid,
        s.grid,
        a.output.display()
    );
    Ok(())
}
