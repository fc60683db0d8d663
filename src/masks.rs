//! Multi-block mask sampler of I-JEPA, modelled on the official PyTorch
//! `MaskCollator` (`src/masks/multiblock.py` of facebookresearch/ijepa).
//!
//! The sampler works on the patch grid only (no tensors): for every image of a
//! batch it returns `nenc` context ("encoder") index lists and `npred` target
//! ("predictor") index lists, each a list of ascending row-major patch indices
//! `row * W + col`, all lists of one kind truncated to a common length so that
//! they can be stacked into `[B, K]` tensors.
//!
//! # Algorithm ([`MaskMode::Official`], bug-compatible)
//!
//! Per batch (collator step `s`):
//!
//! 1. Block sizes come from a per-step generator: first the target size, then
//!    the context size (context aspect ratio fixed to `(1, 1)`). Each size uses
//!    ONE uniform `r` in `[0, 1)` for both scale and aspect ratio:
//!    `scale = smin + r (smax - smin)`, `max_keep = floor(H W scale)`,
//!    `ar = armin + r (armax - armin)`, `h = round_half_even(sqrt(max_keep ar))`,
//!    `w = round_half_even(sqrt(max_keep / ar))`, then `h` is decremented while
//!    `h >= H` and `w` while `w >= W` (so `h <= H - 1`, `w <= W - 1`). All images
//!    and all blocks of the batch share these two sizes.
//! 2. Per image: `npred` target blocks, then `nenc` context blocks. A block's
//!    top-left corner is `top` in `[0, H - h)`, `left` in `[0, W - w)` (upper
//!    bound exclusive, like `torch.randint`), so no block ever touches the last
//!    patch row or column. A target block is taken as is. A context block is
//!    multiplied by the complements of the first `max(npred - tries, 0)` target
//!    blocks of its image (unless `allow_overlap`), i.e. target patches are
//!    removed from it. A block is accepted iff it keeps **more than** `min_keep`
//!    patches; after 20 failed draws `tries` is incremented (the last remaining
//!    target complement is dropped from the constraint, so context and targets
//!    may overlap from then on), the 20-draw timeout is reset and a
//!    "relaxation" is counted (the official code logs
//!    `Valid mask not found, decreasing acceptable-regions`).
//! 3. Every context list is truncated to the shortest context list of the batch
//!    and every target list to the shortest target list, keeping the first
//!    (lowest-index) entries.
//!
//! Consequences reproduced on purpose: at 224 px with patch 14 (16x16 grid) the
//! context block is always the top-left 15x15 square, at patch 16 (14x14 grid)
//! the top-left 13x13 square; the last patch row and column are never used;
//! truncation drops the bottom of the context (official issue #60).
//!
//! # [`MaskMode::Fixed`] (repairs of spec 1.15, quirks 1 to 4)
//!
//! Everything is as in the official mode except:
//!
//! * **Inclusive positions**: `top` in `[0, H - h]`, `left` in `[0, W - w]`, so
//!   blocks can touch the last row and column (PR #40 / #59).
//! * **Clamp to the grid, not below it**: `h = min(h, H)`, `w = min(w, W)`
//!   (instead of `h <= H - 1`), so the context block is no longer pinned to the
//!   top-left corner.
//! * **Independent draws**: scale and aspect ratio use two independent uniforms
//!   (scale first, then aspect ratio), instead of one shared `r`.
//! * **Unbiased truncation**: a list longer than the batch minimum keeps a
//!   uniformly random subset of its entries (still sorted ascending) instead of
//!   its first entries, so truncation no longer removes the bottom of the
//!   context (issue #60).
//!
//! # Never hanging (quirk 5, official issue #68)
//!
//! The official loop never ends when a block cannot keep more than `min_keep`
//! patches even without constraints. [`MaskConfig::validate`] (called by
//! [`MaskSampler::new`]) enumerates every block size the size formula can
//! produce for the configured mode (an exact branch-and-bound over the
//! piecewise-constant size function of `r`, cross-checked by a fine sweep of
//! `r`) and rejects settings in which any reachable target or context block
//! has `<= min_keep` patches. With that guarantee every target block is
//! accepted on its first draw and a context block on its first draw after at
//! most `20 * npred` failed draws, so a batch needs a bounded number of draws.
//! The sampler also re-checks the drawn sizes at run time and returns
//! [`MaskError::Unsatisfiable`] instead of looping.
//!
//! # Randomness and seeding
//!
//! The official code seeds a fresh `torch.Generator` with the step counter for
//! the sizes and takes positions from the process-global torch RNG, so
//! positions are not reproducible. Here (our RNG is not torch's: only the
//! statistics match):
//!
//! * sizes of step `s`: a [`ChaCha8Rng`] keyed by `(seed, s)` only, so every
//!   rank / micro-batch (stream) of one step shares the block sizes, like the
//!   official per-step generator. Draw order: official mode `r_pred`, `r_enc`;
//!   fixed mode `r_pred_scale`, `r_pred_aspect`, `r_enc_scale`, `r_enc_aspect`.
//! * positions: a [`ChaCha8Rng`] keyed by `(seed, s, stream)`, consumed image
//!   by image (`npred` targets, then `nenc` contexts; `top` before `left`),
//!   then, in fixed mode only, by the truncation (context lists `[e][b]`, then
//!   target lists `[p][b]`).
//!
//! Key derivation: `mix(h, x) = splitmix64_finalize(h ^ x + 0x9E3779B97F4A7C15)`
//! folded over `[domain, seed, step]` (sizes, domain [`SIZE_DOMAIN`]) or
//! `[domain, seed, step, stream]` (positions, domain [`POSITION_DOMAIN`]); the
//! resulting `u64` is expanded to the 32-byte ChaCha key by four successive
//! splitmix64 outputs (little-endian). Uniform floats are
//! `(next_u64 >> 11) * 2^-53` in `[0, 1)`; uniform integers below `n` use
//! Lemire's widening-multiply rejection method on `next_u64`. Only
//! `rand_core`'s ChaCha8 stream is used, so results do not depend on `rand`'s
//! distribution code. A batch is a pure function of
//! `(seed, step, stream, batch_size, config)`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use thiserror::Error;

/// Failed draws before a context block drops one more target constraint (official `og_timeout`).
pub const RELAXATION_TIMEOUT: usize = 20;
/// Largest accepted patch grid, `H * W` (for example 512 x 512).
pub const MAX_GRID_PATCHES: usize = 1 << 18;
/// Largest accepted `nenc` and `npred`.
pub const MAX_BLOCKS_PER_IMAGE: usize = 256;
/// Largest accepted batch size of one [`MaskSampler::sample`] call.
pub const MAX_BATCH_SIZE: usize = 1 << 16;
/// Domain tag of the block-size generator keys (ASCII `"IJEPAsiz"`).
pub const SIZE_DOMAIN: u64 = u64::from_le_bytes(*b"IJEPAsiz");
/// Domain tag of the block-position generator keys (ASCII `"IJEPApos"`).
pub const POSITION_DOMAIN: u64 = u64::from_le_bytes(*b"IJEPApos");

/// Largest value the uniform generator returns: `1 - 2^-53`.
const R_MAX: f64 = 1.0 - f64::EPSILON / 2.0;
/// Points per axis of the sweep that backs up the exact enumeration in `validate`.
const SWEEP_OFFICIAL: u32 = 4096;
const SWEEP_FIXED: u32 = 128;

/// Errors of the mask sampler. Messages say what is wrong and what to change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MaskError {
    /// The configuration is unusable; the message says why and what to change.
    #[error("invalid mask configuration: {0}")]
    InvalidConfig(String),
    /// A mask mode string was neither `official` nor `fixed`.
    #[error("unknown mask mode {0:?}: expected \"official\" or \"fixed\"")]
    UnknownMode(String),
    /// A call argument (batch size, image size, render option, ...) is unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A drawn block can never keep more than `min_keep` patches (run-time guard).
    #[error(
        "{what} block of {h}x{w} = {area} patches can never keep more than min_keep = {min_keep} \
         patches; refusing to retry forever (official issue #68): lower min_keep or raise the mask scale"
    )]
    Unsatisfiable {
        /// `"target"` or `"context"`.
        what: &'static str,
        /// Block height in patches.
        h: usize,
        /// Block width in patches.
        w: usize,
        /// `h * w`.
        area: usize,
        /// The configured `min_keep`.
        min_keep: usize,
    },
    /// Writing a PNG failed.
    #[error("cannot write PNG {}: {msg}", path.display())]
    Png {
        /// The path that was being written.
        path: PathBuf,
        /// The underlying error.
        msg: String,
    },
}

/// Sampling flavour: bug-compatible with the official collator, or with the
/// spec 1.15 repairs (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskMode {
    /// Bug-compatible with `facebookresearch/ijepa` (serde / `FromStr`: `"official"`).
    #[default]
    Official,
    /// Repaired sampler (serde / `FromStr`: `"fixed"`).
    Fixed,
}

impl MaskMode {
    /// The serde / `FromStr` name: `"official"` or `"fixed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MaskMode::Official => "official",
            MaskMode::Fixed => "fixed",
        }
    }
}

impl fmt::Display for MaskMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MaskMode {
    type Err = MaskError;

    /// Parses `official` or `fixed` (case-insensitive, surrounding spaces ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "official" => Ok(MaskMode::Official),
            "fixed" => Ok(MaskMode::Fixed),
            _ => Err(MaskError::UnknownMode(s.to_string())),
        }
    }
}

fn default_enc_mask_scale() -> (f64, f64) {
    (0.85, 1.0)
}
fn default_pred_mask_scale() -> (f64, f64) {
    (0.15, 0.2)
}
fn default_aspect_ratio() -> (f64, f64) {
    (0.75, 1.5)
}
fn default_nenc() -> usize {
    1
}
fn default_npred() -> usize {
    4
}
fn default_min_keep() -> usize {
    10
}

/// Mask settings. Defaults are those of the official config files
/// (`configs/in1k_vith14_ep300.yaml`), not the Python constructor defaults.
///
/// In serde form every field except `grid` may be omitted (defaults apply);
/// unknown fields are rejected. Pairs are JSON arrays `[min, max]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// Patch grid `(H, W)` = `(input_h / patch, input_w / patch)`.
    pub grid: (usize, usize),
    /// Context block scale range, fraction of `H * W` (default `(0.85, 1.0)`).
    #[serde(default = "default_enc_mask_scale")]
    pub enc_mask_scale: (f64, f64),
    /// Target block scale range (default `(0.15, 0.2)`).
    #[serde(default = "default_pred_mask_scale")]
    pub pred_mask_scale: (f64, f64),
    /// Target block aspect-ratio range `h / w` (default `(0.75, 1.5)`); the
    /// context block always uses `(1, 1)`, as in the official code.
    #[serde(default = "default_aspect_ratio")]
    pub aspect_ratio: (f64, f64),
    /// Context blocks per image (default 1).
    #[serde(default = "default_nenc")]
    pub nenc: usize,
    /// Target blocks per image (default 4).
    #[serde(default = "default_npred")]
    pub npred: usize,
    /// A block is accepted iff it keeps strictly more than `min_keep` patches (default 10).
    #[serde(default = "default_min_keep")]
    pub min_keep: usize,
    /// Do not remove target patches from the context (default false).
    #[serde(default)]
    pub allow_overlap: bool,
    /// Official (bug-compatible) or fixed sampling (default official).
    #[serde(default)]
    pub mode: MaskMode,
}

impl MaskConfig {
    /// Default settings on an explicit patch grid `(H, W)`. Not validated.
    pub fn with_grid(grid: (usize, usize)) -> Self {
        MaskConfig {
            grid,
            enc_mask_scale: default_enc_mask_scale(),
            pred_mask_scale: default_pred_mask_scale(),
            aspect_ratio: default_aspect_ratio(),
            nenc: default_nenc(),
            npred: default_npred(),
            min_keep: default_min_keep(),
            allow_overlap: false,
            mode: MaskMode::Official,
        }
    }

    /// Default settings for square images of `image_size` pixels and square
    /// patches of `patch_size` pixels: grid `(image / patch, image / patch)`
    /// (floor, like the official code).
    ///
    /// Only the grid is checked here (so that fields can still be changed, e.g.
    /// `min_keep` for small images); [`MaskConfig::validate`] /
    /// [`MaskSampler::new`] check the rest.
    pub fn from_image(image_size: usize, patch_size: usize) -> Result<Self, MaskError> {
        if patch_size == 0 {
            return Err(MaskError::InvalidArgument(
                "patch_size must be at least 1 pixel".to_string(),
            ));
        }
        if image_size < patch_size {
            return Err(MaskError::InvalidArgument(format!(
                "image_size {image_size} is smaller than patch_size {patch_size}: the patch grid \
                 would be empty; use a larger image or a smaller patch"
            )));
        }
        let g = image_size / patch_size;
        let cfg = Self::with_grid((g, g));
        cfg.check_grid()?;
        Ok(cfg)
    }

    /// Number of patches `H * W` (saturating).
    pub fn num_patches(&self) -> usize {
        self.grid.0.saturating_mul(self.grid.1)
    }

    fn check_grid(&self) -> Result<usize, MaskError> {
        let (h, w) = self.grid;
        if h == 0 || w == 0 {
            return Err(MaskError::InvalidConfig(format!(
                "patch grid {h}x{w} is empty: grid must be (input_h / patch, input_w / patch) with \
                 both at least 1"
            )));
        }
        match h.checked_mul(w) {
            Some(n) if n <= MAX_GRID_PATCHES => Ok(n),
            _ => Err(MaskError::InvalidConfig(format!(
                "patch grid {h}x{w} has more than {MAX_GRID_PATCHES} patches; use a larger patch size"
            ))),
        }
    }

    fn rules(&self) -> (SizeRule, SizeRule) {
        let pred = SizeRule {
            grid: self.grid,
            scale: self.pred_mask_scale,
            aspect: self.aspect_ratio,
            mode: self.mode,
        };
        let enc = SizeRule {
            grid: self.grid,
            scale: self.enc_mask_scale,
            aspect: (1.0, 1.0),
            mode: self.mode,
        };
        (pred, enc)
    }

    /// Checks every setting and that no reachable target or context block has
    /// `<= min_keep` patches (which would make the official sampler loop
    /// forever). Returns an error that says what to change.
    pub fn validate(&self) -> Result<(), MaskError> {
        let n = self.check_grid()?;
        check_range("enc_mask_scale", self.enc_mask_scale, true)?;
        check_range("pred_mask_scale", self.pred_mask_scale, true)?;
        check_range("aspect_ratio", self.aspect_ratio, false)?;
        for (name, v) in [("nenc", self.nenc), ("npred", self.npred)] {
            if v == 0 || v > MAX_BLOCKS_PER_IMAGE {
                return Err(MaskError::InvalidConfig(format!(
                    "{name} = {v}: need between 1 and {MAX_BLOCKS_PER_IMAGE} blocks per image"
                )));
            }
        }
        if self.min_keep >= n {
            return Err(MaskError::InvalidConfig(format!(
                "min_keep = {} but the {}x{} grid has only {n} patches: a block must keep more than \
                 min_keep patches; lower min_keep below {n}",
                self.min_keep, self.grid.0, self.grid.1
            )));
        }
        let (pred, enc) = self.rules();
        for (what, rule, scale_name) in [
            ("target", &pred, "pred_mask_scale"),
            ("context", &enc, "enc_mask_scale"),
        ] {
            if let Some((h, w)) = rule.smallest_block(self.min_keep) {
                let area = h * w;
                let hint = if area == 0 {
                    format!("raise {scale_name} (the block rounds to zero patches)")
                } else {
                    format!("lower min_keep below {area}, or raise {scale_name}")
                };
                return Err(MaskError::InvalidConfig(format!(
                    "{what} blocks can be as small as {h}x{w} = {area} patches ({scale_name} {:?}, \
                     aspect ratio {:?}, {}x{} patch grid, {} mode), which is not more than \
                     min_keep = {}: a block is only accepted with more than min_keep patches, so \
                     sampling would retry forever (official issue #68). Fix: {hint}, or use a \
                     larger image / smaller patch size",
                    rule.scale, rule.aspect, self.grid.0, self.grid.1, self.mode, self.min_keep
                )));
            }
        }
        Ok(())
    }

    /// Every `(h, w)` the size formula of this mode can produce for target
    /// blocks and for context blocks (sorted), by exact enumeration over the
    /// uniform draws. Cost grows with the grid size. Errors if the grid is unusable
    /// or a range is invalid (other settings are not checked).
    #[allow(clippy::type_complexity)]
    pub fn reachable_block_sizes(
        &self,
    ) -> Result<(Vec<(usize, usize)>, Vec<(usize, usize)>), MaskError> {
        self.check_grid()?;
        check_range("enc_mask_scale", self.enc_mask_scale, true)?;
        check_range("pred_mask_scale", self.pred_mask_scale, true)?;
        check_range("aspect_ratio", self.aspect_ratio, false)?;
        let (pred, enc) = self.rules();
        Ok((pred.all_sizes(), enc.all_sizes()))
    }
}

fn check_range(name: &str, (lo, hi): (f64, f64), unit: bool) -> Result<(), MaskError> {
    if !lo.is_finite() || !hi.is_finite() {
        return Err(MaskError::InvalidConfig(format!(
            "{name} ({lo}, {hi}) must be finite numbers"
        )));
    }
    if lo > hi {
        return Err(MaskError::InvalidConfig(format!(
            "{name} ({lo}, {hi}): min is larger than max; swap them"
        )));
    }
    if lo <= 0.0 {
        return Err(MaskError::InvalidConfig(format!(
            "{name} ({lo}, {hi}): values must be greater than 0"
        )));
    }
    if unit && hi > 1.0 {
        return Err(MaskError::InvalidConfig(format!(
            "{name} ({lo}, {hi}): a scale is a fraction of the patch grid and must lie in (0, 1]"
        )));
    }
    if !unit && (hi > 1e6 || lo < 1e-6) {
        return Err(MaskError::InvalidConfig(format!(
            "{name} ({lo}, {hi}): aspect ratios must lie in [1e-6, 1e6]"
        )));
    }
    Ok(())
}

/// Round half to even (Python's `round`) and convert to a non-negative count.
fn round_count(x: f64) -> usize {
    let r = x.round_ties_even();
    if r.is_finite() && r > 0.0 {
        r as usize
    } else {
        0
    }
}

/// The block-size formula of one block kind (target or context).
#[derive(Debug, Clone, Copy, PartialEq)]
struct SizeRule {
    grid: (usize, usize),
    scale: (f64, f64),
    aspect: (f64, f64),
    mode: MaskMode,
}

impl SizeRule {
    /// `max_keep = floor(H * W * scale(r))`.
    fn max_keep(&self, r: f64) -> usize {
        let s = self.scale.0 + r * (self.scale.1 - self.scale.0);
        let v = ((self.grid.0 * self.grid.1) as f64 * s).floor();
        if v.is_finite() && v > 0.0 {
            v as usize
        } else {
            0
        }
    }

    fn aspect_at(&self, r: f64) -> f64 {
        self.aspect.0 + r * (self.aspect.1 - self.aspect.0)
    }

    fn clamp(&self, v: usize, g: usize) -> usize {
        match self.mode {
            // `while h >= H: h -= 1`
            MaskMode::Official => v.min(g.saturating_sub(1)),
            MaskMode::Fixed => v.min(g),
        }
    }

    fn dims(&self, k: usize, ar: f64) -> (usize, usize) {
        let k = k as f64;
        let h = round_count((k * ar).sqrt());
        let w = round_count((k / ar).sqrt());
        (self.clamp(h, self.grid.0), self.clamp(w, self.grid.1))
    }

    /// A lower bound of the block area for every `k' >= k` and aspect ratio in
    /// `[ar0, ar1]`, from `round(y) >= y - 1/2`: with `x = sqrt(ar)`,
    /// `area >= min(Hc, max(0, sqrt(k) x - 1/2)) * min(Wc, max(0, sqrt(k) / x - 1/2))`.
    /// Between its kinks this is zero, constant, monotone or concave in `x`, so
    /// its minimum lies at `x0`, `x1` or a kink. A small margin absorbs rounding.
    fn area_lower_bound(&self, k: usize, ar0: f64, ar1: f64) -> f64 {
        if k == 0 {
            return 0.0;
        }
        let sk = (k as f64).sqrt();
        let hc = self.clamp(usize::MAX, self.grid.0) as f64;
        let wc = self.clamp(usize::MAX, self.grid.1) as f64;
        let f = |x: f64| {
            let a = (sk * x - 0.5).clamp(0.0, hc);
            let b = (sk / x - 0.5).clamp(0.0, wc);
            a * b
        };
        let (x0, x1) = (ar0.sqrt(), ar1.sqrt());
        let kinks = [(hc + 0.5) / sk, 0.5 / sk, sk / (wc + 0.5), sk / 0.5];
        let mut m = f(x0).min(f(x1));
        for x in kinks {
            if x > x0 && x < x1 {
                m = m.min(f(x));
            }
        }
        m * (1.0 - 1e-9) - 1e-6
    }

    /// Block size for the scale uniform `rs` and the aspect uniform `ra`
    /// (equal in official mode).
    fn size(&self, rs: f64, ra: f64) -> (usize, usize) {
        self.dims(self.max_keep(rs), self.aspect_at(ra))
    }

    /// Visits every reachable size, except in regions whose area lower bound
    /// exceeds the threshold (`initial`, then the value returned by the last
    /// visit; `None` stops the scan).
    ///
    /// Exact enumeration: with `k = max_keep` fixed, `h` is nondecreasing and
    /// `w` nonincreasing in the aspect ratio, so an interval whose end points
    /// have equal `k` and equal `h` (or equal `w`) reaches exactly the sizes
    /// between its end points; other intervals are bisected (down to adjacent
    /// floats). Official mode bisects the shared `r` (`k` and the aspect ratio
    /// both nondecreasing in `r`); fixed mode loops over the reachable `k`
    /// (every integer between `k(0)` and `k(r_max)`) and bisects the aspect
    /// uniform for each.
    fn scan(&self, initial: usize, visit: &mut dyn FnMut((usize, usize)) -> Option<usize>) {
        let mut sc = Scan {
            threshold: initial,
            visit,
        };
        match self.mode {
            MaskMode::Official => {
                let mut stack = vec![(0.0f64, R_MAX)];
                while let Some((a, b)) = stack.pop() {
                    let (ka, kb) = (self.max_keep(a), self.max_keep(b));
                    let (ara, arb) = (self.aspect_at(a), self.aspect_at(b));
                    let (sa, sb) = (self.dims(ka, ara), self.dims(kb, arb));
                    // h >= h(a); w >= w(k(a), ar(b)).
                    let w_lo = self.dims(ka, arb).1;
                    if sa.0.saturating_mul(w_lo) > sc.threshold
                        || self.area_lower_bound(ka, ara, arb) > sc.threshold as f64
                    {
                        continue;
                    }
                    if ka == kb && (sa.0 == sb.0 || sa.1 == sb.1) {
                        if sc.segment(sa, sb).is_break() {
                            return;
                        }
                        continue;
                    }
                    let mid = a + (b - a) / 2.0;
                    if mid <= a || mid >= b {
                        if sc.emit(sa).is_break() || sc.emit(sb).is_break() {
                            return;
                        }
                        continue;
                    }
                    stack.push((mid, b));
                    stack.push((a, mid));
                }
            }
            MaskMode::Fixed => {
                let (ar_lo, ar_hi) = (self.aspect_at(0.0), self.aspect_at(R_MAX));
                for k in self.max_keep(0.0)..=self.max_keep(R_MAX) {
                    // The bound also holds for every larger k: stop here.
                    if self.area_lower_bound(k, ar_lo, ar_hi) > sc.threshold as f64 {
                        return;
                    }
                    let mut stack = vec![(0.0f64, R_MAX)];
                    while let Some((a, b)) = stack.pop() {
                        let (ara, arb) = (self.aspect_at(a), self.aspect_at(b));
                        let (da, db) = (self.dims(k, ara), self.dims(k, arb));
                        if da.0.saturating_mul(db.1) > sc.threshold
                            || self.area_lower_bound(k, ara, arb) > sc.threshold as f64
                        {
                            continue;
                        }
                        if da.0 == db.0 || da.1 == db.1 {
                            if sc.segment(da, db).is_break() {
                                return;
                            }
                            continue;
                        }
                        let mid = a + (b - a) / 2.0;
                        if mid <= a || mid >= b {
                            if sc.emit(da).is_break() || sc.emit(db).is_break() {
                                return;
                            }
                            continue;
                        }
                        stack.push((mid, b));
                        stack.push((a, mid));
                    }
                }
            }
        }
    }

    /// Sizes seen by a regular sweep of the uniform draws (backs up `scan`).
    fn sweep(&self, visit: &mut dyn FnMut((usize, usize))) {
        match self.mode {
            MaskMode::Official => {
                for i in 0..=SWEEP_OFFICIAL {
                    let r = (f64::from(i) / f64::from(SWEEP_OFFICIAL)).min(R_MAX);
                    visit(self.size(r, r));
                }
            }
            MaskMode::Fixed => {
                for i in 0..=SWEEP_FIXED {
                    let rs = (f64::from(i) / f64::from(SWEEP_FIXED)).min(R_MAX);
                    for j in 0..=SWEEP_FIXED {
                        let ra = (f64::from(j) / f64::from(SWEEP_FIXED)).min(R_MAX);
                        visit(self.size(rs, ra));
                    }
                }
            }
        }
    }

    /// The smallest-area reachable block with `area <= limit`, if any.
    fn smallest_block(&self, limit: usize) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        let consider = |d: (usize, usize), best: &mut Option<(usize, usize)>| {
            let area = d.0 * d.1;
            if area <= limit && best.is_none_or(|b| area < b.0 * b.1) {
                *best = Some(d);
            }
        };
        self.sweep(&mut |d| consider(d, &mut best));
        let initial = match best {
            Some(b) => match (b.0 * b.1).checked_sub(1) {
                Some(t) => t,
                None => return best,
            },
            None => limit,
        };
        self.scan(initial, &mut |d| {
            consider(d, &mut best);
            match best {
                Some(b) => (b.0 * b.1).checked_sub(1),
                None => Some(limit),
            }
        });
        best
    }

    fn all_sizes(&self) -> Vec<(usize, usize)> {
        let mut set = BTreeSet::new();
        self.scan(usize::MAX, &mut |d| {
            set.insert(d);
            Some(usize::MAX)
        });
        set.into_iter().collect()
    }
}

/// State of one [`SizeRule::scan`]: the visitor and its current threshold.
struct Scan<'a> {
    threshold: usize,
    visit: &'a mut dyn FnMut((usize, usize)) -> Option<usize>,
}

impl Scan<'_> {
    fn emit(&mut self, d: (usize, usize)) -> ControlFlow<()> {
        match (self.visit)(d) {
            Some(t) => {
                self.threshold = t;
                ControlFlow::Continue(())
            }
            None => ControlFlow::Break(()),
        }
    }

    /// Emits every size between `a` and `b`, which share `h` or `w`.
    fn segment(&mut self, a: (usize, usize), b: (usize, usize)) -> ControlFlow<()> {
        if a.0 == b.0 {
            for w in a.1.min(b.1)..=a.1.max(b.1) {
                self.emit((a.0, w))?;
            }
        } else {
            for h in a.0.min(b.0)..=a.0.max(b.0) {
                self.emit((h, a.1))?;
            }
        }
        ControlFlow::Continue(())
    }
}

// ---------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix64_finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// ChaCha8 generator keyed by `parts` (see the module documentation).
fn keyed_rng(parts: &[u64]) -> ChaCha8Rng {
    let mut h = 0u64;
    for &p in parts {
        h = splitmix64_finalize((h ^ p).wrapping_add(GOLDEN_GAMMA));
    }
    let mut key = [0u8; 32];
    let mut state = h;
    for chunk in key.chunks_exact_mut(8) {
        state = state.wrapping_add(GOLDEN_GAMMA);
        chunk.copy_from_slice(&splitmix64_finalize(state).to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Uniform in `[0, 1)` with 53 random bits.
fn unit_f64(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform integer in `[0, n)` (Lemire's method); `n == 0` returns 0.
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    let mut m = u128::from(rng.next_u64()) * u128::from(n);
    if (m as u64) < n {
        let t = n.wrapping_neg() % n;
        while (m as u64) < t {
            m = u128::from(rng.next_u64()) * u128::from(n);
        }
    }
    (m >> 64) as u64
}

fn below_usize(rng: &mut ChaCha8Rng, n: usize) -> usize {
    // n <= MAX_GRID_PATCHES-sized values, the result is < n.
    below(rng, n as u64) as usize
}

/// Uniformly random subset of `k` entries of `list`, in the order of `list`
/// (Knuth's selection sampling).
fn random_sorted_subset(rng: &mut ChaCha8Rng, list: &[usize], k: usize) -> Vec<usize> {
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
struct FullSample {
    masks: BatchMasks,
    enc_full: Vec<Vec<Vec<usize>>>,
    pred_full: Vec<Vec<Vec<usize>>>,
}

/// Stateless multi-block mask sampler: configuration plus base seed.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskSampler {
    cfg: MaskConfig,
    seed: u64,
    pred_rule: SizeRule,
    enc_rule: SizeRule,
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

    /// Block sizes of collator step `step` (a function of `(seed, step)` only).
    pub fn block_sizes(&self, step: u64) -> BlockSizes {
        let mut rng = keyed_rng(&[SIZE_DOMAIN, self.seed, step]);
        let (pred_u, enc_u) = match self.cfg.mode {
            MaskMode::Official => {
                let p = unit_f64(&mut rng);
                let e = unit_f64(&mut rng);
                ((p, p), (e, e))
            }
            MaskMode::Fixed => {
                let ps = unit_f64(&mut rng);
                let pa = unit_f64(&mut rng);
                let es = unit_f64(&mut rng);
                let ea = unit_f64(&mut rng);
                ((ps, pa), (es, ea))
            }
        };
        BlockSizes {
            pred: self.pred_rule.size(pred_u.0, pred_u.1),
            enc: self.enc_rule.size(enc_u.0, enc_u.1),
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

    fn draw_origin(&self, rng: &mut ChaCha8Rng, (h, w): (usize, usize)) -> (usize, usize) {
        let (gh, gw) = self.cfg.grid;
        let extra = match self.cfg.mode {
            MaskMode::Official => 0, // torch.randint(0, H - h): exclusive
            MaskMode::Fixed => 1,    // inclusive
        };
        let top = below_usize(rng, gh.saturating_sub(h) + extra);
        let left = below_usize(rng, gw.saturating_sub(w) + extra);
        (top, left)
    }

    fn sample_impl(
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
        let (ph, pw) = sizes.pred;
        let (eh, ew) = sizes.enc;
        // Run-time guard (validate already excludes these): never loop forever.
        for (what, h, w) in [("target", ph, pw), ("context", eh, ew)] {
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

        let mut rng = keyed_rng(&[POSITION_DOMAIN, self.seed, step, stream]);
        let mut pred: Vec<Vec<Vec<usize>>> = vec![Vec::with_capacity(batch_size); npred];
        let mut enc: Vec<Vec<Vec<usize>>> = vec![Vec::with_capacity(batch_size); nenc];
        let mut pred_origins = vec![Vec::with_capacity(batch_size); npred];
        let mut enc_origins = vec![Vec::with_capacity(batch_size); nenc];
        let mut context_lengths = vec![Vec::with_capacity(batch_size); nenc];
        let mut context_target_overlap = vec![Vec::with_capacity(batch_size); nenc];
        let mut target_union = Vec::with_capacity(batch_size);
        let mut relaxations = 0usize;
        let mut position_draws = 0usize;
        // first_cover[i] = index of the first target block covering patch i.
        let mut first_cover = vec![usize::MAX; gh * gw];
        let constrained = if cfg.allow_overlap { 0 } else { npred };

        for _ in 0..batch_size {
            first_cover.fill(usize::MAX);
            for (j, (lists, origins)) in pred.iter_mut().zip(pred_origins.iter_mut()).enumerate() {
                // Unconstrained and h*w > min_keep: accepted on the first draw.
                let (top, left) = self.draw_origin(&mut rng, (ph, pw));
                position_draws += 1;
                let mut idx = Vec::with_capacity(ph * pw);
                for r in top..top + ph {
                    for c in left..left + pw {
                        let i = r * gw + c;
                        if first_cover[i] == usize::MAX {
                            first_cover[i] = j;
                        }
                        idx.push(i);
                    }
                }
                lists.push(idx);
                origins.push((top, left));
            }
            target_union.push(first_cover.iter().filter(|&&v| v != usize::MAX).count());

            for e in 0..nenc {
                let mut tries = 0usize;
                let mut timeout = RELAXATION_TIMEOUT;
                let (idx, origin) = loop {
                    // Complements of the first max(npred - tries, 0) targets apply.
                    let active = constrained.saturating_sub(tries);
                    let (top, left) = self.draw_origin(&mut rng, (eh, ew));
                    position_draws += 1;
                    let mut idx = Vec::with_capacity(eh * ew);
                    for r in top..top + eh {
                        for c in left..left + ew {
                            let i = r * gw + c;
                            if first_cover[i] >= active {
                                idx.push(i);
                            }
                        }
                    }
                    if idx.len() > min_keep {
                        break (idx, (top, left));
                    }
                    if active == 0 {
                        // Cannot happen after the guard above; never retry forever.
                        return Err(MaskError::Unsatisfiable {
                            what: "context",
                            h: eh,
                            w: ew,
                            area: eh * ew,
                            min_keep,
                        });
                    }
                    timeout -= 1;
                    if timeout == 0 {
                        tries += 1;
                        timeout = RELAXATION_TIMEOUT;
                        relaxations += 1;
                    }
                };
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
            relaxations,
            position_draws,
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

// ---------------------------------------------------------------------------
// Statistics (same layout as shared/reference/masks/*.json)
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Hist {
    Integer,
    Percent,
    Without,
}

fn summary(per: &str, values: &[f64], hist: Hist) -> Value {
    let n = values.len();
    let nf = n.max(1) as f64;
    let mean = values.iter().sum::<f64>() / nf;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / nf;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (min, max) = if n == 0 { (0.0, 0.0) } else { (min, max) };
    let mut m = Map::new();
    m.insert("per".into(), json!(per));
    m.insert("n".into(), json!(n));
    m.insert("mean".into(), json!(mean));
    m.insert("std".into(), json!(var.sqrt()));
    m.insert("min".into(), json!(min));
    m.insert("max".into(), json!(max));
    if hist != Hist::Without {
        let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
        for &v in values {
            let key = match hist {
                Hist::Percent => (v * 100.0).round_ties_even(),
                _ => v.round_ties_even(),
            };
            *counts.entry(key as i64).or_insert(0) += 1;
        }
        let h: Map<String, Value> = counts
            .into_iter()
            .map(|(k, c)| (k.to_string(), json!(c)))
            .collect();
        m.insert("hist".into(), Value::Object(h));
        if hist == Hist::Percent {
            m.insert("hist_unit".into(), json!("percent (rounded)"));
        }
    }
    Value::Object(m)
}

fn coverage_map(counts: &[u64], images: u64, (gh, gw): (usize, usize)) -> Value {
    let denom = images.max(1) as f64;
    let rows: Vec<Value> = (0..gh)
        .map(|r| {
            let row: Vec<f64> = (0..gw)
                .map(|c| (counts[r * gw + c] as f64 / denom * 1e4).round() / 1e4)
                .collect();
            json!(row)
        })
        .collect();
    Value::Array(rows)
}

/// Statistics of `batches` batches of `batch_size` images (steps `0..batches`,
/// stream 0), as JSON with the same keys and layout as
/// `shared/reference/masks/*.json`: `config`, `seconds`,
/// `target_block_height|width|area`, `context_block_height|width`,
/// `context_patches_kept`, `target_union_patches`, `K_enc`, `K_pred`,
/// `target_context_overlap_fraction` (+ `_truncated`), `images_with_overlap`,
/// `relaxation_warnings`, `coverage_*` and `block_sizes_first_100_steps`.
/// Numeric entries carry `n`, `mean`, `std` (population), `min`, `max` and an
/// integer `hist`.
///
/// With `nenc > 1`, per-image context entries have one value per context
/// block, and the context coverage maps use the union of an image's contexts.
pub fn mask_stats(
    cfg: &MaskConfig,
    seed: u64,
    batch_size: usize,
    batches: usize,
) -> Result<Value, MaskError> {
    if batches == 0 {
        return Err(MaskError::InvalidArgument(
            "batches must be at least 1".to_string(),
        ));
    }
    let start = Instant::now();
    let sampler = MaskSampler::new(cfg.clone(), seed)?;
    let (gh, gw) = cfg.grid;
    let n = gh * gw;

    let mut tbh = Vec::new();
    let mut tbw = Vec::new();
    let mut tba = Vec::new();
    let mut cbh = Vec::new();
    let mut cbw = Vec::new();
    let mut kept = Vec::new();
    let mut union = Vec::new();
    let mut k_enc = Vec::new();
    let mut k_pred = Vec::new();
    let mut ovl = Vec::new();
    let mut ovl_t = Vec::new();
    let mut images_with_overlap = 0u64;
    let mut relaxations = 0usize;
    let mut images = 0u64;
    let mut first_steps = Vec::new();
    let (mut cov_c, mut cov_ct, mut cov_t, mut cov_tt) =
        (vec![0u64; n], vec![0u64; n], vec![0u64; n], vec![0u64; n]);
    let (mut in_c, mut in_ct, mut in_t, mut in_tt) = (
        vec![false; n],
        vec![false; n],
        vec![false; n],
        vec![false; n],
    );

    for step in 0..batches as u64 {
        let full = sampler.sample_impl(step, 0, batch_size, true)?;
        let d = &full.masks.diag;
        let (ph, pw) = d.pred_size;
        let (eh, ew) = d.enc_size;
        tbh.push(ph as f64);
        tbw.push(pw as f64);
        tba.push((ph * pw) as f64);
        cbh.push(eh as f64);
        cbw.push(ew as f64);
        k_enc.push(d.k_enc as f64);
        k_pred.push(d.k_pred as f64);
        relaxations += d.relaxations;
        if step < 100 {
            let mut e = Map::new();
            e.insert("step".into(), json!(step));
            e.insert("u_pred".into(), json!(d.sizes.pred_u.0));
            e.insert("u_enc".into(), json!(d.sizes.enc_u.0));
            if cfg.mode == MaskMode::Fixed {
                e.insert("u_pred_aspect".into(), json!(d.sizes.pred_u.1));
                e.insert("u_enc_aspect".into(), json!(d.sizes.enc_u.1));
            }
            e.insert("pred_hw".into(), json!([ph, pw]));
            e.insert("enc_hw".into(), json!([eh, ew]));
            first_steps.push(Value::Object(e));
        }
        for b in 0..batch_size {
            images += 1;
            for v in [&mut in_c, &mut in_ct, &mut in_t, &mut in_tt] {
                v.fill(false);
            }
            for p in 0..cfg.npred {
                for &i in &full.pred_full[p][b] {
                    in_t[i] = true;
                }
                for &i in &full.masks.pred[p][b] {
                    in_tt[i] = true;
                }
            }
            let u = in_t.iter().filter(|&&x| x).count();
            let ut = in_tt.iter().filter(|&&x| x).count();
            union.push(u as f64);
            let mut any_overlap = false;
            for e in 0..cfg.nenc {
                let ctx = &full.enc_full[e][b];
                let ctx_t = &full.masks.enc[e][b];
                kept.push(ctx.len() as f64);
                let o = ctx.iter().filter(|&&i| in_t[i]).count();
                let ot = ctx_t.iter().filter(|&&i| in_tt[i]).count();
                any_overlap |= o > 0;
                ovl.push(o as f64 / u.max(1) as f64);
                ovl_t.push(ot as f64 / ut.max(1) as f64);
                for &i in ctx {
                    in_c[i] = true;
                }
                for &i in ctx_t {
                    in_ct[i] = true;
                }
            }
            images_with_overlap += u64::from(any_overlap);
            for (cov, mark) in [
                (&mut cov_c, &in_c),
                (&mut cov_ct, &in_ct),
                (&mut cov_t, &in_t),
                (&mut cov_tt, &in_tt),
            ] {
                for (c, &m) in cov.iter_mut().zip(mark.iter()) {
                    *c += u64::from(m);
                }
            }
        }
    }

    let name = format!(
        "grid{gh}x{gw}_minkeep{}_{}",
        cfg.min_keep,
        cfg.mode.as_str()
    );
    let mut out = Map::new();
    out.insert(
        "config".into(),
        json!({
            "name": name,
            "grid": [gh, gw],
            "batch_size": batch_size,
            "n_batches": batches,
            "seed": seed,
            "collator_seeds": format!(
                "0..{} (one per batch, the sampler's step argument; stream 0)",
                batches - 1
            ),
            "enc_mask_scale": [cfg.enc_mask_scale.0, cfg.enc_mask_scale.1],
            "pred_mask_scale": [cfg.pred_mask_scale.0, cfg.pred_mask_scale.1],
            "aspect_ratio": [cfg.aspect_ratio.0, cfg.aspect_ratio.1],
            "nenc": cfg.nenc,
            "npred": cfg.npred,
            "min_keep": cfg.min_keep,
            "allow_overlap": cfg.allow_overlap,
            "mode": cfg.mode.as_str(),
        }),
    );
    out.insert(
        "seconds".into(),
        json!((start.elapsed().as_secs_f64() * 10.0).round() / 10.0),
    );
    let per_batch_shared = "batch (one size per batch, shared by all its images and target blocks)";
    out.insert(
        "target_block_height".into(),
        summary(per_batch_shared, &tbh, Hist::Integer),
    );
    out.insert(
        "target_block_width".into(),
        summary("batch", &tbw, Hist::Integer),
    );
    out.insert(
        "target_block_area".into(),
        summary("batch", &tba, Hist::Integer),
    );
    out.insert(
        "context_block_height".into(),
        summary("batch", &cbh, Hist::Integer),
    );
    out.insert(
        "context_block_width".into(),
        summary("batch", &cbw, Hist::Integer),
    );
    out.insert(
        "context_patches_kept".into(),
        summary(
            "image; context block minus target overlap, before the batch truncation",
            &kept,
            Hist::Integer,
        ),
    );
    out.insert(
        "target_union_patches".into(),
        summary(
            "image; union of the npred target blocks, before truncation",
            &union,
            Hist::Integer,
        ),
    );
    out.insert(
        "K_enc".into(),
        summary(
            "batch; masks_enc length after truncation to the batch minimum",
            &k_enc,
            Hist::Integer,
        ),
    );
    out.insert(
        "K_pred".into(),
        summary(
            "batch; masks_pred length after truncation (= block area, as target blocks are never \
             constrained)",
            &k_pred,
            Hist::Integer,
        ),
    );
    out.insert(
        "target_context_overlap_fraction".into(),
        summary(
            "image; |union(targets) & context| / |union(targets)|, untruncated masks",
            &ovl,
            Hist::Percent,
        ),
    );
    out.insert(
        "target_context_overlap_fraction_truncated".into(),
        summary(
            "image; same with the truncated (collated) masks",
            &ovl_t,
            Hist::Without,
        ),
    );
    out.insert("images_with_overlap".into(), json!(images_with_overlap));
    out.insert(
        "relaxation_warnings".into(),
        json!({
            "count": relaxations,
            "note": "'Valid mask not found, decreasing acceptable-regions' log lines; after 20 \
                     failed tries the context is constrained by one target block fewer, so context \
                     and targets may overlap",
        }),
    );
    out.insert(
        "coverage_context".into(),
        json!({
            "note": "fraction of images whose (untruncated) context contains patch [r][c]",
            "map": coverage_map(&cov_c, images, cfg.grid),
        }),
    );
    out.insert(
        "coverage_context_truncated".into(),
        json!({ "map": coverage_map(&cov_ct, images, cfg.grid) }),
    );
    out.insert(
        "coverage_targets".into(),
        json!({
            "note": "fraction of images whose (untruncated) target union contains patch [r][c]",
            "map": coverage_map(&cov_t, images, cfg.grid),
        }),
    );
    out.insert(
        "coverage_targets_truncated".into(),
        json!({ "map": coverage_map(&cov_tt, images, cfg.grid) }),
    );
    out.insert(
        "block_sizes_first_100_steps".into(),
        Value::Array(first_steps),
    );
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------------------
// PNG rendering
// ---------------------------------------------------------------------------

/// Layout of [`render_png`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOptions {
    /// Side of one patch square in pixels (1 to 64; default 8).
    pub patch_px: u32,
    /// Image cells per row of the picture (default 8).
    pub columns: usize,
    /// At most this many images are drawn (default 64).
    pub max_images: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            patch_px: 8,
            columns: 8,
            max_images: 64,
        }
    }
}

/// Colour of unused patches.
pub const COLOR_UNUSED: [u8; 3] = [200, 200, 200];
/// Colour of context patches.
pub const COLOR_CONTEXT: [u8; 3] = [31, 119, 180];
/// Colours of target blocks `0, 1, 2, ...` (cycled).
pub const COLOR_TARGETS: [[u8; 3]; 8] = [
    [214, 39, 40],
    [255, 127, 14],
    [44, 160, 44],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [188, 189, 34],
    [23, 190, 207],
];
const COLOR_LINE: [u8; 3] = [90, 90, 90];
const COLOR_BACKGROUND: [u8; 3] = [255, 255, 255];
const CELL_GAP: u64 = 4;
const MAX_RENDER_PIXELS: u64 = 1 << 26;

/// Draws the (truncated) masks of `batches` as a PNG: one cell per image
/// (images of all batches in order, at most `opts.max_images`), one square per
/// patch. Context patches are [`COLOR_CONTEXT`], target block `j` is
/// `COLOR_TARGETS[j % 8]` (a later block is drawn over an earlier one), unused
/// patches are [`COLOR_UNUSED`]; a patch in both a target and the context
/// shows the target colour with a context-coloured inner square. Patches are
/// separated by thin dark lines and cells by white gaps.
///
/// Errors (with the path) if writing fails, and before writing if an index
/// does not fit `cfg.grid` or the picture would be empty or too large.
pub fn render_png(
    cfg: &MaskConfig,
    batches: &[BatchMasks],
    path: impl AsRef<Path>,
    opts: &RenderOptions,
) -> Result<(), MaskError> {
    let path = path.as_ref();
    let n = cfg.check_grid()?;
    let (gh, gw) = cfg.grid;
    if !(1..=64).contains(&opts.patch_px) || opts.columns == 0 {
        return Err(MaskError::InvalidArgument(format!(
            "render options {opts:?}: patch_px must be 1..=64 and columns at least 1"
        )));
    }
    // Collect per-image labels: context flag and last target index.
    let mut cells: Vec<(Vec<bool>, Vec<Option<usize>>)> = Vec::new();
    'outer: for bm in batches {
        for b in 0..bm.batch_size() {
            if cells.len() >= opts.max_images {
                break 'outer;
            }
            let mut ctx = vec![false; n];
            let mut tgt: Vec<Option<usize>> = vec![None; n];
            for lists in &bm.enc {
                for &i in lists.get(b).into_iter().flatten() {
                    *ctx.get_mut(i).ok_or_else(|| bad_index(i, cfg))? = true;
                }
            }
            for (j, lists) in bm.pred.iter().enumerate() {
                for &i in lists.get(b).into_iter().flatten() {
                    *tgt.get_mut(i).ok_or_else(|| bad_index(i, cfg))? = Some(j);
                }
            }
            cells.push((ctx, tgt));
        }
    }
    if cells.is_empty() {
        return Err(MaskError::InvalidArgument(format!(
            "nothing to draw into {}: no images in the given batches (or max_images is 0)",
            path.display()
        )));
    }
    let px = u64::from(opts.patch_px);
    let pitch = px + 1;
    let cell_w = gw as u64 * pitch + 1;
    let cell_h = gh as u64 * pitch + 1;
    let cols = opts.columns.min(cells.len()) as u64;
    let rows = (cells.len() as u64).div_ceil(cols);
    let width = cols * cell_w + (cols + 1) * CELL_GAP;
    let height = rows * cell_h + (rows + 1) * CELL_GAP;
    if width.saturating_mul(height) > MAX_RENDER_PIXELS {
        return Err(MaskError::InvalidArgument(format!(
            "picture for {} would be {width}x{height} pixels; lower patch_px or max_images",
            path.display()
        )));
    }
    let (width, height) = (width as u32, height as u32);
    let mut img = image::RgbImage::from_pixel(width, height, image::Rgb(COLOR_BACKGROUND));
    let mut fill = |x0: u64, y0: u64, w: u64, h: u64, c: [u8; 3]| {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                img.put_pixel(x as u32, y as u32, image::Rgb(c));
            }
        }
    };
    for (k, (ctx, tgt)) in cells.iter().enumerate() {
        let cx = CELL_GAP + (k as u64 % cols) * (cell_w + CELL_GAP);
        let cy = CELL_GAP + (k as u64 / cols) * (cell_h + CELL_GAP);
        fill(cx, cy, cell_w, cell_h, COLOR_LINE);
        for r in 0..gh {
            for c in 0..gw {
                let i = r * gw + c;
                let x = cx + 1 + c as u64 * pitch;
                let y = cy + 1 + r as u64 * pitch;
                let base = match (tgt[i], ctx[i]) {
                    (Some(j), _) => COLOR_TARGETS[j % COLOR_TARGETS.len()],
                    (None, true) => COLOR_CONTEXT,
                    (None, false) => COLOR_UNUSED,
                };
                fill(x, y, px, px, base);
                if tgt[i].is_some() && ctx[i] {
                    let inset = px / 4;
                    let side = px - 2 * inset;
                    if side > 0 && inset > 0 {
                        fill(x + inset, y + inset, side, side, COLOR_CONTEXT);
                    }
                }
            }
        }
    }
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| MaskError::Png {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
}

fn bad_index(i: usize, cfg: &MaskConfig) -> MaskError {
    MaskError::InvalidArgument(format!(
        "patch index {i} does not fit the {}x{} grid of the config; render with the config that \
         produced the masks",
        cfg.grid.0, cfg.grid.1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn official(grid: usize, min_keep: usize) -> MaskConfig {
        MaskConfig {
            min_keep,
            ..MaskConfig::with_grid((grid, grid))
        }
    }

    fn fixed(grid: usize, min_keep: usize) -> MaskConfig {
        MaskConfig {
            mode: MaskMode::Fixed,
            ..official(grid, min_keep)
        }
    }

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
    fn mode_serde_and_from_str() {
        assert_eq!("official".parse::<MaskMode>().unwrap(), MaskMode::Official);
        assert_eq!(" Fixed ".parse::<MaskMode>().unwrap(), MaskMode::Fixed);
        let err = "bogus".parse::<MaskMode>().unwrap_err();
        assert!(err.to_string().contains("official"));
        assert_eq!(
            serde_json::to_string(&MaskMode::Fixed).unwrap(),
            "\"fixed\""
        );
        let m: MaskMode = serde_json::from_str("\"official\"").unwrap();
        assert_eq!(m, MaskMode::Official);
        assert_eq!(MaskMode::Fixed.to_string(), "fixed");
    }

    #[test]
    fn config_serde_defaults_and_roundtrip() {
        let c: MaskConfig = serde_json::from_str(r#"{"grid":[14,14]}"#).unwrap();
        assert_eq!(c, MaskConfig::with_grid((14, 14)));
        assert_eq!(c.enc_mask_scale, (0.85, 1.0));
        assert_eq!(c.pred_mask_scale, (0.15, 0.2));
        assert_eq!(c.aspect_ratio, (0.75, 1.5));
        assert_eq!((c.nenc, c.npred, c.min_keep), (1, 4, 10));
        assert!(!c.allow_overlap);
        assert_eq!(c.mode, MaskMode::Official);
        let f = MaskConfig {
            mode: MaskMode::Fixed,
            ..c.clone()
        };
        let s = serde_json::to_string(&f).unwrap();
        assert!(s.contains("\"mode\":\"fixed\""));
        assert_eq!(serde_json::from_str::<MaskConfig>(&s).unwrap(), f);
        assert!(serde_json::from_str::<MaskConfig>(r#"{"grid":[14,14],"min_kep":3}"#).is_err());
        assert!(serde_json::from_str::<MaskConfig>(r#"{"min_keep":3}"#).is_err());
    }

    #[test]
    fn from_image_grid() {
        assert_eq!(MaskConfig::from_image(224, 16).unwrap().grid, (14, 14));
        assert_eq!(MaskConfig::from_image(224, 14).unwrap().grid, (16, 16));
        assert_eq!(MaskConfig::from_image(448, 16).unwrap().grid, (28, 28));
        assert_eq!(MaskConfig::from_image(230, 16).unwrap().grid, (14, 14));
        assert!(MaskConfig::from_image(224, 0).is_err());
        assert!(MaskConfig::from_image(8, 16).is_err());
        assert!(MaskConfig::from_image(usize::MAX, 1).is_err());
    }

    #[test]
    fn round_half_even_like_python() {
        assert_eq!(round_count(2.5), 2);
        assert_eq!(round_count(3.5), 4);
        assert_eq!(round_count(4.4999), 4);
        assert_eq!(round_count(0.5), 0);
        assert_eq!(round_count(-1.0), 0);
        assert_eq!(round_count(f64::NAN), 0);
    }

    #[test]
    fn official_size_formula_anchors() {
        // Spec 1.4: 16x16 targets from 5x7 (r=0) to 9x6 (r->1); 14x14: 5x6 .. 8x5.
        let (p16, _) = official(16, 10).rules();
        assert_eq!(p16.size(0.0, 0.0), (5, 7));
        assert_eq!(p16.size(R_MAX, R_MAX), (9, 6));
        let (p14, _) = official(14, 10).rules();
        assert_eq!(p14.size(0.0, 0.0), (5, 6));
        assert_eq!(p14.size(R_MAX, R_MAX), (8, 5));
        // Reference JSON, step 0 of the 14x14 file: u_pred 0.49626 -> 6x6, u=0.75763 -> 7x5.
        assert_eq!(p14.size(0.49625658988952637, 0.49625658988952637), (6, 6));
        assert_eq!(p14.size(0.7576315999031067, 0.7576315999031067), (7, 5));
        let (p8, _) = official(8, 4).rules();
        assert_eq!(p8.size(0.49625658988952637, 0.49625658988952637), (4, 3));
        // Context: always (H-1)x(W-1) on these grids.
        let (_, ctx) = official(16, 10).reachable_block_sizes().unwrap();
        assert_eq!(ctx, vec![(15, 15)]);
        let (t14, ctx) = official(14, 10).reachable_block_sizes().unwrap();
        assert_eq!(ctx, vec![(13, 13)]);
        let mut hs: Vec<usize> = t14.iter().map(|d| d.0).collect();
        hs.sort();
        assert_eq!((hs[0], hs[hs.len() - 1]), (5, 8));
        assert!(t14.iter().all(|d| d.1 == 5 || d.1 == 6));
    }

    #[test]
    fn enumeration_agrees_with_dense_sweep() {
        let configs = [
            official(14, 10),
            official(16, 10),
            official(8, 4),
            fixed(14, 10),
            fixed(8, 4),
            MaskConfig {
                aspect_ratio: (0.3, 3.0),
                pred_mask_scale: (0.2, 0.8),
                enc_mask_scale: (0.2, 0.8),
                ..fixed(10, 1)
            },
            MaskConfig {
                aspect_ratio: (0.3, 3.0),
                pred_mask_scale: (0.05, 0.8),
                ..official(28, 4)
            },
            MaskConfig {
                aspect_ratio: (0.01, 100.0),
                pred_mask_scale: (0.05, 0.9),
                ..fixed(12, 4)
            },
            MaskConfig {
                grid: (2, 40),
                aspect_ratio: (0.1, 10.0),
                ..fixed(2, 3)
            },
            MaskConfig {
                grid: (3, 30),
                aspect_ratio: (0.1, 10.0),
                ..official(3, 3)
            },
        ];
        for cfg in configs {
            let (pred, enc) = cfg.rules();
            for rule in [pred, enc] {
                let exact: BTreeSet<_> = rule.all_sizes().into_iter().collect();
                let mut swept = BTreeSet::new();
                let steps = 20_000u32;
                for i in 0..steps {
                    let r = f64::from(i) / f64::from(steps);
                    match cfg.mode {
                        MaskMode::Official => {
                            swept.insert(rule.size(r, r));
                        }
                        MaskMode::Fixed => {
                            if i % 50 == 0 {
                                for j in 0..400u32 {
                                    swept.insert(rule.size(r, f64::from(j) / 400.0));
                                }
                            }
                        }
                    }
                }
                assert!(swept.is_subset(&exact), "{cfg:?}: {swept:?} vs {exact:?}");
                let min_exact = exact.iter().map(|d| d.0 * d.1).min();
                let min_swept = swept.iter().map(|d| d.0 * d.1).min();
                assert_eq!(min_exact, min_swept, "{cfg:?}");
                let limit = usize::MAX;
                let smallest = rule.smallest_block(limit).map(|d| d.0 * d.1);
                assert_eq!(smallest, min_exact);
            }
        }
    }

    #[test]
    fn area_lower_bound_is_a_lower_bound() {
        let mut rng = keyed_rng(&[7]);
        for (grid, mode) in [
            ((14, 14), MaskMode::Official),
            ((14, 14), MaskMode::Fixed),
            ((2, 40), MaskMode::Fixed),
            ((40, 3), MaskMode::Official),
            ((64, 64), MaskMode::Fixed),
        ] {
            let rule = SizeRule {
                grid,
                scale: (0.01, 1.0),
                aspect: (0.01, 100.0),
                mode,
            };
            for _ in 0..300 {
                let k = below_usize(&mut rng, grid.0 * grid.1 + 1);
                let a = 0.01 + unit_f64(&mut rng) * 20.0;
                let b = a + unit_f64(&mut rng) * 20.0;
                let bound = rule.area_lower_bound(k, a, b);
                for i in 0..=2000 {
                    let ar = a + (b - a) * f64::from(i) / 2000.0;
                    for kk in [k, k + 1, k + 7] {
                        let (h, w) = rule.dims(kk, ar);
                        assert!((h * w) as f64 >= bound, "{grid:?} k={kk} ar={ar} {bound}");
                    }
                }
            }
        }
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
    fn rejects_unsatisfiable_settings() {
        let err = MaskSampler::new(official(4, 4), 0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("min_keep"), "{msg}");
        assert!(msg.contains("issue #68"), "{msg}");
        // Issue #68: crop 32 with patch 14 (ViT-S/14 config) and the default min_keep 10.
        let t = Instant::now();
        let cfg = MaskConfig::from_image(32, 14).unwrap();
        assert!(MaskSampler::new(cfg, 0).is_err());
        // 32 px, patch 4, min_keep 10: 3x3 targets exist and would hang.
        let cfg = MaskConfig::from_image(32, 4).unwrap();
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("3x3 = 9"), "{msg}");
        assert!(
            MaskConfig {
                mode: MaskMode::Fixed,
                ..cfg
            }
            .validate()
            .is_err()
        );
        assert!(t.elapsed().as_secs_f64() < 2.0);
        // Grid 1x1 (official clamp makes 0x0 blocks).
        assert!(
            MaskConfig {
                min_keep: 0,
                ..MaskConfig::with_grid((1, 1))
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn rejects_bad_fields() {
        let base = official(14, 10);
        let bad = [
            MaskConfig {
                grid: (0, 14),
                ..base.clone()
            },
            MaskConfig {
                grid: (usize::MAX, 2),
                ..base.clone()
            },
            MaskConfig {
                enc_mask_scale: (0.0, 1.0),
                ..base.clone()
            },
            MaskConfig {
                enc_mask_scale: (0.9, 1.1),
                ..base.clone()
            },
            MaskConfig {
                pred_mask_scale: (0.3, 0.2),
                ..base.clone()
            },
            MaskConfig {
                pred_mask_scale: (f64::NAN, 0.2),
                ..base.clone()
            },
            MaskConfig {
                aspect_ratio: (0.0, 1.5),
                ..base.clone()
            },
            MaskConfig {
                aspect_ratio: (-1.0, 1.5),
                ..base.clone()
            },
            MaskConfig {
                aspect_ratio: (1.0, f64::INFINITY),
                ..base.clone()
            },
            MaskConfig {
                nenc: 0,
                ..base.clone()
            },
            MaskConfig {
                npred: 0,
                ..base.clone()
            },
            MaskConfig {
                npred: MAX_BLOCKS_PER_IMAGE + 1,
                ..base.clone()
            },
            MaskConfig {
                min_keep: 196,
                ..base.clone()
            },
            MaskConfig {
                min_keep: 30,
                ..base.clone()
            },
        ];
        for cfg in bad {
            let err = cfg.validate().unwrap_err();
            assert!(matches!(err, MaskError::InvalidConfig(_)), "{cfg:?}");
        }
        assert!(base.validate().is_ok());
        // Degenerate but valid ranges.
        let point = MaskConfig {
            pred_mask_scale: (0.2, 0.2),
            aspect_ratio: (1.0, 1.0),
            ..base.clone()
        };
        assert!(point.validate().is_ok());
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
        let st = mask_stats(&cfg, 2, 4, 10).unwrap();
        assert_eq!(st["context_patches_kept"]["n"], json!(80));
    }

    #[test]
    fn subset_sampling_is_sorted_and_uniformish() {
        let mut rng = keyed_rng(&[1, 2, 3]);
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

    #[test]
    fn stats_layout() {
        let cfg = official(8, 4);
        let st = mask_stats(&cfg, 0, 8, 50).unwrap();
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
        let v = summary("x", &[1.0, 2.0, 3.0, 4.0], Hist::Integer);
        assert_eq!(v["mean"], json!(2.5));
        assert!((v["std"].as_f64().unwrap() - 1.118_033_988_749_895).abs() < 1e-12);
        assert_eq!(v["hist"]["3"], json!(1));
        assert_eq!(v["min"], json!(1.0));
    }

    #[test]
    fn png_render() {
        let dir = std::env::temp_dir().join(format!("ijepa-masks-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = official(14, 10);
        let s = MaskSampler::new(cfg.clone(), 0).unwrap();
        let batches = [s.sample(0, 0, 6).unwrap(), s.sample(1, 0, 6).unwrap()];
        let path = dir.join("masks.png");
        let opts = RenderOptions {
            patch_px: 6,
            columns: 4,
            max_images: 10,
        };
        render_png(&cfg, &batches, &path, &opts).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let cell = 14 * 7 + 1;
        assert_eq!(img.width(), 4 * cell + 5 * 4);
        assert_eq!(img.height(), 3 * cell + 4 * 4);
        // Top-left patch of image 0 is context or target; the last row is unused.
        let last = img.get_pixel(4 + 1 + 13 * 7 + 2, 4 + 1 + 13 * 7 + 2).0;
        assert_eq!(last, COLOR_UNUSED);
        let err = render_png(&cfg, &batches, dir.join("missing/dir/x.png"), &opts).unwrap_err();
        assert!(err.to_string().contains("missing/dir/x.png"), "{err}");
        let err = render_png(&official(8, 4), &batches, dir.join("y.png"), &opts).unwrap_err();
        assert!(matches!(err, MaskError::InvalidArgument(_)));
        assert!(render_png(&cfg, &[], dir.join("z.png"), &opts).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
