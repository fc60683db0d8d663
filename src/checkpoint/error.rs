//! Checkpoint errors: which file (or which part of it) and what is wrong with it.

use std::path::PathBuf;

use safetensors::SafeTensorError;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "{}: not a checkpoint this program knows: expected an official .pth.tar, a native ijepa .safetensors or a Hugging Face directory (config.json + model.safetensors)",
        path.display()
    )]
    UnknownFormat { path: PathBuf },
    #[error(
        "{}: folder holds neither config.json + model.safetensors (Hugging Face) nor latest.safetensors (ijepa run)",
        path.display()
    )]
    UnknownFolder { path: PathBuf },
    #[error("{}: neither a file nor a folder", path.display())]
    NotAFile { path: PathBuf },
    /// Shorter than its header says.
    #[error(
        "{}: truncated safetensors file: its header announces more data than the {len} bytes it holds",
        path.display()
    )]
    Truncated { path: PathBuf, len: u64 },
    /// A file the safetensors format rejects.
    #[error("{}: not a valid safetensors file: {error}", path.display())]
    Safetensors {
        path: PathBuf,
        error: SafeTensorError,
    },
    #[error("{}: tensor '{tensor}' has dtype {dtype:?}; expected a float type", path.display())]
    Dtype {
        path: PathBuf,
        tensor: String,
        dtype: safetensors::Dtype,
    },
    /// Tensors that cannot be serialised (a shape that does not match its data).
    #[error("{}: cannot write the checkpoint: {error}", path.display())]
    Write {
        path: PathBuf,
        error: SafeTensorError,
    },
    #[error(
        "{}: safetensors file without '{}' metadata: not a native ijepa checkpoint",
        path.display(),
        super::native::FORMAT
    )]
    NotNative { path: PathBuf },
    #[error("{}: native checkpoint without its 'ijepa' description", path.display())]
    NoDescription { path: PathBuf },
    #[error("{}: bad model description: {error}", path.display())]
    Description {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error(
        "{}: written by a newer ijepa (format version {version}, this build reads {})",
        path.display(),
        super::native::FORMAT_VERSION
    )]
    NewerVersion { path: PathBuf, version: u32 },
    /// A JSON file of a Hugging Face directory that is not JSON of the expected layout.
    #[error("{}: invalid JSON: {error}", path.display())]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// A PyTorch file whose pickle would run code or reference anything but tensors.
    #[error(
        "{}: refusing to read this PyTorch file: {why}; only tensors, storages and plain containers are accepted (no Python code is ever run)",
        path.display()
    )]
    UnsafePickle { path: PathBuf, why: String },
    #[error("{}: not a PyTorch checkpoint (neither a zip archive nor a pickle)", path.display())]
    NotTorch { path: PathBuf },
    #[error("{}: not a readable torch zip archive: {error}", path.display())]
    Zip {
        path: PathBuf,
        error: zip::result::ZipError,
    },
    #[error("{}: zip archive without exactly one data.pkl: not a torch.save file", path.display())]
    NoDataPickle { path: PathBuf },
    #[error("{}: cannot read {entry}: {error}", path.display())]
    ZipEntry {
        path: PathBuf,
        entry: String,
        error: zip::result::ZipError,
    },
    #[error("{}: cannot read '{key}': {error}", path.display())]
    Torch {
        path: PathBuf,
        key: String,
        error: burn_store::pytorch::PytorchError,
    },
    #[error("{}: tensor '{tensor}' unreadable: {error}", path.display())]
    TorchTensor {
        path: PathBuf,
        tensor: String,
        error: TensorReadError,
    },
    #[error(
        "{}: no 'encoder' or 'target_encoder' state dict at the top level: not an I-JEPA checkpoint",
        path.display()
    )]
    NoEncoder { path: PathBuf },
    /// A tensor the model description is inferred from is absent.
    #[error("{}: state dict has no '{key}'", path.display())]
    MissingTensor { path: PathBuf, key: String },
    /// A tensor of a shape the model cannot have: `pos_embed has 10 tokens, not a square grid`.
    #[error("{}: {key} has shape {found:?}; expected {expected}", path.display())]
    Shape {
        path: PathBuf,
        key: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error(
        "{}: holds no target encoder (Hugging Face models are the context encoder): use --encoder context",
        path.display()
    )]
    NoTargetEncoder { path: PathBuf },
    /// A model part this project adds that the format cannot hold.
    #[error(
        "{}: a Hugging Face IJepaModel has no {what}: export this model in the native format",
        path.display()
    )]
    NoHfCounterpart { path: PathBuf, what: &'static str },
    #[error("{}: holds no predictor", path.display())]
    NoPredictor { path: PathBuf },
    /// Tensors that do not fit the model they are loaded into; `what` names the file and part.
    #[error(
        "{what} does not fit the model: {}",
        mismatch_words(missing, unexpected, wrong_shapes)
    )]
    Mismatch {
        what: String,
        missing: Vec<String>,
        unexpected: Vec<String>,
        wrong_shapes: Vec<ShapeMismatch>,
    },
    /// A Hugging Face state dict with keys it should not have, or q / k / v it cannot merge.
    #[error(
        "{}: not an IJepaModel state dict: unexpected keys {unexpected:?}, incomplete or mismatched q/k/v {incomplete:?}",
        path.display()
    )]
    NotIJepa {
        path: PathBuf,
        unexpected: Vec<String>,
        incomplete: Vec<String>,
    },
    /// Preprocessing stored in the checkpoint that does not produce what its encoder takes.
    #[error(
        "{}: preprocessing gives {channels} channels at {size} px, the model takes {in_chans} at {image_size}",
        path.display()
    )]
    Preprocess {
        path: PathBuf,
        channels: usize,
        size: usize,
        in_chans: usize,
        image_size: usize,
    },
    #[error(
        "{}: not a training checkpoint (no training state): cannot resume from it",
        path.display()
    )]
    NotTraining { path: PathBuf },
    #[error("{}: bad training state: {error}", path.display())]
    TrainingState {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// Optimizer moments for a parameter the model does not have.
    #[error("{}: optimizer state for unknown parameter '{name}'", path.display())]
    OptimizerKey { path: PathBuf, name: String },
    /// A resume from a checkpoint of other model shapes than the configuration's.
    #[error(
        "{}: was trained with other model shapes than the configuration says; resume with the same config",
        path.display()
    )]
    OtherModel { path: PathBuf },
    /// A resume with another epoch length or replica count than the checkpoint's.
    #[error(
        "{}: was written for {ipe} steps per epoch x {replicas} replicas (ranks x optimization.accum_steps), this run has {run_ipe} x {run_replicas}: resume with the same dataset and batch size, and ranks x accum_steps = {replicas} (e.g. 2 ranks -> 1 process with accum_steps 2)",
        path.display()
    )]
    OtherRun {
        path: PathBuf,
        ipe: usize,
        replicas: usize,
        run_ipe: usize,
        run_replicas: usize,
    },
}

/// Why a tensor of a PyTorch file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TensorReadError {
    #[error("{0}")]
    Snapshot(burn_store::TensorSnapshotError),
    #[error("{0}")]
    Data(burn::tensor::DataError),
}

/// One tensor whose shape differs from the model's.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeMismatch {
    pub key: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

impl std::fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {:?}, found {:?}",
            self.key, self.expected, self.found
        )
    }
}

fn mismatch_words(missing: &[String], unexpected: &[String], wrong: &[ShapeMismatch]) -> String {
    let mut parts = vec![];
    if !missing.is_empty() {
        parts.push(format!("missing keys {}", preview(missing)));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected keys {}", preview(unexpected)));
    }
    if !wrong.is_empty() {
        parts.push(format!("wrong shapes {}", preview(wrong)));
    }
    parts.join("; ")
}

/// The first few items of a long list, and how many more there are.
fn preview<T: std::fmt::Display>(items: &[T]) -> String {
    const SHOW: usize = 6;
    let shown: Vec<String> = items.iter().take(SHOW).map(|s| s.to_string()).collect();
    let more = items.len().saturating_sub(SHOW);
    if more > 0 {
        format!("[{}, ... and {more} more]", shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}
