use std::path::Path;
use std::sync::Arc;

use ijepa::data::augment::TrainTransform;
use ijepa::data::folder::FolderDataset;
use ijepa::data::loader::{Loader, LoaderConfig};
use ijepa::data::{Dataset, Split, open_source, pil_luma};

use crate::common::{TempDir, write_png};

/// root/cat/{a,b}.png, root/dog/{c.png, sub/d.PNG, broken.png}, root/empty/, root/notes.txt,
/// root/zz_loose.png.
fn build_tree(root: &Path) {
    write_png(&root.join("cat/a.png"), 12, 10, 1);
    write_png(&root.join("cat/b.png"), 9, 14, 2);
    write_png(&root.join("dog/c.png"), 16, 16, 3);
    write_png(&root.join("dog/sub/d.PNG"), 8, 8, 4);
    std::fs::write(
        root.join("dog/broken.png"),
        b"\x89PNG\r\n\x1a\nthis is not a png",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("notes.txt"), b"not an image").unwrap();
    write_png(&root.join("zz_loose.png"), 10, 10, 5);
}

#[test]
fn classes_come_from_sorted_subfolders() {
    let tmp = TempDir::new("folder-classes");
    build_tree(tmp.path());
    let ds = FolderDataset::open(tmp.path(), Split::Train, 3).unwrap();
    assert_eq!(ds.classes(), &["cat".to_string(), "dog".to_string()]);
    assert_eq!(ds.num_classes(), 2);
    let names: Vec<String> = (0..ds.len())
        .map(|i| {
            ds.name(i)
                .strip_prefix(&tmp.path().display().to_string())
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "/cat/a.png",
            "/cat/b.png",
            "/dog/broken.png",
            "/dog/c.png",
            "/dog/sub/d.PNG",
            "/zz_loose.png"
        ]
    );
    let labels: Vec<Option<usize>> = (0..ds.len()).map(|i| ds.label(i)).collect();
    assert_eq!(labels, [Some(0), Some(0), Some(1), Some(1), Some(1), None]);
    let img = ds.get(1).unwrap();
    assert_eq!((img.width, img.height, img.channels), (9, 14, 3));
    assert_eq!(&img.pixels[..3], &[2, 2, 6]);
    // Gray conversion with PIL's weights.
    let gray = FolderDataset::open(tmp.path(), Split::Train, 1).unwrap();
    let g = gray.get(1).unwrap();
    assert_eq!(g.channels, 1);
    let px = &img.pixels[3 * 20..3 * 21];
    assert_eq!(g.pixels[20], pil_luma(px[0], px[1], px[2]));
    // Through open_source too.
    let via = open_source(&tmp.path().display().to_string(), Split::Train, 3).unwrap();
    assert_eq!(via.len(), 6);
}

#[test]
fn a_corrupt_file_errs_only_when_read_and_names_its_path() {
    let tmp = TempDir::new("folder-corrupt");
    build_tree(tmp.path());
    let ds = FolderDataset::open(tmp.path(), Split::Train, 3).unwrap();
    let broken = tmp.path().join("dog/broken.png");
    let e = ds
        .get(2)
        .expect_err("corrupt png must not decode")
        .to_string();
    assert!(e.contains(&broken.display().to_string()), "{e}");
    assert!(ds.get(3).is_ok());
}

fn loader_for(root: &Path, strict: bool) -> Loader {
    let ds = FolderDataset::open(root, Split::Train, 3).unwrap();
    let t = TrainTransform::official(8, 3);
    let cfg = LoaderConfig {
        batch_size: 3,
        seed: 5,
        replicas: 1,
        prefetch: 1,
        strict,
        second_view: false,
    };
    Loader::new(Arc::new(ds) as Arc<dyn Dataset>, t, cfg).unwrap()
}

#[test]
fn non_strict_loader_replaces_the_corrupt_image_and_reports_it() {
    let tmp = TempDir::new("folder-loader");
    build_tree(tmp.path());
    let broken = tmp.path().join("dog/broken.png").display().to_string();
    let loader = loader_for(tmp.path(), false);
    assert_eq!(loader.ipe(), 2);
    for epoch in 0..4 {
        let batches: Vec<_> = loader.epoch(epoch, 0, 0).map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 2);
        let skipped: Vec<&String> = batches.iter().flat_map(|b| &b.skipped).collect();
        assert_eq!(skipped, [&broken], "epoch {epoch}");
        // The broken image (index 2) never appears; its substitute is the next index of
        // the epoch order, so exactly one index appears twice.
        let mut idx: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert!(!idx.contains(&2));
        let order = loader.epoch_order(epoch);
        let pos = order.iter().position(|&i| i == 2).unwrap();
        let substitute = order[(pos + 1) % order.len()];
        assert_eq!(idx.iter().filter(|&&i| i == substitute).count(), 2);
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), 5);
        for b in &batches {
            assert_eq!(b.pixels.len(), 3 * 3 * 8 * 8);
            assert!(b.pixels.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn strict_loader_fails_on_the_corrupt_image() {
    let tmp = TempDir::new("folder-strict");
    build_tree(tmp.path());
    let broken = tmp.path().join("dog/broken.png").display().to_string();
    let loader = loader_for(tmp.path(), true);
    let results: Vec<_> = loader.epoch(0, 0, 0).collect();
    let err = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("strict mode must report the broken file")
        .to_string();
    assert!(err.contains(&broken), "{err}");
    // Iteration stops after the error.
    assert!(results.last().unwrap().is_err());
}

#[test]
fn train_and_test_subfolders_pick_the_split() {
    let tmp = TempDir::new("folder-split");
    let root = tmp.path();
    write_png(&root.join("train/b/1.png"), 4, 4, 1);
    write_png(&root.join("train/a/2.jpg.png"), 4, 4, 2);
    write_png(&root.join("train/a/3.png"), 4, 4, 3);
    write_png(&root.join("val/a/4.png"), 4, 4, 4);
    write_png(&root.join("val/b/5.png"), 4, 4, 5);
    let spec = root.display().to_string();
    let train = open_source(&spec, Split::Train, 3).unwrap();
    let test = open_source(&spec, Split::Test, 3).unwrap();
    assert_eq!(train.len(), 3);
    assert_eq!(test.len(), 2);
    assert_eq!(
        (0..3).map(|i| train.label(i)).collect::<Vec<_>>(),
        [Some(0), Some(0), Some(1)]
    );
    assert!(test.name(0).ends_with("val/a/4.png"));
    // `test/` wins over `val/` when both exist.
    write_png(&root.join("test/c/6.png"), 4, 4, 6);
    let test = open_source(&spec, Split::Test, 3).unwrap();
    assert_eq!(test.len(), 1);
    assert!(test.name(0).ends_with("test/c/6.png"));
}

#[test]
fn empty_folder_and_gray_png_are_handled() {
    let tmp = TempDir::new("folder-empty");
    std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
    std::fs::write(tmp.path().join("a/readme.md"), b"x").unwrap();
    let e = open_source(&tmp.path().display().to_string(), Split::Train, 3)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&tmp.path().display().to_string()) && e.contains("no images"),
        "{e}"
    );

    let p = tmp.path().join("g/x.png");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(3, 2, |x, y| image::Luma([(x * 10 + y) as u8]))
        .save(&p)
        .unwrap();
    let ds = open_source(&tmp.path().display().to_string(), Split::Train, 3).unwrap();
    let img = ds.get(0).unwrap();
    assert_eq!(img.channels, 3);
    assert_eq!(&img.pixels[3 * 4..3 * 5], &[11, 11, 11]);
    let ds = open_source(&tmp.path().display().to_string(), Split::Train, 1).unwrap();
    assert_eq!(ds.get(0).unwrap().pixels, vec![0, 10, 20, 1, 11, 21]);
}
