//! Batched, parallel, prefetching loader with a reproducible sample order.
//!
//! * Order: epoch `e` reads a permutation of `0..N` drawn from a `ChaCha8Rng` keyed by
//!   `(seed, e)`; `ipe = N / (batch_size * replicas)` steps (drop_last, as the official loader).
//!   Replica `q` of step `s` takes `order[(s * replicas + q) * B ..][..B]`, so replica `q` is
//!   what rank `q` of a `replicas`-process run (or micro-batch `q` of gradient accumulation)
//!   would see, and any step can be rebuilt on its own (resume).
//! * Augmentation: each sample's rng is keyed by `(seed, e, dataset index)`, so the tensors
//!   depend on neither thread count, batch layout nor resume point.
//! * Keys: [`crate::rng::keyed`] with [`crate::rng::Expansion::Counter`]; a different tag per
//!   use keeps the order and augmentation streams apart.
//! * Work: a background thread builds batches with rayon (`par_iter` over the samples) and
//!   stays `prefetch` batches ahead through a bounded channel; dropping the iterator stops it.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::augment::TrainTransform;
use crate::data::{DataError, Dataset};
use crate::error::Setting;
use crate::rng::{self, Expansion, Rng};

/// Loader settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Images per replica per step.
    pub batch_size: usize,
    pub seed: u64,
    /// `world_size * accum_steps`: how many batches one step consumes.
    pub replicas: usize,
    /// Steps built ahead of the consumer.
    pub prefetch: usize,
    /// Fail on an unreadable image instead of substituting another one.
    pub strict: bool,
    /// Also draw a second augmented view of every image (the transform applied again with the
    /// same image's rng, after the first view: the first view does not change).
    #[serde(default)]
    pub second_view: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            seed: 0,
            replicas: 1,
            prefetch: 4,
            strict: false,
            second_view: false,
        }
    }
}

/// One replica's batch of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[B, C, S, S]`, normalised.
    pub pixels: Vec<f32>,
    pub labels: Vec<Option<usize>>,
    /// Dataset index of each image in the batch (of the substitute when one was replaced).
    pub indices: Vec<usize>,
    /// Names of unreadable images that were replaced in this batch (non-strict mode).
    pub skipped: Vec<String>,
    /// `[B, C, S, S]`: a second view of the same images, when the loader draws one.
    pub second_view: Option<Vec<f32>>,
    /// Step within the epoch.
    pub step: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Domain tags of the derived keys ("order v1", "augm v1").
const ORDER_TAG: u64 = 0x6f72_6465_7220_7631;
const AUGMENT_TAG: u64 = 0x6175_676d_2076_3031;

/// The permutation of `0..n` for one epoch (Fisher-Yates from the last position down).
pub fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut rng = rng::keyed(&[ORDER_TAG, seed, epoch], Expansion::Counter);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng::below(&mut rng, i + 1));
    }
    order
}

/// The augmentation rng of dataset image `index` in `epoch`.
pub fn sample_rng(seed: u64, epoch: u64, index: usize) -> Rng {
    rng::keyed(
        &[AUGMENT_TAG, seed, epoch, index as u64],
        Expansion::Counter,
    )
}

/// Timing of a pipeline, for "data pipeline: X img/s, training waited Y ms".
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PipelineStats {
    /// Images decoded and augmented.
    pub images: u64,
    pub batches: u64,
    /// Wall time the producer spent building batches (not blocked on a full queue).
    pub busy: Duration,
    /// Wall time the consumer spent waiting in `next()`.
    pub waited: Duration,
}

impl PipelineStats {
    /// Producer throughput when running flat out: images / busy time (0 before any work).
    pub fn images_per_sec(&self) -> f64 {
        let s = self.busy.as_secs_f64();
        if s > 0.0 { self.images as f64 / s } else { 0.0 }
    }
}

#[derive(Default)]
struct Counters {
    images: AtomicU64,
    batches: AtomicU64,
    busy_ns: AtomicU64,
}

/// Iterator over results built ahead on a background thread.
pub struct Prefetch<T> {
    rx: Option<Receiver<Result<T, DataError>>>,
    handle: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    waited: Duration,
    remaining: usize,
    pending_error: Option<DataError>,
}

/// One replica's batches of one epoch.
pub type EpochIter = Prefetch<Batch>;
/// All replicas' batches of each step of one epoch.
pub type AllReplicasIter = Prefetch<Vec<Batch>>;

impl<T: Send + 'static> Prefetch<T> {
    /// Runs `build(step)` for each step on a new thread (inside `pool` if given), keeping at
    /// most `prefetch` results queued.
    fn spawn<F>(
        steps: Range<usize>,
        prefetch: usize,
        pool: Option<Arc<rayon::ThreadPool>>,
        build: F,
    ) -> Self
    where
        F: Fn(usize) -> Result<(T, usize), DataError> + Send + Sync + 'static,
    {
        let (tx, rx) = sync_channel(prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let remaining = steps.len();
        let (stop2, counters2) = (stop.clone(), counters.clone());
        let body = move || produce(steps, &tx, &stop2, &counters2, pool.as_deref(), build);
        match std::thread::Builder::new()
            .name("data-loader".into())
            .spawn(body)
        {
            Ok(handle) => Self {
                rx: Some(rx),
                handle: Some(handle),
                stop,
                counters,
                waited: Duration::ZERO,
                remaining,
                pending_error: None,
            },
            Err(e) => Self::failed(DataError::Thread(e)),
        }
    }
}

impl<T> Prefetch<T> {
    /// An iterator that yields `err` once.
    fn failed(err: DataError) -> Self {
        Self {
            rx: None,
            handle: None,
            stop: Arc::new(AtomicBool::new(true)),
            counters: Arc::new(Counters::default()),
            waited: Duration::ZERO,
            remaining: 0,
            pending_error: Some(err),
        }
    }

    /// Timing so far (cumulative for this iterator).
    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            images: self.counters.images.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.counters.busy_ns.load(Ordering::Relaxed)),
            waited: self.waited,
        }
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver wakes a producer blocked on a full queue.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn produce<T: Send, F>(
    steps: Range<usize>,
    tx: &SyncSender<Result<T, DataError>>,
    stop: &AtomicBool,
    counters: &Counters,
    pool: Option<&rayon::ThreadPool>,
    build: F,
) where
    F: Fn(usize) -> Result<(T, usize), DataError> + Send + Sync,
{
    for step in steps {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let t0 = Instant::now();
        let result = match pool {
            Some(p) => p.install(|| build(step)),
            None => build(step),
        };
        let ns = t0.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        counters.busy_ns.fetch_add(ns, Ordering::Relaxed);
        let failed = result.is_err();
        let result = result.map(|(item, images)| {
            counters.images.fetch_add(images as u64, Ordering::Relaxed);
            counters.batches.fetch_add(1, Ordering::Relaxed);
            item
        });
        if tx.send(result).is_err() || failed {
            return;
        }
    }
}

impl<T> Iterator for Prefetch<T> {
    type Item = Result<T, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(e));
        }
        if self.remaining == 0 {
            self.finish();
            return None;
        }
        let rx = self.rx.as_ref()?;
        let t0 = Instant::now();
        let got = rx.recv();
        self.waited += t0.elapsed();
        match got {
            Ok(Ok(item)) => {
                self.remaining -= 1;
                Some(Ok(item))
            }
            Ok(Err(e)) => {
                self.remaining = 0;
                self.finish();
                Some(Err(e))
            }
            Err(_) => {
                // The producer hung up before its last step without sending an error.
                self.remaining = 0;
                self.finish();
                Some(Err(DataError::ProducerDied))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining + usize::from(self.pending_error.is_some());
        (n, Some(n))
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Everything a background thread needs to build batches of one epoch.
struct EpochJob {
    dataset: Arc<dyn Dataset>,
    transform: Arc<TrainTransform>,
    /// The second view's transform (the first's unless the loader was given another).
    second_transform: Arc<TrainTransform>,
    config: LoaderConfig,
    epoch: u64,
    order: Arc<Vec<usize>>,
}

/// One augmented sample: pixels (and those of its second view), label, dataset index used,
/// name of the image it replaced.
type Sample = (Views, Option<usize>, usize, Option<String>);
type Views = (Vec<f32>, Option<Vec<f32>>);

impl EpochJob {
    /// Sample at position `pos` of the epoch order. A broken image is replaced (non-strict)
    /// by the next readable one in the order, wrapping around; the substitute is augmented
    /// with the broken image's rng so it is not a copy of its own view elsewhere in the epoch.
    fn sample(&self, pos: usize) -> Result<Sample, DataError> {
        let ds = &*self.dataset;
        let n = self.order.len();
        let idx = self.order[pos];
        let mut rng = sample_rng(self.config.seed, self.epoch, idx);
        let mut last = match ds.get(idx) {
            Ok(img) => {
                return Ok((self.views(&img, &mut rng), ds.label(idx), idx, None));
            }
            Err(e) if self.config.strict => return Err(e),
            Err(e) => e,
        };
        for k in 1..n {
            let j = self.order[(pos + k) % n];
            match ds.get(j) {
                Ok(img) => {
                    let px = self.views(&img, &mut rng);
                    return Ok((px, ds.label(j), j, Some(ds.name(idx))));
                }
                Err(e) => last = e,
            }
        }
        Err(DataError::NothingReadable {
            last: Box::new(last),
        })
    }

    fn views(&self, img: &crate::data::RawImage, rng: &mut Rng) -> Views {
        let first = self.transform.apply(img, rng);
        let second = self
            .config
            .second_view
            .then(|| self.second_transform.apply(img, rng));
        (first, second)
    }

    /// Batches of `replicas` for one step, all samples decoded in parallel.
    fn build(&self, step: usize, replicas: Range<usize>) -> Result<Vec<Batch>, DataError> {
        let b = self.config.batch_size;
        let r = self.config.replicas;
        let start = (step * r + replicas.start) * b;
        let end = (step * r + replicas.end) * b;
        let samples: Vec<Sample> = (start..end)
            .into_par_iter()
            .map(|pos| self.sample(pos))
            .collect::<Result<_, _>>()?;
        let per = self.transform.output_len();
        Ok(samples
            .chunks(b)
            .map(|chunk| {
                let mut batch = Batch {
                    pixels: Vec::with_capacity(per * b),
                    labels: Vec::with_capacity(b),
                    indices: Vec::with_capacity(b),
                    skipped: Vec::new(),
                    second_view: self.config.second_view.then(|| Vec::with_capacity(per * b)),
                    step,
                };
                for ((px, second), label, index, skipped) in chunk {
                    batch.pixels.extend_from_slice(px);
                    if let (Some(all), Some(px)) = (&mut batch.second_view, second) {
                        all.extend_from_slice(px);
                    }
                    batch.labels.push(*label);
                    batch.indices.push(*index);
                    batch.skipped.extend(skipped.iter().cloned());
                }
                batch
            })
            .collect())
    }
}

/// The training loader: see the module documentation for the order and seeding rules.
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    transform: Arc<TrainTransform>,
    /// The second view's transform: the first's unless [`Loader::with_second_view_transform`].
    second_transform: Arc<TrainTransform>,
    config: LoaderConfig,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Loader {
    /// Checks the settings; fails if the dataset cannot fill one step.
    pub fn new(
        dataset: impl Into<Arc<dyn Dataset>>,
        transform: TrainTransform,
        config: LoaderConfig,
    ) -> Result<Self, DataError> {
        let dataset = dataset.into();
        transform.validate()?;
        for (key, value) in [
            ("batch_size", config.batch_size),
            ("replicas", config.replicas),
        ] {
            if value == 0 {
                return Err(DataError::Config(Setting::new(key, "at least 1", value)));
            }
        }
        let per_step = config.batch_size.checked_mul(config.replicas);
        if per_step.is_none_or(|p| dataset.len() < p) {
            return Err(DataError::TooSmall {
                dataset: dataset.name(0),
                len: dataset.len(),
                batch_size: config.batch_size,
                replicas: config.replicas,
            });
        }
        let transform = Arc::new(transform);
        Ok(Self {
            dataset,
            second_transform: transform.clone(),
            transform,
            config,
            pool: None,
        })
    }

    /// Draws the second view (when `config.second_view` asks for one) with `transform`
    /// instead of the first view's: e.g. another crop scale. The draw order stays the same:
    /// the second view's random numbers still come after the first's.
    pub fn with_second_view_transform(
        mut self,
        transform: TrainTransform,
    ) -> Result<Self, DataError> {
        transform.validate()?;
        if transform.output_len() != self.transform.output_len() {
            return Err(DataError::Config(Setting::new(
                "second view",
                format!(
                    "{} floats per image, as the first view",
                    self.transform.output_len()
                ),
                transform.output_len(),
            )));
        }
        self.second_transform = Arc::new(transform);
        Ok(self)
    }

    /// Builds batches inside `pool` instead of rayon's global pool (to bound the data
    /// threads, or to keep them apart from the trainer's). Do not call `next()` from a worker
    /// of that same pool: the blocked worker could be the one the batch needs.
    pub fn with_thread_pool(mut self, pool: Arc<rayon::ThreadPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Steps per epoch: `N / (batch_size * replicas)`, the incomplete rest dropped.
    pub fn ipe(&self) -> usize {
        self.dataset.len() / (self.config.batch_size * self.config.replicas)
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    pub fn transform(&self) -> &TrainTransform {
        &self.transform
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The sample order of `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        epoch_order(self.config.seed, epoch, self.dataset.len())
    }

    fn job(&self, epoch: u64) -> EpochJob {
        EpochJob {
            dataset: self.dataset.clone(),
            transform: self.transform.clone(),
            second_transform: self.second_transform.clone(),
            config: self.config.clone(),
            epoch,
            order: Arc::new(self.epoch_order(epoch)),
        }
    }

    /// Builds the batches of all replicas of one step now, on the calling thread's pool.
    pub fn step_batches(&self, epoch: u64, step: usize) -> Result<Vec<Batch>, DataError> {
        self.check_step(step)?;
        self.job(epoch).build(step, 0..self.config.replicas)
    }

    fn check_step(&self, step: usize) -> Result<(), DataError> {
        if step >= self.ipe() {
            return Err(DataError::PastEpoch {
                step,
                ipe: self.ipe(),
            });
        }
        Ok(())
    }

    /// Replica `replica`'s batches of steps `start_step..ipe` of `epoch`, built ahead.
    pub fn epoch(&self, epoch: u64, start_step: usize, replica: usize) -> EpochIter {
        if replica >= self.config.replicas {
            return Prefetch::failed(DataError::NoReplica {
                replica,
                replicas: self.config.replicas,
            });
        }
        let job = self.job(epoch);
        Prefetch::spawn(
            start_step.min(self.ipe())..self.ipe(),
            self.config.prefetch,
            self.pool.clone(),
            move |step| {
                let mut v = job.build(step, replica..replica + 1)?;
                let batch = v.pop().ok_or(DataError::ProducerDied)?;
                let n = batch.len();
                Ok((batch, n))
            },
        )
    }

    /// All replicas' batches (index = replica) of steps `start_step..ipe` of `epoch`.
    pub fn epoch_all_replicas(&self, epoch: u64, start_step: usize) -> AllReplicasIter {
        self.epoch_replicas(epoch, start_step, 0..self.config.replicas)
    }

    /// The batches of replicas `replicas` (one peer's share of a data-parallel step) of steps
    /// `start_step..ipe` of `epoch`.
    pub fn epoch_replicas(
        &self,
        epoch: u64,
        start_step: usize,
        replicas: Range<usize>,
    ) -> AllReplicasIter {
        let job = self.job(epoch);
        let replicas =
            replicas.start.min(self.config.replicas)..replicas.end.min(self.config.replicas);
        Prefetch::spawn(
            start_step.min(self.ipe())..self.ipe(),
            self.config.prefetch,
            self.pool.clone(),
            move |step| {
                let v = job.build(step, replicas.clone())?;
                let n = v.iter().map(Batch::len).sum();
                Ok((v, n))
            },
        )
    }
}
