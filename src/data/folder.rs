//! Image folders in torchvision `ImageFolder` layout.
//!
//! `root/<class>/**/<image>`: each sub-folder that holds images is a class, classes numbered by
//! sorted name (as `ImageFolder` does, so labels match the official pipeline). Images directly
//! in `root` are accepted too, unlabelled. A root with `train/` and `test/` (or `val/`) picks the
//! sub-folder of the requested split. Only the listing happens at open time; decoding happens
//! in `get`, so one corrupt file fails only when it is read (and the loader can replace it).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use image::DynamicImage;

use crate::data::{DataError, Dataset, RawImage, Split, pil_luma};
use crate::error::Setting;

/// File extensions read as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// Deepest folder nesting searched below a class folder; guards against symlink loops.
const MAX_DEPTH: usize = 32;

pub struct FolderDataset {
    root: PathBuf,
    files: Vec<PathBuf>,
    labels: Vec<Option<usize>>,
    classes: Vec<String>,
    channels: usize,
}

impl FolderDataset {
    /// Lists the images of `root` (or of its `train/` / `test/` / `val/` sub-folder).
    pub fn open(root: &Path, split: Split, channels: usize) -> Result<Self, DataError> {
        if channels != 1 && channels != 3 {
            return Err(DataError::Config(Setting::new(
                format!("{}: channels", root.display()),
                "1 or 3",
                channels,
            )));
        }
        let root = split_folder(root, split)?;
        let (subdirs, loose) = list_dir(&root)?;
        let mut files = Vec::new();
        let mut labels = Vec::new();
        let mut classes = Vec::new();
        let mut visited = HashSet::new();
        if let Ok(c) = root.canonicalize() {
            visited.insert(c);
        }
        for dir in subdirs {
            let mut groups = Vec::new();
            collect_images(&dir, 0, &mut visited, &mut groups)?;
            // torchvision walks `sorted(os.walk(class_dir))`: folders in path-string order,
            // files sorted within each folder.
            groups.sort_by(|a, b| {
                a.0.as_os_str()
                    .as_encoded_bytes()
                    .cmp(b.0.as_os_str().as_encoded_bytes())
            });
            let found: Vec<PathBuf> = groups.into_iter().flat_map(|(_, f)| f).collect();
            if found.is_empty() {
                continue;
            }
            let label = classes.len();
            classes.push(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            labels.extend(std::iter::repeat_n(Some(label), found.len()));
            files.extend(found);
        }
        labels.extend(std::iter::repeat_n(None, loose.len()));
        files.extend(loose);
        if files.is_empty() {
            return Err(DataError::format(
                &root,
                format!(
                    "no images found (looked for {} files in the folder and its sub-folders)",
                    IMAGE_EXTENSIONS.join("/")
                ),
            ));
        }
        Ok(Self {
            root,
            files,
            labels,
            classes,
            channels,
        })
    }

    /// The folder actually read (after the split was picked).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn path(&self, index: usize) -> Option<&Path> {
        self.files.get(index).map(PathBuf::as_path)
    }
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, index: usize) -> Result<RawImage, DataError> {
        let path = self.files.get(index).ok_or_else(|| DataError::OutOfRange {
            dataset: self.root.display().to_string(),
            index,
            len: self.files.len(),
        })?;
        load_image(path, self.channels)
    }

    fn label(&self, index: usize) -> Option<usize> {
        self.labels.get(index).copied().flatten()
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }

    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }

    fn name(&self, index: usize) -> String {
        match self.files.get(index) {
            Some(p) => p.display().to_string(),
            None => format!("{}[{index}]", self.root.display()),
        }
    }
}

/// Reads and decodes one image file into `channels` (1 or 3) channels. The format is taken
/// from the content (a PNG named `.jpg` still loads). Alpha is dropped as by PIL's
/// `convert("RGB")`; colour to gray uses PIL's weights.
pub fn load_image(path: &Path, channels: usize) -> Result<RawImage, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    // A decoder bug must not take the loader thread down with it: a panic becomes an error
    // for this one file.
    let decoded = std::panic::catch_unwind(|| image::load_from_memory(&bytes)).map_err(|_| {
        DataError::format(path, "image decoder panicked on this file (corrupt image?)")
    })?;
    let img = decoded.map_err(|error| DataError::Decode {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(to_raw(&img, channels))
}

/// Converts a decoded image to 8-bit interleaved pixels with 1 or 3 channels.
pub fn to_raw(img: &DynamicImage, channels: usize) -> RawImage {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let pixels = if channels == 3 {
        img.to_rgb8().into_raw()
    } else if img.color().has_color() {
        img.to_rgb8()
            .into_raw()
            .chunks_exact(3)
            .map(|p| pil_luma(p[0], p[1], p[2]))
            .collect()
    } else {
        img.to_luma8().into_raw()
    };
    RawImage {
        width,
        height,
        channels: if channels == 3 { 3 } else { 1 },
        pixels,
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// `root/train` for Train and `root/test` (else `root/val`) for Test when `root` has a train
/// folder next to a test or val folder; `root` itself otherwise.
fn split_folder(root: &Path, split: Split) -> Result<PathBuf, DataError> {
    if !root.is_dir() {
        return Err(DataError::format(root, "not a folder"));
    }
    let train = root.join("train");
    let test = root.join("test");
    let val = root.join("val");
    let eval = if test.is_dir() { test } else { val };
    if train.is_dir() && eval.is_dir() {
        Ok(match split {
            Split::Train => train,
            Split::Test => eval,
        })
    } else {
        Ok(root.to_path_buf())
    }
}

/// Visible sub-folders and image files of one folder, each sorted by name.
fn list_dir(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let mut dirs = Vec::new();
    let mut images = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if is_hidden(&path) {
            continue;
        }
        // `metadata` follows symlinks, as torchvision's walk does.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => dirs.push(path),
            Ok(m) if m.is_file() && is_image(&path) => images.push(path),
            // Dangling links and other entries are ignored rather than failing the listing.
            _ => {}
        }
    }
    dirs.sort();
    images.sort();
    Ok((dirs, images))
}

/// The images below `dir` (recursively) as (folder, sorted files) groups, each folder
/// visited once.
fn collect_images(
    dir: &Path,
    depth: usize,
    visited: &mut HashSet<PathBuf>,
    out: &mut Vec<(PathBuf, Vec<PathBuf>)>,
) -> Result<(), DataError> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    if let Ok(c) = dir.canonicalize()
        && !visited.insert(c)
    {
        return Ok(());
    }
    let (dirs, images) = list_dir(dir)?;
    out.push((dir.to_path_buf(), images));
    for d in dirs {
        collect_images(&d, depth + 1, visited, out)?;
    }
    Ok(())
}
