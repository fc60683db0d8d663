//! Test helpers: the installed Fashion-MNIST, temporary folders, an in-memory dataset.

use std::collections::HashSet;
use std::path::Path;

use ijepa::data::{DataError, Dataset, RawImage};

pub const FMNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The Fashion-MNIST folder; fails (never skips) when the package is missing.
pub fn fmnist_dir() -> &'static Path {
    let dir = Path::new(FMNIST_DIR);
    for f in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        assert!(
            dir.join(f).is_file(),
            "{}/{f} is missing: install the Debian package `dataset-fashion-mnist` \
             (apt-get install -y dataset-fashion-mnist)",
            dir.display()
        );
    }
    dir
}

pub fn fmnist_spec() -> String {
    format!("fmnist:{}", fmnist_dir().display())
}

/// A fresh folder (`tempfile`), removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        TempDir(
            tempfile::Builder::new()
                .prefix(&format!("data-dev-{tag}-"))
                .tempdir()
                .unwrap(),
        )
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Writes a `w x h` RGB PNG whose pixels depend on `seed`.
pub fn write_png(path: &Path, w: u32, h: u32, seed: u8) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(17).wrapping_add(seed),
            (y as u8).wrapping_mul(29).wrapping_add(seed),
            seed.wrapping_mul(3),
        ])
    });
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

/// Synthetic gray images (`size x size`, pixel values from the index) with labels
/// `index % classes`; indices in `broken` fail to read.
pub struct MemDataset {
    pub n: usize,
    pub size: usize,
    pub classes: usize,
    pub broken: HashSet<usize>,
}

impl MemDataset {
    pub fn new(n: usize, size: usize) -> Self {
        Self {
            n,
            size,
            classes: 5,
            broken: HashSet::new(),
        }
    }
}

impl Dataset for MemDataset {
    fn len(&self) -> usize {
        self.n
    }
    fn get(&self, index: usize) -> Result<RawImage, DataError> {
        if self.broken.contains(&index) {
            return Err(DataError::format(
                format!("mem/{index}.png"),
                "synthetic broken image",
            ));
        }
        let s = self.size;
        let pixels = (0..s * s)
            .map(|i| ((index * 31 + i * 7 + (i * i) % 13) % 256) as u8)
            .collect();
        Ok(RawImage {
            width: s,
            height: s,
            channels: 1,
            pixels,
        })
    }
    fn label(&self, index: usize) -> Option<usize> {
        (index < self.n).then_some(index % self.classes)
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn name(&self, index: usize) -> String {
        format!("mem/{index}.png")
    }
}
