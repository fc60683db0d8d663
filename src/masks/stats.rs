//! Statistics of many sampled batches, as one serde struct whose JSON has the keys and layout
//! of the official collator's statistics (`shared/reference/masks/*.json`): `config`,
//! `seconds`, `target_block_height|width|area`, `context_block_height|width`,
//! `context_patches_kept`, `target_union_patches`, `K_enc`, `K_pred`,
//! `target_context_overlap_fraction` (+ `_truncated`), `images_with_overlap`,
//! `relaxation_warnings`, `coverage_*` and `block_sizes_first_100_steps`.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::sampler::FullSample;
use super::{MaskConfig, MaskError, MaskMode, MaskSampler};

/// Summary of one measured quantity: `n`, `mean`, population `std`, `min`, `max` and, for
/// most quantities, an integer histogram (`hist`, keys as strings in JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// What one value is measured over (batch or image, and how).
    pub per: String,
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hist: Option<BTreeMap<i64, u64>>,
    /// `percent (rounded)` when the histogram counts rounded percentages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hist_unit: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Hist {
    Integer,
    Percent,
    Without,
}

fn summary(per: &str, values: &[f64], hist: Hist) -> Summary {
    let n = values.len();
    let nf = n.max(1) as f64;
    let mean = values.iter().sum::<f64>() / nf;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / nf;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (min, max) = if n == 0 { (0.0, 0.0) } else { (min, max) };
    let counts = (hist != Hist::Without).then(|| {
        let mut counts = BTreeMap::new();
        for &v in values {
            let key = match hist {
                Hist::Percent => (v * 100.0).round_ties_even(),
                _ => v.round_ties_even(),
            };
            *counts.entry(key as i64).or_insert(0) += 1;
        }
        counts
    });
    Summary {
        per: per.to_string(),
        n,
        mean,
        std: var.sqrt(),
        min,
        max,
        hist: counts,
        hist_unit: (hist == Hist::Percent).then(|| "percent (rounded)".to_string()),
    }
}

/// The settings the statistics were sampled with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsConfig {
    pub name: String,
    pub grid: (usize, usize),
    pub batch_size: usize,
    pub n_batches: usize,
    pub seed: u64,
    pub collator_seeds: String,
    pub enc_mask_scale: (f64, f64),
    pub pred_mask_scale: (f64, f64),
    pub aspect_ratio: (f64, f64),
    pub nenc: usize,
    pub npred: usize,
    pub min_keep: usize,
    pub allow_overlap: bool,
    pub mode: MaskMode,
}

/// The official `Valid mask not found, decreasing acceptable-regions` log lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Relaxations {
    pub count: usize,
    pub note: String,
}

/// Fraction of images in which each patch `[r][c]` is covered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub map: Vec<Vec<f64>>,
}

/// The uniforms and sizes of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSizes {
    pub step: u64,
    pub u_pred: f64,
    pub u_enc: f64,
    /// Fixed mode only: the aspect-ratio uniforms (official mode shares one `u`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u_pred_aspect: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u_enc_aspect: Option<f64>,
    pub pred_hw: (usize, usize),
    pub enc_hw: (usize, usize),
}

/// Statistics of `n_batches` batches (see the module documentation for the layout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskStats {
    pub config: StatsConfig,
    pub seconds: f64,
    pub target_block_height: Summary,
    pub target_block_width: Summary,
    pub target_block_area: Summary,
    pub context_block_height: Summary,
    pub context_block_width: Summary,
    pub context_patches_kept: Summary,
    pub target_union_patches: Summary,
    #[serde(rename = "K_enc")]
    pub k_enc: Summary,
    #[serde(rename = "K_pred")]
    pub k_pred: Summary,
    pub target_context_overlap_fraction: Summary,
    pub target_context_overlap_fraction_truncated: Summary,
    pub images_with_overlap: u64,
    pub relaxation_warnings: Relaxations,
    pub coverage_context: Coverage,
    pub coverage_context_truncated: Coverage,
    pub coverage_targets: Coverage,
    pub coverage_targets_truncated: Coverage,
    pub block_sizes_first_100_steps: Vec<StepSizes>,
}

/// Per-patch coverage counts of one kind of mask.
struct CoverageCount {
    counts: Vec<u64>,
    marks: Vec<bool>,
}

impl CoverageCount {
    fn new(n: usize) -> Self {
        CoverageCount {
            counts: vec![0; n],
            marks: vec![false; n],
        }
    }

    fn mark_all(&mut self, indices: &[usize]) {
        for &i in indices {
            self.marks[i] = true;
        }
    }

    fn marked(&self) -> usize {
        self.marks.iter().filter(|&&m| m).count()
    }

    /// Adds this image's marks to the counts and clears them.
    fn finish_image(&mut self) {
        for (c, m) in self.counts.iter_mut().zip(self.marks.iter_mut()) {
            *c += u64::from(*m);
            *m = false;
        }
    }

    fn map(&self, images: u64, (gh, gw): (usize, usize), note: Option<&str>) -> Coverage {
        let denom = images.max(1) as f64;
        let map = (0..gh)
            .map(|r| {
                (0..gw)
                    .map(|c| (self.counts[r * gw + c] as f64 / denom * 1e4).round() / 1e4)
                    .collect()
            })
            .collect();
        Coverage {
            note: note.map(str::to_string),
            map,
        }
    }
}

/// Values collected over all batches, then summarised.
struct Collected {
    target_h: Vec<f64>,
    target_w: Vec<f64>,
    target_area: Vec<f64>,
    context_h: Vec<f64>,
    context_w: Vec<f64>,
    kept: Vec<f64>,
    union: Vec<f64>,
    k_enc: Vec<f64>,
    k_pred: Vec<f64>,
    overlap: Vec<f64>,
    overlap_truncated: Vec<f64>,
    images_with_overlap: u64,
    relaxations: usize,
    images: u64,
    first_steps: Vec<StepSizes>,
    context: CoverageCount,
    context_truncated: CoverageCount,
    targets: CoverageCount,
    targets_truncated: CoverageCount,
}

impl Collected {
    fn new(n: usize) -> Self {
        Collected {
            target_h: Vec::new(),
            target_w: Vec::new(),
            target_area: Vec::new(),
            context_h: Vec::new(),
            context_w: Vec::new(),
            kept: Vec::new(),
            union: Vec::new(),
            k_enc: Vec::new(),
            k_pred: Vec::new(),
            overlap: Vec::new(),
            overlap_truncated: Vec::new(),
            images_with_overlap: 0,
            relaxations: 0,
            images: 0,
            first_steps: Vec::new(),
            context: CoverageCount::new(n),
            context_truncated: CoverageCount::new(n),
            targets: CoverageCount::new(n),
            targets_truncated: CoverageCount::new(n),
        }
    }

    fn add_batch(&mut self, cfg: &MaskConfig, step: u64, full: &FullSample) {
        let d = &full.masks.diag;
        let (ph, pw) = d.pred_size;
        let (eh, ew) = d.enc_size;
        self.target_h.push(ph as f64);
        self.target_w.push(pw as f64);
        self.target_area.push((ph * pw) as f64);
        self.context_h.push(eh as f64);
        self.context_w.push(ew as f64);
        self.k_enc.push(d.k_enc as f64);
        self.k_pred.push(d.k_pred as f64);
        self.relaxations += d.relaxations;
        if step < 100 {
            let fixed = cfg.mode == MaskMode::Fixed;
            self.first_steps.push(StepSizes {
                step,
                u_pred: d.sizes.pred_u.0,
                u_enc: d.sizes.enc_u.0,
                u_pred_aspect: fixed.then_some(d.sizes.pred_u.1),
                u_enc_aspect: fixed.then_some(d.sizes.enc_u.1),
                pred_hw: (ph, pw),
                enc_hw: (eh, ew),
            });
        }
        for b in 0..full.masks.batch_size() {
            self.add_image(cfg, full, b);
        }
    }

    fn add_image(&mut self, cfg: &MaskConfig, full: &FullSample, b: usize) {
        self.images += 1;
        for p in 0..cfg.npred {
            self.targets.mark_all(&full.pred_full[p][b]);
            self.targets_truncated.mark_all(&full.masks.pred[p][b]);
        }
        let u = self.targets.marked();
        let ut = self.targets_truncated.marked();
        self.union.push(u as f64);
        let mut any_overlap = false;
        for e in 0..cfg.nenc {
            let ctx = &full.enc_full[e][b];
            let ctx_t = &full.masks.enc[e][b];
            self.kept.push(ctx.len() as f64);
            let o = ctx.iter().filter(|&&i| self.targets.marks[i]).count();
            let ot = ctx_t
                .iter()
                .filter(|&&i| self.targets_truncated.marks[i])
                .count();
            any_overlap |= o > 0;
            self.overlap.push(o as f64 / u.max(1) as f64);
            self.overlap_truncated.push(ot as f64 / ut.max(1) as f64);
            self.context.mark_all(ctx);
            self.context_truncated.mark_all(ctx_t);
        }
        self.images_with_overlap += u64::from(any_overlap);
        for cov in [
            &mut self.context,
            &mut self.context_truncated,
            &mut self.targets,
            &mut self.targets_truncated,
        ] {
            cov.finish_image();
        }
    }
}

/// Statistics of `batches` batches of `batch_size` images (steps `0..batches`, stream 0).
/// Numeric entries carry `n`, `mean`, `std` (population), `min`, `max` and an integer
/// `hist`.
///
/// With `nenc > 1`, per-image context entries have one value per context block, and the
/// context coverage maps use the union of an image's contexts.
pub fn mask_stats(
    cfg: &MaskConfig,
    seed: u64,
    batch_size: usize,
    batches: usize,
) -> Result<MaskStats, MaskError> {
    if batches == 0 {
        return Err(MaskError::InvalidArgument(
            "batches must be at least 1".to_string(),
        ));
    }
    let start = Instant::now();
    let sampler = MaskSampler::new(cfg.clone(), seed)?;
    let (gh, gw) = cfg.grid;
    let mut c = Collected::new(gh * gw);
    for step in 0..batches as u64 {
        let full = sampler.sample_impl(step, 0, batch_size, true)?;
        c.add_batch(cfg, step, &full);
    }
    let config = StatsConfig {
        name: format!(
            "grid{gh}x{gw}_minkeep{}_{}",
            cfg.min_keep,
            cfg.mode.as_str()
        ),
        grid: cfg.grid,
        batch_size,
        n_batches: batches,
        seed,
        collator_seeds: format!(
            "0..{} (one per batch, the sampler's step argument; stream 0)",
            batches - 1
        ),
        enc_mask_scale: cfg.enc_mask_scale,
        pred_mask_scale: cfg.pred_mask_scale,
        aspect_ratio: cfg.aspect_ratio,
        nenc: cfg.nenc,
        npred: cfg.npred,
        min_keep: cfg.min_keep,
        allow_overlap: cfg.allow_overlap,
        mode: cfg.mode,
    };
    let per_batch_shared = "batch (one size per batch, shared by all its images and target blocks)";
    let images = c.images;
    Ok(MaskStats {
        config,
        seconds: (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        target_block_height: summary(per_batch_shared, &c.target_h, Hist::Integer),
        target_block_width: summary("batch", &c.target_w, Hist::Integer),
        target_block_area: summary("batch", &c.target_area, Hist::Integer),
        context_block_height: summary("batch", &c.context_h, Hist::Integer),
        context_block_width: summary("batch", &c.context_w, Hist::Integer),
        context_patches_kept: summary(
            "image; context block minus target overlap, before the batch truncation",
            &c.kept,
            Hist::Integer,
        ),
        target_union_patches: summary(
            "image; union of the npred target blocks, before truncation",
            &c.union,
            Hist::Integer,
        ),
        k_enc: summary(
            "batch; masks_enc length after truncation to the batch minimum",
            &c.k_enc,
            Hist::Integer,
        ),
        k_pred: summary(
            "batch; masks_pred length after truncation (= block area, as target blocks are never \
             constrained)",
            &c.k_pred,
            Hist::Integer,
        ),
        target_context_overlap_fraction: summary(
            "image; |union(targets) & context| / |union(targets)|, untruncated masks",
            &c.overlap,
            Hist::Percent,
        ),
        target_context_overlap_fraction_truncated: summary(
            "image; same with the truncated (collated) masks",
            &c.overlap_truncated,
            Hist::Without,
        ),
        images_with_overlap: c.images_with_overlap,
        relaxation_warnings: Relaxations {
            count: c.relaxations,
            note: "'Valid mask not found, decreasing acceptable-regions' log lines; after 20 \
                   failed tries the context is constrained by one target block fewer, so context \
                   and targets may overlap"
                .to_string(),
        },
        coverage_context: c.context.map(
            images,
            cfg.grid,
            Some("fraction of images whose (untruncated) context contains patch [r][c]"),
        ),
        coverage_context_truncated: c.context_truncated.map(images, cfg.grid, None),
        coverage_targets: c.targets.map(
            images,
            cfg.grid,
            Some("fraction of images whose (untruncated) target union contains patch [r][c]"),
        ),
        coverage_targets_truncated: c.targets_truncated.map(images, cfg.grid, None),
        block_sizes_first_100_steps: c.first_steps,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testutil::official;
    use super::*;

    #[test]
    fn stats_layout() {
        let cfg = official(8, 4);
        let st = serde_json::to_value(mask_stats(&cfg, 0, 8, 50).unwrap()).unwrap();
        for key in [
            "config",
            "seconds",
            "target_block_height",
            "target_block_width",
            "target_block_area",
            "context_block_height",
            "context_block_width",
            "context_patches_kept",
            "target_union_patches",
            "K_enc",
            "K_pred",
            "target_context_overlap_fraction",
            "target_context_overlap_fraction_truncated",
            "images_with_overlap",
            "relaxation_warnings",
            "coverage_context",
            "coverage_context_truncated",
            "coverage_targets",
            "coverage_targets_truncated",
            "block_sizes_first_100_steps",
        ] {
            assert!(st.get(key).is_some(), "missing {key}");
        }
        assert_eq!(st["K_enc"]["n"], json!(50));
        assert_eq!(st["context_patches_kept"]["n"], json!(400));
        assert_eq!(st["coverage_context"]["map"].as_array().unwrap().len(), 8);
        assert_eq!(st["coverage_context"]["map"][7][0], json!(0.0));
        assert_eq!(
            st["block_sizes_first_100_steps"].as_array().unwrap().len(),
            50
        );
        assert_eq!(st["config"]["grid"], json!([8, 8]));
        assert_eq!(
            st["target_context_overlap_fraction"]["hist_unit"],
            json!("percent (rounded)")
        );
        assert!(mask_stats(&cfg, 0, 8, 0).is_err());
        assert!(mask_stats(&official(4, 4), 0, 8, 1).is_err());
    }

    #[test]
    fn summary_population_std() {
        let v = serde_json::to_value(summary("x", &[1.0, 2.0, 3.0, 4.0], Hist::Integer)).unwrap();
        assert_eq!(v["mean"], json!(2.5));
        assert!((v["std"].as_f64().unwrap() - 1.118_033_988_749_895).abs() < 1e-12);
        assert_eq!(v["hist"]["3"], json!(1));
        assert_eq!(v["min"], json!(1.0));
    }

    #[test]
    fn stats_read_back() {
        let st = mask_stats(&official(8, 4), 3, 4, 5).unwrap();
        let text = serde_json::to_string(&st).unwrap();
        let back: MaskStats = serde_json::from_str(&text).unwrap();
        assert_eq!(back.config, st.config);
        assert_eq!(back.k_enc.hist, st.k_enc.hist);
        assert_eq!(back.block_sizes_first_100_steps.len(), 5);
        assert!((back.k_pred.mean - st.k_pred.mean).abs() < 1e-12);
    }
}
