//! The training configuration: the official YAML layout (sections `data`, `logging`, `mask`,
//! `meta`, `optimization` with the official key names; the four official config files load
//! unchanged) plus keys for what they do not cover (explicit model dims, channels, dataset
//! source, seed, threads, ...). Unknown keys are errors, so a typo never passes silently.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::error::{ConfigError, Error, OverrideProblem, Result};
use crate::masks::{MaskConfig, MaskMode};
use crate::model::{EncoderConfig, PredictorConfig};
use crate::train::loss::{LossKind, TargetNorm, TargetNormKind};
use crate::train::msn;
use crate::train::objective::{Objective, PooledView, RegFeatures};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub data: DataSection,
    #[serde(default)]
    pub logging: LoggingSection,
    pub mask: MaskSection,
    pub meta: MetaSection,
    pub optimization: OptimizationSection,
    /// Regularisers of the follow-up methods (this project's section; all off by default).
    #[serde(default)]
    pub regularization: RegularizationSection,
}

/// SIGReg (LeJEPA) and VICReg's variance / covariance terms (C-JEPA) on the context
/// encoder's features, added to the prediction loss with these weights (0: off).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegularizationSection {
    #[serde(default)]
    pub sigreg_weight: f64,
    /// Random directions the SIGReg test projects on, drawn afresh every step.
    #[serde(default = "default_projections")]
    pub sigreg_projections: usize,
    #[serde(default)]
    pub vicreg_variance_weight: f64,
    #[serde(default)]
    pub vicreg_covariance_weight: f64,
    /// Hidden width of VICReg's expander: an MLP (fc, GELU, fc back to the encoder's width)
    /// every context token goes through before SIGReg's and VICReg's variance and covariance
    /// terms, trained with the predictor and saved in its checkpoint; 0: none, the terms on
    /// the tokens themselves.
    #[serde(default)]
    pub expander: usize,
    /// `pooled` (one vector per image: the mean of its context tokens) or `tokens`.
    #[serde(default)]
    pub features: RegFeatures,
    /// VICReg's invariance term between the mean context token and the mean target token of
    /// a second view (0: off).
    #[serde(default)]
    pub invariance_weight: f64,
    /// The second view: `crop` (the training transform drawn again for the same image) or
    /// `same` (the image itself: the masked context against the full image).
    #[serde(default)]
    pub invariance_view: InvarianceView,
    /// Hidden width of an MLP head the mean context token goes through before the invariance
    /// term (VICReg's expander, on the context side only); 0: none, the term on the mean
    /// itself. The head is trained with the predictor and saved in its checkpoint.
    #[serde(default)]
    pub invariance_head: usize,
    /// Crop scale of the `crop` view (default: `data.crop_scale`, the first view's): e.g.
    /// `[1, 1]` compares the masked random crop with the whole image (local to global).
    #[serde(default)]
    pub invariance_crop_scale: Option<(f64, f64)>,
    /// Weight of a second prediction of the same targets from the mean context token alone
    /// (the predictor sees no context token, only their mean): the pooled features the
    /// evaluation reads must then hold what the target blocks hold, layout included (0: off).
    #[serde(default)]
    pub pooled_prediction_weight: f64,
    /// Whose mean token that prediction starts from: `context` (each context block's) or
    /// `full` (the context encoder run once more on the whole image: the very mean the
    /// evaluation reads, up to the EMA).
    #[serde(default)]
    pub pooled_prediction_view: PooledView,
    /// Weight of MSN's prototype term between the masked context's image feature (through
    /// the invariance head when there is one) and the target encoder's mean token of the
    /// second view (`invariance_view`), see [`crate::train::msn`] (0: off).
    #[serde(default)]
    pub msn_weight: f64,
    /// MSN's number of learned prototypes (trained with the predictor, saved in its
    /// checkpoint, never weight-decayed).
    #[serde(default = "default_msn_prototypes")]
    pub msn_prototypes: usize,
    /// MSN's softmax temperatures `[anchor, target]` (the target's sharper).
    #[serde(default = "default_msn_temperatures")]
    pub msn_temperatures: (f64, f64),
    /// MSN's weight λ of the mean-entropy maximisation (ME-MAX).
    #[serde(default = "default_msn_me_max")]
    pub msn_me_max_weight: f64,
}

fn default_msn_prototypes() -> usize {
    msn::DEFAULT_PROTOTYPES
}

fn default_msn_temperatures() -> (f64, f64) {
    (
        msn::DEFAULT_TEMPERATURES.anchor,
        msn::DEFAULT_TEMPERATURES.target,
    )
}

fn default_msn_me_max() -> f64 {
    msn::DEFAULT_ME_MAX
}

/// Which view the invariance term compares the context with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvarianceView {
    #[default]
    Crop,
    Same,
}

impl Default for RegularizationSection {
    fn default() -> Self {
        Self {
            sigreg_weight: 0.0,
            sigreg_projections: default_projections(),
            vicreg_variance_weight: 0.0,
            vicreg_covariance_weight: 0.0,
            expander: 0,
            features: RegFeatures::Pooled,
            invariance_weight: 0.0,
            invariance_view: InvarianceView::Crop,
            invariance_head: 0,
            invariance_crop_scale: None,
            pooled_prediction_weight: 0.0,
            pooled_prediction_view: PooledView::Context,
            msn_weight: 0.0,
            msn_prototypes: default_msn_prototypes(),
            msn_temperatures: default_msn_temperatures(),
            msn_me_max_weight: default_msn_me_max(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Images per optimizer step and replica (the official per-GPU batch size).
    pub batch_size: usize,
    #[serde(default)]
    pub color_jitter_strength: f32,
    #[serde(default = "default_crop_scale")]
    pub crop_scale: (f64, f64),
    pub crop_size: usize,
    /// Official: `root_path/image_folder/train/` is an ImageNet-style folder.
    #[serde(default)]
    pub image_folder: Option<String>,
    #[serde(default)]
    pub root_path: Option<String>,
    /// Accepted for compatibility; decoding runs on a thread pool sized by `meta.threads`.
    #[serde(default)]
    pub num_workers: Option<usize>,
    /// Accepted for compatibility (CUDA pinned memory); no effect here.
    #[serde(default)]
    pub pin_mem: Option<bool>,
    #[serde(default)]
    pub use_color_distortion: bool,
    #[serde(default)]
    pub use_gaussian_blur: bool,
    #[serde(default)]
    pub use_horizontal_flip: bool,
    // ---- extensions ----
    /// Where the images come from: `fmnist:/dir`, `mnist:/dir`, `idx:/file`, or a folder.
    /// Default: `root_path/image_folder` as the official code.
    #[serde(default)]
    pub dataset: Option<String>,
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    /// Black pixels added on every side before cropping (Fashion-MNIST 28 -> 32: 2).
    #[serde(default)]
    pub pad: usize,
    /// Normalisation (default: ImageNet's, as the official transforms).
    #[serde(default)]
    pub mean: Option<Vec<f32>>,
    #[serde(default)]
    pub std: Option<Vec<f32>>,
    /// Train on the first N images only.
    #[serde(default)]
    pub max_images: Option<usize>,
    /// Batches decoded ahead of the training step.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    #[serde(default)]
    pub folder: Option<String>,
    #[serde(default)]
    pub write_tag: Option<String>,
    /// Also write a checkpoint every N optimizer steps (0: only at epoch ends).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Keep a copy of every epoch's checkpoint (`ep{N}.safetensors`) besides `latest`.
    #[serde(default = "default_true")]
    pub keep_epochs: bool,
    /// Online kNN monitor: the first N pretraining images are the memory bank (0 with
    /// `knn_monitor_queries` 0 turns the monitor off; it needs labelled data).
    #[serde(default = "default_knn_bank")]
    pub knn_monitor_bank: usize,
    /// ... and the next N images are classified against it, every epoch.
    #[serde(default = "default_knn_queries")]
    pub knn_monitor_queries: usize,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            folder: None,
            write_tag: None,
            checkpoint_every: 0,
            keep_epochs: true,
            knn_monitor_bank: default_knn_bank(),
            knn_monitor_queries: default_knn_queries(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSection {
    #[serde(default)]
    pub allow_overlap: bool,
    #[serde(default = "crate::masks::config::default_aspect_ratio")]
    pub aspect_ratio: (f64, f64),
    #[serde(default = "crate::masks::config::default_enc_mask_scale")]
    pub enc_mask_scale: (f64, f64),
    #[serde(default = "crate::masks::config::default_min_keep")]
    pub min_keep: usize,
    #[serde(default = "crate::masks::config::default_nenc")]
    pub num_enc_masks: usize,
    #[serde(default = "crate::masks::config::default_npred")]
    pub num_pred_masks: usize,
    pub patch_size: usize,
    #[serde(default = "crate::masks::config::default_pred_mask_scale")]
    pub pred_mask_scale: (f64, f64),
    /// `official` (bug-compatible, default) or `fixed`.
    #[serde(default)]
    pub mode: MaskMode,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaSection {
    #[serde(default)]
    pub copy_data: bool,
    /// Official: resume from `logging.folder/read_checkpoint`. Here: same as `--resume`.
    #[serde(default)]
    pub load_checkpoint: bool,
    /// `vit_tiny` ... `vit_giant`; ignored when `embed_dim` is given.
    #[serde(default)]
    pub model_name: Option<String>,
    pub pred_depth: usize,
    pub pred_emb_dim: usize,
    #[serde(default)]
    pub read_checkpoint: Option<String>,
    /// bf16 autocast of the matrix products on GPUs and on CPUs with AVX-512 BF16; other CPUs
    /// train in f32 (and say so).
    #[serde(default)]
    pub use_bfloat16: bool,
    // ---- extensions ----
    #[serde(default)]
    pub embed_dim: Option<usize>,
    #[serde(default)]
    pub depth: Option<usize>,
    #[serde(default)]
    pub num_heads: Option<usize>,
    #[serde(default)]
    pub mlp_ratio: Option<f64>,
    /// Predictor heads (official: the encoder's).
    #[serde(default)]
    pub pred_num_heads: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    /// Compute threads (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// `smooth_l1` (the official code), `l2` (the paper) or `l1` (V-JEPA 2).
    #[serde(default)]
    pub loss: LossKind,
    /// How patches become tokens: `shared` (official) or `per_position`.
    #[serde(default)]
    pub patch_embed: crate::model::config::PatchEmbedKind,
    /// Targets: `layer_norm` (official), `dyntanh` (`tanh(alpha h)`) or `none`.
    #[serde(default)]
    pub target_norm: TargetNormKind,
    /// `alpha` of `dyntanh` targets (default 1; only with `target_norm: dyntanh`).
    #[serde(default)]
    pub target_dyntanh_alpha: Option<f64>,
    /// Targets averaged over the target encoder's last N blocks, each through its final norm
    /// (data2vec's targets; 1, the default: the last block, official).
    #[serde(default)]
    pub target_layers: Option<usize>,
    /// StoP: variance σ of the noise on the target queries' positions (0: off; the
    /// paper uses 0.25).
    #[serde(default)]
    pub stop_sigma: f64,
    /// Start from the weights of an official `.pth.tar` (encoder, predictor, target encoder).
    #[serde(default)]
    pub init_from: Option<String>,
    /// Pad every batch's token counts to a few bucket sizes (`auto`: on GPUs only; `true`,
    /// `false`): see [`crate::model::padding`].
    #[serde(default)]
    pub static_shapes: crate::model::padding::StaticShapes,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizationSection {
    #[serde(default = "default_ema")]
    pub ema: (f64, f64),
    pub epochs: usize,
    pub final_lr: f64,
    pub final_weight_decay: f64,
    #[serde(default = "default_ipe_scale")]
    pub ipe_scale: f64,
    pub lr: f64,
    pub start_lr: f64,
    /// Warmup length in epochs.
    pub warmup: f64,
    pub weight_decay: f64,
    // ---- extensions ----
    /// Clip the global gradient norm (off by default, as the official code).
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[serde(default = "default_one")]
    pub accum_steps: usize,
}

fn default_crop_scale() -> (f64, f64) {
    (0.3, 1.0)
}
fn default_in_chans() -> usize {
    3
}
fn default_prefetch() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_projections() -> usize {
    crate::train::objective::DEFAULT_PROJECTIONS
}
fn default_knn_bank() -> usize {
    5000
}
fn default_knn_queries() -> usize {
    1000
}
fn default_one() -> usize {
    1
}
fn default_ema() -> (f64, f64) {
    (0.996, 1.0)
}
fn default_ipe_scale() -> f64 {
    1.0
}

/// Apply `section.key=value` overrides (the value is parsed as YAML: numbers, lists, `null`).
pub fn apply_overrides(root: &mut Value, overrides: &[String]) -> Result<()> {
    for o in overrides {
        let bad = |problem| ConfigError::Override {
            item: o.clone(),
            problem,
        };
        let (path, raw) = o
            .split_once('=')
            .ok_or_else(|| bad(OverrideProblem::Syntax))?;
        let value: Value =
            serde_yaml_ng::from_str(raw).map_err(|e| bad(OverrideProblem::Value(e)))?;
        let mut node = &mut *root;
        let parts: Vec<&str> = path.split('.').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad(OverrideProblem::Syntax).into());
        }
        for (i, part) in parts.iter().enumerate() {
            let map = node
                .as_mapping_mut()
                .ok_or_else(|| bad(OverrideProblem::NotASection(parts[..i].join("."))))?;
            let key = Value::String(part.to_string());
            if i + 1 == parts.len() {
                map.insert(key, value.clone());
                break;
            }
            node = map
                .entry(key)
                .or_insert_with(|| Value::Mapping(Default::default()));
        }
    }
    Ok(())
}

/// A value serde cannot read at `key`: serde's `invalid type: string "lots", expected f64`
/// becomes `key: expected a number, found "lots"`; other faults (unknown or missing keys)
/// keep serde's words.
fn key_error(key: String, error: serde_yaml_ng::Error) -> ConfigError {
    let msg = error.to_string();
    let Some((found, expected)) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
        .and_then(|m| m.split_once(", expected "))
    else {
        return ConfigError::Layout { key, error };
    };
    let expected = match expected.split(' ').next().unwrap_or(expected) {
        "f64" | "f32" => "a number",
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number >= 0",
        "i64" | "i32" => "a whole number",
        _ => expected,
    };
    let found = found.strip_prefix("string ").unwrap_or(found);
    ConfigError::value(key, expected, found)
}

impl TrainConfig {
    /// Parse YAML text, apply overrides, check everything.
    pub fn from_yaml(text: &str, overrides: &[String], origin: &Path) -> Result<Self> {
        let in_file = |e: Error| Error::in_file(origin, e);
        let mut root: Value =
            serde_yaml_ng::from_str(text).map_err(|e| in_file(ConfigError::Yaml(e).into()))?;
        apply_overrides(&mut root, overrides)?;
        let cfg: TrainConfig = serde_path_to_error::deserialize(root).map_err(|e| {
            let key = e.path().to_string();
            in_file(key_error(key, e.into_inner()).into())
        })?;
        cfg.validate().map_err(in_file)?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_yaml(&text, overrides, path)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }

    /// The dataset source, parsed: `data.dataset`, else the official `root_path/image_folder`.
    pub fn dataset_spec(&self) -> Result<crate::data::DataSpec> {
        if let Some(d) = &self.data.dataset {
            return Ok(crate::data::DataSpec::parse(d)?);
        }
        match (&self.data.root_path, &self.data.image_folder) {
            (Some(root), Some(folder)) => Ok(crate::data::DataSpec::parse(
                &PathBuf::from(root).join(folder).display().to_string(),
            )?),
            _ => Err(ConfigError::needs(
                "training",
                "a dataset: set data.dataset (e.g. fmnist:/usr/share/datasets/fashion-mnist or a folder) or data.root_path + data.image_folder",
            )
            .into()),
        }
    }

    pub fn encoder_config(&self) -> Result<EncoderConfig> {
        let m = &self.meta;
        let (image, patch, chans) = (
            self.data.crop_size,
            self.mask.patch_size,
            self.data.in_chans,
        );
        let cfg = match m.embed_dim {
            Some(dim) => {
                let (Some(depth), Some(heads)) = (m.depth, m.num_heads) else {
                    return Err(ConfigError::needs(
                        "meta.embed_dim",
                        "meta.depth and meta.num_heads",
                    )
                    .into());
                };
                EncoderConfig {
                    image_size: image,
                    patch_size: patch,
                    in_chans: chans,
                    embed_dim: dim,
                    depth,
                    num_heads: heads,
                    mlp_hidden: (dim as f64 * m.mlp_ratio.unwrap_or(4.0)) as usize,
                    qkv_bias: true,
                    layer_norm_eps: 1e-6,
                    patch_embed: m.patch_embed,
                }
            }
            None => {
                let name = m.model_name.as_deref().ok_or_else(|| {
                    ConfigError::needs(
                        "the model",
                        "meta.model_name (vit_tiny ... vit_giant) or meta.embed_dim/depth/num_heads",
                    )
                })?;
                let mut cfg = EncoderConfig::preset(name, image, patch, chans)?;
                if let Some(d) = m.depth {
                    cfg.depth = d;
                }
                if let Some(h) = m.num_heads {
                    cfg.num_heads = h;
                }
                cfg.patch_embed = m.patch_embed;
                cfg
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn predictor_config(&self) -> Result<PredictorConfig> {
        let enc = self.encoder_config()?;
        let heads = self.meta.pred_num_heads.unwrap_or(enc.num_heads);
        let cfg = PredictorConfig::for_encoder(
            &enc,
            self.meta.pred_emb_dim,
            self.meta.pred_depth,
            heads,
        )?;
        Ok(PredictorConfig {
            invariance_head: self.regularization.invariance_head,
            expander: self.regularization.expander,
            prototypes: match self.regularization.msn_weight > 0.0 {
                true => self.regularization.msn_prototypes,
                false => 0,
            },
            ..cfg
        })
    }

    pub fn mask_config(&self) -> Result<MaskConfig> {
        let m = &self.mask;
        let cfg = MaskConfig {
            enc_mask_scale: m.enc_mask_scale,
            pred_mask_scale: m.pred_mask_scale,
            aspect_ratio: m.aspect_ratio,
            nenc: m.num_enc_masks,
            npred: m.num_pred_masks,
            min_keep: m.min_keep,
            allow_overlap: m.allow_overlap,
            mode: m.mode,
            ..MaskConfig::from_image(self.data.crop_size, m.patch_size)?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// What a training step minimises (the official objective unless options are set).
    pub fn objective(&self) -> Objective {
        let m = &self.meta;
        let r = &self.regularization;
        Objective {
            loss: m.loss,
            target_norm: match m.target_norm {
                TargetNormKind::LayerNorm => TargetNorm::LayerNorm,
                TargetNormKind::Dyntanh => TargetNorm::Dyntanh {
                    alpha: m.target_dyntanh_alpha.unwrap_or(1.0),
                },
                TargetNormKind::None => TargetNorm::None,
            },
            target_layers: m.target_layers.unwrap_or(1),
            stop_sigma: m.stop_sigma,
            sigreg_weight: r.sigreg_weight,
            sigreg_projections: r.sigreg_projections,
            vicreg_variance_weight: r.vicreg_variance_weight,
            vicreg_covariance_weight: r.vicreg_covariance_weight,
            features: r.features,
            invariance_weight: r.invariance_weight,
            pooled_prediction_weight: r.pooled_prediction_weight,
            pooled_prediction_view: r.pooled_prediction_view,
            msn_weight: r.msn_weight,
            msn_temperatures: msn::Temperatures {
                anchor: r.msn_temperatures.0,
                target: r.msn_temperatures.1,
            },
            msn_me_max_weight: r.msn_me_max_weight,
        }
    }

    /// Whether the loader draws a second view of every image.
    pub fn second_view(&self) -> bool {
        let r = &self.regularization;
        (r.invariance_weight > 0.0 || r.msn_weight > 0.0)
            && r.invariance_view == InvarianceView::Crop
    }

    /// Normalisation statistics (ImageNet's by default, averaged for one channel).
    pub fn normalisation(&self) -> (Vec<f32>, Vec<f32>) {
        use crate::data::transform::{IMAGENET_MEAN, IMAGENET_STD};
        let c = self.data.in_chans;
        let default = |v: [f32; 3]| {
            if c == 1 {
                vec![v.iter().sum::<f32>() / 3.0]
            } else {
                v.to_vec()
            }
        };
        (
            self.data
                .mean
                .clone()
                .unwrap_or_else(|| default(IMAGENET_MEAN)),
            self.data
                .std
                .clone()
                .unwrap_or_else(|| default(IMAGENET_STD)),
        )
    }
}

mod validate;

#[cfg(test)]
mod tests;
