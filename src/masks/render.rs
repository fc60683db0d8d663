//! A picture of sampled masks: one cell per image, one square per patch, the context in blue
//! and each target block in its own colour.

use std::path::Path;
use std::sync::Arc;

use super::{BatchMasks, MaskConfig, MaskError};

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
            error: Arc::new(e),
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
    use super::super::MaskSampler;
    use super::super::testutil::official;
    use super::*;

    #[test]
    fn png_render() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
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
    }
}
