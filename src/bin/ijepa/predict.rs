use std::path::PathBuf;

use anyhow::Result;
use ijepa::model::MaskIndices;

use crate::common::ModelArgs;

/// Inspect the predictor: context encoder, target encoder and predictor on given masks.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Float32 pixels [B, C, H, W] (already preprocessed).
    #[arg(long)]
    pub input: PathBuf,
    /// Context indices [nenc, B, K_enc] (int64), as the official collator returns them.
    #[arg(long)]
    pub masks_enc: PathBuf,
    /// Target indices [npred, B, K_pred] (int64).
    #[arg(long)]
    pub masks_pred: PathBuf,
    /// Folder for target_raw.npy, target_h.npy, targets.npy, context_z.npy, pred.npy, loss.json.
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let ck = a.model.read()?;
    let cfg = &ck.description.encoder;
    let x = ijepa::npy::read_f32(&a.input)?;
    ijepa::eval::features::check_pixels(&a.input, &x.shape, cfg)?;
    let masks = |path: &PathBuf| -> Result<MaskIndices> {
        let (shape, values) = ijepa::npy::read_i64(path)?;
        MaskIndices::from_array(&shape, &values, cfg.num_patches())
            .map_err(|e| ijepa::Error::in_file(path, e).into())
    };
    let (m_enc, m_pred) = (masks(&a.masks_enc)?, masks(&a.masks_pred)?);
    let p = ijepa::eval::predict::predict(&ck, &x, &m_enc, &m_pred)?;
    std::fs::create_dir_all(&a.output).map_err(|e| ijepa::Error::io(&a.output, e))?;
    for (name, t) in [
        ("target_raw", &p.target_raw),
        ("target_h", &p.target_h),
        ("targets", &p.targets),
        ("context_z", &p.context_z),
        ("pred", &p.pred),
    ] {
        ijepa::npy::write_host(&a.output.join(format!("{name}.npy")), t)?;
    }
    let loss = serde_json::json!({"smooth_l1": p.smooth_l1, "l2": p.l2});
    ijepa::fsutil::write_bytes_atomic(
        &a.output.join("loss.json"),
        serde_json::to_string_pretty(&loss)?.as_bytes(),
    )?;
    println!(
        "smooth_l1 {:.9} l2 {:.9} -> {}",
        p.smooth_l1,
        p.l2,
        a.output.display()
    );
    Ok(())
}
