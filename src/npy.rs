//! `.npy` arrays in and out (NumPy's format, via `npyz`), with errors that name the file.

use std::path::{Path, PathBuf};

use npyz::{NpyFile, Order, WriterBuilder};

use crate::checkpoint::HostTensor;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// A `.npy` file that cannot be read as the array asked for.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// A header NumPy's format reader rejects.
    #[error("{}: not a valid .npy file: {error}", path.display())]
    Header {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Array data that cannot be read.
    #[error("{}: cannot read the array data: {error}", path.display())]
    Data {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A header that announces more data than the file holds.
    #[error(
        "{}: array of shape {shape:?} needs more data than the file's {len} bytes (truncated file?)",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        shape: Vec<u64>,
        len: u64,
    },
    /// Fewer values than the shape says.
    #[error(
        "{}: array data is shorter than its shape says (truncated file?)",
        path.display()
    )]
    Short { path: PathBuf },
    #[error("{}: array has dtype {dtype}, expected {expected}", path.display())]
    Dtype {
        path: PathBuf,
        dtype: String,
        expected: &'static str,
    },
}

/// Opens an array, refusing one whose header announces more data than the file holds
/// (before anything the size of the data is allocated).
fn open(path: &Path) -> Result<NpyFile<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let npy = NpyFile::new(std::io::BufReader::new(file)).map_err(|error| NpyError::Header {
        path: path.to_path_buf(),
        error,
    })?;
    let bytes = npy
        .shape()
        .iter()
        .try_fold(npy.dtype().num_bytes().unwrap_or(1) as u64, |a, &d| {
            a.checked_mul(d)
        });
    if bytes.is_none_or(|b| b > len) {
        return Err(NpyError::Truncated {
            path: path.to_path_buf(),
            shape: npy.shape().to_vec(),
            len,
        }
        .into());
    }
    Ok(npy)
}

fn shape_of<R: std::io::Read>(npy: &NpyFile<R>) -> Vec<usize> {
    npy.shape().iter().map(|&d| d as usize).collect()
}

/// `data` of an array of `shape` stored in `order`, as row-major (C-order) values.
fn c_order<T: Copy>(data: Vec<T>, shape: &[usize], order: Order) -> Vec<T> {
    if order == Order::C || shape.len() < 2 {
        return data;
    }
    // Fortran order: the first index varies fastest. Walk the C-order multi-index.
    let mut strides = vec![1usize; shape.len()];
    for d in 1..shape.len() {
        strides[d] = strides[d - 1] * shape[d - 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..data.len() {
        out.push(data[idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// A float array (f32 or f64 on disk) as f32.
pub fn read_f32(path: &Path) -> Result<HostTensor> {
    let npy = open(path)?;
    let shape = shape_of(&npy);
    let order = npy.order();
    let dtype = npy.dtype().descr().trim_matches('\'').to_string();
    let bad = |error| NpyError::Data {
        path: path.to_path_buf(),
        error,
    };
    let data: Vec<f32> = match dtype.as_str() {
        "<f4" => npy.into_vec::<f32>().map_err(bad)?,
        "<f8" => npy
            .into_vec::<f64>()
            .map_err(bad)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        other => {
            return Err(NpyError::Dtype {
                path: path.to_path_buf(),
                dtype: other.into(),
                expected: "float32 (<f4) or float64",
            }
            .into());
        }
    };
    if data.len() != shape.iter().product::<usize>() {
        return Err(NpyError::Short {
            path: path.to_path_buf(),
        }
        .into());
    }
    let data = c_order(data, &shape, order);
    Ok(HostTensor::new(shape, data))
}

/// An integer array (any common integer dtype) as i64, with its shape.
pub fn read_i64(path: &Path) -> Result<(Vec<usize>, Vec<i64>)> {
    let npy = open(path)?;
    let shape = shape_of(&npy);
    let order = npy.order();
    let dtype = npy.dtype().descr().trim_matches('\'').to_string();
    let bad = |error| NpyError::Data {
        path: path.to_path_buf(),
        error,
    };
    let data: Vec<i64> = match dtype.as_str() {
        "<i8" => npy.into_vec::<i64>().map_err(bad)?,
        "<i4" => npy
            .into_vec::<i32>()
            .map_err(bad)?
            .into_iter()
            .map(i64::from)
            .collect(),
        "<u4" => npy
            .into_vec::<u32>()
            .map_err(bad)?
            .into_iter()
            .map(i64::from)
            .collect(),
        "<u8" => npy
            .into_vec::<u64>()
            .map_err(bad)?
            .into_iter()
            .map(|v| v as i64)
            .collect(),
        other => {
            return Err(NpyError::Dtype {
                path: path.to_path_buf(),
                dtype: other.into(),
                expected: "an integer type (int64)",
            }
            .into());
        }
    };
    if data.len() != shape.iter().product::<usize>() {
        return Err(NpyError::Short {
            path: path.to_path_buf(),
        }
        .into());
    }
    let data = c_order(data, &shape, order);
    Ok((shape, data))
}

/// Write a little-endian float32 array atomically.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    write_atomic(path, |w| {
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(w)
            .begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()
    })
}

pub fn write_host(path: &Path, t: &HostTensor) -> Result<()> {
    write_f32(path, &t.shape, &t.data)
}
