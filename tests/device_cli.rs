//! `--device cuda:N` on every subcommand that runs a network, on a machine (or a process) with
//! no usable GPU: one clear line of error, no panic, no backtrace. A binary built without
//! the `cuda` feature says how to get GPU support; one built with it (`--features cuda`) says
//! that no GPU was found (here made certain with `CUDA_VISIBLE_DEVICES=`, which hides every
//! GPU, so this also holds on a GPU machine).

mod common;

use std::process::Command;

use common::{ijepa_bin, reference};

fn fmnist() -> String {
    format!(
        "fmnist:{}",
        std::env::var("IJEPA_FMNIST")
            .unwrap_or_else(|_| "/usr/share/datasets/fashion-mnist".into())
    )
}

/// Every subcommand with a network, with otherwise valid arguments, on `cuda:0`.
fn commands(out: &std::path::Path) -> Vec<(&'static str, Vec<String>)> {
    let r = |p: &str| reference(p).display().to_string();
    let model = vec![
        "--model".to_string(),
        r("official/checkpoint.pth.tar"),
        "--num-heads".into(),
        "4".into(),
    ];
    let o = |name: &str| out.join(name).display().to_string();
    let data = vec![
        "--train".to_string(),
        fmnist(),
        "--test".into(),
        fmnist(),
        "--max-train".into(),
        "10".into(),
        "--max-test".into(),
        "10".into(),
    ];
    let with = |cmd: &'static str, rest: Vec<String>| {
        let mut a = vec![cmd.to_string()];
        a.extend(rest);
        a.extend(["--device".into(), "cuda:0".into()]);
        (cmd, a)
    };
    vec![
        with(
            "embed",
            [
                model.clone(),
                vec![
                    "--input".into(),
                    r("official/x.npy"),
                    "--output".into(),
                    o("e.npy"),
                ],
            ]
            .concat(),
        ),
        with(
            "predict",
            [
                model.clone(),
                vec![
                    "--input".into(),
                    r("official/x.npy"),
                    "--masks-enc".into(),
                    r("official/masks_enc.npy"),
                    "--masks-pred".into(),
                    r("official/masks_pred.npy"),
                    "--output".into(),
                    o("p"),
                ],
            ]
            .concat(),
        ),
        with("probe", [model.clone(), data.clone()].concat()),
        with("knn", [model.clone(), data.clone()].concat()),
        with("eval", [model, data].concat()),
        with(
            "pretrain",
            vec![
                "--config".into(),
                "configs/fmnist_vit.yaml".into(),
                "--output".into(),
                o("run"),
                "--max-steps".into(),
                "1".into(),
            ],
        ),
        with("bench", vec!["--steps".into(), "1".into()]),
    ]
}

fn every_command_says(expected: &str) {
    let out = tempfile::tempdir().unwrap();
    for (cmd, args) in commands(out.path()) {
        let res = Command::new(ijepa_bin())
            .args(&args)
            .env("CUDA_VISIBLE_DEVICES", "")
            .env("RUST_BACKTRACE", "1")
            .env("IJEPA_KERNEL_CACHE", out.path().join("kernels"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{cmd}: should have failed: {stderr}");
        assert_ne!(res.status.code(), Some(101), "{cmd} panicked: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{cmd}: one error line expected: {stderr}");
        assert!(errors[0].contains(expected), "{cmd}: {stderr}");
        for noise in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            assert!(!stderr.contains(noise), "{cmd}: '{noise}' in: {stderr}");
        }
        assert!(
            !out.path().join("run").join("log.csv").exists(),
            "{cmd}: trained anyway"
        );
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_without_gpu_support_is_a_clear_error() {
    every_command_says("built without GPU support");
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_device_without_a_gpu_is_a_clear_error() {
    every_command_says("no usable CUDA GPU");
}
