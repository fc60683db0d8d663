//! `ijepa bench`: times the trainer's own iteration (the functions `ijepa pretrain` calls:
//! target forward + layer norm + gather, context encoder, predictor, loss, backward, AdamW,
//! EMA) and the target encoder's inference, with the same flags and output lines as
//! `../shared/bench/torch_ijepa_step.py`.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::{Distribution, Tensor};
use rand::seq::index::sample;

use crate::error::Result;
use crate::masks::MaskSampler;
use crate::model::padding::pad_batch;
use crate::model::{
    EncoderConfig, Init, MaskIndices, Predictor, PredictorConfig, VisionTransformer,
};
use crate::ops::{Precision, with_precision};
use crate::train::objective::{Objective, StepKey};
use crate::train::optim::AdamW;
use crate::train::step::{Batch, Networks, UpdateHyper, apply_update, loss_and_grads_with};

/// Shapes and timing settings (the PyTorch script's flags).
#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub encoder: EncoderConfig,
    pub predictor: PredictorConfig,
    pub npred: usize,
    pub k_enc: usize,
    pub k_pred: usize,
    pub batch_size: usize,
    pub infer_batch_size: usize,
    pub steps: usize,
    pub warmup: usize,
    pub seed: u64,
    /// Draw masks with the real sampler instead of random index sets of fixed sizes.
    pub sampler: Option<MaskSampler>,
    /// Arithmetic of the matrix products (training and inference).
    pub precision: Precision,
    /// What the timed step minimises (a config's options cost time too).
    pub objective: Objective,
    /// Print every iteration's time to stderr (warm-up included: on a GPU the first
    /// iterations compile and autotune kernels).
    pub verbose: bool,
    /// Pad the masks' token counts to bucket sizes, as `pretrain` does on a GPU
    /// ([`crate::model::padding`]).
    pub static_shapes: bool,
}

#[derive(Clone, Debug)]
pub struct BenchResult {
    pub train_median_ms: f64,
    pub train_img_per_s: f64,
    pub infer_median_ms: f64,
    pub infer_img_per_s: f64,
    pub peak_rss_mb: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn random_masks(
    rng: &mut crate::rng::Rng,
    n_masks: usize,
    batch: usize,
    k: usize,
    n: usize,
) -> Result<MaskIndices> {
    let sets: Vec<Vec<Vec<usize>>> = (0..n_masks)
        .map(|_| {
            (0..batch)
                .map(|_| {
                    let mut v = sample(rng, n, k).into_vec();
                    v.sort_unstable();
                    v
                })
                .collect()
        })
        .collect();
    MaskIndices::new(&sets, n)
}

pub fn run<B: crate::ops::TrainBackend>(
    spec: &BenchSpec,
    device: &B::Device,
) -> Result<BenchResult> {
    let [t] = run_alternating::<B, 1>(spec, [spec.precision], device)?;
    Ok(t.summary(spec))
}

/// Every step's and inference's milliseconds of one precision (warm-up excluded).
#[derive(Clone, Debug)]
pub struct Timings {
    pub precision: Precision,
    pub train_ms: Vec<f64>,
    pub infer_ms: Vec<f64>,
}

impl Timings {
    fn summary(&self, spec: &BenchSpec) -> BenchResult {
        let (train, infer) = (median(self.train_ms.clone()), median(self.infer_ms.clone()));
        BenchResult {
            train_median_ms: train,
            train_img_per_s: spec.batch_size as f64 / train * 1e3,
            infer_median_ms: infer,
            infer_img_per_s: spec.infer_batch_size as f64 / infer * 1e3,
            peak_rss_mb: peak_rss_mb(),
        }
    }
}

/// f32 against bf16 autocast in one process (`ijepa bench --compare-bf16`).
#[derive(Clone, Debug)]
pub struct PrecisionComparison {
    pub f32: BenchResult,
    pub bf16: BenchResult,
    /// Median over the step pairs of (f32 ms / bf16 ms): each pair ran the same masks
    /// back to back, so the machine's drift (this project's 2-core VMs change speed by half
    /// within minutes) cancels out of every ratio.
    pub train_speedup: f64,
    pub infer_speedup: f64,
}

/// The f32 and the bf16 step alternating on the same networks and masks (f32 first in even
/// pairs, bf16 first in odd ones), then the inference likewise: the speed-up of bf16
/// autocast measured without the drift between two separate runs.
pub fn compare_bf16<B: crate::ops::TrainBackend>(
    spec: &BenchSpec,
    device: &B::Device,
) -> Result<PrecisionComparison> {
    let [f, h] = run_alternating::<B, 2>(spec, [Precision::F32, Precision::Bf16], device)?;
    let paired = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
    Ok(PrecisionComparison {
        train_speedup: paired(&f.train_ms, &h.train_ms),
        infer_speedup: paired(&f.infer_ms, &h.infer_ms),
        f32: f.summary(spec),
        bf16: h.summary(spec),
    })
}

/// The timed loops of [`run`], each iteration running every one of `precisions` in turn
/// (the order rotating by one every iteration), on the same networks and masks.
fn run_alternating<B: crate::ops::TrainBackend, const P: usize>(
    spec: &BenchSpec,
    precisions: [Precision; P],
    device: &B::Device,
) -> Result<[Timings; P]> {
    crate::ops::kernels::cpu::check()?;
    let enc = &spec.encoder;
    let n = enc.num_patches();
    if spec.k_enc > n || spec.k_pred > n {
        return Err(crate::error::ConfigError::value(
            "--k-enc / --k-pred",
            format!("at most the {n} patches"),
            format_args!("{} / {}", spec.k_enc, spec.k_pred),
        )
        .into());
    }
    let mut init = Init::new(spec.seed);
    let encoder = VisionTransformer::<B>::new(enc, &mut init, device);
    let predictor = Predictor::<B>::new(&spec.predictor, &mut init, device);
    let target = encoder.valid();
    let mut nets = Networks {
        encoder,
        predictor,
        target,
    };
    let mut adam = AdamW::default();
    let b = spec.batch_size;
    let images = Tensor::<B::InnerBackend, 4>::random(
        [b, enc.in_chans, enc.image_size, enc.image_size],
        Distribution::Normal(0.0, 1.0),
        device,
    );

    // With the real sampler every step draws a fresh mask set (deterministic from the seed and
    // the step), as `ijepa pretrain` does: token counts then change every step, which the
    // allocator and the kernels' shape-dependent work must absorb. Without it, a few random
    // index sets of the fixed sizes are cycled.
    let mut rng = crate::rng::seeded(spec.seed);
    let mut mask_sets = Vec::new();
    if spec.sampler.is_none() {
        for _ in 0..4 {
            mask_sets.push((
                random_masks(&mut rng, 1, b, spec.k_enc, n)?,
                random_masks(&mut rng, spec.npred, b, spec.k_pred, n)?,
            ));
        }
    }
    let masks_for = |i: usize| -> Result<(MaskIndices, MaskIndices)> {
        let (me, mp) = match &spec.sampler {
            Some(s) => {
                let m = s.sample(i as u64, 0, b)?;
                (MaskIndices::new(&m.enc, n)?, MaskIndices::new(&m.pred, n)?)
            }
            None => mask_sets[i % mask_sets.len()].clone(),
        };
        if spec.static_shapes {
            return pad_batch(&me, &mp, n);
        }
        Ok((me, mp))
    };

    let h = UpdateHyper {
        lr: 1e-3,
        weight_decay: 0.04,
        momentum: 0.996,
        grad_clip: None,
    };
    let mut timings = precisions.map(|precision| Timings {
        precision,
        train_ms: Vec::new(),
        infer_ms: Vec::new(),
    });
    for i in 0..spec.warmup + spec.steps {
        let (me, mp) = masks_for(i)?;
        for j in 0..P {
            let t = &mut timings[(i + j) % P];
            let batch = Batch::<B> {
                images: images.clone(),
                masks_enc: me.clone(),
                masks_pred: mp.clone(),
                second_view: None,
            };
            let t0 = Instant::now();
            let key = StepKey {
                seed: spec.seed,
                step: i as u64,
                replica: 0,
            };
            let g = loss_and_grads_with(&nets, &batch, &spec.objective, key, t.precision);
            nets = apply_update(nets, &mut adam, g.grads, h).0;
            // Force the lazy work of the update to finish inside the timed region.
            let _ = nets.target.norm.weight.val().into_data();
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if spec.verbose {
                eprintln!("train iteration {i} ({}): {ms:.1} ms", t.precision);
            }
            if i >= spec.warmup {
                t.train_ms.push(ms);
            }
        }
    }

    let x = Tensor::<B::InnerBackend, 4>::random(
        [
            spec.infer_batch_size,
            enc.in_chans,
            enc.image_size,
            enc.image_size,
        ],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    for i in 0..spec.warmup + spec.steps {
        for j in 0..P {
            let t = &mut timings[(i + j) % P];
            let t0 = Instant::now();
            let _ =
                with_precision(t.precision, || nets.target.forward(x.clone(), None)).into_data();
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if spec.verbose {
                eprintln!("inference {i} ({}): {ms:.1} ms", t.precision);
            }
            if i >= spec.warmup {
                t.infer_ms.push(ms);
            }
        }
    }
    Ok(timings)
}
