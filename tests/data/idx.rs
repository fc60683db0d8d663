use std::io::Read;
use std::path::Path;

use ijepa::data::idx::{IMAGES_MAGIC, IdxDataset, LABELS_MAGIC, read_idx};
use ijepa::data::{DataError, Dataset, Split, open_source, with_max_images};

use crate::common::{TempDir, fmnist_dir, fmnist_spec};

fn gunzip(path: &Path) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn class_counts(ds: &dyn Dataset) -> Vec<usize> {
    let mut counts = vec![0; ds.num_classes()];
    for i in 0..ds.len() {
        counts[ds.label(i).unwrap()] += 1;
    }
    counts
}

#[test]
fn fmnist_train_has_60000_images_and_10_balanced_classes() {
    let ds = open_source(&fmnist_spec(), Split::Train, 1).unwrap();
    assert_eq!(ds.len(), 60000);
    assert_eq!(ds.num_classes(), 10);
    assert_eq!(class_counts(&*ds), vec![6000; 10]);
    let img = ds.get(0).unwrap();
    assert_eq!((img.width, img.height, img.channels), (28, 28, 1));
    assert_eq!(img.pixels.len(), 784);
    // First training image of Fashion-MNIST is an ankle boot (class 9).
    assert_eq!(ds.label(0), Some(9));
    assert!(
        ds.name(59999)
            .ends_with("train-images-idx3-ubyte.gz[59999]")
    );
    assert!(ds.get(60000).is_err());
}

#[test]
fn fmnist_test_has_10000_images() {
    let ds = open_source(&fmnist_spec(), Split::Test, 1).unwrap();
    assert_eq!(ds.len(), 10000);
    assert_eq!(class_counts(&*ds), vec![1000; 10]);
    let rgb = open_source(&fmnist_spec(), Split::Test, 3).unwrap();
    let (g, c) = (ds.get(7).unwrap(), rgb.get(7).unwrap());
    assert_eq!(c.channels, 3);
    assert_eq!(c.pixels.len(), 3 * 784);
    for (i, v) in g.pixels.iter().enumerate() {
        assert_eq!(&c.pixels[3 * i..3 * i + 3], &[*v, *v, *v]);
    }
    let sub = with_max_images(ds, 100);
    assert_eq!(sub.len(), 100);
    assert!(sub.get(100).is_err());
}

#[test]
fn gz_and_raw_read_identically_in_both_spellings() {
    let dir = fmnist_dir();
    let tmp = TempDir::new("idx-raw");
    let images = gunzip(&dir.join("t10k-images-idx3-ubyte.gz"));
    let labels = gunzip(&dir.join("t10k-labels-idx1-ubyte.gz"));
    // Raw files, dash spelling.
    std::fs::write(tmp.path().join("t10k-images-idx3-ubyte"), &images).unwrap();
    std::fs::write(tmp.path().join("t10k-labels-idx1-ubyte"), &labels).unwrap();
    // Raw files, dot spelling, in another folder.
    let dot = tmp.path().join("dot");
    std::fs::create_dir_all(&dot).unwrap();
    std::fs::write(dot.join("t10k-images.idx3-ubyte"), &images).unwrap();
    std::fs::write(dot.join("t10k-labels.idx1-ubyte"), &labels).unwrap();
    // Gzip content under a name without `.gz`: detected by its magic bytes.
    let misnamed = tmp.path().join("misnamed");
    std::fs::create_dir_all(&misnamed).unwrap();
    std::fs::copy(
        dir.join("t10k-images-idx3-ubyte.gz"),
        misnamed.join("t10k-images-idx3-ubyte"),
    )
    .unwrap();

    let gz = open_source(&fmnist_spec(), Split::Test, 1).unwrap();
    let raw = open_source(&format!("mnist:{}", tmp.path().display()), Split::Test, 1).unwrap();
    let dotted = open_source(&format!("fmnist:{}", dot.display()), Split::Test, 1).unwrap();
    let via_idx = open_source(
        &format!(
            "idx:{}",
            tmp.path().join("t10k-images-idx3-ubyte").display()
        ),
        Split::Train,
        1,
    )
    .unwrap();
    let unlabelled = open_source(
        &format!("idx:{}", misnamed.join("t10k-images-idx3-ubyte").display()),
        Split::Train,
        1,
    )
    .unwrap();
    for ds in [&raw, &dotted, &via_idx, &unlabelled] {
        assert_eq!(ds.len(), 10000);
    }
    assert_eq!(via_idx.num_classes(), 10, "labels found next to the images");
    assert_eq!(unlabelled.num_classes(), 0);
    for i in 0..10000 {
        let a = gz.get(i).unwrap();
        assert_eq!(a, raw.get(i).unwrap());
        assert_eq!(a, dotted.get(i).unwrap());
        assert_eq!(a, via_idx.get(i).unwrap());
        assert_eq!(a, unlabelled.get(i).unwrap());
        assert_eq!(gz.label(i), raw.label(i));
        assert_eq!(gz.label(i), via_idx.label(i));
        assert_eq!(unlabelled.label(i), None);
    }
}

fn expect_format_err(r: Result<impl Sized, DataError>, path: &Path, words: &[&str]) {
    let Err(e) = r else {
        panic!("expected an error for {}", path.display())
    };
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name {}: {msg}",
        path.display()
    );
    for w in words {
        assert!(msg.contains(w), "message lacks `{w}`: {msg}");
    }
}

#[test]
fn truncated_and_wrong_magic_files_are_errors_naming_the_file() {
    let dir = fmnist_dir();
    let tmp = TempDir::new("idx-bad");
    let images = gunzip(&dir.join("t10k-images-idx3-ubyte.gz"));
    let cut = tmp.path().join("cut-images-idx3-ubyte");
    std::fs::write(&cut, &images[..16 + 784 * 10 + 5]).unwrap();
    expect_format_err(
        read_idx(&cut, IMAGES_MAGIC),
        &cut,
        &["truncated", "7840000", "only 7845"],
    );
    let header_only = tmp.path().join("header-images-idx3-ubyte");
    std::fs::write(&header_only, &images[..10]).unwrap();
    expect_format_err(
        read_idx(&header_only, IMAGES_MAGIC),
        &header_only,
        &["truncated"],
    );

    // A gzip stream cut in the middle.
    let gz = std::fs::read(dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let cut_gz = tmp.path().join("cut-images-idx3-ubyte.gz");
    std::fs::write(&cut_gz, &gz[..gz.len() / 2]).unwrap();
    expect_format_err(
        IdxDataset::open(&cut_gz, None, 1).map(|_| ()),
        &cut_gz,
        &["truncated"],
    );

    // A labels file where images are expected, and the other way round.
    let labels = dir.join("t10k-labels-idx1-ubyte.gz");
    expect_format_err(
        read_idx(&labels, IMAGES_MAGIC),
        &labels,
        &["wrong IDX magic"],
    );
    let img_gz = dir.join("t10k-images-idx3-ubyte.gz");
    expect_format_err(
        read_idx(&img_gz, LABELS_MAGIC),
        &img_gz,
        &["wrong IDX magic"],
    );

    // Trailing data is not silently ignored.
    let long = tmp.path().join("long-images-idx3-ubyte");
    let mut v = images[..16 + 784 * 2].to_vec();
    v[4..8].copy_from_slice(&2u32.to_be_bytes());
    std::fs::write(&long, [&v[..], &[1, 2, 3]].concat()).unwrap();
    expect_format_err(read_idx(&long, IMAGES_MAGIC), &long, &["more data"]);
    std::fs::write(&long, &v).unwrap();
    assert_eq!(read_idx(&long, IMAGES_MAGIC).unwrap().dims, vec![2, 28, 28]);
}

#[test]
fn label_count_mismatch_and_missing_files_are_errors() {
    let tmp = TempDir::new("idx-mismatch");
    let img = tmp.path().join("x-images-idx3-ubyte");
    let lab = tmp.path().join("x-labels-idx1-ubyte");
    let mut data = Vec::new();
    for v in [IMAGES_MAGIC, 3, 2, 2] {
        data.extend_from_slice(&v.to_be_bytes());
    }
    data.extend_from_slice(&[0u8; 12]);
    std::fs::write(&img, &data).unwrap();
    let mut l = Vec::new();
    for v in [LABELS_MAGIC, 2] {
        l.extend_from_slice(&v.to_be_bytes());
    }
    l.extend_from_slice(&[1, 0]);
    std::fs::write(&lab, &l).unwrap();
    expect_format_err(
        IdxDataset::open(&img, Some(&lab), 1).map(|_| ()),
        &lab,
        &["2 labels", "3 images"],
    );
    // Through `idx:` the labels are found next to the images and checked the same way.
    let r = open_source(&format!("idx:{}", img.display()), Split::Train, 1);
    expect_format_err(r.map(|_| ()), &lab, &["2 labels"]);

    let missing = tmp.path().join("nothing");
    let e = open_source(&format!("fmnist:{}", missing.display()), Split::Train, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("nothing"),
        "{e}"
    );
    let e = open_source(&missing.display().to_string(), Split::Train, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nothing") && e.contains("no such"), "{e}");
    let e = open_source(&fmnist_spec(), Split::Train, 2)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("channels"), "{e}");
}
