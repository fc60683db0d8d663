use std::path::PathBuf;

use anyhow::Result;
use ijepa::masks::{MaskConfig, MaskMode, MaskSampler, RenderOptions, mask_stats, render_png};

/// Sample multi-block masks: statistics (JSON) and a picture (PNG). Settings left out take the
/// official config files' defaults.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub image_size: usize,
    #[arg(long)]
    pub patch_size: usize,
    /// `official` (bug-compatible with the official collator) or `fixed` (its quirks repaired).
    #[arg(long, default_value = "official")]
    pub mode: MaskMode,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2000)]
    pub batches: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A block must keep more than this many patches (official configs: 10).
    #[arg(long)]
    pub min_keep: Option<usize>,
    /// Target blocks per image (official configs: 4).
    #[arg(long)]
    pub num_pred: Option<usize>,
    /// Context blocks per image (official configs: 1).
    #[arg(long)]
    pub num_enc: Option<usize>,
    /// Target block scale range, e.g. `0.15,0.2` (the official configs').
    #[arg(long, value_parser = parse_pair)]
    pub pred_scale: Option<(f64, f64)>,
    /// Context block scale range (official configs: `0.85,1.0`).
    #[arg(long, value_parser = parse_pair)]
    pub enc_scale: Option<(f64, f64)>,
    /// Target aspect-ratio range, height / width (official configs: `0.75,1.5`).
    #[arg(long, value_parser = parse_pair)]
    pub aspect_ratio: Option<(f64, f64)>,
    #[arg(long)]
    pub allow_overlap: bool,
    /// Write statistics (same keys as the official reference JSONs).
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Draw the masks of the first batches: context blue, each target its own colour, unused grey.
    #[arg(long)]
    pub png: Option<PathBuf>,
}

fn parse_pair(s: &str) -> std::result::Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("expected two numbers 'a,b', got '{s}'"))?;
    let p = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("'{v}': {e}"));
    Ok((p(a)?, p(b)?))
}

pub fn run(a: Args) -> Result<()> {
    let base = MaskConfig::from_image(a.image_size, a.patch_size)?;
    let cfg = MaskConfig {
        enc_mask_scale: a.enc_scale.unwrap_or(base.enc_mask_scale),
        pred_mask_scale: a.pred_scale.unwrap_or(base.pred_mask_scale),
        aspect_ratio: a.aspect_ratio.unwrap_or(base.aspect_ratio),
        nenc: a.num_enc.unwrap_or(base.nenc),
        npred: a.num_pred.unwrap_or(base.npred),
        min_keep: a.min_keep.unwrap_or(base.min_keep),
        allow_overlap: a.allow_overlap,
        mode: a.mode,
        ..base
    };
    let sampler = MaskSampler::new(cfg.clone(), a.seed)?;
    let stats = mask_stats(&cfg, a.seed, a.batch_size, a.batches)?;
    println!(
        "{} mode, grid {}x{}, {} batches of {}: K_enc {:.2}, K_pred {:.2}, context kept {:.2}, target block {:.2} patches",
        cfg.mode.as_str(),
        cfg.grid.0,
        cfg.grid.1,
        a.batches,
        a.batch_size,
        stats.k_enc.mean,
        stats.k_pred.mean,
        stats.context_patches_kept.mean,
        stats.target_block_area.mean,
    );
    if let Some(path) = &a.stats {
        ijepa::fsutil::write_bytes_atomic(path, serde_json::to_string_pretty(&stats)?.as_bytes())?;
        println!("statistics -> {}", path.display());
    }
    if let Some(path) = &a.png {
        let opts = RenderOptions::default();
        let batches_needed = opts
            .max_images
            .div_ceil(a.batch_size.max(1))
            .min(a.batches.max(1));
        let drawn = (0..batches_needed as u64)
            .map(|s| sampler.sample(s, 0, a.batch_size))
            .collect::<Result<Vec<_>, _>>()?;
        render_png(&cfg, &drawn, path, &opts)?;
        println!("picture -> {}", path.display());
    }
    Ok(())
}
