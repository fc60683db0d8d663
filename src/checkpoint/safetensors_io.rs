//! Reading and writing safetensors files as [`NamedTensors`] (f32 in memory; f16, bf16 and
//! f64 files are converted on read).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensorError, SafeTensors, tensor::TensorView};

use super::error::CheckpointError;
use super::tensors::{HostTensor, NamedTensors};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// All tensors of a safetensors file plus its `__metadata__`.
pub fn read(path: &Path) -> Result<(NamedTensors, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: SafeTensorError| invalid(path, bytes.len() as u64, e);
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let st = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let mut out = NamedTensors::new();
    for (name, view) in st.iter() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(CheckpointError::Dtype {
                    path: path.to_path_buf(),
                    tensor: name.to_string(),
                    dtype: other,
                }
                .into());
            }
        };
        out.insert(
            name.to_string(),
            HostTensor::new(view.shape().to_vec(), values),
        );
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Only the `__metadata__` map (cheap: reads the header).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut read = |buf: &mut [u8], short: SafeTensorError| {
        std::io::Read::read_exact(&mut f, buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => invalid(path, file_len, short),
            _ => Error::io(path, e),
        })
    };
    let mut len = [0u8; 8];
    read(&mut len, SafeTensorError::HeaderTooSmall)?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(invalid(path, file_len, SafeTensorError::HeaderTooLarge));
    }
    let mut header = vec![0u8; n as usize];
    read(&mut header, SafeTensorError::InvalidHeaderLength)?;
    let json: serde_json::Value = serde_json::from_slice(&header).map_err(|e| {
        invalid(
            path,
            file_len,
            SafeTensorError::InvalidHeaderDeserialization(e),
        )
    })?;
    let meta = json
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok(meta)
}

/// Write `tensors` (f32) atomically with `metadata`.
pub fn write(path: &Path, tensors: &NamedTensors, metadata: HashMap<String, String>) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|error| cannot_write(path, error))
        })
        .collect::<Result<_>>()?;
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata)
    };
    let buffer = safetensors::serialize(views, meta).map_err(|error| cannot_write(path, error))?;
    write_atomic(path, |w| w.write_all(&buffer))
}

/// A file the safetensors format rejects; one shorter than its header says is `Truncated`.
fn invalid(path: &Path, len: u64, error: SafeTensorError) -> Error {
    let path = path.to_path_buf();
    match error {
        SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::InvalidHeaderLength => {
            CheckpointError::Truncated { path, len }
        }
        error => CheckpointError::Safetensors { path, error },
    }
    .into()
}

fn cannot_write(path: &Path, error: SafeTensorError) -> Error {
    CheckpointError::Write {
        path: path.to_path_buf(),
        error,
    }
    .into()
}
