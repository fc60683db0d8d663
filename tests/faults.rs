//! Faults a hostile user found (issue 17), each end to end through the `ijepa` binary: inputs
//! that used to give wrong numbers with exit 0, panics, and runs that lost or mixed files.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{ijepa_bin, reference, tmp};
use ijepa::checkpoint::{HostTensor, safetensors_io};

const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

fn ijepa(args: &[&str]) -> Output {
    Command::new(ijepa_bin()).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

fn ok(o: Output) -> String {
    let t = text(&o);
    assert!(o.status.success(), "ijepa failed: {t}");
    t
}

/// A failure that is an error message, not a panic; returns stderr.
fn failed(o: Output) -> String {
    let t = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "should have failed: {}", text(&o));
    assert_ne!(o.status.code(), Some(101), "panicked: {t}");
    assert!(t.starts_with("error: ") || t.contains("\nerror: "), "{t}");
    t
}

/// `ijepa embed --model MODEL --input INPUT --output OUTPUT EXTRA...`.
fn embed(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    Command::new(ijepa_bin())
        .arg("embed")
        .arg("--model")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Settings of a tiny model on `images` images (batch 16).
fn tiny(images: usize, epochs: usize) -> Vec<String> {
    common::tiny_model()
        .into_iter()
        .chain(["data.batch_size=16".to_string()])
        .chain([
            format!("data.max_images={images}"),
            format!("optimization.epochs={epochs}"),
        ])
        .collect()
}

fn pretrain_cmd(out: &Path, sets: &[String], extra: &[&str]) -> Command {
    common::pretrain_command(out, sets, extra)
}

fn pretrain(out: &Path, sets: &[String], extra: &[&str]) -> Output {
    pretrain_cmd(out, sets, extra).output().unwrap()
}

/// Two colours of 3-channel images per class folder: `dark` near black, `bright` near white.
fn image_folder(root: &Path, classes: &[(&str, u8)], per_class: u32) {
    for (class, level) in classes {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                let v = level.saturating_add(((x + y + i) % 7) as u8);
                image::Rgb([v, v, v])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

/// A tiny untrained RGB model (`--max-steps 0`) trained on `data`.
fn rgb_model(dir: &Path, data: &Path) -> PathBuf {
    let mut sets = tiny(1000, 1);
    sets.extend([
        format!("data.dataset={}", data.display()),
        "data.in_chans=3".into(),
        "data.pad=0".into(),
        "data.mean=[0.5,0.5,0.5]".into(),
        "data.std=[0.25,0.25,0.25]".into(),
    ]);
    let out = dir.join("model");
    ok(pretrain(&out, &sets, &["--max-steps", "0"]));
    out.join("latest")
}

#[test]
fn evaluation_matches_classes_by_name() {
    let dir = tmp("classes");
    let (train, test, unseen) = (dir.join("train"), dir.join("test"), dir.join("unseen"));
    image_folder(&train, &[("pullover", 10), ("trouser", 230)], 16);
    image_folder(&test, &[("trouser", 230)], 8);
    image_folder(&unseen, &[("shirt", 120)], 4);
    let model = rgb_model(&dir, &train);
    let json = dir.join("knn.json");
    ok(ijepa(&[
        "knn",
        "--model",
        s(&model),
        "--train",
        s(&train),
        "--test",
        s(&test),
        "--k",
        "3",
        "--output",
        s(&json),
    ]));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["top1"], 100.0, "{r}");
    let e = failed(ijepa(&[
        "knn",
        "--model",
        s(&model),
        "--train",
        s(&train),
        "--test",
        s(&unseen),
    ]));
    assert!(e.contains("shirt") && e.contains("pullover"), "{e}");
}

#[test]
fn a_bare_idx_path_trains_and_embeds_like_idx() {
    let dir = tmp("bare-idx");
    let file = format!("{FMNIST}/train-images-idx3-ubyte.gz");
    let preprocess = |spec: &str, name: &str| {
        let mut sets = tiny(64, 1);
        sets.extend([format!("data.dataset={spec}"), "data.in_chans=1".into()]);
        let out = dir.join(name);
        ok(pretrain(&out, &sets, &["--max-steps", "0"]));
        let desc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("latest.json")).unwrap())
                .unwrap();
        desc["preprocess"].clone()
    };
    let idx = preprocess(&format!("idx:{file}"), "idx");
    assert_eq!(idx["center_crop"], false);
    assert_eq!(preprocess(&file, "bare"), idx);
    assert_eq!(preprocess(&format!("folder:{file}"), "folder"), idx);
}

/// `x` written in Fortran order (`np.asfortranarray`): same array, other memory layout.
fn write_fortran(path: &Path, x: &HostTensor) {
    use npyz::WriterBuilder;
    let shape = &x.shape;
    let n = x.data.len();
    let mut data = vec![0f32; n];
    for (c_index, &v) in x.data.iter().enumerate() {
        // Multi-index of the C-order position, then its Fortran-order position.
        let (mut rest, mut f_index, mut stride) = (c_index, 0, 1);
        let mut idx = vec![0; shape.len()];
        for (d, &len) in shape.iter().enumerate().rev() {
            idx[d] = rest % len;
            rest /= len;
        }
        for (d, &len) in shape.iter().enumerate() {
            f_index += idx[d] * stride;
            stride *= len;
        }
        data[f_index] = v;
    }
    let file = std::fs::File::create(path).unwrap();
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&dims)
        .order(npyz::Order::Fortran)
        .writer(file)
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

#[test]
fn a_fortran_order_npy_gives_the_same_embedding() {
    let dir = tmp("fortran");
    let x = ijepa::npy::read_f32(&reference("hf/pixel_values.npy")).unwrap();
    let fortran = dir.join("x_f.npy");
    write_fortran(&fortran, &x);
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    let hf = reference("hf");
    for (input, output) in [(reference("hf/pixel_values.npy"), &a), (fortran, &b)] {
        ok(embed(&hf, &input, output, &[]));
    }
    let (a, b) = (
        ijepa::npy::read_f32(&a).unwrap(),
        ijepa::npy::read_f32(&b).unwrap(),
    );
    assert_eq!(a.shape, b.shape);
    assert!(a.max_abs_diff(&b) < 1e-6, "{}", a.max_abs_diff(&b));
}

fn training_step(dir: &Path) -> u64 {
    let desc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("latest.json")).unwrap()).unwrap();
    desc["training"]["progress"]["global_step"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_folder_holding_a_run_is_not_overwritten_by_accident() {
    let out = tmp("existing-run");
    let sets = tiny(64, 2); // 4 steps per epoch
    ok(pretrain(&out, &sets, &[]));
    assert!(out.join("ep2.safetensors").is_file());
    let log_before = std::fs::read(out.join("log.csv")).unwrap();
    let e = failed(pretrain(&out, &sets, &["--max-steps", "1"]));
    assert!(e.contains("--resume") && e.contains("--overwrite"), "{e}");
    assert_eq!(std::fs::read(out.join("log.csv")).unwrap(), log_before);
    ok(pretrain(&out, &sets, &["--max-steps", "1", "--overwrite"]));
    assert_eq!(training_step(&out), 1);
    assert!(!out.join("ep1.safetensors").exists() && !out.join("ep2.safetensors").exists());
    assert_eq!(
        ijepa::train::log::read(&out.join("log.csv")).unwrap().len(),
        1
    );
}

#[test]
fn a_refused_resume_leaves_the_run_settings_alone() {
    let out = tmp("refused");
    let sets = tiny(64, 1);
    ok(pretrain(&out, &sets, &["--max-steps", "1"]));
    let params = std::fs::read_to_string(out.join("params-ijepa.yaml")).unwrap();
    let mut other = sets.clone();
    other.push("meta.depth=3".into());
    failed(pretrain(&out, &other, &["--resume"]));
    let mut bad_data = sets.clone();
    bad_data.push("data.dataset=/no/such/folder".into());
    failed(pretrain(&out, &bad_data, &["--resume"]));
    assert_eq!(
        std::fs::read_to_string(out.join("params-ijepa.yaml")).unwrap(),
        params
    );
}

#[test]
fn temp_files_of_a_killed_write_are_removed_at_the_next_start() {
    let out = tmp("stale-tmp");
    let sets = tiny(64, 1);
    ok(pretrain(&out, &sets, &["--max-steps", "1"]));
    let stale = out.join(".latest.safetensors.tmp.999999");
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    let other = out.join("notes.tmp.txt");
    std::fs::write(&other, b"mine").unwrap();
    ok(pretrain(&out, &sets, &["--resume", "--max-steps", "2"]));
    assert!(!stale.exists(), "stale temporary checkpoint left behind");
    assert!(other.exists(), "a file that is not ours was removed");
}

#[test]
fn every_epoch_checkpoint_exists_after_a_resumed_run() {
    let out = tmp("epochs");
    ok(pretrain(&out, &tiny(64, 1), &[]));
    // A kill after `latest` but before `ep1` and its monitor row were written (the order the
    // trainer used to write them in).
    std::fs::remove_file(out.join("ep1.safetensors")).unwrap();
    std::fs::write(
        out.join("monitor.csv"),
        "epoch,feature_std,effective_rank\n",
    )
    .unwrap();
    ok(pretrain(&out, &tiny(64, 2), &["--resume"]));
    for f in ["ep1.safetensors", "ep2.safetensors"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let monitor = std::fs::read_to_string(out.join("monitor.csv")).unwrap();
    let epochs: Vec<&str> = monitor
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(epochs, ["1", "2"], "{monitor}");
}

#[test]
fn sigterm_writes_a_last_checkpoint_and_leaves_no_temp_files() {
    let out = tmp("sigterm");
    let mut sets = tiny(640, 5);
    sets.push("logging.checkpoint_every=1000".into());
    let mut child = pretrain_cmd(&out, &sets, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while ijepa::train::log::read(&out.join("log.csv")).map_or(0, |r| r.len()) < 3 {
        assert!(std::time::Instant::now() < deadline, "run did not progress");
        assert!(child.try_wait().unwrap().is_none(), "run ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "an interrupted run does not report success"
    );
    assert!(err.contains("SIGTERM") && err.contains("--resume"), "{err}");
    let logged = ijepa::train::log::read(&out.join("log.csv")).unwrap();
    assert_eq!(training_step(&out), logged.last().unwrap().step);
    let leftovers: Vec<_> = std::fs::read_dir(&*out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    ok(pretrain(&out, &sets, &["--resume", "--max-steps", "12"]));
}

/// A Hugging Face directory whose layer-0 key bias has another shape than query and value.
#[test]
fn mismatched_hf_qkv_shapes_are_an_error() {
    let dir = tmp("hf-qkv");
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::copy(reference("hf/config.json"), hf.join("config.json")).unwrap();
    let (mut tensors, meta) = safetensors_io::read(&reference("hf/model.safetensors")).unwrap();
    let key = tensors
        .keys()
        .find(|k| k.ends_with("layer.0.attention.attention.key.bias"))
        .unwrap()
        .clone();
    tensors.insert(key, HostTensor::new(vec![3], vec![0.0; 3]));
    safetensors_io::write(&hf.join("model.safetensors"), &tensors, meta).unwrap();
    let e = failed(embed(
        &hf,
        &reference("hf/pixel_values.npy"),
        &dir.join("y.npy"),
        &[],
    ));
    assert!(e.contains("key") && e.contains("[3]"), "{e}");
}

/// A native checkpoint whose description says `preprocess.mean: []` or `std: [0]`.
#[test]
fn bad_native_preprocessing_is_an_error() {
    let dir = tmp("native-pre");
    let model = dir.join("m.safetensors");
    ok(ijepa(&[
        "export",
        "--model",
        s(&reference("hf")),
        "--format",
        "native",
        "--output",
        s(&model),
    ]));
    let photo = reference("hf/photo.png");
    for (field, value) in [("mean", "[]"), ("std", "[0.0, 0.0, 0.0]")] {
        let (tensors, mut meta) = safetensors_io::read(&model).unwrap();
        let mut desc: serde_json::Value = serde_json::from_str(&meta["ijepa"]).unwrap();
        desc["preprocess"][field] = serde_json::from_str(value).unwrap();
        meta.insert("ijepa".into(), desc.to_string());
        let bad = dir.join(format!("bad-{field}.safetensors"));
        safetensors_io::write(&bad, &tensors, meta).unwrap();
        let e = failed(embed(&bad, &photo, &dir.join("y.npy"), &[]));
        assert!(e.contains(field) && e.contains("bad-"), "{e}");
    }
}

#[test]
fn messages_say_what_went_wrong() {
    let dir = tmp("messages");
    // A config value of the wrong type names its key.
    let o = pretrain(&dir.join("a"), &["optimization.lr=lots".into()], &[]);
    let e = failed(o);
    assert!(
        e.contains("optimization.lr") && e.contains("expected a number") && e.contains("lots"),
        "{e}"
    );
    // A data fault is not a configuration fault.
    let e = failed(pretrain(
        &dir.join("b"),
        &["data.dataset=/no/such/folder".into()],
        &[],
    ));
    assert!(!e.contains("invalid configuration"), "{e}");
    // An I/O error is said once.
    let e = failed(embed(
        Path::new("/no/such/model.safetensors"),
        &reference("hf/photo.png"),
        &dir.join("y.npy"),
        &[],
    ));
    assert_eq!(e.matches("No such file").count(), 1, "{e}");
    // A truncated native checkpoint is called truncated.
    let model = dir.join("m.safetensors");
    ok(ijepa(&[
        "export",
        "--model",
        s(&reference("hf")),
        "--format",
        "native",
        "--output",
        s(&model),
    ]));
    let bytes = std::fs::read(&model).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = failed(embed(
        &cut,
        &reference("hf/photo.png"),
        &dir.join("y.npy"),
        &[],
    ));
    assert!(!e.contains("not a checkpoint this program knows"), "{e}");
    assert!(e.contains("truncated") || e.contains("incomplete"), "{e}");
    // `--batch-size 0` is refused, not turned into 1.
    failed(embed(
        &model,
        &reference("hf/photo.png"),
        &dir.join("y.npy"),
        &["--batch-size", "0"],
    ));
    // `--layers last4` on a 2-block model is refused, not silently `last2`.
    let data = dir.join("data");
    image_folder(&data, &[("a", 10), ("b", 230)], 16);
    let tiny_model = rgb_model(&dir, &data);
    let e = failed(ijepa(&[
        "knn",
        "--model",
        s(&tiny_model),
        "--train",
        s(&data),
        "--test",
        s(&data),
        "--layers",
        "last4",
    ]));
    assert!(e.contains("last4") && e.contains('2'), "{e}");
}
