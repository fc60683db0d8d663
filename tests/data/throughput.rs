use std::sync::Arc;
use std::time::Instant;

use ijepa::data::augment::TrainTransform;
use ijepa::data::loader::{Loader, LoaderConfig};
use ijepa::data::{Dataset, Split, open_source, with_max_images};

use crate::common::fmnist_spec;

/// Fills the timing fields; prints the decode+augment rate of the Fashion-MNIST recipe
/// (pad 28->32, RandomResizedCrop 32, scale 0.3-1) with 1 and 2 rayon threads. No timing
/// assertions: the machine's load decides the numbers.
#[test]
fn pipeline_throughput_is_measured() {
    let n = 20_000;
    let ds: Arc<dyn Dataset> = Arc::from(with_max_images(
        open_source(&fmnist_spec(), Split::Train, 1).unwrap(),
        n,
    ));
    for threads in [1, 2] {
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap(),
        );
        let loader = Loader::new(
            ds.clone(),
            TrainTransform::fashion_mnist(),
            LoaderConfig {
                batch_size: 250,
                seed: 0,
                replicas: 1,
                prefetch: 4,
                strict: false,
            },
        )
        .unwrap()
        .with_thread_pool(pool);
        let t0 = Instant::now();
        let mut it = loader.epoch(0, 0, 0);
        let mut images = 0;
        for b in it.by_ref() {
            images += b.unwrap().len();
        }
        let wall = t0.elapsed();
        let s = it.stats();
        assert_eq!(images, n);
        assert_eq!(s.images, n as u64);
        assert_eq!(s.batches, (n / 250) as u64);
        assert!(s.busy.as_nanos() > 0);
        assert!(s.images_per_sec() > 0.0);
        assert!(s.waited <= wall);
        println!(
            "data pipeline (FMNIST 32x32 RandomResizedCrop, {threads} thread{}): {:.0} img/s \
             decode+augment, consumer waited {:.1} ms of {:.1} ms",
            if threads > 1 { "s" } else { "" },
            s.images_per_sec(),
            s.waited.as_secs_f64() * 1e3,
            wall.as_secs_f64() * 1e3
        );
        let since = s.since(&Default::default());
        assert_eq!(since, s);
    }
}
