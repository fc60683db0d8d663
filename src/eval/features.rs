//! Feature extraction: images or preprocessed pixels through a frozen encoder, pooled.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::Cpu;
use crate::checkpoint::{Checkpoint, EncoderChoice, Format, HostTensor};
use crate::data::DataError;
use crate::data::transform::Preprocess;
use crate::error::{CheckpointError, Error, Result};
use crate::eval::EvalError;
use crate::model::VisionTransformer;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Average over tokens: `[N, D]`.
    Mean,
    /// Every token: `[N, tokens, D]`.
    None,
}

pub struct EmbedRequest {
    /// `None`: the target encoder when the checkpoint has one, else the context encoder.
    pub encoder: Option<EncoderChoice>,
    pub pool: Pool,
    pub batch_size: usize,
}

pub struct Embedding {
    pub features: HostTensor,
    pub encoder: EncoderChoice,
}

/// The encoder a request means for this checkpoint.
pub fn choose_encoder(ck: &Checkpoint, asked: Option<EncoderChoice>) -> EncoderChoice {
    asked.unwrap_or(
        if ck.target_encoder.is_some() && ck.format != Format::HuggingFace {
            EncoderChoice::Target
        } else {
            EncoderChoice::Context
        },
    )
}

const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "pgm",
];

pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files under the given paths: files as given, folders walked recursively in sorted order.
pub fn list_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if is_image_file(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = vec![];
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
    }
    if out.is_empty() {
        return Err(DataError::NoImages {
            inputs: inputs.to_vec(),
        }
        .into());
    }
    Ok(out)
}

/// Decode and preprocess one image file into CHW floats.
pub fn load_image(path: &Path, pre: &Preprocess) -> Result<Vec<f32>> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|error| DataError::Decode {
            path: path.to_path_buf(),
            error,
        })?;
    Ok(pre.apply(&img))
}

/// Check that preprocessed pixels fit the encoder: `[N, C, H, W]` with the model's C and size.
pub fn check_pixels(path: &Path, shape: &[usize], cfg: &crate::model::EncoderConfig) -> Result<()> {
    let ok = matches!(shape, [_, c, h, w] if *c == cfg.in_chans && *h == cfg.image_size && *w == cfg.image_size);
    if !ok {
        return Err(Error::Pixels {
            path: path.to_path_buf(),
            found: shape.to_vec(),
            channels: cfg.in_chans,
            size: cfg.image_size,
        });
    }
    Ok(())
}

/// Forward `[N, C, H, W]` pixels in batches and pool.
pub fn embed_pixels(
    model: &VisionTransformer<Cpu>,
    pixels: &HostTensor,
    pool: Pool,
    batch_size: usize,
) -> HostTensor {
    let dev = Default::default();
    let n = pixels.shape[0];
    let per_image: usize = pixels.shape[1..].iter().product();
    let (tokens, d) = (model.num_patches(), model.embed_dim());
    let mut out = Vec::with_capacity(n * if pool == Pool::Mean { d } else { tokens * d });
    for start in (0..n).step_by(batch_size.max(1)) {
        let b = batch_size.min(n - start);
        let mut shape = pixels.shape.clone();
        shape[0] = b;
        let chunk = HostTensor::new(
            shape,
            pixels.data[start * per_image..(start + b) * per_image].to_vec(),
        );
        let x: Tensor<Cpu, 4> = chunk.to_tensor(&dev);
        let y = model.forward(x, None);
        let y = match pool {
            Pool::Mean => HostTensor::from_tensor(y.mean_dim(1)),
            Pool::None => HostTensor::from_tensor(y),
        };
        out.extend(y.data);
    }
    let shape = match pool {
        Pool::Mean => vec![n, d],
        Pool::None => vec![n, tokens, d],
    };
    HostTensor::new(shape, out)
}

/// Embed the images (or the one `.npy`) named by `inputs`.
pub fn embed_paths(ck: &Checkpoint, inputs: &[PathBuf], req: &EmbedRequest) -> Result<Embedding> {
    let which = choose_encoder(ck, req.encoder);
    let cfg = &ck.description.encoder;
    let model = ck.build_encoder::<Cpu>(which, &Default::default())?;
    let pixels = match inputs {
        [one] if one.extension().is_some_and(|e| e == "npy") => {
            let t = crate::npy::read_f32(one)?;
            check_pixels(one, &t.shape, cfg)?;
            t
        }
        _ => {
            let files = list_images(inputs)?;
            let pre = &ck.description.preprocess;
            if pre.channels != cfg.in_chans || pre.size != cfg.image_size {
                return Err(CheckpointError::Preprocess {
                    path: ck.path.clone(),
                    channels: pre.channels,
                    size: pre.size,
                    in_chans: cfg.in_chans,
                    image_size: cfg.image_size,
                }
                .into());
            }
            let images: Vec<Vec<f32>> = files
                .par_iter()
                .map(|p| load_image(p, pre))
                .collect::<Result<_>>()?;
            let data = images.concat();
            HostTensor::new(
                vec![files.len(), cfg.in_chans, cfg.image_size, cfg.image_size],
                data,
            )
        }
    };
    Ok(Embedding {
        features: embed_pixels(&model, &pixels, req.pool, req.batch_size),
        encoder: which,
    })
}

/// Which pooled features the evaluation reads (paper protocol: the better of the two).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layers {
    /// Average-pooled output of the last layer (after the final norm).
    Last,
    /// Concatenation of the average-pooled outputs of the last 4 blocks (each normed).
    Last4,
}

impl Layers {
    /// The flag's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Layers::Last => "last",
            Layers::Last4 => "last4",
        }
    }

    pub fn count(self) -> usize {
        match self {
            Layers::Last => 1,
            Layers::Last4 => 4,
        }
    }
}

/// Features and labels of a labelled dataset.
pub struct LabeledFeatures {
    pub features: super::matrix::Features,
    pub labels: Vec<usize>,
    pub num_classes: usize,
    /// Class names in label order.
    pub class_names: Vec<String>,
}

/// The preprocessed pixels themselves as features (the raw-pixel baseline of the protocol).
pub fn dataset_pixels(
    ds: &dyn crate::data::Dataset,
    pre: &Preprocess,
    max: Option<usize>,
) -> Result<LabeledFeatures> {
    let n = max.map_or(ds.len(), |m| m.min(ds.len()));
    let labels: Vec<usize> = (0..n)
        .map(|i| ds.label(i).ok_or_else(|| unlabelled(ds, i)))
        .collect::<Result<_>>()?;
    let pixels: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let img = ds.get(i)?;
            Ok(pre.apply_raw(&img))
        })
        .collect::<Result<_>>()?;
    let dim = pre.channels * pre.size * pre.size;
    let features = super::matrix::Features::new(n, dim, pixels.concat())?;
    Ok(LabeledFeatures {
        features,
        labels,
        num_classes: ds.num_classes(),
        class_names: ds.class_names(),
    })
}

/// Frozen features of the first `max` images of `ds` (every image when `None`), preprocessed
/// the way the model expects, in dataset order. Images are decoded in parallel per batch.
pub fn dataset_features(
    model: &VisionTransformer<Cpu>,
    ds: &dyn crate::data::Dataset,
    pre: &Preprocess,
    layers: Layers,
    batch_size: usize,
    max: Option<usize>,
) -> Result<LabeledFeatures> {
    let n = max.map_or(ds.len(), |m| m.min(ds.len()));
    if n == 0 {
        return Err(EvalError::Empty("the dataset".into()).into());
    }
    let num_classes = ds.num_classes();
    let labels: Vec<usize> = (0..n)
        .map(|i| ds.label(i).ok_or_else(|| unlabelled(ds, i)))
        .collect::<Result<_>>()?;
    let dev = Default::default();
    let per = pre.channels * pre.size * pre.size;
    let mut data = Vec::new();
    let mut dim = 0;
    for start in (0..n).step_by(batch_size.max(1)) {
        let end = (start + batch_size.max(1)).min(n);
        let pixels: Vec<Vec<f32>> = (start..end)
            .into_par_iter()
            .map(|i| {
                let img = ds.get(i)?;
                Ok(pre.apply_raw(&img))
            })
            .collect::<Result<_>>()?;
        let b = end - start;
        let x: Tensor<Cpu, 4> =
            HostTensor::new(vec![b, pre.channels, pre.size, pre.size], pixels.concat())
                .to_tensor(&dev);
        debug_assert_eq!(x.shape().num_elements(), b * per);
        let f = HostTensor::from_tensor(model.pooled(x, layers.count()));
        dim = f.shape[1];
        data.extend(f.data);
    }
    let features = super::matrix::Features::new(n, dim, data)?;
    Ok(LabeledFeatures {
        features,
        labels,
        num_classes,
        class_names: ds.class_names(),
    })
}

/// Evaluation needs a class label for image `i`, and `ds` has none.
fn unlabelled(ds: &dyn crate::data::Dataset, i: usize) -> Error {
    DataError::Unlabelled { image: ds.name(i) }.into()
}
