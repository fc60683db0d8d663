//! The official `.pth.tar` checkpoints of facebookresearch/ijepa (spec 1.11): a torch zip
//! pickle whose top-level dict holds `encoder`, `predictor` and `target_encoder` state dicts with
//! `module.` prefixes. Read with burn-store's pure-Rust pickle reader after [`pickle_guard`]
//! has refused anything that would execute code.

use std::io::Read;
use std::path::Path;

use burn_store::pytorch::PytorchReader;

use super::error::{CheckpointError, TensorReadError};
use super::pickle_guard;
use super::tensors::{HostTensor, NamedTensors};
use crate::error::{Error, Result};

/// The three state dicts of an official checkpoint, `module.` stripped. `predictor` and
/// `target_encoder` are absent from encoder-only files.
pub struct OfficialCheckpoint {
    pub encoder: NamedTensors,
    pub predictor: Option<NamedTensors>,
    pub target_encoder: Option<NamedTensors>,
}

/// True when `bytes` start like a PyTorch file (zip archive or raw pickle).
pub fn looks_like_torch(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80)
}

/// Most bytes read as pickles: `data.pkl` of a zip file, or the start of a legacy (non-zip)
/// file, whose pickles come before the tensor storages. A checkpoint's pickles are kilobytes
/// to a few megabytes.
const LEGACY_PICKLE_PREFIX: u64 = 256 << 20;

/// Refuse files whose pickle references anything but tensors and plain containers. Reads the
/// zip index and `data.pkl` only (or, for a legacy file, the pickles at its start), never the
/// tensor data: a multi-GB checkpoint is not loaded into memory for this.
pub fn check_pickle_safety(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = Vec::new();
    (&file)
        .take(4)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    let path_buf = || path.to_path_buf();
    let refuse = |why: String| CheckpointError::UnsafePickle {
        path: path_buf(),
        why,
    };
    if head.starts_with(b"PK\x03\x04") {
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|error| {
            CheckpointError::Zip {
                path: path_buf(),
                error,
            }
        })?;
        let names: Vec<String> = zip
            .file_names()
            .filter(|n| n.ends_with("data.pkl"))
            .map(String::from)
            .collect();
        let [name] = names.as_slice() else {
            return Err(CheckpointError::NoDataPickle { path: path_buf() }.into());
        };
        let mut pickle = Vec::new();
        zip.by_name(name)
            .and_then(|f| {
                f.take(LEGACY_PICKLE_PREFIX)
                    .read_to_end(&mut pickle)
                    .map_err(Into::into)
            })
            .map_err(|error| CheckpointError::ZipEntry {
                path: path_buf(),
                entry: name.clone(),
                error,
            })?;
        pickle_guard::scan(&pickle, 0).map_err(refuse)?;
    } else if head.first() == Some(&0x80) {
        // Legacy format: magic, protocol, sys-info and data pickles, then raw storages.
        let mut bytes = Vec::new();
        std::io::Seek::rewind(&mut (&file)).map_err(|e| Error::io(path, e))?;
        (&file)
            .take(LEGACY_PICKLE_PREFIX)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        let mut pos = 0;
        for _ in 0..4 {
            if bytes.get(pos) != Some(&0x80) {
                break;
            }
            pos = pickle_guard::scan(&bytes, pos).map_err(refuse)?;
        }
    } else {
        return Err(CheckpointError::NotTorch { path: path_buf() }.into());
    }
    Ok(())
}

fn read_state_dict(path: &Path, key: &str) -> Result<Option<NamedTensors>> {
    let reader = match PytorchReader::with_top_level_key(path, key) {
        Ok(r) => r,
        Err(burn_store::pytorch::PytorchError::KeyNotFound(_)) => return Ok(None),
        Err(error) => {
            return Err(CheckpointError::Torch {
                path: path.to_path_buf(),
                key: key.into(),
                error,
            }
            .into());
        }
    };
    let unreadable = |name: &str, error: TensorReadError| CheckpointError::TorchTensor {
        path: path.to_path_buf(),
        tensor: format!("{key}.{name}"),
        error,
    };
    let mut out = NamedTensors::new();
    for (name, snapshot) in reader.into_tensors() {
        let data = snapshot
            .to_data()
            .map_err(|e| unreadable(&name, TensorReadError::Snapshot(e)))?;
        let shape = data.shape.to_vec();
        let values = data
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| unreadable(&name, TensorReadError::Data(e)))?;
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        out.insert(name, HostTensor::new(shape, values));
    }
    Ok(Some(out))
}

impl OfficialCheckpoint {
    pub fn read(path: &Path) -> Result<Self> {
        check_pickle_safety(path)?;
        let encoder = read_state_dict(path, "encoder")?;
        let target_encoder = read_state_dict(path, "target_encoder")?;
        let predictor = read_state_dict(path, "predictor")?;
        let encoder = match (encoder, &target_encoder) {
            (Some(e), _) => e,
            (None, Some(t)) => t.clone(),
            (None, None) => {
                return Err(CheckpointError::NoEncoder {
                    path: path.to_path_buf(),
                }
                .into());
            }
        };
        Ok(Self {
            encoder,
            predictor,
            target_encoder,
        })
    }
}
