//! Checkpoint formats. Every format is read into [`NamedTensors`] under the official names
//! (`blocks.0.attn.qkv.weight`, `predictor_blocks.1.mlp.fc2.bias`, ...) and loaded into the
//! burn modules with strict key and shape checks.
//!
//! * [`official`]: facebookresearch/ijepa `.pth.tar` (zip pickle, read without running Python);
//! * [`hf`]: Hugging Face `IJepaModel` directories (read and write);
//! * [`native`]: this project's single-file safetensors checkpoint with a JSON description.

pub mod error;
pub mod hf;
pub mod native;
pub mod official;
pub mod pickle_guard;
pub mod safetensors_io;
pub mod tensors;

use std::path::{Path, PathBuf};

pub use error::CheckpointError;
pub use tensors::{HostTensor, NamedTensors};

use crate::data::transform::Preprocess;
use crate::error::{ConfigError, Error, Result};
use crate::model::config::PRESETS;
use crate::model::{EncoderConfig, Init, Predictor, PredictorConfig, VisionTransformer};
use native::Description;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Official,
    HuggingFace,
    Native,
}

/// What cannot be read from the weights themselves.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Attention heads of the encoder (inferred for the official widths 192...1408).
    pub num_heads: Option<usize>,
    /// Attention heads of the predictor (official: the encoder's).
    pub pred_num_heads: Option<usize>,
}

/// Any checkpoint, as host tensors plus the model description.
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: Format,
    pub description: Description,
    /// Context encoder (the only encoder of HF directories).
    pub encoder: NamedTensors,
    pub target_encoder: Option<NamedTensors>,
    pub predictor: Option<NamedTensors>,
    /// Every tensor of a native file (training state included), prefixed.
    pub raw: NamedTensors,
}

/// Which format `path` holds, looking at the bytes rather than the name.
pub fn detect(path: &Path) -> Result<(Format, PathBuf)> {
    if path.is_dir() && hf::is_hf_dir(path) {
        return Ok((Format::HuggingFace, path.to_path_buf()));
    }
    if let Some(file) = native::resolve(path) {
        let mut head = [0u8; 8];
        let n = std::fs::File::open(&file)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
            .map_err(|e| Error::io(&file, e))?;
        // Native first: a safetensors header length may start with any byte, 0x80 included.
        if native::is_native(&file) {
            return Ok((Format::Native, file));
        }
        if official::looks_like_torch(&head[..n]) {
            return Ok((Format::Official, file));
        }
        if let Some(dir) = file.parent().filter(|d| hf::is_hf_dir(d)) {
            return Ok((Format::HuggingFace, dir.to_path_buf()));
        }
        return Err(CheckpointError::UnknownFormat { path: file }.into());
    }
    if path.is_dir() {
        return Err(CheckpointError::UnknownFolder {
            path: path.to_path_buf(),
        }
        .into());
    }
    Err(match std::fs::metadata(path) {
        Err(e) => Error::io(path, e),
        Ok(_) => CheckpointError::NotAFile {
            path: path.to_path_buf(),
        }
        .into(),
    })
}

fn heads_for_width(width: usize, given: Option<usize>, what: &str) -> Result<usize> {
    if let Some(h) = given {
        return Ok(h);
    }
    PRESETS.iter().find(|p| p.1 == width).map(|p| p.3).ok_or_else(|| {
        ConfigError::needs(
            format!("the {what} (width {width})"),
            format!("--num-heads / --pred-num-heads: the number of attention heads is not stored in official checkpoints and {width} is not an official width"),
        )
        .into()
    })
}

fn dims(named: &NamedTensors, key: &str, path: &Path) -> Result<Vec<usize>> {
    named.get(key).map(|t| t.shape.clone()).ok_or_else(|| {
        CheckpointError::MissingTensor {
            path: path.to_path_buf(),
            key: key.into(),
        }
        .into()
    })
}

fn count_blocks(named: &NamedTensors, prefix: &str) -> usize {
    (0..)
        .take_while(|i| named.contains_key(&format!("{prefix}.{i}.norm1.weight")))
        .count()
}

/// Shapes of an official encoder state dict.
pub fn infer_encoder_config(
    named: &NamedTensors,
    opts: &LoadOptions,
    path: &Path,
) -> Result<EncoderConfig> {
    let w = dims(named, "patch_embed.proj.weight", path)?;
    let pos = dims(named, "pos_embed", path)?;
    let fc1 = dims(named, "blocks.0.mlp.fc1.weight", path)?;
    let shape_error = |key: &str, expected: &str, found: &[usize]| {
        Error::from(CheckpointError::Shape {
            path: path.to_path_buf(),
            key: key.into(),
            expected: expected.into(),
            found: found.to_vec(),
        })
    };
    let [d, c, p, _] = w.as_slice() else {
        return Err(shape_error("patch_embed.proj.weight", "rank 4", &w));
    };
    let [_, n, _] = pos.as_slice() else {
        return Err(shape_error("pos_embed", "rank 3", &pos));
    };
    let grid = (*n as f64).sqrt().round() as usize;
    if grid * grid != *n {
        return Err(shape_error("pos_embed", "a square grid of tokens", &pos));
    }
    let cfg = EncoderConfig {
        image_size: grid * p,
        patch_size: *p,
        in_chans: *c,
        embed_dim: *d,
        depth: count_blocks(named, "blocks"),
        num_heads: heads_for_width(*d, opts.num_heads, "encoder")?,
        mlp_hidden: fc1[0],
        qkv_bias: named.contains_key("blocks.0.attn.qkv.bias"),
        layer_norm_eps: 1e-6,
        patch_embed: crate::model::config::PatchEmbedKind::Shared,
    };
    cfg.validate().map_err(|e| Error::in_file(path, e))?;
    Ok(cfg)
}

/// Shapes of an official predictor state dict.
pub fn infer_predictor_config(
    named: &NamedTensors,
    enc: &EncoderConfig,
    opts: &LoadOptions,
    path: &Path,
) -> Result<PredictorConfig> {
    let embed = dims(named, "predictor_embed.weight", path)?;
    let fc1 = dims(named, "predictor_blocks.0.mlp.fc1.weight", path)?;
    let cfg = PredictorConfig {
        embed_dim: enc.embed_dim,
        predictor_embed_dim: embed[0],
        depth: count_blocks(named, "predictor_blocks"),
        num_heads: opts.pred_num_heads.unwrap_or(enc.num_heads),
        mlp_hidden: fc1[0],
        grid: enc.grid(),
        qkv_bias: enc.qkv_bias,
        layer_norm_eps: enc.layer_norm_eps,
        invariance_head: 0,
        prototypes: 0,
        expander: 0,
    };
    cfg.validate().map_err(|e| Error::in_file(path, e))?;
    Ok(cfg)
}

impl Checkpoint {
    pub fn read(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let (format, path) = detect(path)?;
        match format {
            Format::Official => {
                let ck = official::OfficialCheckpoint::read(&path)?;
                let enc_cfg = infer_encoder_config(&ck.encoder, opts, &path)?;
                let pred_cfg = match &ck.predictor {
                    Some(p) => Some(infer_predictor_config(p, &enc_cfg, opts, &path)?),
                    None => None,
                };
                let pre = Preprocess::imagenet_eval(enc_cfg.image_size, enc_cfg.in_chans);
                let source = format!("official:{}", path.display());
                Ok(Self {
                    description: Description::new(enc_cfg, pred_cfg, pre, source),
                    format,
                    encoder: ck.encoder,
                    target_encoder: ck.target_encoder,
                    predictor: ck.predictor,
                    raw: NamedTensors::new(),
                    path,
                })
            }
            Format::HuggingFace => {
                let m = hf::read_dir(&path)?;
                let source = format!("hf:{}", path.display());
                Ok(Self {
                    description: Description::new(m.config, None, m.preprocess, source),
                    format,
                    encoder: m.encoder,
                    target_encoder: None,
                    predictor: None,
                    raw: NamedTensors::new(),
                    path,
                })
            }
            Format::Native => {
                let (description, raw) = native::read(&path)?;
                let encoder = native::section(&raw, "encoder");
                let target = native::section(&raw, "target_encoder");
                let predictor = native::section(&raw, "predictor");
                Ok(Self {
                    description,
                    format,
                    encoder,
                    target_encoder: (!target.is_empty()).then_some(target),
                    predictor: (!predictor.is_empty()).then_some(predictor),
                    raw,
                    path,
                })
            }
        }
    }

    /// The encoder to embed with: `target` (EMA; the paper evaluates it) or `context`.
    pub fn encoder_tensors(&self, which: EncoderChoice) -> Result<&NamedTensors> {
        match which {
            EncoderChoice::Context => Ok(&self.encoder),
            EncoderChoice::Target => self.target_encoder.as_ref().ok_or_else(|| {
                CheckpointError::NoTargetEncoder {
                    path: self.path.clone(),
                }
                .into()
            }),
        }
    }

    pub fn build_encoder<B: crate::ops::IjepaBackend>(
        &self,
        which: EncoderChoice,
        device: &B::Device,
    ) -> Result<VisionTransformer<B>> {
        let named = self.encoder_tensors(which)?;
        build_encoder(
            &self.description.encoder,
            named,
            &format!("{} ({which:?} encoder)", self.path.display()),
            device,
        )
    }

    pub fn build_predictor<B: crate::ops::IjepaBackend>(
        &self,
        device: &B::Device,
    ) -> Result<Predictor<B>> {
        let (Some(cfg), Some(named)) = (&self.description.predictor, &self.predictor) else {
            return Err(CheckpointError::NoPredictor {
                path: self.path.clone(),
            }
            .into());
        };
        build_predictor(
            cfg,
            named,
            &format!("{} (predictor)", self.path.display()),
            device,
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderChoice {
    Target,
    Context,
}

/// Replace a fixed position table with the checkpoint's copy (shape-checked).
fn load_table<B: crate::ops::IjepaBackend>(
    named: &NamedTensors,
    key: &str,
    current: &burn::tensor::Tensor<B, 2>,
    what: &str,
) -> Result<Option<burn::tensor::Tensor<B, 2>>> {
    let Some(t) = named.get(key) else {
        return Ok(None);
    };
    let [n, d] = current.dims();
    let ok = matches!(t.shape.as_slice(), [1, tn, td] if *tn == n && *td == d) || t.shape == [n, d];
    if !ok {
        return Err(CheckpointError::Mismatch {
            what: what.into(),
            missing: vec![],
            unexpected: vec![],
            wrong_shapes: vec![error::ShapeMismatch {
                key: key.into(),
                expected: vec![1, n, d],
                found: t.shape.clone(),
            }],
        }
        .into());
    }
    Ok(Some(
        HostTensor::new(vec![n, d], t.data.clone()).to_tensor(&current.device()),
    ))
}

pub fn build_encoder<B: crate::ops::IjepaBackend>(
    cfg: &EncoderConfig,
    named: &NamedTensors,
    what: &str,
    device: &B::Device,
) -> Result<VisionTransformer<B>> {
    let model = VisionTransformer::<B>::new(cfg, &mut Init::zeros(), device);
    let mut model = tensors::load_named::<B, _>(model, named, &["pos_embed"], what)?;
    if let Some(pos) = load_table(named, "pos_embed", &model.pos_embed, what)? {
        model.pos_embed = pos;
    }
    Ok(model)
}

pub fn build_predictor<B: crate::ops::IjepaBackend>(
    cfg: &PredictorConfig,
    named: &NamedTensors,
    what: &str,
    device: &B::Device,
) -> Result<Predictor<B>> {
    let model = Predictor::<B>::new(cfg, &mut Init::zeros(), device);
    let mut model = tensors::load_named::<B, _>(model, named, &["predictor_pos_embed"], what)?;
    if let Some(pos) = load_table(
        named,
        "predictor_pos_embed",
        &model.predictor_pos_embed,
        what,
    )? {
        model.predictor_pos_embed = pos;
    }
    Ok(model)
}

/// Official state dict of an encoder, fixed position table included (`[1, N, D]`).
pub fn encoder_state<B: crate::ops::IjepaBackend>(model: &VisionTransformer<B>) -> NamedTensors {
    let mut named = tensors::module_to_named::<B, _>(model);
    let pos = HostTensor::from_tensor(model.pos_embed.clone().unsqueeze::<3>());
    named.insert("pos_embed".into(), pos);
    named
}

/// Official state dict of a predictor, fixed position table included.
pub fn predictor_state<B: crate::ops::IjepaBackend>(model: &Predictor<B>) -> NamedTensors {
    let mut named = tensors::module_to_named::<B, _>(model);
    let pos = HostTensor::from_tensor(model.predictor_pos_embed.clone().unsqueeze::<3>());
    named.insert("predictor_pos_embed".into(), pos);
    named
}

/// Prefix every key (`encoder.` ...), for native files.
pub fn prefixed(prefix: &str, named: NamedTensors) -> NamedTensors {
    named
        .into_iter()
        .map(|(k, v)| (format!("{prefix}.{k}"), v))
        .collect()
}
