//! Model shapes: one config struct for the encoder and one for the predictor, plus the
//! official `vit_*` presets (spec 1.6).

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Result};

/// Shapes of a ViT encoder (context or target; both have the same).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// Hidden width of the MLP (`int(embed_dim * mlp_ratio)` in the official code).
    pub mlp_hidden: usize,
    pub qkv_bias: bool,
    pub layer_norm_eps: f64,
    /// How patches become tokens (`shared`: the official conv).
    #[serde(default)]
    pub patch_embed: PatchEmbedKind,
}

/// `meta.patch_embed`: how a patch becomes a token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchEmbedKind {
    /// The official `Conv2d(C, D, p, stride p)`: one projection shared by every position.
    #[default]
    Shared,
    /// The shared conv plus a learned projection of its own for every grid position
    /// (zero-initialised, so training starts from the official model): the tokens' mean then
    /// holds a linear map of the whole image, layout included (this project's option).
    PerPosition,
}

/// Shapes of the narrow predictor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictorConfig {
    /// Width of the encoder whose tokens it reads and predicts.
    pub embed_dim: usize,
    pub predictor_embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_hidden: usize,
    /// Patch grid side of the encoder (the predictor's position table is `grid x grid`).
    pub grid: usize,
    pub qkv_bias: bool,
    pub layer_norm_eps: f64,
    /// Hidden width of the invariance head (an MLP from the mean context token to the mean
    /// target token, this project's option); 0: none, as the official predictor.
    #[serde(default)]
    pub invariance_head: usize,
    /// MSN's prototypes `[prototypes, embed_dim]` (this project's option, see
    /// [`crate::train::msn`]); 0: none, as the official predictor.
    #[serde(default)]
    pub prototypes: usize,
    /// Hidden width of the expander (an MLP every context token goes through before SIGReg's
    /// and VICReg's variance and covariance terms, this project's option); 0: none, the terms
    /// on the encoder's tokens themselves.
    #[serde(default)]
    pub expander: usize,
}

/// `(embed_dim, depth, heads, mlp_ratio)` of the official `vit_*` factories.
pub const PRESETS: [(&str, usize, usize, usize, f64); 6] = [
    ("vit_tiny", 192, 12, 3, 4.0),
    ("vit_small", 384, 12, 6, 4.0),
    ("vit_base", 768, 12, 12, 4.0),
    ("vit_large", 1024, 24, 16, 4.0),
    ("vit_huge", 1280, 32, 16, 4.0),
    ("vit_giant", 1408, 40, 16, 48.0 / 11.0),
];

impl EncoderConfig {
    /// An official preset (`vit_tiny` ... `vit_giant`) at any image and patch size.
    pub fn preset(
        name: &str,
        image_size: usize,
        patch_size: usize,
        in_chans: usize,
    ) -> Result<Self> {
        let (_, dim, depth, heads, ratio) =
            PRESETS.iter().find(|p| p.0 == name).ok_or_else(|| {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                ConfigError::Unknown {
                    what: "model preset",
                    name: name.into(),
                    known: names.join(", "),
                }
            })?;
        let cfg = Self {
            image_size,
            patch_size,
            in_chans,
            embed_dim: *dim,
            depth: *depth,
            num_heads: *heads,
            mlp_hidden: (*dim as f64 * ratio) as usize,
            qkv_bias: true,
            layer_norm_eps: 1e-6,
            patch_embed: PatchEmbedKind::Shared,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    pub fn validate(&self) -> Result<()> {
        let image = |expected: String| -> Result<()> {
            Err(ConfigError::value("image_size", expected, self.image_size).into())
        };
        if self.patch_size == 0 {
            return Err(ConfigError::value("patch_size", "a positive number", 0).into());
        }
        if self.image_size < self.patch_size {
            return image(format!("at least patch_size {}", self.patch_size));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return image(format!("a multiple of patch_size {}", self.patch_size));
        }
        check_width("embed_dim", self.embed_dim, self.num_heads)?;
        check_positive(&[
            ("in_chans", self.in_chans),
            ("depth", self.depth),
            ("mlp_hidden", self.mlp_hidden),
        ])?;
        check_eps(self.layer_norm_eps)
    }
}

impl PredictorConfig {
    /// The official `vit_predictor` for an encoder: heads = encoder heads, mlp ratio 4.
    pub fn for_encoder(
        enc: &EncoderConfig,
        predictor_embed_dim: usize,
        depth: usize,
        num_heads: usize,
    ) -> Result<Self> {
        let cfg = Self {
            embed_dim: enc.embed_dim,
            predictor_embed_dim,
            depth,
            num_heads,
            mlp_hidden: predictor_embed_dim * 4,
            grid: enc.grid(),
            qkv_bias: enc.qkv_bias,
            layer_norm_eps: enc.layer_norm_eps,
            invariance_head: 0,
            prototypes: 0,
            expander: 0,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn num_patches(&self) -> usize {
        self.grid * self.grid
    }

    pub fn validate(&self) -> Result<()> {
        check_width(
            "predictor_embed_dim",
            self.predictor_embed_dim,
            self.num_heads,
        )?;
        check_positive(&[
            ("predictor embed_dim", self.embed_dim),
            ("predictor depth", self.depth),
            ("predictor mlp_hidden", self.mlp_hidden),
            ("predictor grid", self.grid),
        ])?;
        check_eps(self.layer_norm_eps)
    }
}

fn check_width(name: &str, dim: usize, heads: usize) -> Result<()> {
    if dim == 0 || heads == 0 || !dim.is_multiple_of(heads) {
        return Err(ConfigError::value(
            name,
            format!("a positive multiple of the number of heads {heads}"),
            dim,
        )
        .into());
    }
    if !dim.is_multiple_of(4) {
        return Err(ConfigError::value(
            name,
            "a multiple of 4 (2-D sin-cos position embedding)",
            dim,
        )
        .into());
    }
    Ok(())
}

fn check_positive(fields: &[(&str, usize)]) -> Result<()> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((name, v)) => Err(ConfigError::value(*name, "a positive number", v).into()),
        None => Ok(()),
    }
}

fn check_eps(eps: f64) -> Result<()> {
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(ConfigError::value("layer_norm_eps", "a positive number", eps).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_official_widths() {
        let g = EncoderConfig::preset("vit_giant", 224, 16, 3).unwrap();
        assert_eq!(
            (g.embed_dim, g.depth, g.num_heads, g.mlp_hidden),
            (1408, 40, 16, 6144)
        );
        let h = EncoderConfig::preset("vit_huge", 224, 14, 3).unwrap();
        assert_eq!((h.grid(), h.mlp_hidden), (16, 5120));
        assert!(EncoderConfig::preset("vit_enormous", 224, 16, 3).is_err());
        assert!(EncoderConfig::preset("vit_base", 225, 16, 3).is_err());
    }
}
