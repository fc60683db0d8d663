//! Reading and writing safetensors files as [`NamedTensors`] (f32 in memory; f16, bf16 and
//! f64 files are converted on read).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::tensors::{HostTensor, NamedTensors};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// All tensors of a safetensors file plus its `__metadata__`.
pub fn read(path: &Path) -> Result<(NamedTensors, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: safetensors::SafeTensorError| {
        use safetensors::SafeTensorError as E;
        let msg = match e {
            E::MetadataIncompleteBuffer | E::InvalidHeaderLength => format!(
                "truncated safetensors file: its header announces more data than the {} bytes it holds",
                bytes.len()
            ),
            other => format!("not a valid safetensors file: {other}"),
        };
        Error::format(path, msg)
    };
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
                return Err(Error::format(
                    path,
                    format!("tensor '{name}' has dtype {other:?}; expected a float type"),
                ));
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
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut f, &mut len).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(Error::format(
            path,
            "not a valid safetensors file: header too large",
        ));
    }
    let mut header = vec![0u8; n as usize];
    std::io::Read::read_exact(&mut f, &mut header)
        .map_err(|_| Error::format(path, "not a valid safetensors file: truncated header"))?;
    let json: serde_json::Value = serde_json::from_slice(&header).map_err(|e| {
        Error::format(
            path,
            format!("not a valid safetensors file: header is not JSON ({e})"),
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
                .map_err(|e| Error::Checkpoint(format!("tensor '{k}': {e}")))
        })
        .collect::<Result<_>>()?;
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata)
    };
    let buffer = safetensors::serialize(views, meta)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
    write_atomic(path, |w| w.write_all(&buffer))
}
