//! `ijepa probe` and `ijepa knn`.

use std::path::PathBuf;

use anyhow::Result;
use ijepa::checkpoint::EncoderChoice;
use ijepa::eval::features::Layers;
use ijepa::eval::probe::ProbeConfig;
use ijepa::eval::protocol::{EvalData, knn, linear_probe};

use crate::common::ModelArgs;
use crate::embed::EncoderArg;

/// Data and feature flags shared by `probe` and `knn`.
#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Labelled training data: `fmnist:/usr/share/datasets/fashion-mnist`, `mnist:/dir`, or a
    /// folder with one sub-folder per class (its train split is used).
    #[arg(long)]
    pub train: String,
    /// Labelled test data (its test split is used).
    #[arg(long)]
    pub test: String,
    /// Encoder to evaluate (default: target, as the paper).
    #[arg(long, value_enum)]
    pub encoder: Option<EncoderArg>,
    /// `last`: pooled last layer; `last4`: concatenation of the last 4 layers' pooled outputs.
    #[arg(long, value_enum, default_value = "last")]
    pub layers: LayersArg,
    /// Use only the first N training images.
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    pub max_test: Option<usize>,
    #[arg(long, default_value_t = 256, value_parser = crate::common::positive)]
    pub batch_size: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Evaluate the model's preprocessed pixels instead of its features (raw-pixel baseline).
    #[arg(long)]
    pub pixels: bool,
    /// Write the result as JSON (`top1` in percent, and the details).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LayersArg {
    Last,
    Last4,
}

impl EvalArgs {
    fn data(&self) -> EvalData {
        EvalData {
            train: self.train.clone(),
            test: self.test.clone(),
            max_train: self.max_train,
            max_test: self.max_test,
            encoder: self.encoder.map(|e| match e {
                EncoderArg::Target => EncoderChoice::Target,
                EncoderArg::Context => EncoderChoice::Context,
            }),
            layers: match self.layers {
                LayersArg::Last => Layers::Last,
                LayersArg::Last4 => Layers::Last4,
            },
            batch_size: self.batch_size,
            pixels: self.pixels,
        }
    }
}

fn write(path: &Option<PathBuf>, value: &impl serde::Serialize) -> Result<()> {
    if let Some(p) = path {
        ijepa::fsutil::write_bytes_atomic(p, serde_json::to_string_pretty(value)?.as_bytes())?;
    }
    Ok(())
}

/// Linear probe (multinomial logistic regression on standardised frozen features).
#[derive(clap::Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub eval: EvalArgs,
}

pub fn run_probe(a: ProbeArgs) -> Result<()> {
    crate::common::set_threads(a.eval.threads)?;
    let ck = a.eval.model.read()?;
    let r = linear_probe(&ck, &a.eval.data(), &ProbeConfig::default())?;
    let what = if r.pixels {
        "raw pixels".to_string()
    } else {
        format!("{:?} encoder, {:?} features", r.encoder, r.layers)
    };
    println!(
        "linear probe top-1 {:.2} % ({what} of dim {}, L2 {:.0e} chosen on 10 % of train; {} train / {} test images)",
        r.top1, r.feature_dim, r.l2, r.n_train, r.n_test
    );
    write(&a.eval.output, &r)
}

/// Weighted kNN on cosine similarity (votes exp(sim / T), the DINO protocol).
#[derive(clap::Args)]
pub struct KnnArgs {
    #[command(flatten)]
    pub eval: EvalArgs,
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f32,
}

pub fn run_knn(a: KnnArgs) -> Result<()> {
    crate::common::set_threads(a.eval.threads)?;
    let ck = a.eval.model.read()?;
    let r = knn(&ck, &a.eval.data(), a.k, a.temperature)?;
    println!(
        "kNN top-1 {:.2} % (k {}, T {}, {:?} encoder; {} train / {} test images)",
        r.top1, r.k, r.temperature, r.encoder, r.n_train, r.n_test
    );
    write(&a.eval.output, &r)
}

/// Linear probe and kNN together, from one feature extraction.
#[derive(clap::Args)]
pub struct BothArgs {
    #[command(flatten)]
    pub eval: EvalArgs,
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f32,
}

pub fn run_both(a: BothArgs) -> Result<()> {
    crate::common::set_threads(a.eval.threads)?;
    let ck = a.eval.model.read()?;
    let (p, k) = ijepa::eval::protocol::probe_and_knn(
        &ck,
        &a.eval.data(),
        &ProbeConfig::default(),
        a.k,
        a.temperature,
    )?;
    println!(
        "linear probe top-1 {:.2} %  kNN top-1 {:.2} %  ({} train / {} test images, feature dim {})",
        p.top1, k.top1, p.n_train, p.n_test, p.feature_dim
    );
    write(
        &a.eval.output,
        &serde_json::json!({"probe": p, "knn": k, "top1": p.top1}),
    )
}
