//! The online quality monitor: every epoch, kNN top-1 of the target encoder's features on a
//! fixed labelled subset of the pretraining images, so a run shows whether its features get
//! better or worse while it trains (next to the collapse monitor's effective rank).
//!
//! Which images: the first `bank` images of the pretraining set are the kNN's memory bank, the
//! next `queries` images are classified against it. Both come from the training split (whose
//! labels pretraining never reads), so the test split stays untouched for the final
//! evaluation. Protocol as `ijepa knn`: average-pooled last layer of the target encoder,
//! cosine similarity, k 20, votes weighted by `exp(sim / 0.07)`.

use burn::tensor::{Tensor, TensorData};

use crate::data::Dataset;
use crate::data::transform::Preprocess;
use crate::error::{Error, Result};
use crate::eval::error::EvalError;
use crate::eval::knn::{DEFAULT_K, DEFAULT_TEMPERATURE, knn_top1};
use crate::eval::matrix::Features;
use crate::model::VisionTransformer;

/// Images per forward pass of the monitor.
const BATCH: usize = 256;

/// The fixed labelled subset, preprocessed once.
pub struct KnnMonitor {
    pixels: Vec<f32>,
    labels: Vec<usize>,
    bank: usize,
    num_classes: usize,
    /// `[C, H, W]` of one image.
    shape: [usize; 3],
}

impl KnnMonitor {
    /// The subset of `ds` (`None` when the set has no labels, or is too small for a bank of
    /// at least 10 images and 10 queries). Unreadable images are left out.
    pub fn new(ds: &dyn Dataset, pre: &Preprocess, bank: usize, queries: usize) -> Option<Self> {
        if ds.num_classes() == 0 || bank == 0 || queries == 0 {
            return None;
        }
        let n = ds.len();
        // A small set keeps the same 5:1 proportion rather than leaving no queries.
        let (bank, queries) = if bank + queries <= n {
            (bank, queries)
        } else {
            let b = n * bank / (bank + queries);
            (b, n - b)
        };
        if bank < 10 || queries < 10 {
            return None;
        }
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        let mut kept_bank = 0;
        for i in 0..bank + queries {
            let (Ok(img), Some(label)) = (ds.get(i), ds.label(i)) else {
                continue;
            };
            pixels.extend(pre.apply_raw(&img));
            labels.push(label);
            if i < bank {
                kept_bank += 1;
            }
        }
        if kept_bank == 0 || kept_bank == labels.len() {
            return None;
        }
        Some(Self {
            pixels,
            labels,
            bank: kept_bank,
            num_classes: ds.num_classes(),
            shape: [pre.channels, pre.size, pre.size],
        })
    }

    /// Images in the bank and among the queries.
    pub fn sizes(&self) -> (usize, usize) {
        (self.bank, self.labels.len() - self.bank)
    }

    /// What the subset is, for messages and the README.
    pub fn describe(&self) -> String {
        let (b, q) = self.sizes();
        format!("training images {b}-{} against the first {b}", b + q - 1)
    }

    /// kNN top-1 (percent) of the queries against the bank, with `target`'s pooled features.
    pub fn top1<B: crate::ops::IjepaBackend>(
        &self,
        target: &VisionTransformer<B>,
        device: &B::Device,
    ) -> Result<f64> {
        let per: usize = self.shape.iter().product();
        let n = self.labels.len();
        let mut feats = Vec::new();
        let mut dim = 0;
        for start in (0..n).step_by(BATCH) {
            let end = (start + BATCH).min(n);
            let [c, h, w] = self.shape;
            let x: Tensor<B, 4> = Tensor::from_data(
                TensorData::new(
                    self.pixels[start * per..end * per].to_vec(),
                    [end - start, c, h, w],
                ),
                device,
            );
            let f = target.pooled(x, 1);
            dim = f.dims()[1];
            // After `convert::<f32>` the read cannot fail.
            feats.extend(crate::checkpoint::HostTensor::from_tensor(f).data);
        }
        let bad = |e: EvalError| Error::Eval(e);
        let bank = Features::new(self.bank, dim, feats[..self.bank * dim].to_vec()).map_err(bad)?;
        let queries =
            Features::new(n - self.bank, dim, feats[self.bank * dim..].to_vec()).map_err(bad)?;
        let r = knn_top1(
            &bank,
            &self.labels[..self.bank],
            &queries,
            &self.labels[self.bank..],
            self.num_classes,
            DEFAULT_K,
            DEFAULT_TEMPERATURE,
        )
        .map_err(bad)?;
        Ok(r.top1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use crate::data::{DataError, RawImage};
    use crate::model::{EncoderConfig, Init};

    /// Images whose class is their brightness: any encoder that keeps the mean separates them.
    struct Shades {
        n: usize,
        labelled: bool,
    }

    impl Dataset for Shades {
        fn len(&self) -> usize {
            self.n
        }
        fn get(&self, i: usize) -> std::result::Result<RawImage, DataError> {
            let class = i % 2;
            let v = if class == 0 { 20 } else { 230 };
            Ok(RawImage {
                width: 8,
                height: 8,
                channels: 1,
                pixels: (0..64).map(|p| v + ((p * 7 + i) % 5) as u8).collect(),
            })
        }
        fn label(&self, i: usize) -> Option<usize> {
            self.labelled.then_some(i % 2)
        }
        fn num_classes(&self) -> usize {
            if self.labelled { 2 } else { 0 }
        }
        fn name(&self, i: usize) -> String {
            format!("shade[{i}]")
        }
    }

    fn pre() -> Preprocess {
        Preprocess {
            size: 8,
            pad: 0,
            resize: crate::data::transform::Resize::Exact,
            center_crop: false,
            channels: 1,
            mean: vec![0.5],
            std: vec![0.25],
        }
    }

    #[test]
    fn subset_sizes_and_unlabelled_sets() {
        let ds = Shades {
            n: 120,
            labelled: true,
        };
        let m = KnnMonitor::new(&ds, &pre(), 50, 20).unwrap();
        assert_eq!(m.sizes(), (50, 20));
        assert!(m.describe().contains("50-69"), "{}", m.describe());
        // Too few images: the same proportion of a smaller set.
        let m = KnnMonitor::new(&ds, &pre(), 500, 100).unwrap();
        assert_eq!(m.sizes(), (100, 20));
        let unlabelled = Shades {
            n: 120,
            labelled: false,
        };
        assert!(KnnMonitor::new(&unlabelled, &pre(), 50, 20).is_none());
        assert!(KnnMonitor::new(&ds, &pre(), 0, 20).is_none());
    }

    /// A random encoder already separates black from white images; the monitor must say so.
    #[test]
    fn separable_classes_score_high() {
        let ds = Shades {
            n: 80,
            labelled: true,
        };
        let m = KnnMonitor::new(&ds, &pre(), 60, 20).unwrap();
        let cfg = EncoderConfig {
            image_size: 8,
            patch_size: 4,
            in_chans: 1,
            embed_dim: 16,
            depth: 1,
            num_heads: 2,
            mlp_hidden: 32,
            qkv_bias: true,
            layer_norm_eps: 1e-6,
            patch_embed: crate::model::config::PatchEmbedKind::Shared,
        };
        let device = Default::default();
        let vit = VisionTransformer::<Cpu>::new(&cfg, &mut Init::new(1), &device);
        let top1 = m.top1(&vit, &device).unwrap();
        assert_eq!(top1, 100.0);
    }
}
