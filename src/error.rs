//! One error type for the library: every variant says which file, key or shape is wrong.

use std::path::{Path, PathBuf};

mod config;

pub use crate::checkpoint::error::{CheckpointError, ShapeMismatch, TensorReadError};
pub use config::{ConfigError, OverrideProblem, Setting};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot work (model shapes, training config, flags).
    #[error(transparent)]
    Config(#[from] ConfigError),
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
    /// An array of pixels that does not fit the encoder: `[N, C, H, W]` with its C and size.
    #[error(
        "{}: array has shape {found:?}; the model expects [N, {channels}, {size}, {size}] float32 pixels",
        path.display()
    )]
    Pixels {
        path: PathBuf,
        found: Vec<usize>,
        channels: usize,
        size: usize,
    },
    /// A checkpoint that cannot be read or does not fit the model.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A data-parallel peer died, the network failed, or the peers disagree.
    #[error(transparent)]
    Peer(#[from] crate::train::distributed::PeerError),
    /// A device that cannot be used (no driver, no GPU support in this build).
    #[error("{device}: {why}")]
    Device { device: String, why: String },
    /// A `.npy` file that cannot be read as the array asked for.
    #[error(transparent)]
    Npy(#[from] crate::npy::NpyError),
    /// A `log.csv` that cannot be read or appended to.
    #[error(
        "{}: {}{error}",
        path.display(),
        if error.is_io_error() { "" } else { "not a training log: " }
    )]
    Log { path: PathBuf, error: csv::Error },
    /// A plot (the loss curve, the monitor's curves) could not be drawn.
    #[error("{}: cannot draw the {what}: {error}", path.display())]
    Plot {
        path: PathBuf,
        what: &'static str,
        error: crate::train::monitor::PlotError,
    },
    /// An image file (`ijepa viz`'s grid) that cannot be written.
    #[error("{}: cannot write the image: {error}", path.display())]
    ImageWrite {
        path: PathBuf,
        error: image::ImageError,
    },
    /// A helper thread or runtime the program needs could not be started.
    #[error("cannot start {what}: {error}")]
    Thread {
        what: &'static str,
        error: std::io::Error,
    },
    /// Mask index sets that do not fit together or the model.
    #[error(transparent)]
    MaskIndices(#[from] crate::model::MaskIndexError),
    /// A curve plot asked for runs without any epoch row.
    #[error("{}: no epoch rows to draw", path.display())]
    NothingToDraw { path: PathBuf },
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
}
