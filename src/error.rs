//! One error type for the library: every variant says which file, key or shape is wrong.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot work (model shapes, mask settings, training config).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An I/O failure on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file that exists but whose contents are not what they should be.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// Tensors that do not fit the model (missing / unexpected keys, wrong shapes).
    #[error("{0}")]
    Checkpoint(String),
    /// A data-parallel peer died, the network failed, or the peers disagree.
    #[error("data-parallel run stopped: {0}")]
    Peer(String),
    /// Inputs of the wrong shape or with out-of-range values.
    #[error("{0}")]
    Shape(String),
    #[error("{0}")]
    Mask(#[from] crate::masks::MaskError),
    /// The loss became NaN or infinite: nothing was updated.
    #[error(
        "diverged at step {step}: the loss is {loss}; no update was applied (lower optimization.lr, raise the EMA momentum or check the data)"
    )]
    Diverged { step: u64, loss: f64 },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}
