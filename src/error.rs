//! One error type for the library: every variant says which file, key or shape is wrong.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot work (model shapes, mask settings, training config).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A data source, image or data file that cannot be read as asked.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The evaluation cannot run on these features or labels.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// A run stopped by a signal after writing its last checkpoint.
    #[error(
        "stopped by {signal} after step {step}; {} holds it: continue with --resume",
        checkpoint.display()
    )]
    Interrupted {
        signal: &'static str,
        step: u64,
        checkpoint: PathBuf,
    },
    /// An I/O failure on a named file.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        /// Said in the message, not chained as a source: said once.
        error: std::io::Error,
    },
    /// An error about the contents of a named file (the error kept whole, not flattened).
    #[error("{}: {inner}", path.display())]
    InFile { path: PathBuf, inner: Box<Error> },
    /// Writing or reading JSON of this program's own structures.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
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
    #[error(transparent)]
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
            error: source,
        }
    }

    /// `inner`, said of the file at `path`.
    pub fn in_file(path: impl AsRef<Path>, inner: Error) -> Self {
        Error::InFile {
            path: path.as_ref().to_path_buf(),
            inner: Box::new(inner),
        }
    }

    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}
