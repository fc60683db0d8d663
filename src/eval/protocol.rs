//! The paper's evaluation protocol on frozen features: extract the target encoder's pooled
//! features of a labelled train and test split, then a linear probe (L2 strength chosen on a
//! held-out 10 % of train) or a cosine kNN.

use serde::Serialize;

use super::EvalError;
use super::features::{LabeledFeatures, Layers, choose_encoder, dataset_features, dataset_pixels};
use super::{knn, probe};
use crate::checkpoint::{Checkpoint, EncoderChoice};
use crate::data::{Split, open_source};
use crate::error::{Error, Result, Setting};

/// Which data and features to evaluate on.
#[derive(Clone, Debug)]
pub struct EvalData {
    /// `fmnist:/dir`, `mnist:/dir`, `idx:/file` or a folder with class sub-folders.
    pub train: String,
    pub test: String,
    pub max_train: Option<usize>,
    pub max_test: Option<usize>,
    pub encoder: Option<EncoderChoice>,
    pub layers: Layers,
    pub batch_size: usize,
    /// Evaluate the preprocessed pixels instead of the encoder (the raw-pixel baseline).
    pub pixels: bool,
}

/// Features of both splits, plus the encoder used.
pub fn extract(
    ck: &Checkpoint,
    data: &EvalData,
) -> Result<(LabeledFeatures, LabeledFeatures, EncoderChoice)> {
    let which = choose_encoder(ck, data.encoder);
    let model = ck.build_encoder::<crate::Cpu>(which, &Default::default())?;
    let pre = &ck.description.preprocess;
    let open = |spec: &str, split| Ok::<_, Error>(open_source(spec, split, pre.channels)?);
    let depth = ck.description.encoder.depth;
    if !data.pixels && data.layers.count() > depth {
        return Err(EvalError::Config(Setting::new(
            "--layers",
            format!("at most the model's {depth} blocks"),
            format_args!(
                "{} (the last {} blocks)",
                data.layers.name(),
                data.layers.count()
            ),
        ))
        .into());
    }
    let train_ds = open(&data.train, Split::Train)?;
    let test_ds = open(&data.test, Split::Test)?;
    let (train, test) = if data.pixels {
        let train = dataset_pixels(train_ds.as_ref(), pre, data.max_train)?;
        (train, dataset_pixels(test_ds.as_ref(), pre, data.max_test)?)
    } else {
        let (l, b) = (data.layers, data.batch_size);
        let train = dataset_features(&model, train_ds.as_ref(), pre, l, b, data.max_train)?;
        (
            train,
            dataset_features(&model, test_ds.as_ref(), pre, l, b, data.max_test)?,
        )
    };
    let test = LabeledFeatures {
        labels: by_train_class(&train.class_names, &test, &data.test)?,
        num_classes: train.num_classes,
        class_names: train.class_names.clone(),
        ..test
    };
    Ok((train, test, which))
}

/// The labels of `test` as indices of the train split's classes, matched by name: the same
/// class may sit at another sorted position in each split, and a class the training split
/// does not have cannot be scored.
fn by_train_class(train: &[String], test: &LabeledFeatures, spec: &str) -> Result<Vec<usize>> {
    let index: Vec<Option<usize>> = test
        .class_names
        .iter()
        .map(|name| train.iter().position(|t| t == name))
        .collect();
    if let Some(c) = index.iter().position(Option::is_none) {
        return Err(EvalError::UnseenClass {
            spec: spec.into(),
            class: test.class_names[c].clone(),
            train_classes: train.to_vec(),
        }
        .into());
    }
    Ok(test.labels.iter().map(|&l| index[l].unwrap_or(l)).collect())
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    /// Raw-pixel baseline (no encoder).
    pub pixels: bool,
    /// Test top-1, percent.
    pub top1: f64,
    pub l2: f64,
    pub val_top1: Vec<(f64, f64)>,
    pub train_top1: f64,
    pub encoder: EncoderChoice,
    pub layers: Layers,
    pub feature_dim: usize,
    pub n_train: usize,
    pub n_test: usize,
    pub model: String,
}

pub fn linear_probe(
    ck: &Checkpoint,
    data: &EvalData,
    cfg: &probe::ProbeConfig,
) -> Result<ProbeReport> {
    let (train, test, encoder) = extract(ck, data)?;
    probe_features(ck, data, cfg, train, test, encoder)
}

fn probe_features(
    ck: &Checkpoint,
    data: &EvalData,
    cfg: &probe::ProbeConfig,
    train: LabeledFeatures,
    test: LabeledFeatures,
    encoder: EncoderChoice,
) -> Result<ProbeReport> {
    let (n_train, n_test, dim) = (train.features.n, test.features.n, train.features.dim);
    let r = probe::linear_probe(
        train.features,
        &train.labels,
        test.features,
        &test.labels,
        train.num_classes,
        cfg,
    )?;
    Ok(ProbeReport {
        pixels: data.pixels,
        top1: r.top1,
        l2: r.l2,
        val_top1: r.val_top1,
        train_top1: r.train_top1,
        encoder,
        layers: data.layers,
        feature_dim: dim,
        n_train,
        n_test,
        model: ck.path.display().to_string(),
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct KnnReport {
    pub pixels: bool,
    pub top1: f64,
    pub k: usize,
    pub temperature: f32,
    pub encoder: EncoderChoice,
    pub layers: Layers,
    pub n_train: usize,
    pub n_test: usize,
    pub model: String,
}

pub fn knn(ck: &Checkpoint, data: &EvalData, k: usize, temperature: f32) -> Result<KnnReport> {
    let (train, test, encoder) = extract(ck, data)?;
    knn_features(ck, data, k, temperature, &train, &test, encoder)
}

/// Linear probe and kNN from one feature extraction.
pub fn probe_and_knn(
    ck: &Checkpoint,
    data: &EvalData,
    cfg: &probe::ProbeConfig,
    k: usize,
    temperature: f32,
) -> Result<(ProbeReport, KnnReport)> {
    let (train, test, encoder) = extract(ck, data)?;
    let knn = knn_features(ck, data, k, temperature, &train, &test, encoder)?;
    Ok((probe_features(ck, data, cfg, train, test, encoder)?, knn))
}

fn knn_features(
    ck: &Checkpoint,
    data: &EvalData,
    k: usize,
    temperature: f32,
    train: &LabeledFeatures,
    test: &LabeledFeatures,
    encoder: EncoderChoice,
) -> Result<KnnReport> {
    let r = knn::knn_top1(
        &train.features,
        &train.labels,
        &test.features,
        &test.labels,
        train.num_classes,
        k,
        temperature,
    )?;
    Ok(KnnReport {
        pixels: data.pixels,
        top1: r.top1,
        k: r.k,
        temperature: r.temperature,
        encoder,
        layers: data.layers,
        n_train: r.n_train,
        n_test: r.n_test,
        model: ck.path.display().to_string(),
    })
}
