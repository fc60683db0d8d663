//! `ijepa viz` on the three checkpoint formats (official `.pth.tar`, Hugging Face directory,
//! native safetensors): a PNG of the expected layout whose feature maps use several colours,
//! and the encoder each format gives by default.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{expected_json, ijepa_bin, reference};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ijepa-viz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_ok(args: &[&str]) -> String {
    let out = Command::new(ijepa_bin()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ijepa {args:?} failed: {stderr}");
    stderr.into_owned()
}

/// Distinct colours in the feature-map half of the first pair.
fn map_colours(png: &std::path::Path, cell: u32) -> usize {
    let img = image::open(png).unwrap().to_rgb8();
    let mut seen = std::collections::HashSet::new();
    for y in 4..4 + cell {
        for x in 4 + cell + 4..4 + 2 * cell + 4 {
            seen.insert(img.get_pixel(x, y).0);
        }
    }
    seen.len()
}

#[test]
fn viz_reads_official_hf_and_native_models() {
    let dir = tmp("formats");
    let photo = reference("hf/photo.png");
    let photo = photo.to_str().unwrap();
    let heads = expected_json()["settings"]["official"]["num_heads"].to_string();
    let native = dir.join("hf-as-native.safetensors");
    run_ok(&[
        "export",
        "--model",
        reference("hf").to_str().unwrap(),
        "--format",
        "native",
        "--output",
        native.to_str().unwrap(),
    ]);
    let official = reference("official/checkpoint.pth.tar");
    let hf = reference("hf");
    let cases: [(&str, Vec<&str>, &str); 3] = [
        (
            "official",
            vec![official.to_str().unwrap(), "--num-heads", &heads],
            "Target encoder",
        ),
        ("hf", vec![hf.to_str().unwrap()], "Context encoder"),
        ("native", vec![native.to_str().unwrap()], "encoder"),
    ];
    for (name, model, says) in cases {
        let png = dir.join(format!("{name}.png"));
        let mut args = vec!["viz", "--model"];
        args.extend(model);
        args.extend([
            "--input",
            photo,
            photo,
            photo,
            "--cell",
            "40",
            "--per-row",
            "2",
            "--output",
            png.to_str().unwrap(),
        ]);
        let text = run_ok(&args);
        assert!(text.contains(says), "{name}: {text}");
        let img = image::open(&png).unwrap();
        // 3 pairs, 2 per row: 2 * (2 * 40 + 12) + 4 wide, 2 * 44 + 4 high.
        assert_eq!((img.width(), img.height()), (188, 92), "{name}");
        // A 4x4 patch grid of one photo: several distinct patch colours.
        assert!(map_colours(&png, 40) >= 4, "{name}: too few colours");
    }
}
