//! Shared helpers for the integration tests: where the reference data lives and how to
//! compare arrays.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ijepa::checkpoint::HostTensor;

/// `../shared/reference` next to the repository, or `$IJEPA_REFERENCE`. A missing reference
/// folder is a test failure, never a silent skip.
pub fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("IJEPA_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference"));
    assert!(
        dir.join("README.md").is_file(),
        "reference data not found at {} (set IJEPA_REFERENCE)",
        dir.display()
    );
    dir
}

pub fn reference(rel: &str) -> PathBuf {
    reference_dir().join(rel)
}

pub fn expected_json() -> serde_json::Value {
    let path = reference("expected.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read expected.json"))
        .expect("parse expected.json")
}

pub fn npy(rel: &str) -> HostTensor {
    ijepa::npy::read_f32(&reference(rel)).unwrap_or_else(|e| panic!("{e}"))
}

/// Assert same shape and max |a - b| <= tol; the message names the array and the worst index.
pub fn assert_close(name: &str, got: &HostTensor, want: &HostTensor, tol: f32) {
    assert_eq!(got.shape, want.shape, "{name}: shape");
    let (mut worst, mut at) = (0f32, 0usize);
    for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
        let d = (a - b).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= tol,
        "{name}: max |diff| {worst:e} > {tol:e} at flat index {at} (got {}, want {})",
        got.data[at],
        want.data[at]
    );
    eprintln!("{name}: max |diff| {worst:.2e}");
}

pub fn ijepa_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ijepa"))
}

/// Like [`assert_close`] with a tolerance relative to the largest |want| (for gradients, whose
/// scale can be far below the absolute tolerance).
pub fn assert_close_rel(name: &str, got: &HostTensor, want: &HostTensor, rel: f32) {
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_close(name, got, want, rel * scale + 1e-12);
}

/// The loss column of a run's `log.csv`, one value per logged step.
pub fn logged_losses(dir: &Path) -> Vec<f64> {
    ijepa::train::log::read(&dir.join("log.csv"))
        .unwrap()
        .iter()
        .map(|r| r.loss)
        .collect()
}

/// A fresh folder (`tempfile`), removed when dropped; usable wherever a path is.
pub struct TestDir(tempfile::TempDir);

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for TestDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

/// A fresh folder whose name starts with `ijepa-<tag>-`.
pub fn tmp(tag: &str) -> TestDir {
    TestDir(
        tempfile::Builder::new()
            .prefix(&format!("ijepa-{tag}-"))
            .tempdir()
            .expect("a temporary folder"),
    )
}

/// `--set` values of a tiny model (a run takes seconds).
pub fn tiny_model() -> Vec<String> {
    [
        "meta.embed_dim=32",
        "meta.depth=2",
        "meta.num_heads=2",
        "meta.pred_emb_dim=16",
        "meta.pred_depth=1",
        "meta.pred_num_heads=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The Fashion-MNIST recipe's config file.
pub fn recipe() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/fmnist_vit.yaml")
}

/// `ijepa pretrain --quiet --config RECIPE --output OUT --set ... EXTRA...`.
pub fn pretrain_command(out: &Path, sets: &[String], extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(ijepa_bin());
    cmd.args(["pretrain", "--quiet", "--config"])
        .arg(recipe())
        .arg("--output")
        .arg(out);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.args(extra);
    cmd
}
