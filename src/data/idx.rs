//! IDX files (MNIST, Fashion-MNIST): big-endian header, then raw u8 data.
//!
//! The whole set is held in memory (Fashion-MNIST train is 47 MB), so `get` is a copy and can
//! never fail on a file that opened. Gzip is recognised by its magic bytes, not by the name,
//! because mirrors ship both with and without `.gz`, sometimes misnamed.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

use crate::data::{DataError, Dataset, RawImage};
use crate::error::Setting;

/// Magic of an unsigned-byte, 3-dimensional IDX file (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of an unsigned-byte, 1-dimensional IDX file (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// An IDX file after its header was checked: dimensions and data.
#[derive(Clone, Debug)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file with the given magic (gzip or raw), checking that the data has exactly
/// the size the header announces.
pub fn read_idx(path: &Path, magic: u32) -> Result<IdxArray, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut buf = BufReader::new(file);
    let head = buf.fill_buf().map_err(|e| DataError::io(path, e))?;
    let gz = head.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(buf))
    } else {
        Box::new(buf)
    };
    let what = if gz { "gzip stream" } else { "file" };
    let read_err = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            DataError::format(path, format!("truncated {what} (IDX header incomplete)"))
        } else if gz {
            DataError::Gzip {
                path: path.to_path_buf(),
                error: e,
                announced: None,
            }
        } else {
            DataError::io(path, e)
        }
    };

    let mut word = [0u8; 4];
    reader.read_exact(&mut word).map_err(read_err)?;
    let found = u32::from_be_bytes(word);
    if found != magic {
        return Err(DataError::format(
            path,
            format!(
                "wrong IDX magic 0x{found:08x}, expected 0x{magic:08x} ({})",
                if magic == IMAGES_MAGIC {
                    "u8 images, 3 dimensions"
                } else {
                    "u8 labels, 1 dimension"
                }
            ),
        ));
    }
    let ndim = (magic & 0xff) as usize;
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        reader.read_exact(&mut word).map_err(read_err)?;
        dims.push(u32::from_be_bytes(word) as usize);
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| DataError::format(path, format!("IDX dimensions {dims:?} overflow")))?;
    // Read at most one byte more than announced: detects trailing data without letting a
    // hostile header or gzip stream make us allocate without bound.
    let mut data = Vec::new();
    reader
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| {
            if gz {
                DataError::Gzip {
                    path: path.to_path_buf(),
                    error: e,
                    announced: Some(dims.clone()),
                }
            } else {
                DataError::io(path, e)
            }
        })?;
    if data.len() < expected {
        return Err(DataError::format(
            path,
            format!(
                "truncated {what}: header announces {dims:?} = {expected} bytes of data, only {} present",
                data.len()
            ),
        ));
    }
    if data.len() > expected {
        return Err(DataError::format(
            path,
            format!("more data than the header announces ({dims:?} = {expected} bytes)"),
        ));
    }
    Ok(IdxArray { dims, data })
}

/// An IDX image file plus an optional labels file, decoded into memory.
pub struct IdxDataset {
    path: PathBuf,
    n: usize,
    rows: usize,
    cols: usize,
    images: Vec<u8>,
    labels: Option<Vec<u8>>,
    num_classes: usize,
    channels: usize,
}

impl IdxDataset {
    /// Reads both files; `channels` 3 replicates the gray value (what PIL's `convert("RGB")`
    /// does for the official RGB pipeline).
    pub fn open(images: &Path, labels: Option<&Path>, channels: usize) -> Result<Self, DataError> {
        if channels != 1 && channels != 3 {
            return Err(DataError::Config(Setting::new(
                format!("{}: channels", images.display()),
                "1 or 3",
                channels,
            )));
        }
        let img = read_idx(images, IMAGES_MAGIC)?;
        let (n, rows, cols) = (img.dims[0], img.dims[1], img.dims[2]);
        if n > 0 && (rows == 0 || cols == 0) {
            return Err(DataError::format(
                images,
                format!("images of size {rows}x{cols}"),
            ));
        }
        let (labels, num_classes) = match labels {
            None => (None, 0),
            Some(lp) => {
                let lab = read_idx(lp, LABELS_MAGIC)?;
                if lab.dims[0] != n {
                    return Err(DataError::format(
                        lp,
                        format!(
                            "{} labels but {} holds {n} images",
                            lab.dims[0],
                            images.display()
                        ),
                    ));
                }
                let classes = lab.data.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
                (Some(lab.data), classes)
            }
        };
        Ok(Self {
            path: images.to_path_buf(),
            n,
            rows,
            cols,
            images: img.data,
            labels,
            num_classes,
            channels,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Image side lengths `(width, height)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.cols, self.rows)
    }

    /// Raw labels (one byte per image) when a labels file was read.
    pub fn labels(&self) -> Option<&[u8]> {
        self.labels.as_deref()
    }
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.n
    }

    fn get(&self, index: usize) -> Result<RawImage, DataError> {
        if index >= self.n {
            return Err(DataError::OutOfRange {
                dataset: self.path.display().to_string(),
                index,
                len: self.n,
            });
        }
        let sz = self.rows * self.cols;
        let gray = &self.images[index * sz..(index + 1) * sz];
        let pixels = if self.channels == 3 {
            gray.iter().flat_map(|&v| [v, v, v]).collect()
        } else {
            gray.to_vec()
        };
        Ok(RawImage {
            width: self.cols,
            height: self.rows,
            channels: self.channels,
            pixels,
        })
    }

    fn label(&self, index: usize) -> Option<usize> {
        self.labels
            .as_ref()
            .and_then(|l| l.get(index))
            .map(|&v| v as usize)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn name(&self, index: usize) -> String {
        format!("{}[{index}]", self.path.display())
    }
}
