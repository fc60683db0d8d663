use std::collections::HashSet;
use std::sync::Arc;

use ijepa::data::augment::TrainTransform;
use ijepa::data::loader::{Batch, Loader, LoaderConfig, epoch_order, sample_rng};
use ijepa::data::{Dataset, Split, open_source, with_max_images};

use crate::common::{MemDataset, fmnist_spec};

fn transform() -> TrainTransform {
    TrainTransform {
        crop_size: 6,
        pad: 1,
        ..TrainTransform::official(6, 1)
    }
}

fn cfg(batch_size: usize, replicas: usize, seed: u64) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        seed,
        replicas,
        prefetch: 2,
        strict: false,
        second_view: false,
    }
}

fn loader(n: usize, b: usize, r: usize, seed: u64) -> Loader {
    let ds: Arc<dyn Dataset> = Arc::new(MemDataset::new(n, 10));
    Loader::new(ds, transform(), cfg(b, r, seed)).unwrap()
}

fn all(loader: &Loader, epoch: u64) -> Vec<Vec<Batch>> {
    loader
        .epoch_all_replicas(epoch, 0)
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn ipe_drops_the_last_incomplete_step() {
    assert_eq!(loader(103, 4, 3, 0).ipe(), 8);
    assert_eq!(loader(96, 4, 3, 0).ipe(), 8);
    assert_eq!(loader(12, 4, 3, 0).ipe(), 1);
    let ds: Arc<dyn Dataset> = Arc::new(MemDataset::new(11, 10));
    let e = Loader::new(ds.clone(), transform(), cfg(4, 3, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("11 images") && e.contains("cannot fill"), "{e}");
    assert!(Loader::new(ds.clone(), transform(), cfg(0, 1, 0)).is_err());
    assert!(Loader::new(ds, transform(), cfg(1, 0, 0)).is_err());
}

#[test]
fn each_index_appears_at_most_once_per_epoch() {
    let l = loader(103, 4, 3, 9);
    let steps = all(&l, 0);
    assert_eq!(steps.len(), 8);
    let mut seen = HashSet::new();
    for (s, step) in steps.iter().enumerate() {
        assert_eq!(step.len(), 3);
        for b in step {
            assert_eq!(b.step, s);
            assert_eq!(b.len(), 4);
            assert_eq!(b.pixels.len(), 4 * 36);
            assert!(b.skipped.is_empty());
            for (&i, l) in b.indices.iter().zip(&b.labels) {
                assert!(seen.insert(i), "index {i} twice");
                assert_eq!(*l, Some(i % 5));
            }
        }
    }
    assert_eq!(seen.len(), 96);
    let order = epoch_order(9, 0, 103);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..103).collect::<Vec<_>>());
    // Replica q of step s holds order[(s * replicas + q) * B ..][..B].
    assert_eq!(steps[2][1].indices, order[(2 * 3 + 1) * 4..(2 * 3 + 2) * 4]);
}

#[test]
fn same_seed_same_batches_other_epoch_or_seed_differs() {
    let a = loader(50, 5, 2, 1);
    let b = loader(50, 5, 2, 1);
    let c = loader(50, 5, 2, 2);
    let (a0, b0) = (all(&a, 0), all(&b, 0));
    assert_eq!(a0, b0);
    let a1 = all(&a, 1);
    assert_ne!(a0[0][0].indices, a1[0][0].indices);
    assert_ne!(a.epoch_order(0), a.epoch_order(1));
    assert_ne!(a.epoch_order(0), c.epoch_order(0));
    assert_ne!(all(&c, 0), a0);
    // The same image in two epochs gets different augmentations.
    let i = a0[0][0].indices[0];
    let t = transform();
    let img = MemDataset::new(50, 10).get(i).unwrap();
    let v0 = t.apply(&img, &mut sample_rng(1, 0, i));
    assert_eq!(&a0[0][0].pixels[..36], &v0[..]);
    assert_ne!(v0, t.apply(&img, &mut sample_rng(1, 1, i)));
}

/// A second view is the transform drawn again from the same image's rng, after the first:
/// turning it on leaves the first view (and the order) exactly as it was.
#[test]
fn second_view_is_the_transform_drawn_again_and_leaves_the_first_alone() {
    let ds: Arc<dyn Dataset> = Arc::new(MemDataset::new(50, 10));
    let one = Loader::new(ds.clone(), transform(), cfg(5, 2, 1)).unwrap();
    let two = Loader::new(
        ds,
        transform(),
        LoaderConfig {
            second_view: true,
            ..cfg(5, 2, 1)
        },
    )
    .unwrap();
    let (a, b) = (all(&one, 0), all(&two, 0));
    assert!(a.iter().flatten().all(|batch| batch.second_view.is_none()));
    let t = transform();
    let mut differ = 0;
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert_eq!((&x.pixels, &x.indices), (&y.pixels, &y.indices));
        let second = y.second_view.as_ref().expect("a second view");
        assert_eq!(second.len(), y.pixels.len());
        for (n, &i) in y.indices.iter().enumerate() {
            let img = MemDataset::new(50, 10).get(i).unwrap();
            let mut rng = sample_rng(1, 0, i);
            let first = t.apply(&img, &mut rng);
            let again = t.apply(&img, &mut rng);
            assert_eq!(&y.pixels[n * 36..(n + 1) * 36], &first[..]);
            assert_eq!(&second[n * 36..(n + 1) * 36], &again[..]);
            differ += usize::from(first != again);
        }
    }
    assert!(
        differ > 40,
        "the two views should mostly differ: {differ} of 50"
    );
}

/// A second view's own transform (`regularization.invariance_crop_scale`): the second view is
/// that transform drawn after the first view, which stays exactly as it was.
#[test]
fn second_view_transform_draws_the_second_view_only() {
    let ds: Arc<dyn Dataset> = Arc::new(MemDataset::new(50, 10));
    let second_cfg = LoaderConfig {
        second_view: true,
        ..cfg(5, 2, 1)
    };
    let global = TrainTransform {
        crop_scale: (1.0, 1.0),
        ..transform()
    };
    let same = Loader::new(ds.clone(), transform(), second_cfg.clone()).unwrap();
    let other = Loader::new(ds.clone(), transform(), second_cfg)
        .unwrap()
        .with_second_view_transform(global.clone())
        .unwrap();
    let (a, b) = (all(&same, 0), all(&other, 0));
    let t = transform();
    let mut differ = 0;
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert_eq!((&x.pixels, &x.indices), (&y.pixels, &y.indices));
        let second = y.second_view.as_ref().expect("a second view");
        for (n, &i) in y.indices.iter().enumerate() {
            let img = MemDataset::new(50, 10).get(i).unwrap();
            let mut rng = sample_rng(1, 0, i);
            let _first = t.apply(&img, &mut rng);
            let again = global.apply(&img, &mut rng);
            assert_eq!(&second[n * 36..(n + 1) * 36], &again[..]);
        }
        differ += usize::from(x.second_view != y.second_view);
    }
    assert!(differ > 0, "the other crop scale changed no second view");
    let wrong = TrainTransform {
        crop_size: 5,
        ..transform()
    };
    let e = Loader::new(ds.clone(), transform(), cfg(5, 2, 1))
        .unwrap()
        .with_second_view_transform(wrong)
        .err()
        .expect("a second view of another size is rejected")
        .to_string();
    assert!(e.contains("second view") && e.contains("25"), "{e}");
    let bad = TrainTransform {
        crop_scale: (0.0, 1.0),
        ..transform()
    };
    let e = Loader::new(ds, transform(), cfg(5, 2, 1))
        .unwrap()
        .with_second_view_transform(bad)
        .err()
        .expect("a bad crop scale is rejected")
        .to_string();
    assert!(e.contains("crop_scale"), "{e}");
}

#[test]
fn resume_yields_the_tail_of_the_epoch() {
    let l = loader(64, 4, 2, 3);
    let full: Vec<Batch> = l.epoch(2, 0, 1).map(|r| r.unwrap()).collect();
    assert_eq!(full.len(), l.ipe());
    for k in [0, 1, 5, 7] {
        let tail: Vec<Batch> = l.epoch(2, k, 1).map(|r| r.unwrap()).collect();
        assert_eq!(tail, full[k..], "resume at {k}");
    }
    assert_eq!(l.epoch(2, 8, 1).count(), 0);
    assert_eq!(l.epoch(2, 100, 1).count(), 0);
    let all_tail: Vec<Vec<Batch>> = l.epoch_all_replicas(2, 5).map(|r| r.unwrap()).collect();
    assert_eq!(all_tail.len(), 3);
    assert_eq!(all_tail[0][1], full[5]);
    assert_eq!(l.step_batches(2, 6).unwrap()[1], full[6]);
    assert!(l.step_batches(2, 8).is_err());
}

#[test]
fn replica_iterators_match_the_all_replicas_view() {
    let a = loader(70, 3, 2, 11);
    let b = loader(70, 3, 2, 11);
    let joint = all(&a, 4);
    for q in 0..2 {
        let single: Vec<Batch> = b.epoch(4, 0, q).map(|r| r.unwrap()).collect();
        assert_eq!(single.len(), joint.len());
        for (s, batch) in single.iter().enumerate() {
            assert_eq!(batch, &joint[s][q]);
        }
    }
    let e = b.epoch(0, 0, 2).next().unwrap().err().unwrap().to_string();
    assert!(e.contains("replica 2"), "{e}");
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let ds: Arc<dyn Dataset> = Arc::from(with_max_images(
        open_source(&fmnist_spec(), Split::Test, 1).unwrap(),
        600,
    ));
    let t = TrainTransform::fashion_mnist();
    let run = |threads: usize, prefetch: usize| {
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap(),
        );
        let l = Loader::new(
            ds.clone(),
            t.clone(),
            LoaderConfig {
                batch_size: 50,
                seed: 77,
                replicas: 2,
                prefetch,
                strict: true,
                second_view: false,
            },
        )
        .unwrap()
        .with_thread_pool(pool);
        l.epoch_all_replicas(3, 0)
            .map(|r| r.unwrap())
            .collect::<Vec<_>>()
    };
    let one = run(1, 0);
    let two = run(2, 4);
    assert_eq!(one.len(), 6);
    assert_eq!(one, two);
    // And in rayon's global pool, one replica at a time.
    let global = Loader::new(ds.clone(), t.clone(), cfg(50, 2, 77)).unwrap();
    let r1: Vec<Batch> = global.epoch(3, 0, 1).map(|r| r.unwrap()).collect();
    for (s, b) in r1.iter().enumerate() {
        assert_eq!(b, &one[s][1]);
    }
}

#[test]
fn dropping_an_iterator_early_stops_its_thread() {
    let l = loader(400, 2, 1, 0);
    for _ in 0..20 {
        let mut it = l.epoch(0, 0, 0);
        assert!(it.next().unwrap().is_ok());
        drop(it);
    }
    // Never started: dropped at once.
    drop(l.epoch_all_replicas(1, 0));
}

#[test]
fn broken_images_are_replaced_deterministically_or_fail_in_strict_mode() {
    let mut ds = MemDataset::new(40, 10);
    ds.broken = [3, 17, 18].into_iter().collect();
    let ds: Arc<dyn Dataset> = Arc::new(ds);
    let lenient = Loader::new(ds.clone(), transform(), cfg(4, 2, 5)).unwrap();
    let a = all(&lenient, 0);
    assert_eq!(a, all(&lenient, 0));
    let mut skipped: Vec<String> = a.iter().flatten().flat_map(|b| b.skipped.clone()).collect();
    skipped.sort();
    assert_eq!(skipped, ["mem/17.png", "mem/18.png", "mem/3.png"]);
    let order = lenient.epoch_order(0);
    for step in &a {
        for b in step {
            for &i in &b.indices {
                assert!(![3, 17, 18].contains(&i));
            }
        }
    }
    // Each broken slot holds the next readable image of the order.
    let flat: Vec<usize> = a.iter().flatten().flat_map(|b| b.indices.clone()).collect();
    for (pos, &i) in order.iter().enumerate() {
        if [3, 17, 18].contains(&i) {
            let mut k = pos + 1;
            while [3, 17, 18].contains(&order[k % 40]) {
                k += 1;
            }
            assert_eq!(flat[pos], order[k % 40]);
        }
    }
    let strict = Loader::new(
        ds,
        transform(),
        LoaderConfig {
            strict: true,
            ..cfg(4, 2, 5)
        },
    )
    .unwrap();
    let results: Vec<_> = strict.epoch_all_replicas(0, 0).collect();
    let err = results.last().unwrap().as_ref().err().unwrap().to_string();
    assert!(err.contains("mem/") && err.contains("broken"), "{err}");

    let mut dead = MemDataset::new(8, 4);
    dead.broken = (0..8).collect();
    let dead = Loader::new(
        Arc::new(dead) as Arc<dyn Dataset>,
        transform(),
        cfg(2, 1, 0),
    )
    .unwrap();
    let e = dead
        .epoch(0, 0, 0)
        .next()
        .unwrap()
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no readable image"), "{e}");
}

/// The pipeline's counters (the timing itself is a benchmark: `cargo bench --bench
/// data_throughput`).
#[test]
fn pipeline_counts_its_work() {
    let l = loader(100, 10, 1, 0);
    let mut it = l.epoch(0, 2, 0);
    let images: usize = it.by_ref().map(|b| b.unwrap().len()).sum();
    let s = it.stats();
    assert_eq!(images, 80);
    assert_eq!((s.images, s.batches), (80, 8));
    assert!(s.busy.as_nanos() > 0);
    assert!(s.images_per_sec() > 0.0);
}
