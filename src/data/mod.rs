//! Data: datasets (IDX files, image folders), training augmentation, the parallel loader,
//! and inference preprocessing.
//!
//! Every dataset hands out decoded 8-bit images in the channel count the caller asked for, so
//! the transforms and the loader never care whether pixels came from an IDX file or a JPEG.

pub mod augment;
pub mod blur;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod resize;
pub mod spec;
pub mod transform;

pub use spec::DataSpec;

use std::path::{Path, PathBuf};

use crate::error::Setting;

/// One decoded image: 8-bit, interleaved HWC (row-major, channels innermost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawImage {
    pub width: usize,
    pub height: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// `width * height * channels` bytes.
    pub pixels: Vec<u8>,
}

impl RawImage {
    /// Same image in `channels` (1 or 3) channels. RGB to gray uses PIL's `convert("L")`
    /// weights (ITU-R 601-2, fixed point), so results match the official PIL pipeline. Other
    /// counts (from a custom [`Dataset`]) are handled without failing: extra channels such as
    /// alpha are dropped, a missing alpha is filled with 255.
    pub fn to_channels(&self, channels: usize) -> RawImage {
        if channels == self.channels {
            return self.clone();
        }
        let c = self.channels;
        let n = self.width * self.height;
        let pixels = if c == 0 {
            vec![0; n * channels]
        } else {
            let mut out = Vec::with_capacity(n * channels);
            for p in self.pixels.chunks_exact(c) {
                let (rgb, gray) = if c >= 3 {
                    ([p[0], p[1], p[2]], pil_luma(p[0], p[1], p[2]))
                } else {
                    ([p[0]; 3], p[0])
                };
                match channels {
                    0 => {}
                    1 => out.push(gray),
                    2 => out.extend_from_slice(&[gray, 255]),
                    _ => {
                        out.extend_from_slice(&rgb);
                        out.extend(std::iter::repeat_n(255, channels - 3));
                    }
                }
            }
            out
        };
        RawImage {
            width: self.width,
            height: self.height,
            channels,
            pixels,
        }
    }
}

/// PIL's RGB to L conversion: `(r*19595 + g*38470 + b*7471 + 0x8000) >> 16`.
pub fn pil_luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Which half of a dataset to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Test,
}

/// Errors of the data pipeline; each one names the file (or source spec) that is at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder that cannot be read.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        /// Said in the message, not chained as a source: said once.
        error: std::io::Error,
    },
    /// A file whose contents are not what they should be (bad magic, truncated, size mismatch).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// An image file the decoder rejects.
    #[error("{}: cannot decode image: {error}", path.display())]
    Decode {
        path: PathBuf,
        error: image::ImageError,
    },
    /// A gzip stream that ends early or does not decompress.
    #[error(
        "{}: truncated or corrupt gzip stream: {error}{}",
        path.display(),
        announced.as_ref().map(|d| format!("; the header announces {d:?}")).unwrap_or_default()
    )]
    Gzip {
        path: PathBuf,
        error: std::io::Error,
        /// The IDX dimensions, when the header was read.
        announced: Option<Vec<usize>>,
    },
    /// The loader's background thread could not be started.
    #[error("cannot start the data loader thread: {0}")]
    Thread(std::io::Error),
    /// A data source string that cannot be opened as asked.
    #[error("data source `{spec}`: {msg}")]
    Source { spec: String, msg: String },
    /// Loader or transform settings that cannot work.
    #[error("invalid data settings: {0}")]
    Config(Setting),
    /// A dataset smaller than one optimizer step.
    #[error(
        "invalid data settings: the dataset ({dataset}: {len} images) cannot fill one step of batch_size {batch_size} x replicas {replicas}"
    )]
    TooSmall {
        dataset: String,
        len: usize,
        batch_size: usize,
        replicas: usize,
    },
    /// A step past the end of the epoch asked of the loader.
    #[error("invalid data settings: step {step} is past the end of the epoch ({ipe} steps)")]
    PastEpoch { step: usize, ipe: usize },
    /// A replica the loader does not have.
    #[error(
        "invalid data settings: replica {replica} requested but the loader has {replicas} replicas"
    )]
    NoReplica { replica: usize, replicas: usize },
    /// An index past the end of a dataset.
    #[error("{dataset}: index {index} out of range (dataset has {len} images)")]
    OutOfRange {
        dataset: String,
        index: usize,
        len: usize,
    },
    /// Non-strict loading found nothing readable to substitute for a broken image.
    #[error("no readable image left in the dataset; the last failure was: {last}")]
    NothingReadable { last: Box<DataError> },
    /// Inputs that hold no image file.
    #[error("no image files found in {inputs:?}")]
    NoImages { inputs: Vec<PathBuf> },
    /// An image without the class label evaluation needs.
    #[error(
        "{image} has no class label (use a folder with one sub-folder per class, or an IDX set with labels)"
    )]
    Unlabelled { image: String },
    /// The loader's background thread ended without a result (it panicked).
    #[error("data loader thread stopped unexpectedly")]
    ProducerDied,
}

impl DataError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.as_ref().to_path_buf(),
            error: source,
        }
    }

    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        DataError::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// A random-access image collection. `Send + Sync` because the loader decodes from many
/// threads at once; `get` does the (possibly failing) decoding so that one broken file only
/// fails when it is read.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn get(&self, index: usize) -> Result<RawImage, DataError>;
    /// Class index, or `None` for unlabelled images.
    fn label(&self, index: usize) -> Option<usize>;
    /// Number of classes (0 for an unlabelled set).
    fn num_classes(&self) -> usize;
    /// The name of each class, in label order (what evaluation matches train and test
    /// classes by). Numbered sets are named by their numbers.
    fn class_names(&self) -> Vec<String> {
        (0..self.num_classes()).map(|c| c.to_string()).collect()
    }
    /// Human-readable name of one image for messages: a file path or `file[123]`.
    fn name(&self, index: usize) -> String;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<D: Dataset + ?Sized> Dataset for Box<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get(&self, index: usize) -> Result<RawImage, DataError> {
        (**self).get(index)
    }
    fn label(&self, index: usize) -> Option<usize> {
        (**self).label(index)
    }
    fn num_classes(&self) -> usize {
        (**self).num_classes()
    }
    fn class_names(&self) -> Vec<String> {
        (**self).class_names()
    }
    fn name(&self, index: usize) -> String {
        (**self).name(index)
    }
}

/// Opens a data source given as text (see [`DataSpec`]).
pub fn open_source(
    spec: &str,
    split: Split,
    channels: usize,
) -> Result<Box<dyn Dataset>, DataError> {
    DataSpec::parse(spec)?.open(split, channels)
}

/// The first `n` images of `ds` (all of them if it has fewer): quick runs on a subset.
pub fn with_max_images(ds: Box<dyn Dataset>, n: usize) -> Box<dyn Dataset> {
    if n >= ds.len() {
        return ds;
    }
    Box::new(FirstN { inner: ds, n })
}

struct FirstN {
    inner: Box<dyn Dataset>,
    n: usize,
}

impl Dataset for FirstN {
    fn len(&self) -> usize {
        self.n
    }
    fn get(&self, index: usize) -> Result<RawImage, DataError> {
        if index >= self.n {
            return Err(DataError::OutOfRange {
                dataset: self.inner.name(index),
                index,
                len: self.n,
            });
        }
        self.inner.get(index)
    }
    fn label(&self, index: usize) -> Option<usize> {
        if index < self.n {
            self.inner.label(index)
        } else {
            None
        }
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }
    fn name(&self, index: usize) -> String {
        self.inner.name(index)
    }
}
