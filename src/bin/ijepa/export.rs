use std::path::PathBuf;

use anyhow::{Result, bail};
use ijepa::checkpoint::{EncoderChoice, hf, native, prefixed};

use crate::common::ModelArgs;
use crate::embed::EncoderArg;

/// Convert a checkpoint: to a Hugging Face `IJepaModel` directory (encoder only) or to a
/// native ijepa file (every network the source has).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Which encoder goes into an HF directory (default: target when present).
    #[arg(long, value_enum)]
    pub encoder: Option<EncoderArg>,
    /// Output folder (hf) or file (native, `.safetensors`).
    #[arg(long)]
    pub output: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Hf,
    Native,
}

pub fn run(a: Args) -> Result<()> {
    let ck = a.model.read()?;
    let desc = &ck.description;
    match a.format {
        ExportFormat::Hf => {
            let which = ijepa::eval::features::choose_encoder(
                &ck,
                a.encoder.map(|e| match e {
                    EncoderArg::Target => EncoderChoice::Target,
                    EncoderArg::Context => EncoderChoice::Context,
                }),
            );
            // Validate by building the model before writing anything.
            ck.build_encoder::<ijepa::Cpu>(which, &Default::default())?;
            hf::write_dir(
                &a.output,
                &desc.encoder,
                ck.encoder_tensors(which)?,
                &desc.preprocess,
            )?;
            println!(
                "wrote the {which:?} encoder as a Hugging Face IJepaModel to {}",
                a.output.display()
            );
        }
        ExportFormat::Native => {
            if a.output.extension().is_none_or(|e| e != native::EXTENSION) {
                bail!(
                    "{}: a native checkpoint file must end in .{}",
                    a.output.display(),
                    native::EXTENSION
                );
            }
            let mut tensors = prefixed("encoder", ck.encoder.clone());
            if let Some(t) = &ck.target_encoder {
                tensors.extend(prefixed("target_encoder", t.clone()));
            }
            if let Some(p) = &ck.predictor {
                tensors.extend(prefixed("predictor", p.clone()));
            }
            let mut out = desc.clone();
            out.training = None;
            native::write(&a.output, &out, &tensors)?;
            println!("wrote {}", a.output.display());
        }
    }
    Ok(())
}
