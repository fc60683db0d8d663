//! End-to-end `ijepa pretrain` on real Fashion-MNIST images: the loss goes down, a run killed
//! mid-way resumes to exactly the same losses and weights, bad data and bad output folders
//! give clear errors, and a NaN loss stops the run with the last checkpoint intact.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::tmp;
use common::{ijepa_bin, pretrain, recipe, require_fmnist};
use ijepa::checkpoint::{Checkpoint, LoadOptions};

/// A small model and data set, so that a run takes seconds.
fn tiny(images: usize, epochs: usize) -> Vec<String> {
    common::tiny_run(32, images, epochs)
}

fn ok(o: &Output) -> String {
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "pretrain failed: {text}");
    text
}

/// `(step, loss)` rows of a run's log.
fn losses(dir: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(dir.join("log.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    for col in ijepa::train::log::columns() {
        assert!(
            header.split(',').any(|c| c == col),
            "log.csv lacks column {col}: {header}"
        );
    }
    ijepa::train::log::read(&dir.join("log.csv"))
        .unwrap()
        .iter()
        .map(|r| (r.step, r.loss))
        .collect()
}

fn checkpoint(dir: &Path) -> Checkpoint {
    Checkpoint::read(&dir.join("latest"), &LoadOptions::default()).unwrap()
}

#[test]
fn two_epochs_on_fmnist_lower_the_loss() {
    require_fmnist();
    let out = tmp("loss");
    let text = ok(&pretrain(
        &out,
        &[
            "data.max_images=2560".into(),
            "optimization.epochs=2".into(),
        ],
        &[],
    ));
    assert!(text.contains("epoch 2/2"), "{text}");
    let l = losses(&out);
    assert_eq!(l.len(), 2 * 2560 / 128);
    let first: f64 = l[..5].iter().map(|x| x.1).sum::<f64>() / 5.0;
    let last: f64 = l[l.len() - 5..].iter().map(|x| x.1).sum::<f64>() / 5.0;
    assert!(
        last < 0.7 * first,
        "loss did not go down: first steps {first:.4}, last steps {last:.4}"
    );
    for f in [
        "params-ijepa.yaml",
        "latest.safetensors",
        "latest.json",
        "ep1.safetensors",
        "ep2.safetensors",
        "loss.png",
        "monitor.csv",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // monitor.csv: a row per epoch with the online kNN of the labelled data (well above
    // the 10 % of chance), and, with no regulariser on, the prediction loss is the loss.
    assert!(text.contains("online kNN top-1"), "{text}");
    let rows = ijepa::train::monitor::read_records(&out.join("monitor.csv")).unwrap();
    assert_eq!(rows.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(rows[1].step, 40);
    for r in &rows {
        let knn = r.knn_top1.expect("online kNN on labelled data");
        assert!(knn > 30.0 && knn <= 100.0, "{r:?}");
        assert!((r.loss - r.prediction_loss).abs() < 1e-5, "{r:?}");
        assert!(r.seconds > 0.0 && r.health.effective_rank > 1.0, "{r:?}");
    }
    // The checkpoint is a model `embed` reads, with the training state in it.
    let ck = checkpoint(&out);
    assert!(ck.target_encoder.is_some() && ck.predictor.is_some());
    assert_eq!(
        ck.description.training.as_ref().unwrap()["progress"]["global_step"],
        40
    );
}

#[test]
fn interrupted_runs_resume_exactly() {
    require_fmnist();
    let sets = tiny(320, 2); // 10 steps per epoch, 20 in all
    let whole = tmp("whole");
    ok(&pretrain(&whole, &sets, &[]));

    // A clean interruption in the first epoch (--max-steps), then resume.
    let parts = tmp("parts");
    ok(&pretrain(&parts, &sets, &["--max-steps", "7"]));
    assert_eq!(losses(&parts).len(), 7);
    ok(&pretrain(&parts, &sets, &["--resume"]));

    // A hard kill: checkpoints every 3 steps, killed once step 13 is logged, resumed.
    let killed = tmp("killed");
    let mut sets_k = sets.clone();
    sets_k.push("logging.checkpoint_every=3".into());
    let mut cmd = Command::new(ijepa_bin());
    cmd.args(["pretrain", "--quiet", "--config"])
        .arg(recipe())
        .arg("--output")
        .arg(&killed);
    for s in &sets_k {
        cmd.args(["--set", s]);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let logged = std::fs::read_to_string(killed.join("log.csv"))
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0);
        if logged >= 13 || child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "run did not progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    ok(&pretrain(&killed, &sets_k, &["--resume"]));

    for dir in [&parts, &killed] {
        assert_same_run(dir, &whole, 20);
    }
}

/// MSN's prototypes, the invariance head and VICReg's expander (predictor parameters outside
/// the official layout), with a second crop per image, are saved and resume exactly too.
#[test]
fn runs_with_msn_resume_exactly() {
    require_fmnist();
    let mut sets = tiny(320, 2);
    sets.extend(
        [
            "regularization.msn_weight=0.5",
            "regularization.msn_prototypes=16",
            "regularization.invariance_head=24",
            "regularization.invariance_view=crop",
            "regularization.vicreg_variance_weight=1.0",
            "regularization.expander=20",
        ]
        .map(String::from),
    );
    let whole = resumes_exactly("msn", &sets);
    let predictor = checkpoint(&whole).predictor.unwrap();
    for key in [
        "prototypes",
        "invariance_head.fc1.weight",
        "expander.fc2.weight",
    ] {
        assert!(predictor.contains_key(key), "no {key} in the predictor");
    }
}

/// `meta.patch_embed: per_position`: a run resumes exactly, per-position weights included,
/// and trains them in both encoders; the Hugging Face export refuses the model (its format
/// has no such weights) and writes nothing, the native export keeps them.
#[test]
fn runs_with_per_position_patch_embed() {
    require_fmnist();
    let mut sets = tiny(320, 2);
    sets.push("meta.patch_embed=per_position".into());
    let whole = resumes_exactly("per_position", &sets);
    let ck = checkpoint(&whole);
    for (name, encoder) in [
        ("encoder", &ck.encoder),
        ("target", ck.target_encoder.as_ref().unwrap()),
    ] {
        let w = &encoder["patch_embed.per_position"];
        assert_eq!(w.shape, [64, 16, 32], "{name}");
        assert!(w.data.iter().any(|v| *v != 0.0), "{name}: never trained");
    }
    let export = |format: &str, output: &Path| {
        Command::new(ijepa_bin())
            .args(["export", "--format", format, "--model"])
            .arg(whole.join("latest"))
            .arg("--output")
            .arg(output)
            .output()
            .unwrap()
    };
    let hf = whole.join("hf");
    let o = export("hf", &hf);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("per-position"), "{err}");
    assert!(!hf.exists(), "a refused export wrote {}", hf.display());
    let native = whole.join("copy.safetensors");
    ok(&export("native", &native));
    let copy = Checkpoint::read(&native, &LoadOptions::default()).unwrap();
    assert_eq!(
        copy.encoder["patch_embed.per_position"].data,
        ck.encoder["patch_embed.per_position"].data
    );
}

/// A run of `sets` (20 steps) stopped after step 7 and resumed matches the uninterrupted one;
/// returns the uninterrupted run's folder.
fn resumes_exactly(name: &str, sets: &[String]) -> common::TestDir {
    let whole = tmp(&format!("{name}_whole"));
    ok(&pretrain(&whole, sets, &[]));
    let parts = tmp(&format!("{name}_parts"));
    ok(&pretrain(&parts, sets, &["--max-steps", "7"]));
    ok(&pretrain(&parts, sets, &["--resume"]));
    assert_same_run(&parts, &whole, 20);
    whole
}

/// `dir`'s losses (all `steps` of them) and weights are those of the uninterrupted `whole`.
fn assert_same_run(dir: &Path, whole: &Path, steps: u64) {
    let reference = losses(whole);
    assert_eq!(reference.len() as u64, steps);
    let got = losses(dir);
    assert_eq!(
        got.iter().map(|x| x.0).collect::<Vec<_>>(),
        (1..=steps).collect::<Vec<u64>>(),
        "{}: steps",
        dir.display()
    );
    for ((s, a), (_, b)) in got.iter().zip(&reference) {
        assert!(
            (a - b).abs() <= 1e-6,
            "{}: step {s}: loss {a} vs uninterrupted {b}",
            dir.display()
        );
    }
    let (a, b) = (checkpoint(dir), checkpoint(whole));
    for (name, x, y) in [
        ("encoder", &a.encoder, &b.encoder),
        (
            "predictor",
            a.predictor.as_ref().unwrap(),
            b.predictor.as_ref().unwrap(),
        ),
        (
            "target",
            a.target_encoder.as_ref().unwrap(),
            b.target_encoder.as_ref().unwrap(),
        ),
    ] {
        for (k, t) in x {
            let d = t.max_abs_diff(&y[k]);
            assert!(d <= 1e-6, "{}: {name}.{k} differs by {d}", dir.display());
        }
    }
}

#[test]
fn corrupt_images_are_skipped_and_counted() {
    let root = tmp("folder");
    let data = root.join("data");
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        // 63 good images + 1 broken = exactly 2 batches of 32: every image is drawn.
        let n = if class == "a" { 31 } else { 32 };
        for i in 0..n {
            let img = image::RgbImage::from_fn(40, 36, |x, y| {
                image::Rgb([
                    (x * 6 + i) as u8,
                    (y * 7) as u8,
                    if class == "a" { 30 } else { 220 },
                ])
            });
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(
        data.join("a").join("broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let mut sets = tiny(1000, 1);
    sets.extend([
        format!("data.dataset={}", data.display()),
        "data.in_chans=3".into(),
        "data.mean=[0.5,0.5,0.5]".into(),
        "data.std=[0.25,0.25,0.25]".into(),
    ]);
    let out = root.join("run");
    let text = ok(&pretrain(&out, &sets, &[]));
    assert!(
        text.contains("skipped unreadable image") && text.contains("broken.png"),
        "{text}"
    );
    let ck = checkpoint(&out);
    assert_eq!(
        ck.description.training.as_ref().unwrap()["skipped_images"],
        1
    );
    // --strict makes it fatal, naming the file
    let strict = pretrain(&root.join("strict"), &sets, &["--strict"]);
    assert!(!strict.status.success());
    assert!(String::from_utf8_lossy(&strict.stderr).contains("broken.png"));
}

#[test]
fn nan_loss_stops_the_run_and_keeps_the_checkpoint() {
    require_fmnist();
    let out = tmp("nan");
    let sets = tiny(320, 2);
    ok(&pretrain(&out, &sets, &["--max-steps", "4"]));
    let before = std::fs::read(out.join("latest.safetensors")).unwrap();
    let o = pretrain(&out, &sets, &["--resume", "--inject-nan-at", "6"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("step 6") && err.contains("NaN") && err.contains("latest.safetensors"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.join("latest.safetensors")).unwrap(),
        before,
        "checkpoint changed"
    );
    assert_eq!(
        checkpoint(&out).description.training.as_ref().unwrap()["progress"]["global_step"],
        4
    );
}

/// Run `ijepa pretrain` with OUTPUT on a small tmpfs (read-only or nearly full), in a private
/// mount namespace (works for root and, with user namespaces, for anyone).
fn on_tmpfs(mount_opts: &str, sets: &[String]) -> Output {
    let dir = tmp(&format!("fs-{}", mount_opts.replace([',', '='], "-")));
    let mut script = format!(
        "mount -t tmpfs -o {mount_opts} tmpfs '{}' && '{}' pretrain --quiet --config '{}' --output '{}/run'",
        dir.display(),
        ijepa_bin().display(),
        recipe().display(),
        dir.display()
    );
    for s in sets {
        script.push_str(&format!(" --set '{s}'"));
    }
    let o = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) is needed for this test");
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("mount: "),
        "could not mount a tmpfs in a private namespace: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn read_only_or_full_output_folders_fail_clearly() {
    require_fmnist();
    let sets = tiny(64, 1);
    let o = on_tmpfs("ro,size=1m", &sets);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("Read-only file system") && err.contains("run"),
        "{err}"
    );

    let o = on_tmpfs("size=48k", &sets);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("No space left on device") && err.contains("latest.safetensors"),
        "{err}"
    );
}
