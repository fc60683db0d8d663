//! Mask settings: the official collator's parameters with the official config files'
//! defaults (the one place they are written), the sampling mode, and the validation that
//! refuses settings under which the sampler could never finish (official issue #68).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::block_size::SizeRule;
use super::{MAX_BLOCKS_PER_IMAGE, MAX_GRID_PATCHES, MaskError};

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

// The defaults of the official config files (`configs/in1k_vith14_ep300.yaml`), not the Python
// constructor's. Public so that the training configuration's `mask` section uses these too.

/// Context block scale range.
pub fn default_enc_mask_scale() -> (f64, f64) {
    (0.85, 1.0)
}
/// Target block scale range.
pub fn default_pred_mask_scale() -> (f64, f64) {
    (0.15, 0.2)
}
/// Target aspect-ratio range.
pub fn default_aspect_ratio() -> (f64, f64) {
    (0.75, 1.5)
}
/// Context blocks per image.
pub fn default_nenc() -> usize {
    1
}
/// Target blocks per image.
pub fn default_npred() -> usize {
    4
}
/// A block must keep more than this many patches.
pub fn default_min_keep() -> usize {
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

    pub(crate) fn check_grid(&self) -> Result<usize, MaskError> {
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

    pub(crate) fn rules(&self) -> (SizeRule, SizeRule) {
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::MaskSampler;
    use super::super::testutil::official;
    use super::*;

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
}
