//! Decode + augment rate of the Fashion-MNIST recipe's data pipeline (pad 28->32,
//! RandomResizedCrop 32, scale 0.3-1) with 1 and 2 rayon threads, and how long the consumer
//! waited for it.
//!
//!     cargo bench --bench data_throughput
//!
//! A whole-run timing: meaningful only on a machine nobody else is using.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ijepa::data::augment::TrainTransform;
use ijepa::data::loader::{Loader, LoaderConfig};
use ijepa::data::{Dataset, Split, open_source, with_max_images};

const FMNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn main() {
    let n = 20_000;
    assert!(
        Path::new(FMNIST_DIR).is_dir(),
        "{FMNIST_DIR} is missing: install the Debian package dataset-fashion-mnist"
    );
    let spec = format!("fmnist:{FMNIST_DIR}");
    let ds: Arc<dyn Dataset> = Arc::from(with_max_images(
        open_source(&spec, Split::Train, 1).expect("open"),
        n,
    ));
    for threads in [1, 2] {
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool"),
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
                second_view: false,
            },
        )
        .expect("loader")
        .with_thread_pool(pool);
        let t0 = Instant::now();
        let mut it = loader.epoch(0, 0, 0);
        let mut images = 0;
        for b in it.by_ref() {
            images += b.expect("batch").len();
        }
        let wall = t0.elapsed();
        let s = it.stats();
        assert_eq!(images, n);
        assert_eq!(s.images, n as u64);
        println!(
            "data pipeline (FMNIST 32x32 RandomResizedCrop, {threads} thread{}): {:.0} img/s \
             decode+augment, consumer waited {:.1} ms of {:.1} ms",
            if threads > 1 { "s" } else { "" },
            s.images_per_sec(),
            s.waited.as_secs_f64() * 1e3,
            wall.as_secs_f64() * 1e3
        );
    }
}
