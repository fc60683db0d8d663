//! End-to-end runs of `ijepa predict`, `ijepa embed` and `ijepa export` on the reference data,
//! and hostile inputs that must end with a clear one-line error.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tmp;
use common::{
    assert_close, embed_command, expected_json, export_command, ijepa_bin, npy, reference,
};
use ijepa::checkpoint::HostTensor;
use npyz::WriterBuilder;

fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &stderr
}

/// Runs a command that must fail; returns its one-line error.
fn run_err(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should have failed");
    assert_ne!(
        out.status.code(),
        Some(101),
        "{cmd:?} panicked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(
        stderr.lines().count(),
        1,
        "error should be one line: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn heads() -> (String, String) {
    let s = &expected_json()["settings"]["official"];
    (s["num_heads"].to_string(), s["pred_num_heads"].to_string())
}

/// [`assert_close`] of the .npy file `got` against the reference array `want`.
fn assert_file_close(name: &str, got: &Path, want: &str, tol: f32) {
    assert_close(name, &ijepa::npy::read_f32(got).unwrap(), &npy(want), tol);
}

/// `ijepa predict --model MODEL --input INPUT --masks-enc ENC --masks-pred the reference's
/// --output OUTPUT EXTRA...`.
fn predict(model: &Path, input: &Path, masks_enc: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(ijepa_bin());
    cmd.arg("predict")
        .arg("--model")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--masks-enc")
        .arg(masks_enc)
        .arg("--masks-pred")
        .arg(reference("official/masks_pred.npy"))
        .arg("--output")
        .arg(output)
        .args(extra);
    cmd
}

/// A copy of the reference HF model in `dir` whose config.json has `from` replaced by `to`;
/// returns `dir`.
fn hf_with_config(dir: PathBuf, from: &str, to: &str) -> PathBuf {
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = std::fs::read_to_string(reference("hf/config.json"))
        .unwrap()
        .replace(from, to);
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    std::fs::copy(
        reference("hf/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    dir
}

#[test]
fn predict_writes_the_reference_arrays() {
    let out = tmp("predict");
    let (h, ph) = heads();
    run_ok(predict(
        &reference("official/checkpoint.pth.tar"),
        &reference("official/x.npy"),
        &reference("official/masks_enc.npy"),
        &out,
        &["--num-heads", &h, "--pred-num-heads", &ph],
    ));
    for name in ["target_raw", "target_h", "targets", "context_z", "pred"] {
        assert_file_close(
            name,
            &out.join(format!("{name}.npy")),
            &format!("official/{name}.npy"),
            1e-5,
        );
    }
    let loss: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("loss.json")).unwrap()).unwrap();
    let want = &expected_json()["official_loss"];
    assert!((loss["smooth_l1"].as_f64().unwrap() - want["loss"].as_f64().unwrap()).abs() < 1e-5);
    assert!((loss["l2"].as_f64().unwrap() - want["mse"].as_f64().unwrap()).abs() < 1e-5);
}

#[test]
fn embed_hf_pixels_and_photo() {
    let out = tmp("embed-hf");
    let tokens = out.join("tokens.npy");
    run_ok(embed_command(
        &reference("hf"),
        &reference("hf/pixel_values.npy"),
        &tokens,
        &["--pool", "none"],
    ));
    assert_file_close("tokens", &tokens, "hf/last_hidden_state.npy", 1e-5);

    let pooled = out.join("photo.npy");
    run_ok(embed_command(
        &reference("hf"),
        &reference("hf/photo.png"),
        &pooled,
        &[],
    ));
    let want = npy("hf/photo_last_hidden_state.npy");
    let (n, d) = (want.shape[1], want.shape[2]);
    let mean: Vec<f32> = (0..d)
        .map(|j| (0..n).map(|i| want.data[i * d + j]).sum::<f32>() / n as f32)
        .collect();
    assert_close(
        "photo mean",
        &ijepa::npy::read_f32(&pooled).unwrap(),
        &HostTensor::new(vec![1, d], mean),
        1e-3,
    );
}

#[test]
fn export_official_to_hf_and_native_round_trips() {
    let out = tmp("export");
    let (h, ph) = heads();
    let ckpt = reference("official/checkpoint.pth.tar");
    let x = reference("official/x.npy");
    let hf_dir = out.join("hf");
    run_ok(export_command(&ckpt, "hf", &hf_dir, &["--num-heads", &h]));
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        assert!(hf_dir.join(f).is_file(), "{f} missing");
    }
    let a = out.join("a.npy");
    let b = out.join("b.npy");
    run_ok(embed_command(
        &ckpt,
        &x,
        &a,
        &["--num-heads", &h, "--pool", "none"],
    ));
    run_ok(embed_command(&hf_dir, &x, &b, &["--pool", "none"]));
    // The official default is the target encoder; the HF export took the target encoder too.
    assert_file_close(
        "hf export == official target",
        &b,
        "official/target_raw.npy",
        1e-5,
    );
    assert_file_close("official embed", &a, "official/target_raw.npy", 1e-5);

    let native = out.join("model.safetensors");
    run_ok(export_command(
        &ckpt,
        "native",
        &native,
        &["--num-heads", &h, "--pred-num-heads", &ph],
    ));
    assert!(
        out.join("model.json").is_file(),
        "readable description next to the native file"
    );
    let pred_dir = out.join("pred");
    run_ok(predict(
        &native,
        &x,
        &reference("official/masks_enc.npy"),
        &pred_dir,
        &[],
    ));
    assert_file_close(
        "native pred",
        &pred_dir.join("pred.npy"),
        "official/pred.npy",
        1e-5,
    );
}

#[test]
fn hostile_inputs_fail_cleanly() {
    let out = tmp("hostile");
    let x = reference("hf/pixel_values.npy");
    let y = out.join("y.npy");
    let embed_err = |model: &Path| run_err(embed_command(model, &x, &y, &[]));

    // truncated safetensors
    let bad_hf = out.join("truncated");
    std::fs::create_dir_all(&bad_hf).unwrap();
    std::fs::copy(reference("hf/config.json"), bad_hf.join("config.json")).unwrap();
    let bytes = std::fs::read(reference("hf/model.safetensors")).unwrap();
    std::fs::write(bad_hf.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = embed_err(&bad_hf);
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );

    // a pickle that would execute code (zip form, like torch.save, and raw form)
    let evil = out.join("evil.pth.tar");
    {
        let file = std::fs::File::create(&evil).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        zip.start_file("archive/data.pkl", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(
            &mut zip,
            b"\x80\x02cposix\nsystem\nX\x05\x00\x00\x00touch\x85R.",
        )
        .unwrap();
        zip.finish().unwrap();
    }
    let e = embed_err(&evil);
    assert!(
        e.contains("refusing") && e.contains("posix.system") && e.contains("evil.pth.tar"),
        "{e}"
    );
    let evil_raw = out.join("evil.pt");
    std::fs::write(
        &evil_raw,
        b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.",
    )
    .unwrap();
    let e = embed_err(&evil_raw);
    assert!(e.contains("refusing") && e.contains("builtins.eval"), "{e}");

    // a checkpoint of the wrong size: config says 3 layers, weights have 2
    let e = embed_err(&hf_with_config(
        out.join("wrong"),
        "\"num_hidden_layers\": 2",
        "\"num_hidden_layers\": 3",
    ));
    assert!(e.contains("missing keys") && e.contains("blocks.2."), "{e}");
    // and a wider one: official checkpoint loaded with the wrong head count fails on shapes? no: heads
    // do not change shapes; a wrong width does
    let e = embed_err(&hf_with_config(
        out.join("wide"),
        "\"intermediate_size\": 256",
        "\"intermediate_size\": 128",
    ));
    assert!(
        e.contains("wrong shapes") && e.contains("mlp.fc1.weight") && e.contains("[128, 64]"),
        "{e}"
    );

    // a non-image file
    let fake = out.join("notes.png");
    std::fs::write(&fake, "this is not a picture").unwrap();
    let e = run_err(embed_command(&reference("hf"), &fake, &y, &[]));
    assert!(e.contains("notes.png") && e.contains("image"), "{e}");

    // a .npy of the wrong shape
    let e = run_err(embed_command(
        &reference("hf"),
        &reference("hf/last_hidden_state.npy"),
        &y,
        &[],
    ));
    assert!(
        e.contains("last_hidden_state.npy") && e.contains("[N, 3, 32, 32]"),
        "{e}"
    );

    // masks that point outside the grid
    let m = out.join("m.npy");
    write_i64(&m, &[1, 2, 2], &[0, 1, 2, 99]);
    let (h, _) = heads();
    let e = run_err(predict(
        &reference("official/checkpoint.pth.tar"),
        &reference("official/x.npy"),
        &m,
        &out.join("p"),
        &["--num-heads", &h],
    ));
    assert!(e.contains("m.npy") && e.contains("99"), "{e}");
    assert!(!y.exists(), "no output written on failure");
}

fn write_i64(path: &Path, shape: &[u64], values: &[i64]) {
    let mut bytes = Vec::new();
    {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(&mut bytes)
            .begin_nd()
            .unwrap();
        w.extend(values.iter().copied()).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// `ijepa bench --compare-bf16` on tiny shapes: where the CPU has bf16 products, both
/// precisions' RESULT lines and a positive paired speed-up; elsewhere one clear error.
/// `--bf16` alongside it is refused.
#[test]
fn bench_compares_bf16_with_f32_in_one_process() {
    let cmd = || {
        let mut c = Command::new(ijepa_bin());
        c.args([
            "bench",
            "--embed-dim",
            "32",
            "--depth",
            "1",
            "--heads",
            "2",
            "--pred-dim",
            "16",
            "--pred-depth",
            "1",
            "--pred-heads",
            "2",
            "--batch-size",
            "4",
            "--infer-batch-size",
            "4",
            "--steps",
            "3",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--k-enc",
            "20",
            "--k-pred",
            "6",
            "--compare-bf16",
        ]);
        c
    };
    match ijepa::ops::cpu_bf16() {
        Ok(_) => {
            let out = run_ok(cmd());
            for line in [
                "RESULT train_step_f32 ",
                "RESULT train_step_bf16 ",
                "RESULT infer_f32 ",
                "RESULT infer_bf16 ",
            ] {
                assert!(out.contains(line), "no '{line}' in: {out}");
            }
            let speedup: f64 = out
                .split("RESULT bf16_speedup train=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no speed-up in: {out}"));
            assert!(speedup.is_finite() && speedup > 0.0, "{speedup}");
        }
        Err(_) => {
            let err = run_err(cmd());
            assert!(err.contains("--compare-bf16"), "{err}");
        }
    }
    let out = cmd().arg("--bf16").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
