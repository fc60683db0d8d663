//! The one parsed form of a data argument (`data.dataset`, `--train`, `--test`): what kind of
//! source it names, decided once, so that training, its inference preprocessing and the
//! evaluation commands all read the same answer.

use std::fmt;
use std::path::{Path, PathBuf};

use super::folder::FolderDataset;
use super::idx::IdxDataset;
use super::{DataError, Dataset, Split};

/// A data source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSpec {
    /// `fmnist:DIR` / `mnist:DIR`: the IDX pair `train-*` (train split) or `t10k-*` (test
    /// split) in DIR, gzip or raw, spelled `-idx3-ubyte` or `.idx3-ubyte`; labels required.
    IdxPair(PathBuf),
    /// `idx:FILE`, or a plain file: one IDX image file; labels from the file of the same name
    /// with `images-idx3` replaced by `labels-idx1`, when it exists.
    IdxFile(PathBuf),
    /// `folder:DIR`, or a plain folder: an image folder (see [`FolderDataset`]).
    Folder(PathBuf),
}

impl DataSpec {
    /// Parses a data argument; a path without prefix is a folder or an IDX file, by what is
    /// on disk.
    pub fn parse(spec: &str) -> Result<Self, DataError> {
        let err = |msg: &str| DataError::Source {
            spec: spec.to_string(),
            msg: msg.to_string(),
        };
        if let Some(dir) = spec
            .strip_prefix("fmnist:")
            .or_else(|| spec.strip_prefix("mnist:"))
        {
            return Ok(DataSpec::IdxPair(PathBuf::from(dir)));
        }
        if let Some(file) = spec.strip_prefix("idx:") {
            let path = PathBuf::from(file);
            if !path.is_file() {
                return Err(err(&format!("{} is not a file", path.display())));
            }
            return Ok(DataSpec::IdxFile(path));
        }
        let path = PathBuf::from(spec.strip_prefix("folder:").unwrap_or(spec));
        if path.is_dir() {
            Ok(DataSpec::Folder(path))
        } else if path.is_file() {
            Ok(DataSpec::IdxFile(path))
        } else {
            Err(err(
                "no such folder or file (expected fmnist:DIR, mnist:DIR, idx:FILE or an image folder)",
            ))
        }
    }

    /// IDX data: small fixed-size images (no photo preprocessing at inference).
    pub fn is_idx(&self) -> bool {
        matches!(self, DataSpec::IdxPair(_) | DataSpec::IdxFile(_))
    }

    /// Opens `split` with `channels` (1 or 3) channels.
    pub fn open(&self, split: Split, channels: usize) -> Result<Box<dyn Dataset>, DataError> {
        if channels != 1 && channels != 3 {
            return Err(self.error(format!("channels must be 1 or 3, got {channels}")));
        }
        let ds: Box<dyn Dataset> = match self {
            DataSpec::IdxPair(dir) => {
                let prefix = match split {
                    Split::Train => "train",
                    Split::Test => "t10k",
                };
                let find = |kind: &str, idx: &str| {
                    find_idx(dir, prefix, kind, idx).ok_or_else(|| {
                        self.error(format!(
                            "no {prefix}-{kind}-{idx}-ubyte[.gz] (or {prefix}-{kind}.{idx}-ubyte[.gz]) in {}",
                            dir.display()
                        ))
                    })
                };
                let images = find("images", "idx3")?;
                let labels = find("labels", "idx1")?;
                Box::new(IdxDataset::open(&images, Some(&labels), channels)?)
            }
            DataSpec::IdxFile(file) => {
                let labels = labels_next_to(file);
                Box::new(IdxDataset::open(file, labels.as_deref(), channels)?)
            }
            DataSpec::Folder(dir) => Box::new(FolderDataset::open(dir, split, channels)?),
        };
        if ds.is_empty() {
            return Err(self.error("holds no images".to_string()));
        }
        Ok(ds)
    }

    fn error(&self, msg: String) -> DataError {
        DataError::Source {
            spec: self.to_string(),
            msg,
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::IdxPair(dir) => write!(f, "fmnist:{}", dir.display()),
            DataSpec::IdxFile(file) => write!(f, "idx:{}", file.display()),
            DataSpec::Folder(dir) => write!(f, "folder:{}", dir.display()),
        }
    }
}

/// `DIR/{prefix}-{kind}-{idx}-ubyte[.gz]` or the `.{idx}` spelling, first one that exists.
fn find_idx(dir: &Path, prefix: &str, kind: &str, idx: &str) -> Option<PathBuf> {
    let names = [
        format!("{prefix}-{kind}-{idx}-ubyte"),
        format!("{prefix}-{kind}.{idx}-ubyte"),
    ];
    names
        .iter()
        .flat_map(|n| [dir.join(n), dir.join(format!("{n}.gz"))])
        .find(|p| p.is_file())
}

/// The labels file belonging to an IDX image file, if one exists next to it.
fn labels_next_to(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let replaced = if name.contains("images-idx3") {
        name.replace("images-idx3", "labels-idx1")
    } else if name.contains("images.idx3") {
        name.replace("images.idx3", "labels.idx1")
    } else {
        return None;
    };
    let base = replaced
        .strip_suffix(".gz")
        .unwrap_or(&replaced)
        .to_string();
    [replaced.clone(), base.clone(), format!("{base}.gz")]
        .into_iter()
        .map(|n| images.with_file_name(n))
        .find(|p| p.is_file())
}
