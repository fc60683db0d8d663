//! The project's own checkpoint: ONE safetensors file (official tensor names, prefixed
//! `encoder.`, `target_encoder.`, `predictor.`; plus training state when written by the
//! trainer) whose `__metadata__` holds a JSON description of the model (`ijepa` key), and a
//! pretty-printed copy of that description next to it (`<name>.json`) for people to read.
//! One file means one atomic rename: a checkpoint on disk is always complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::CheckpointError;
use super::safetensors_io;
use super::tensors::NamedTensors;
use crate::data::transform::Preprocess;
use crate::error::{Error, Result};
use crate::fsutil::write_bytes_atomic;
use crate::model::{EncoderConfig, PredictorConfig};

pub const FORMAT: &str = "ijepa-native";
pub const FORMAT_VERSION: u32 = 1;
pub const EXTENSION: &str = "safetensors";

/// What a native checkpoint says about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Description {
    pub format: String,
    pub format_version: u32,
    pub encoder: EncoderConfig,
    pub predictor: Option<PredictorConfig>,
    pub preprocess: Preprocess,
    /// Where the weights came from (`init`, `pretrain`, `official:<file>`, `hf:<dir>`).
    pub source: String,
    /// Training progress (epoch, step, ...) for trainer checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
}

impl Description {
    pub fn new(
        encoder: EncoderConfig,
        predictor: Option<PredictorConfig>,
        preprocess: Preprocess,
        source: impl Into<String>,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            encoder,
            predictor,
            preprocess,
            source: source.into(),
            training: None,
        }
    }
}

/// `run/latest` -> `run/latest.safetensors`; a training folder -> its `latest` checkpoint.
pub fn resolve(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    let with_ext = path.with_extension(EXTENSION);
    if path.extension().is_none() && with_ext.is_file() {
        return Some(with_ext);
    }
    let latest = path.join(format!("latest.{EXTENSION}"));
    if path.is_dir() && latest.is_file() {
        return Some(latest);
    }
    None
}

/// True when `path` is a safetensors file written by this project.
pub fn is_native(path: &Path) -> bool {
    safetensors_io::read_metadata(path)
        .map(|m| m.get("format").map(String::as_str) == Some(FORMAT))
        .unwrap_or(false)
}

pub fn read(path: &Path) -> Result<(Description, NamedTensors)> {
    let (tensors, meta) = safetensors_io::read(path)?;
    let path_buf = || path.to_path_buf();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(CheckpointError::NotNative { path: path_buf() }.into());
    }
    let text = meta
        .get("ijepa")
        .ok_or_else(|| CheckpointError::NoDescription { path: path_buf() })?;
    let desc: Description =
        serde_json::from_str(text).map_err(|error| CheckpointError::Description {
            path: path_buf(),
            error,
        })?;
    if desc.format_version > FORMAT_VERSION {
        return Err(CheckpointError::NewerVersion {
            path: path_buf(),
            version: desc.format_version,
        }
        .into());
    }
    desc.encoder
        .validate()
        .map_err(|e| Error::in_file(path, e))?;
    desc.preprocess
        .validate()
        .map_err(|e| Error::in_file(path, e))?;
    Ok((desc, tensors))
}

/// Sub-dict of the tensors under `prefix.` with the prefix removed.
pub fn section(tensors: &NamedTensors, prefix: &str) -> NamedTensors {
    let p = format!("{prefix}.");
    tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&p).map(|s| (s.to_string(), v.clone())))
        .collect()
}

/// Write `tensors` (already prefixed) atomically, then the readable description beside it.
pub fn write(path: &Path, desc: &Description, tensors: &NamedTensors) -> Result<()> {
    let json = serde_json::to_string(desc)?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("ijepa".to_string(), json);
    safetensors_io::write(path, tensors, meta)?;
    let pretty = serde_json::to_vec_pretty(desc)?;
    write_bytes_atomic(&path.with_extension("json"), &pretty)
}
