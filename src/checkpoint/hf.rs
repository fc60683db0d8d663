//! Hugging Face `IJepaModel` directories (spec 2.3-2.6): `config.json`, `model.safetensors`,
//! optional `preprocessor_config.json`. Read into and written from the official names
//! (q, k, v merged into / split out of the fused `qkv`).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::CheckpointError;
use super::safetensors_io;
use super::tensors::{HostTensor, NamedTensors};
use crate::data::transform::Preprocess;
use crate::error::{ConfigError, Error, Result};
use crate::fsutil::write_bytes_atomic;
use crate::model::EncoderConfig;
use crate::model::config::PatchEmbedKind;

/// The fields of `IJepaConfig` this project reads and writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HfConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    /// HF's default is 1e-12; the released I-JEPA checkpoints set 1e-6.
    #[serde(default = "default_hf_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_model_type() -> String {
    "ijepa".into()
}
fn default_image_size() -> usize {
    224
}
fn default_patch_size() -> usize {
    16
}
fn default_channels() -> usize {
    3
}
fn default_true() -> bool {
    true
}
fn default_hf_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl HfConfig {
    pub fn to_encoder_config(&self) -> Result<EncoderConfig> {
        if self.model_type != "ijepa" && self.model_type != "vit" {
            return Err(ConfigError::value(
                "model_type",
                "'ijepa'",
                format_args!("'{}'", self.model_type),
            )
            .into());
        }
        if self.hidden_act != "gelu" {
            return Err(ConfigError::value(
                "hidden_act",
                "'gelu' (only the exact GELU of I-JEPA is supported)",
                format_args!("'{}'", self.hidden_act),
            )
            .into());
        }
        let cfg = EncoderConfig {
            image_size: self.image_size,
            patch_size: self.patch_size,
            in_chans: self.num_channels,
            embed_dim: self.hidden_size,
            depth: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            mlp_hidden: self.intermediate_size,
            qkv_bias: self.qkv_bias,
            layer_norm_eps: self.layer_norm_eps,
            patch_embed: PatchEmbedKind::Shared,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_encoder_config(cfg: &EncoderConfig) -> Self {
        Self {
            model_type: "ijepa".into(),
            hidden_size: cfg.embed_dim,
            num_hidden_layers: cfg.depth,
            num_attention_heads: cfg.num_heads,
            intermediate_size: cfg.mlp_hidden,
            image_size: cfg.image_size,
            patch_size: cfg.patch_size,
            num_channels: cfg.in_chans,
            qkv_bias: cfg.qkv_bias,
            layer_norm_eps: cfg.layer_norm_eps,
            hidden_act: "gelu".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct HfProcessor {
    #[serde(default)]
    size: Option<serde_json::Value>,
    #[serde(default)]
    image_mean: Option<Vec<f32>>,
    #[serde(default)]
    image_std: Option<Vec<f32>>,
    #[serde(default = "default_true")]
    do_normalize: bool,
}

/// A loaded HF directory, weights under official names.
pub struct HfModel {
    pub config: EncoderConfig,
    pub encoder: NamedTensors,
    pub preprocess: Preprocess,
}

pub fn is_hf_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file() && dir.join("model.safetensors").is_file()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|error| {
        CheckpointError::Json {
            path: path.to_path_buf(),
            error,
        }
        .into()
    })
}

pub fn read_dir(dir: &Path) -> Result<HfModel> {
    let hf: HfConfig = read_json(&dir.join("config.json"))?;
    let config = hf
        .to_encoder_config()
        .map_err(|e| Error::in_file(dir.join("config.json"), e))?;
    let weights = dir.join("model.safetensors");
    let (tensors, _) = safetensors_io::read(&weights)?;
    let encoder = hf_to_official(&tensors, config.depth, &weights)?;

    let proc_path = dir.join("preprocessor_config.json");
    let (mut size, mut mean, mut std) = (
        config.image_size,
        vec![0.5; config.in_chans],
        vec![0.5; config.in_chans],
    );
    if proc_path.is_file() {
        let p: HfProcessor = read_json(&proc_path)?;
        if let Some(s) = p
            .size
            .as_ref()
            .and_then(|s| s.get("height").or(s.get("shortest_edge")))
            .and_then(|v| v.as_u64())
        {
            size = s as usize;
        }
        if p.do_normalize {
            mean = p.image_mean.unwrap_or(mean);
            std = p.image_std.unwrap_or(std);
        } else {
            mean = vec![0.0; config.in_chans];
            std = vec![1.0; config.in_chans];
        }
    }
    let preprocess = Preprocess::hf(size, mean, std);
    preprocess.validate()?;
    Ok(HfModel {
        config,
        encoder,
        preprocess,
    })
}

/// Map HF names to official ones, merging q / k / v into qkv.
pub fn hf_to_official(hf: &NamedTensors, depth: usize, path: &Path) -> Result<NamedTensors> {
    let mut out = NamedTensors::new();
    let mut unexpected = vec![];
    let mut qkv: HashMap<(usize, &str), [Option<&HostTensor>; 3]> = HashMap::new();
    for (name, t) in hf {
        let key = name.strip_prefix("ijepa.").unwrap_or(name);
        let mapped = match key {
            "embeddings.position_embeddings" => Some("pos_embed".to_string()),
            "embeddings.patch_embeddings.projection.weight" => {
                Some("patch_embed.proj.weight".into())
            }
            "embeddings.patch_embeddings.projection.bias" => Some("patch_embed.proj.bias".into()),
            "layernorm.weight" => Some("norm.weight".into()),
            "layernorm.bias" => Some("norm.bias".into()),
            _ => None,
        };
        if let Some(m) = mapped {
            out.insert(m, t.clone());
            continue;
        }
        if key.starts_with("classifier.") || key.starts_with("pooler.") {
            continue; // heads of other HF classes: not part of the encoder
        }
        let Some(rest) = key.strip_prefix("encoder.layer.") else {
            unexpected.push(name.clone());
            continue;
        };
        let Some((idx, sub)) = rest.split_once('.') else {
            unexpected.push(name.clone());
            continue;
        };
        let Ok(i) = idx.parse::<usize>() else {
            unexpected.push(name.clone());
            continue;
        };
        let (kind, field) = match sub.rsplit_once('.') {
            Some((k, f @ ("weight" | "bias"))) => (k, f),
            _ => {
                unexpected.push(name.clone());
                continue;
            }
        };
        let official = match kind {
            "layernorm_before" => "norm1",
            "attention.output.dense" => "attn.proj",
            "layernorm_after" => "norm2",
            "intermediate.dense" => "mlp.fc1",
            "output.dense" => "mlp.fc2",
            "attention.attention.query"
            | "attention.attention.key"
            | "attention.attention.value" => {
                let slot = match kind {
                    "attention.attention.query" => 0,
                    "attention.attention.key" => 1,
                    _ => 2,
                };
                let field: &str = if field == "weight" { "weight" } else { "bias" };
                qkv.entry((i, field)).or_default()[slot] = Some(t);
                continue;
            }
            _ => {
                unexpected.push(name.clone());
                continue;
            }
        };
        out.insert(format!("blocks.{i}.{official}.{field}"), t.clone());
    }
    let mut missing = vec![];
    for ((i, field), parts) in &qkv {
        match parts {
            [Some(q), Some(k), Some(v)]
                if q.shape.is_empty() || q.shape != k.shape || q.shape != v.shape =>
            {
                missing.push(format!(
                    "encoder.layer.{i}.attention.attention.{{query,key,value}}.{field} of shapes {:?}, {:?}, {:?} (query, key and value must have one shape)",
                    q.shape, k.shape, v.shape
                ))
            }
            [Some(q), Some(k), Some(v)] => {
                let mut shape = q.shape.clone();
                shape[0] *= 3;
                let data = [q, k, v]
                    .iter()
                    .flat_map(|t| t.data.iter().copied())
                    .collect();
                out.insert(
                    format!("blocks.{i}.attn.qkv.{field}"),
                    HostTensor::new(shape, data),
                );
            }
            _ => missing.push(format!(
                "encoder.layer.{i}.attention.attention.{{query,key,value}}.{field}"
            )),
        }
    }
    if *qkv.keys().map(|(i, _)| i).max().unwrap_or(&0) + 1 > depth && !qkv.is_empty() {
        unexpected.push(format!("layers beyond num_hidden_layers={depth}"));
    }
    if !unexpected.is_empty() || !missing.is_empty() {
        return Err(CheckpointError::NotIJepa {
            path: path.to_path_buf(),
            unexpected,
            incomplete: missing,
        }
        .into());
    }
    Ok(out)
}

/// Official names -> HF names (qkv split into query / key / value).
pub fn official_to_hf(official: &NamedTensors) -> NamedTensors {
    let mut out = NamedTensors::new();
    for (name, t) in official {
        let hf = match name.as_str() {
            "pos_embed" => "embeddings.position_embeddings".to_string(),
            "patch_embed.proj.weight" => "embeddings.patch_embeddings.projection.weight".into(),
            "patch_embed.proj.bias" => "embeddings.patch_embeddings.projection.bias".into(),
            "norm.weight" => "layernorm.weight".into(),
            "norm.bias" => "layernorm.bias".into(),
            other => {
                let Some((i, rest)) = other
                    .strip_prefix("blocks.")
                    .and_then(|r| r.split_once('.'))
                else {
                    continue;
                };
                let (kind, field) = rest.rsplit_once('.').unwrap_or((rest, ""));
                if kind == "attn.qkv" {
                    let third = t.shape[0] / 3;
                    let per = t.data.len() / 3;
                    for (slot, part) in ["query", "key", "value"].iter().enumerate() {
                        let mut shape = t.shape.clone();
                        shape[0] = third;
                        let data = t.data[slot * per..(slot + 1) * per].to_vec();
                        out.insert(
                            format!("encoder.layer.{i}.attention.attention.{part}.{field}"),
                            HostTensor::new(shape, data),
                        );
                    }
                    continue;
                }
                let hf_kind = match kind {
                    "norm1" => "layernorm_before",
                    "attn.proj" => "attention.output.dense",
                    "norm2" => "layernorm_after",
                    "mlp.fc1" => "intermediate.dense",
                    "mlp.fc2" => "output.dense",
                    _ => continue,
                };
                format!("encoder.layer.{i}.{hf_kind}.{field}")
            }
        };
        out.insert(hf, t.clone());
    }
    out
}

/// Write an HF `IJepaModel` directory: `config.json`, `model.safetensors`,
/// `preprocessor_config.json`.
pub fn write_dir(
    dir: &Path,
    config: &EncoderConfig,
    encoder: &NamedTensors,
    preprocess: &Preprocess,
) -> Result<()> {
    if config.patch_embed != PatchEmbedKind::Shared {
        return Err(CheckpointError::NoHfCounterpart {
            path: dir.to_path_buf(),
            what: "per-position patch embedding (meta.patch_embed: per_position)",
        }
        .into());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let hf = HfConfig::from_encoder_config(config);
    let mut cfg = serde_json::to_value(&hf)?;
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert("architectures".into(), serde_json::json!(["IJepaModel"]));
        obj.insert("hidden_dropout_prob".into(), serde_json::json!(0.0));
        obj.insert(
            "attention_probs_dropout_prob".into(),
            serde_json::json!(0.0),
        );
        obj.insert("initializer_range".into(), serde_json::json!(0.02));
        obj.insert("pooler_act".into(), serde_json::json!("tanh"));
        obj.insert(
            "pooler_output_size".into(),
            serde_json::json!(config.embed_dim),
        );
        obj.insert("dtype".into(), serde_json::json!("float32"));
    }
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    write_bytes_atomic(&dir.join("config.json"), &pretty(&cfg))?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors_io::write(
        &dir.join("model.safetensors"),
        &official_to_hf(encoder),
        meta,
    )?;
    let processor = serde_json::json!({
        "image_processor_type": "ViTImageProcessor",
        "do_resize": true,
        "size": {"height": preprocess.size, "width": preprocess.size},
        "resample": 2,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": preprocess.mean,
        "image_std": preprocess.std,
    });
    write_bytes_atomic(&dir.join("preprocessor_config.json"), &pretty(&processor))
}
