//! The sampler: per step one pair of block sizes ([`MaskSampler::block_sizes`]), per image
//! `npred` target blocks and `nenc` context blocks placed by `sample_block_mask`, then every
//! list of one kind cut to the batch's shortest (the official collator's order and rules, see
//! the module documentation of [`super`]).

use super::block_size::SizeRule;
use super::{
    MAX_BATCH_SIZE, MaskConfig, MaskError, MaskMode, POSITION_DOMAIN, RELAXATION_TIMEOUT,
    SIZE_DOMAIN,
};
use crate::rng::{self, Expansion, Rng};
use serde::{Deserialize, Serialize};

/// Uniform integer in `[0, n)`; a one-value range (`n <= 1`) draws nothing (how the sampler's
/// streams were defined).
fn below_usize(rng: &mut Rng, n: usize) -> usize {
    if n <= 1 { 0 } else { rng::below(rng, n) }
}

/// Uniformly random subset of `k` entries of `list`, in the order of `list`
/// (Knuth's selection sampling).
pub(crate) fn random_sorted_subset(rng: &mut Rng, list: &[usize], k: usize) -> Vec<usize> {
    let n = list.len();
    if k >= n {
        return list.to_vec();
    }
    let mut out = Vec::with_capacity(k);
    let mut need = k;
    for (i, &v) in list.iter().enumerate() {
        if need == 0 {
            break;
        }
        if below_usize(rng, n - i) < need {
            out.push(v);
            need -= 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Sampler
// ---------------------------------------------------------------------------

/// Block sizes of one collator step (shared by every image, block and stream of the step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlockSizes {
    /// Target block `(h, w)`.
    pub pred: (usize, usize),
    /// Context block `(h, w)`.
    pub enc: (usize, usize),
    /// Uniforms of the target size `(scale, aspect)`; equal in official mode.
    pub pred_u: (f64, f64),
    /// Uniforms of the context size `(scale, aspect)`; equal in official mode.
    pub enc_u: (f64, f64),
}

/// What happened while sampling one batch (before truncation unless noted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskDiagnostics {
    /// The collator step.
    pub step: u64,
    /// The position stream.
    pub stream: u64,
    /// Sizes and their uniforms.
    pub sizes: BlockSizes,
    /// Target block `(h, w)` (same as `sizes.pred`).
    pub pred_size: (usize, usize),
    /// Context block `(h, w)` (same as `sizes.enc`).
    pub enc_size: (usize, usize),
    /// Top-left `(row, col)` of every target block, `[npred][B]`.
    pub pred_origins: Vec<Vec<(usize, usize)>>,
    /// Top-left `(row, col)` of every accepted context block, `[nenc][B]`.
    pub enc_origins: Vec<Vec<(usize, usize)>>,
    /// Context lengths before truncation, `[nenc][B]`.
    pub context_lengths: Vec<Vec<usize>>,
    /// Patches in the union of the targets of each image, `[B]`.
    pub target_union: Vec<usize>,
    /// `|context ∩ union(targets)|` before truncation, `[nenc][B]` (0 unless
    /// `allow_overlap` or a relaxation happened).
    pub context_target_overlap: Vec<Vec<usize>>,
    /// Times a context block dropped one target constraint (official warning lines).
    pub relaxations: usize,
    /// Block position draws in total (accepted and rejected).
    pub position_draws: usize,
    /// Common context length after truncation.
    pub k_enc: usize,
    /// Common target length after truncation.
    pub k_pred: usize,
}

/// Masks of one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchMasks {
    /// Context indices `[nenc][B][K_enc]`, each list ascending row-major patch indices.
    pub enc: Vec<Vec<Vec<usize>>>,
    /// Target indices `[npred][B][K_pred]`, each list ascending.
    pub pred: Vec<Vec<Vec<usize>>>,
    /// Sizes, positions, untruncated lengths, relaxations.
    pub diag: MaskDiagnostics,
}

impl BatchMasks {
    /// Number of images.
    pub fn batch_size(&self) -> usize {
        self.pred.first().map_or(0, Vec::len)
    }
}

/// Masks plus the untruncated lists (for statistics).
pub(crate) struct FullSample {
    pub(crate) masks: BatchMasks,
    pub(crate) enc_full: Vec<Vec<Vec<usize>>>,
    pub(crate) pred_full: Vec<Vec<Vec<usize>>>,
}

/// Stateless multi-block mask sampler: configuration plus base seed.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskSampler {
    cfg: MaskConfig,
    seed: u64,
    pred_rule: SizeRule,
    enc_rule: SizeRule,
}

/// Placements and relaxations while sampling one batch.
#[derive(Default)]
struct Tally {
    draws: usize,
    relaxations: usize,
}

impl MaskSampler {
    /// Validates `cfg` ([`MaskConfig::validate`]) and builds the sampler.
    pub fn new(cfg: MaskConfig, seed: u64) -> Result<Self, MaskError> {
        cfg.validate()?;
        let (pred_rule, enc_rule) = cfg.rules();
        Ok(MaskSampler {
            cfg,
            seed,
            pred_rule,
            enc_rule,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MaskConfig {
        &self.cfg
    }

    /// The base seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Block sizes of collator step `step` (a function of `(seed, step)` only): the target
    /// size, then the context size, each by `sample_block_size` from one per-step generator.
    pub fn block_sizes(&self, step: u64) -> BlockSizes {
        let mut rng = rng::keyed(&[SIZE_DOMAIN, self.seed, step], Expansion::Generator);
        let (pred, pred_u) = self.pred_rule.sample_block_size(&mut rng);
        let (enc, enc_u) = self.enc_rule.sample_block_size(&mut rng);
        BlockSizes {
            pred,
            enc,
            pred_u,
            enc_u,
        }
    }

    /// Masks for the batch whose collator step counter is `step` (the official
    /// counter: first batch 0). `stream` selects the independent position
    /// stream (rank or micro-batch index; 0 for one process).
    ///
    /// Stateless: the result is a pure function of
    /// `(seed, step, stream, batch_size, config)`. Errors if `batch_size` is 0
    /// or above [`MAX_BATCH_SIZE`].
    pub fn sample(
        &self,
        step: u64,
        stream: u64,
        batch_size: usize,
    ) -> Result<BatchMasks, MaskError> {
        self.sample_impl(step, stream, batch_size, false)
            .map(|s| s.masks)
    }

    fn draw_origin(&self, rng: &mut Rng, (h, w): (usize, usize)) -> (usize, usize) {
        let (gh, gw) = self.cfg.grid;
        let extra = match self.cfg.mode {
            MaskMode::Official => 0, // torch.randint(0, H - h): exclusive
            MaskMode::Fixed => 1,    // inclusive
        };
        let top = below_usize(rng, gh.saturating_sub(h) + extra);
        let left = below_usize(rng, gw.saturating_sub(w) + extra);
        (top, left)
    }

    /// The official `_sample_block_mask`: places a block of `size` until it keeps more than
    /// `min_keep` patches once the patches of the image's first `constrained` target blocks
    /// are removed (`first_cover[i]`: the first target block covering patch `i`). Every
    /// [`RELAXATION_TIMEOUT`] failed draws one target constraint fewer applies (a
    /// relaxation, counted in `tally`). Returns the kept indices (ascending) and the block's
    /// top-left corner; `tally` also counts every placement. `what` names the block kind.
    fn sample_block_mask(
        &self,
        rng: &mut Rng,
        (what, (h, w)): (&'static str, (usize, usize)),
        first_cover: &[usize],
        constrained: usize,
        tally: &mut Tally,
    ) -> Result<(Vec<usize>, (usize, usize)), MaskError> {
        let gw = self.cfg.grid.1;
        let min_keep = self.cfg.min_keep;
        let mut tries = 0usize;
        let mut timeout = RELAXATION_TIMEOUT;
        loop {
            // Complements of the first max(constrained - tries, 0) targets apply.
            let active = constrained.saturating_sub(tries);
            let (top, left) = self.draw_origin(rng, (h, w));
            tally.draws += 1;
            let mut idx = Vec::with_capacity(h * w);
            for r in top..top + h {
                for c in left..left + w {
                    let i = r * gw + c;
                    if first_cover[i] >= active {
                        idx.push(i);
                    }
                }
            }
            if idx.len() > min_keep {
                return Ok((idx, (top, left)));
            }
            if active == 0 {
                // Cannot happen after the guard in `sample_impl`; never retry forever.
                return Err(MaskError::Unsatisfiable {
                    what,
                    h,
                    w,
                    area: h * w,
                    min_keep,
                });
            }
            timeout -= 1;
            if timeout == 0 {
                tries += 1;
                timeout = RELAXATION_TIMEOUT;
                tally.relaxations += 1;
            }
        }
    }

    pub(crate) fn sample_impl(
        &self,
        step: u64,
        stream: u64,
        batch_size: usize,
        keep_full: bool,
    ) -> Result<FullSample, MaskError> {
        if batch_size == 0 || batch_size > MAX_BATCH_SIZE {
            return Err(MaskError::InvalidArgument(format!(
                "batch_size = {batch_size}: must be between 1 and {MAX_BATCH_SIZE}"
            )));
        }
        let cfg = &self.cfg;
        let (gh, gw) = cfg.grid;
        let (npred, nenc, min_keep) = (cfg.npred, cfg.nenc, cfg.min_keep);
        let sizes = self.block_sizes(step);
        // Run-time guard (validate already excludes these): never loop forever.
        for (what, (h, w)) in [("target", sizes.pred), ("context", sizes.enc)] {
            if h * w <= min_keep || h > gh || w > gw {
                return Err(MaskError::Unsatisfiable {
                    what,
                    h,
                    w,
                    area: h * w,
                    min_keep,
                });
            }
        }

        let mut rng = rng::keyed(
            &[POSITION_DOMAIN, self.seed, step, stream],
            Expansion::Generator,
        );
        let mut pred: Vec<Vec<Vec<usize>>> = vec![Vec::with_capacity(batch_size); npred];
        let mut enc: Vec<Vec<Vec<usize>>> = vec![Vec::with_capacity(batch_size); nenc];
        let mut pred_origins = vec![Vec::with_capacity(batch_size); npred];
        let mut enc_origins = vec![Vec::with_capacity(batch_size); nenc];
        let mut context_lengths = vec![Vec::with_capacity(batch_size); nenc];
        let mut context_target_overlap = vec![Vec::with_capacity(batch_size); nenc];
        let mut target_union = Vec::with_capacity(batch_size);
        let mut tally = Tally::default();
        // first_cover[i] = index of the first target block covering patch i.
        let mut first_cover = vec![usize::MAX; gh * gw];
        let constrained = if cfg.allow_overlap { 0 } else { npred };

        for _ in 0..batch_size {
            first_cover.fill(usize::MAX);
            for (j, (lists, origins)) in pred.iter_mut().zip(pred_origins.iter_mut()).enumerate() {
                // Unconstrained and h*w > min_keep: accepted on the first draw.
                let (idx, origin) = self.sample_block_mask(
                    &mut rng,
                    ("target", sizes.pred),
                    &first_cover,
                    0,
                    &mut tally,
                )?;
                for &i in &idx {
                    if first_cover[i] == usize::MAX {
                        first_cover[i] = j;
                    }
                }
                lists.push(idx);
                origins.push(origin);
            }
            target_union.push(first_cover.iter().filter(|&&v| v != usize::MAX).count());

            for e in 0..nenc {
                let (idx, origin) = self.sample_block_mask(
                    &mut rng,
                    ("context", sizes.enc),
                    &first_cover,
                    constrained,
                    &mut tally,
                )?;
                let overlap = idx
                    .iter()
                    .filter(|&&i| first_cover[i] != usize::MAX)
                    .count();
                context_lengths[e].push(idx.len());
                context_target_overlap[e].push(overlap);
                enc_origins[e].push(origin);
                enc[e].push(idx);
            }
        }

        let k_enc = enc.iter().flatten().map(Vec::len).min().unwrap_or(0);
        let k_pred = pred.iter().flatten().map(Vec::len).min().unwrap_or(0);
        let (enc_full, pred_full) = if keep_full {
            (enc.clone(), pred.clone())
        } else {
            (Vec::new(), Vec::new())
        };
        match cfg.mode {
            MaskMode::Official => {
                enc.iter_mut().flatten().for_each(|l| l.truncate(k_enc));
                pred.iter_mut().flatten().for_each(|l| l.truncate(k_pred));
            }
            MaskMode::Fixed => {
                for (lists, k) in [(&mut enc, k_enc), (&mut pred, k_pred)] {
                    for l in lists.iter_mut().flatten() {
                        if l.len() > k {
                            *l = random_sorted_subset(&mut rng, l, k);
                        }
                    }
                }
            }
        }

        let diag = MaskDiagnostics {
            step,
            stream,
            sizes,
            pred_size: sizes.pred,
            enc_size: sizes.enc,
            pred_origins,
            enc_origins,
            context_lengths,
            target_union,
            context_target_overlap,
            relaxations: tally.relaxations,
            position_draws: tally.draws,
            k_enc,
            k_pred,
        };
        Ok(FullSample {
            masks: BatchMasks { enc, pred, diag },
            enc_full,
            pred_full,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::mask_stats;
    use super::super::testutil::{fixed, official};
    use super::*;
    use crate::rng::{keyed, unit_f64};

    fn mean(v: &[usize]) -> f64 {
        v.iter().sum::<usize>() as f64 / v.len() as f64
    }

    fn check_batch(cfg: &MaskConfig, m: &BatchMasks, batch: usize) {
        let n = cfg.num_patches();
        assert_eq!(m.enc.len(), cfg.nenc);
        assert_eq!(m.pred.len(), cfg.npred);
        for (lists, k) in [(&m.enc, m.diag.k_enc), (&m.pred, m.diag.k_pred)] {
            for per_block in lists {
                assert_eq!(per_block.len(), batch);
                for l in per_block {
                    assert_eq!(l.len(), k, "all masks of one kind share one length");
                    assert!(l.len() > cfg.min_keep);
                    assert!(l.windows(2).all(|w| w[0] < w[1]), "ascending and unique");
                    assert!(l.iter().all(|&i| i < n));
                }
            }
        }
        assert_eq!(
            m.diag.k_enc,
            *m.diag.context_lengths.iter().flatten().min().unwrap()
        );
    }

    #[test]
    fn spec_anchor_16x16_b128() {
        // Spec 1.4 re-simulation: H/14@224, B=128, 40 batches: K_pred 44.8, K_enc 67.8.
        let s = MaskSampler::new(official(16, 10), 0).unwrap();
        let (mut kp, mut ke) = (Vec::new(), Vec::new());
        for step in 0..40 {
            let m = s.sample(step, 0, 128).unwrap();
            check_batch(s.config(), &m, 128);
            assert_eq!(m.diag.enc_size, (15, 15));
            assert!(m.diag.enc_origins[0].iter().all(|&o| o == (0, 0)));
            kp.push(m.diag.k_pred);
            ke.push(m.diag.k_enc);
        }
        let (mp, me) = (mean(&kp), mean(&ke));
        println!("16x16 B=128: K_pred {mp:.2}, K_enc {me:.2}");
        assert!((mp / 44.8 - 1.0).abs() < 0.04, "K_pred mean {mp}");
        assert!((me / 67.8 - 1.0).abs() < 0.04, "K_enc mean {me}");
        assert!(kp.iter().all(|&k| (35..=54).contains(&k)));
    }

    #[test]
    fn official_context_pinned_top_left_14() {
        let s = MaskSampler::new(official(14, 10), 3).unwrap();
        for step in 0..50 {
            let m = s.sample(step, step % 3, 16).unwrap();
            assert_eq!(m.diag.enc_size, (13, 13));
            assert!(m.diag.enc_origins[0].iter().all(|&o| o == (0, 0)));
        }
    }

    #[test]
    fn properties_and_no_overlap() {
        for cfg in [official(14, 10), fixed(14, 10), official(8, 4), fixed(8, 4)] {
            let s = MaskSampler::new(cfg.clone(), 11).unwrap();
            for step in 0..100 {
                let m = s.sample(step, 0, 8).unwrap();
                check_batch(&cfg, &m, 8);
                let d = &m.diag;
                assert!(
                    d.context_lengths
                        .iter()
                        .flatten()
                        .all(|&l| l > cfg.min_keep)
                );
                if d.relaxations == 0 {
                    assert!(d.context_target_overlap.iter().flatten().all(|&o| o == 0));
                    for b in 0..8 {
                        for e in &m.enc {
                            for p in &m.pred {
                                assert!(e[b].iter().all(|i| !p[b].contains(i)));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn last_row_and_column() {
        let touches = |cfg: MaskConfig| {
            let (gh, gw) = cfg.grid;
            let s = MaskSampler::new(cfg, 5).unwrap();
            let (mut row, mut col) = (false, false);
            for step in 0..200 {
                let m = s.sample(step, 0, 8).unwrap();
                for &i in m.enc.iter().chain(m.pred.iter()).flatten().flatten() {
                    row |= i / gw == gh - 1;
                    col |= i % gw == gw - 1;
                }
            }
            (row, col)
        };
        assert_eq!(touches(official(14, 10)), (false, false));
        assert_eq!(touches(official(8, 4)), (false, false));
        assert_eq!(touches(fixed(14, 10)), (true, true));
        assert_eq!(touches(fixed(8, 4)), (true, true));
    }

    #[test]
    fn fixed_mode_uses_full_grid_and_random_truncation() {
        let cfg = fixed(14, 10);
        let s = MaskSampler::new(cfg.clone(), 1).unwrap();
        let mut origins = BTreeSet::new();
        let mut dropped_not_tail = false;
        for step in 0..200 {
            let sizes = s.block_sizes(step);
            assert!(sizes.pred_u.0 != sizes.pred_u.1, "independent draws");
            let full = s.sample_impl(step, 0, 8, true).unwrap();
            origins.extend(full.masks.diag.enc_origins[0].iter().copied());
            for (b, kept) in full.masks.enc[0].iter().enumerate() {
                let orig = &full.enc_full[0][b];
                assert!(kept.iter().all(|i| orig.contains(i)));
                if kept.len() < orig.len() && kept[..] != orig[..kept.len()] {
                    dropped_not_tail = true;
                }
            }
        }
        assert!(origins.len() > 1, "context not pinned: {origins:?}");
        assert!(dropped_not_tail);
        // Official truncation keeps the prefix.
        let s = MaskSampler::new(official(14, 10), 1).unwrap();
        let full = s.sample_impl(0, 0, 8, true).unwrap();
        for (b, kept) in full.masks.enc[0].iter().enumerate() {
            assert_eq!(kept[..], full.enc_full[0][b][..kept.len()]);
        }
    }

    #[test]
    fn determinism_and_streams() {
        let s = MaskSampler::new(official(14, 10), 42).unwrap();
        let a = s.sample(7, 0, 8).unwrap();
        assert_eq!(a, s.sample(7, 0, 8).unwrap());
        let s2 = MaskSampler::new(official(14, 10), 42).unwrap();
        assert_eq!(a, s2.sample(7, 0, 8).unwrap());
        let b = s.sample(7, 1, 8).unwrap();
        assert_eq!(a.diag.sizes, b.diag.sizes, "streams share sizes");
        assert_ne!(a.diag.pred_origins, b.diag.pred_origins);
        let c = s.sample(8, 0, 8).unwrap();
        assert_ne!(a.diag.pred_origins, c.diag.pred_origins);
        let other_seed = MaskSampler::new(official(14, 10), 43).unwrap();
        assert_ne!(a, other_seed.sample(7, 0, 8).unwrap());
        // Sizes do not depend on the batch size either.
        assert_eq!(s.sample(7, 3, 2).unwrap().diag.sizes, a.diag.sizes);
        // Fixed mode: same.
        let f = MaskSampler::new(fixed(14, 10), 42).unwrap();
        assert_eq!(f.sample(1, 2, 4).unwrap(), f.sample(1, 2, 4).unwrap());
    }

    #[test]
    fn size_distribution_changes_across_steps() {
        let s = MaskSampler::new(official(14, 10), 0).unwrap();
        let sizes: BTreeSet<_> = (0..200).map(|t| s.block_sizes(t).pred).collect();
        assert!(sizes.len() >= 4, "{sizes:?}");
    }

    #[test]
    fn bad_batch_sizes() {
        let s = MaskSampler::new(official(14, 10), 0).unwrap();
        assert!(matches!(
            s.sample(0, 0, 0),
            Err(MaskError::InvalidArgument(_))
        ));
        assert!(s.sample(0, 0, MAX_BATCH_SIZE + 1).is_err());
        assert!(s.sample(u64::MAX, u64::MAX, 1).is_ok());
    }

    #[test]
    fn relaxation_happens_and_terminates() {
        // Large targets on a small grid: the context often keeps <= min_keep patches.
        let cfg = MaskConfig {
            pred_mask_scale: (0.3, 0.35),
            min_keep: 15,
            ..official(10, 15)
        };
        let s = MaskSampler::new(cfg.clone(), 9).unwrap();
        let mut relax = 0;
        let mut overlap = false;
        for step in 0..100 {
            let m = s.sample(step, 0, 8).unwrap();
            check_batch(&cfg, &m, 8);
            relax += m.diag.relaxations;
            overlap |= m
                .diag
                .context_target_overlap
                .iter()
                .flatten()
                .any(|&o| o > 0);
            assert!(m.diag.position_draws <= 8 * (4 + 1 + RELAXATION_TIMEOUT * 4));
        }
        assert!(relax > 0);
        assert!(overlap);
        // allow_overlap: contexts are the bare block.
        let s = MaskSampler::new(
            MaskConfig {
                allow_overlap: true,
                ..cfg
            },
            9,
        )
        .unwrap();
        let m = s.sample(0, 0, 8).unwrap();
        assert_eq!(m.diag.relaxations, 0);
        assert!(m.diag.context_lengths[0].iter().all(|&l| l == 81));
    }

    #[test]
    fn several_context_blocks() {
        let cfg = MaskConfig {
            nenc: 2,
            npred: 3,
            ..fixed(14, 10)
        };
        let s = MaskSampler::new(cfg.clone(), 2).unwrap();
        let m = s.sample(3, 0, 5).unwrap();
        check_batch(&cfg, &m, 5);
        assert_eq!(m.diag.context_lengths.len(), 2);
        let st = serde_json::to_value(mask_stats(&cfg, 2, 4, 10).unwrap()).unwrap();
        assert_eq!(st["context_patches_kept"]["n"], serde_json::json!(80));
    }

    #[test]
    fn subset_sampling_is_sorted_and_uniformish() {
        let mut rng = keyed(&[1, 2, 3], Expansion::Generator);
        let list: Vec<usize> = (0..10).map(|i| i * 3).collect();
        let mut hits = [0usize; 10];
        for _ in 0..10_000 {
            let s = random_sorted_subset(&mut rng, &list, 4);
            assert_eq!(s.len(), 4);
            assert!(s.windows(2).all(|w| w[0] < w[1]));
            for v in s {
                hits[v / 3] += 1;
            }
        }
        // Each element is kept with probability 0.4.
        assert!(hits.iter().all(|&h| (3700..4300).contains(&h)), "{hits:?}");
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[below_usize(&mut rng, 7)] += 1;
        }
        assert!(counts.iter().all(|&c| (9500..10500).contains(&c)));
        assert_eq!(below_usize(&mut rng, 1), 0);
        assert_eq!(below_usize(&mut rng, 0), 0);
        let u = unit_f64(&mut rng);
        assert!((0.0..1.0).contains(&u));
    }
}
