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
//! * sizes of step `s`: a ChaCha8 generator keyed by `(seed, s)` only, so every
//!   rank / micro-batch (stream) of one step shares the block sizes, like the
//!   official per-step generator. Draw order: official mode `r_pred`, `r_enc`;
//!   fixed mode `r_pred_scale`, `r_pred_aspect`, `r_enc_scale`, `r_enc_aspect`.
//! * positions: a ChaCha8 generator keyed by `(seed, s, stream)`, consumed image
//!   by image (`npred` targets, then `nenc` contexts; `top` before `left`),
//!   then, in fixed mode only, by the truncation (context lists `[e][b]`, then
//!   target lists `[p][b]`).
//!
//! Key derivation ([`crate::rng::keyed`], [`crate::rng::Expansion::Generator`]): the
//! parts `[domain, seed, step]` (sizes, domain [`SIZE_DOMAIN`]) or
//! `[domain, seed, step, stream]` (positions, domain [`POSITION_DOMAIN`]). Uniform floats are
//! [`crate::rng::unit_f64`]; uniform integers below `n` are [`crate::rng::below`], except that
//! a one-value range draws nothing here. A batch is a pure function of
//! `(seed, step, stream, batch_size, config)`.
//!
//! # Layout
//!
//! [`config`] (settings, defaults, validation), [`block_size`] (the size formula,
//! `sample_block_size`, and the exact enumeration behind validation), [`sampler`] (positions,
//! `sample_block_mask`, truncation), [`stats`] (statistics in the reference layout) and
//! [`render`] (a picture of the masks). The random streams come from [`crate::rng`].

pub mod block_size;
pub mod config;
pub mod render;
pub mod sampler;
pub mod stats;

use std::path::PathBuf;

use thiserror::Error;

pub use config::{MaskConfig, MaskMode};
pub use render::{COLOR_CONTEXT, COLOR_TARGETS, COLOR_UNUSED, RenderOptions, render_png};
pub use sampler::{BatchMasks, BlockSizes, MaskDiagnostics, MaskSampler};
pub use stats::{MaskStats, Summary, mask_stats};

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

/// Errors of the mask sampler. Messages say what is wrong and what to change.
#[derive(Debug, Clone, Error)]
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
    #[error("cannot write PNG {}: {error}", path.display())]
    Png {
        /// The path that was being written.
        path: PathBuf,
        /// What the encoder or the file system said.
        error: std::sync::Arc<image::ImageError>,
    },
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub fn official(grid: usize, min_keep: usize) -> MaskConfig {
        MaskConfig {
            min_keep,
            ..MaskConfig::with_grid((grid, grid))
        }
    }

    pub fn fixed(grid: usize, min_keep: usize) -> MaskConfig {
        MaskConfig {
            mode: MaskMode::Fixed,
            ..official(grid, min_keep)
        }
    }
}
