//! Data-parallel pretraining over burn-collective, two processes on loopback (CPU, flex): the
//! same losses and final weights as one process accumulating two micro-batches, and a rank
//! that dies makes the other stop with an error within the peer timeout, leaving a checkpoint
//! that loads.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::logged_losses as losses;
use common::tmp;
use ijepa::checkpoint::{Checkpoint, LoadOptions, NamedTensors};

const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

/// A port nobody listens on right now, and not handed to another test of this binary: the
/// tests run in parallel and their nodes bind the ports only later, so the OS could give a
/// released port out twice (two tests then talk to each other's nodes and both hang).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A small model on 256 real images, micro-batches of 16.
fn settings(accum: usize) -> Vec<String> {
    assert!(
        Path::new(FMNIST)
            .join("train-images-idx3-ubyte.gz")
            .is_file(),
        "Fashion-MNIST not found in {FMNIST}: install the Debian package dataset-fashion-mnist (.ci/run does)"
    );
    common::tiny_model()
        .into_iter()
        .chain(
            [
                "data.batch_size=16",
                "data.max_images=256",
                "optimization.epochs=2",
            ]
            .map(String::from),
        )
        .chain([format!("optimization.accum_steps={accum}")])
        .collect()
}

fn command(out: &Path, sets: &[String], extra: &[String]) -> Command {
    let mut cmd = common::pretrain_command(out, sets, &["--threads", "1"]);
    cmd.args(extra);
    cmd
}

/// Flags of node `rank` of a two-node loopback run.
fn node_flags(rank: usize, coordinator: u16, service: u16, timeout_s: u64) -> Vec<String> {
    vec![
        "--nodes".into(),
        "2".into(),
        "--node-rank".into(),
        rank.to_string(),
        "--coordinator".into(),
        format!("127.0.0.1:{coordinator}"),
        "--node-address".into(),
        format!("127.0.0.1:{service}"),
        "--peer-timeout".into(),
        timeout_s.to_string(),
    ]
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// Wait (at most 120 s) until node 0 has written its first checkpoint.
fn wait_for_checkpoint(latest: &Path) {
    let start = Instant::now();
    while !latest.is_file() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_same_weights(what: &str, a: &NamedTensors, b: &NamedTensors) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: different tensors"
    );
    for (name, t) in a {
        let d = t.max_abs_diff(&b[name]);
        assert!(d <= 1e-5, "{what}.{name}: max |diff| {d} > 1e-5");
    }
}

#[test]
fn two_nodes_train_like_one_process_accumulating_two_micro_batches() {
    let dir = tmp("match");
    let steps = ["--max-steps".to_string(), "5".to_string()];
    let (coord, s0, s1) = (free_port(), free_port(), free_port());
    let mut flags0 = node_flags(0, coord, s0, 120);
    flags0.extend(steps.clone());
    let mut flags1 = node_flags(1, coord, s1, 120);
    flags1.extend(steps.clone());
    let r0 = spawn(command(&dir.join("r0"), &settings(1), &flags0));
    let r1 = spawn(command(&dir.join("r1"), &settings(1), &flags1));
    let (o0, o1) = (
        r0.wait_with_output().unwrap(),
        r1.wait_with_output().unwrap(),
    );
    assert!(o0.status.success(), "node 0 failed: {}", text(&o0));
    assert!(o1.status.success(), "node 1 failed: {}", text(&o1));
    assert!(
        text(&o1).contains("node 0 wrote the checkpoints"),
        "{}",
        text(&o1)
    );
    assert!(
        !dir.join("r1/latest.safetensors").exists(),
        "only node 0 writes checkpoints"
    );
    assert!(
        !dir.join("r1/log.csv").exists(),
        "only node 0 writes the log"
    );

    let single = command(&dir.join("single"), &settings(2), &steps)
        .output()
        .unwrap();
    assert!(
        single.status.success(),
        "single process failed: {}",
        text(&single)
    );

    let (dp, acc) = (losses(&dir.join("r0")), losses(&dir.join("single")));
    assert_eq!(dp.len(), 5);
    assert_eq!(dp.len(), acc.len());
    for (step, (a, b)) in dp.iter().zip(&acc).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5,
            "step {}: loss {a} on 2 nodes, {b} with accum_steps 2",
            step + 1
        );
    }
    let opts = LoadOptions::default();
    let a = Checkpoint::read(&dir.join("r0/latest"), &opts).unwrap();
    let b = Checkpoint::read(&dir.join("single/latest"), &opts).unwrap();
    assert_same_weights("encoder", &a.encoder, &b.encoder);
    assert_same_weights(
        "target_encoder",
        a.target_encoder.as_ref().unwrap(),
        b.target_encoder.as_ref().unwrap(),
    );
    assert_same_weights(
        "predictor",
        a.predictor.as_ref().unwrap(),
        b.predictor.as_ref().unwrap(),
    );

    // The 2-node checkpoint resumes in one process with accum_steps 2 (same global batch).
    let resumed = command(
        &dir.join("r0"),
        &settings(2),
        &["--resume".into(), "--max-steps".into(), "6".into()],
    )
    .output()
    .unwrap();
    assert!(
        resumed.status.success(),
        "resume on one process failed: {}",
        text(&resumed)
    );
    assert_eq!(losses(&dir.join("r0")).len(), 6);
}

#[test]
fn a_dead_rank_stops_the_other_with_an_error() {
    let dir = tmp("kill");
    let timeout_s = 15;
    let (coord, s0, s1) = (free_port(), free_port(), free_port());
    let mut sets = settings(1);
    sets.push("logging.checkpoint_every=2".into());
    sets.push("optimization.epochs=50".into());
    let r0 = spawn(command(
        &dir.join("r0"),
        &sets,
        &node_flags(0, coord, s0, timeout_s),
    ));
    let mut r1 = spawn(command(
        &dir.join("r1"),
        &sets,
        &node_flags(1, coord, s1, timeout_s),
    ));

    // Wait for node 0's first step checkpoint, then kill node 1.
    wait_for_checkpoint(&dir.join("r0/latest.safetensors"));
    std::thread::sleep(Duration::from_millis(500));
    r1.kill().unwrap();
    r1.wait().unwrap();
    let killed_at = Instant::now();

    let o0 = r0.wait_with_output().unwrap();
    let waited = killed_at.elapsed();
    assert!(
        !o0.status.success(),
        "node 0 went on after node 1 died: {}",
        text(&o0)
    );
    assert!(
        waited < Duration::from_secs(timeout_s + 30),
        "node 0 took {waited:?} to give up (timeout {timeout_s} s)"
    );
    let msg = text(&o0);
    assert!(
        msg.contains("error: data-parallel run stopped") && msg.contains("peer"),
        "no clear error: {msg}"
    );
    let ck = Checkpoint::read(&dir.join("r0/latest"), &LoadOptions::default()).unwrap();
    assert!(ck.target_encoder.is_some() && ck.predictor.is_some());
}

#[test]
fn a_frozen_rank_makes_the_other_give_up_after_the_timeout() {
    let dir = tmp("freeze");
    let timeout_s = 8;
    let (coord, s0, s1) = (free_port(), free_port(), free_port());
    let mut sets = settings(1);
    sets.push("logging.checkpoint_every=2".into());
    sets.push("optimization.epochs=50".into());
    let r0 = spawn(command(
        &dir.join("r0"),
        &sets,
        &node_flags(0, coord, s0, timeout_s),
    ));
    let mut r1 = spawn(command(
        &dir.join("r1"),
        &sets,
        &node_flags(1, coord, s1, timeout_s),
    ));
    wait_for_checkpoint(&dir.join("r0/latest.safetensors"));
    // A stopped process keeps its sockets open: only the timeout can tell.
    let stopped = Command::new("kill")
        .args(["-STOP", &r1.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let frozen_at = Instant::now();
    let o0 = r0.wait_with_output().unwrap();
    let waited = frozen_at.elapsed();
    r1.kill().unwrap();
    r1.wait().unwrap();
    assert!(
        !o0.status.success(),
        "node 0 went on while node 1 was frozen: {}",
        text(&o0)
    );
    assert!(
        waited >= Duration::from_secs(timeout_s - 1)
            && waited < Duration::from_secs(timeout_s + 30),
        "node 0 gave up after {waited:?}, the timeout is {timeout_s} s"
    );
    let msg = text(&o0);
    assert!(
        msg.contains(&format!(
            "no answer from the other peers within {timeout_s} s"
        )),
        "{msg}"
    );
    Checkpoint::read(&dir.join("r0/latest"), &LoadOptions::default()).unwrap();
}
