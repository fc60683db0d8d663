//! The cubecl kernels (`src/ops/cube`) against the composed ops on the CPU and against the
//! official reference outputs: the same kernels CUDA runs, here on burn's wgpu backend (CI:
//! Mesa's software Vulkan, `mesa-vulkan-drivers`) and, with `--features cuda`, on a GPU.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData, TensorPrimitive};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::{assert_close, expected_json, npy, reference};
use ijepa::checkpoint::{Checkpoint, EncoderChoice, HostTensor, LoadOptions};
use ijepa::model::MaskIndices;
use ijepa::ops::kernels::optim::AdamW;
use ijepa::ops::{IjepaBackend, TrainBackend, composed};
use ijepa::train::loss::{self, LossKind};
use ijepa::train::step::{Batch, Networks, loss_and_grads};

type Cpu = ijepa::CpuAutodiff;

fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn tensor<B: Backend, const D: usize>(
    v: &[f32],
    shape: [usize; D],
    dev: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), dev)
}

fn floats<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> burn::tensor::ops::FloatTensor<B> {
    t.into_primitive().tensor()
}

fn wrap<B: Backend, const D: usize>(t: burn::tensor::ops::FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// `max |a - b| <= tol * max(1, max |b|)`.
fn check(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        d.is_finite() && d <= tol * scale,
        "{what}: max diff {d} (scale {scale})"
    );
}

/// Output and input gradients of `f` on the GPU backend and of `reference` (composed) on the
/// CPU, for inputs `xs` with their shapes, under the probe loss `sum(y * probe)`.
fn grads_of<B: burn::tensor::backend::AutodiffBackend, const D: usize>(
    dev: &B::Device,
    xs: &[(Vec<f32>, [usize; D])],
    probe: &[f32],
    f: impl Fn(Vec<Tensor<B, D>>) -> Tensor<B, D>,
) -> Vec<Vec<f32>> {
    let inputs: Vec<Tensor<B, D>> = xs
        .iter()
        .map(|(v, s)| tensor::<B, D>(v, *s, dev).require_grad())
        .collect();
    let y = f(inputs.clone());
    let shape = y.dims();
    let grads = (y.clone() * tensor::<B, D>(probe, shape, dev))
        .sum()
        .backward();
    let mut out = vec![floats(y.inner())];
    for x in &inputs {
        out.push(floats(x.grad(&grads).expect("gradient")));
    }
    out
}

fn attention_matches<G: TrainBackend>(dev: &G::Device) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (b, n, heads, hd, keys) in [
        (3, 37, 2, 16, 37),
        (3, 37, 2, 16, 20),
        (2, 70, 3, 64, 70),
        (2, 70, 3, 64, 33),
        (2, 19, 1, 80, 19),
        (1, 5, 4, 8, 1),
    ] {
        let t0 = std::time::Instant::now();
        let d3 = 3 * heads * hd;
        let qkv = uniform(&mut rng, b * n * d3, 1.0);
        let probe = uniform(&mut rng, b * n * heads * hd, 1.0);
        let xs = [(qkv, [b, n, d3])];
        let got = grads_of::<G, 3>(dev, &xs, &probe, |x| {
            ijepa::ops::attention(x[0].clone(), heads, Some(keys))
        });
        let want = grads_of::<Cpu, 3>(&Default::default(), &xs, &probe, |x| {
            wrap(composed::attention_masked::<Cpu>(
                prim(x[0].clone()),
                heads,
                keys,
            ))
        });
        let what = format!("attention b{b} n{n} h{heads} hd{hd} keys{keys}");
        check(&format!("{what} out"), &got[0], &want[0], 1e-5);
        check(&format!("{what} dqkv"), &got[1], &want[1], 1e-5);
        // inference (no autodiff) takes the same kernel
        let inner = ijepa::ops::attention(
            tensor::<G::InnerBackend, 3>(&xs[0].0, xs[0].1, dev),
            heads,
            Some(keys),
        );
        check(&format!("{what} inference"), &floats(inner), &want[0], 1e-5);
        eprintln!("{what}: {:.1} s", t0.elapsed().as_secs_f64());
    }
}

fn layer_norm_matches<G: TrainBackend>(dev: &G::Device) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (rows, d, affine) in [
        (50, 64, true),
        (33, 200, true),
        (50, 64, false),
        (7, 768, true),
    ] {
        let x: Vec<f32> = uniform(&mut rng, rows * d, 2.0)
            .iter()
            .map(|v| v + 0.5)
            .collect();
        let w = uniform(&mut rng, d, 1.0);
        let bias = uniform(&mut rng, d, 1.0);
        let probe = uniform(&mut rng, rows * d, 1.0);
        let what = format!("layer norm {rows}x{d} affine {affine}");
        // x, and w, b as rows of width d (1-D inputs reshaped in the closures)
        let xs = [(x, [rows, d]), (w, [1, d]), (bias, [1, d])];
        let run = |x: Vec<Tensor<_, 2>>| {
            let (w, b) = (x[1].clone().reshape([d]), x[2].clone().reshape([d]));
            if affine {
                ijepa::ops::layer_norm(x[0].clone(), Some(w), Some(b), 1e-6)
            } else {
                ijepa::ops::layer_norm(x[0].clone(), None, None, 1e-6) + (w + b).unsqueeze() * 0.0
            }
        };
        let got = grads_of::<G, 2>(dev, &xs, &probe, run);
        let want = grads_of::<Cpu, 2>(&Default::default(), &xs, &probe, |x| {
            let (w, b) = (x[1].clone().reshape([d]), x[2].clone().reshape([d]));
            if affine {
                wrap(composed::layer_norm::<Cpu>(
                    prim(x[0].clone()),
                    Some(prim(w)),
                    Some(prim(b)),
                    1e-6,
                ))
            } else {
                wrap::<Cpu, 2>(composed::layer_norm::<Cpu>(
                    prim(x[0].clone()),
                    None,
                    None,
                    1e-6,
                )) + (w + b).unsqueeze() * 0.0
            }
        });
        for (i, part) in ["y", "dx", "dw", "db"].iter().enumerate() {
            check(&format!("{what} {part}"), &got[i], &want[i], 1e-5);
        }
    }
}

fn linear_epilogues_match<G: TrainBackend>(dev: &G::Device) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (m, k, n) = (40, 24, 72);
    let x = uniform(&mut rng, m * k, 1.0);
    let w = uniform(&mut rng, k * n, 0.5);
    let bias = uniform(&mut rng, n, 1.0);
    let r = uniform(&mut rng, m * n, 1.0);
    let probe = uniform(&mut rng, m * n, 1.0);
    let xs = [(x, [m, k]), (w, [k, n]), (bias, [1, n]), (r, [m, n])];
    for gelu in [true, false] {
        let run = |x: Vec<Tensor<_, 2>>| {
            let b = Some(x[2].clone().reshape([n]));
            if gelu {
                ijepa::ops::linear_gelu(x[0].clone(), x[1].clone(), b) + x[3].clone() * 0.0
            } else {
                ijepa::ops::linear_residual(x[0].clone(), x[1].clone(), b, x[3].clone())
            }
        };
        let got = grads_of::<G, 2>(dev, &xs, &probe, run);
        let want = grads_of::<Cpu, 2>(&Default::default(), &xs, &probe, |x| {
            let b = Some(prim(x[2].clone().reshape([n])));
            let (a, w) = (prim(x[0].clone()), prim(x[1].clone()));
            if gelu {
                wrap::<Cpu, 2>(composed::linear_gelu::<Cpu>(a, w, b)) + x[3].clone() * 0.0
            } else {
                wrap(composed::linear_residual::<Cpu>(
                    a,
                    w,
                    b,
                    prim(x[3].clone()),
                ))
            }
        });
        for (i, part) in ["y", "dx", "dw", "db", "dr"].iter().enumerate() {
            check(
                &format!("linear gelu={gelu} {part}"),
                &got[i],
                &want[i],
                1e-5,
            );
        }
        // and without autodiff, without a bias
        let inner = |v: &(Vec<f32>, [usize; 2])| tensor::<G::InnerBackend, 2>(&v.0, v.1, dev);
        let cpu = |v: &(Vec<f32>, [usize; 2])| {
            prim(tensor::<ijepa::Cpu, 2>(&v.0, v.1, &Default::default()))
        };
        let (got, want) = if gelu {
            (
                ijepa::ops::linear_gelu(inner(&xs[0]), inner(&xs[1]), None),
                wrap(composed::linear_gelu::<ijepa::Cpu>(
                    cpu(&xs[0]),
                    cpu(&xs[1]),
                    None,
                )),
            )
        } else {
            (
                ijepa::ops::linear_residual(inner(&xs[0]), inner(&xs[1]), None, inner(&xs[3])),
                wrap(composed::linear_residual::<ijepa::Cpu>(
                    cpu(&xs[0]),
                    cpu(&xs[1]),
                    None,
                    cpu(&xs[3]),
                )),
            )
        };
        check(
            &format!("linear gelu={gelu} inference"),
            &floats(got),
            &floats::<ijepa::Cpu, 2>(want),
            1e-5,
        );
    }
}

fn optimizer_matches<B: IjepaBackend>(dev: &B::Device) {
    type C = ijepa::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let n = 70_001;
    let p = uniform(&mut rng, n, 1.0);
    let g = uniform(&mut rng, n, 1e-2);
    let m = uniform(&mut rng, n, 1e-2);
    let v: Vec<f32> = uniform(&mut rng, n, 1e-4).iter().map(|x| x.abs()).collect();
    let gpu = |x: &[f32]| prim(tensor::<B, 1>(x, [n], dev));
    let cpu = |x: &[f32]| prim(tensor::<C, 1>(x, [n], &Default::default()));
    for (wd, step) in [(0.05, 1u64), (0.0, 7)] {
        let hp = AdamW {
            lr: 1.5e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: wd,
        };
        let got = B::ijepa_adamw(gpu(&p), gpu(&g), gpu(&m), gpu(&v), &hp, step);
        let want = composed::adamw::<C>(cpu(&p), cpu(&g), cpu(&m), cpu(&v), &hp, step);
        for (what, a, b) in [
            ("p", got.0, want.0),
            ("m", got.1, want.1),
            ("v", got.2, want.2),
        ] {
            check(
                &format!("adamw {what} wd {wd} step {step}"),
                &floats(wrap::<B, 1>(a)),
                &floats(wrap::<C, 1>(b)),
                1e-6,
            );
        }
    }
    let online = uniform(&mut rng, n, 1.0);
    let got = B::ijepa_ema(gpu(&p), gpu(&online), 0.996);
    let want = composed::ema::<C>(cpu(&p), cpu(&online), 0.996);
    check(
        "ema",
        &floats(wrap::<B, 1>(got)),
        &floats(wrap::<C, 1>(want)),
        1e-6,
    );
}

fn official_options() -> LoadOptions {
    let s = &expected_json()["settings"]["official"];
    LoadOptions {
        num_heads: s["num_heads"].as_u64().map(|v| v as usize),
        pred_num_heads: s["pred_num_heads"].as_u64().map(|v| v as usize),
    }
}

fn official_masks(rel: &str, n: usize) -> MaskIndices {
    let (shape, values) = ijepa::npy::read_i64(&reference(rel)).unwrap();
    MaskIndices::from_array(&shape, &values, n).unwrap()
}

/// The official reference outputs (`tests/parity_official.rs` on the CPU) and the first
/// official training iteration's loss and gradients (`tests/train_steps_reference.rs`).
fn official_reference_matches<G: TrainBackend>(dev: &G::Device, tol: f32) {
    type I<G> = <G as burn::tensor::backend::AutodiffBackend>::InnerBackend;
    let ck = Checkpoint::read(
        &reference("official/checkpoint.pth.tar"),
        &official_options(),
    )
    .unwrap();
    let context = ck
        .build_encoder::<I<G>>(EncoderChoice::Context, dev)
        .unwrap();
    let target = ck
        .build_encoder::<I<G>>(EncoderChoice::Target, dev)
        .unwrap();
    let predictor = ck.build_predictor::<I<G>>(dev).unwrap();
    let n = context.num_patches();
    let x: Tensor<I<G>, 4> = npy("official/x.npy").to_tensor(dev);
    let m_enc = official_masks("official/masks_enc.npy", n);
    let m_pred = official_masks("official/masks_pred.npy", n);
    let host = |t: Tensor<I<G>, 3>| HostTensor::from_tensor(t);
    assert_close(
        "encoder_full",
        &host(context.forward(x.clone(), None)),
        &npy("official/encoder_full.npy"),
        tol,
    );
    let h = loss::normalize_targets(target.forward(x.clone(), None));
    let targets = loss::gather_targets(h, &m_pred, m_enc.n_masks());
    assert_close(
        "targets",
        &host(targets.clone()),
        &npy("official/targets.npy"),
        tol,
    );
    let z = context.forward(x, Some(&m_enc));
    assert_close(
        "context_z",
        &host(z.clone()),
        &npy("official/context_z.npy"),
        tol,
    );
    let pred = predictor.forward(z, &m_enc, &m_pred);
    assert_close("pred", &host(pred.clone()), &npy("official/pred.npy"), tol);
    let sl1: f64 = loss::smooth_l1(pred, targets).into_scalar().elem();
    let want = expected_json()["official_loss"]["loss"].as_f64().unwrap();
    assert!((sl1 - want).abs() < tol as f64, "smooth_l1 {sl1} vs {want}");

    let nets = Networks::<G> {
        encoder: ck.build_encoder(EncoderChoice::Context, dev).unwrap(),
        predictor: ck.build_predictor(dev).unwrap(),
        target: ck
            .build_encoder::<I<G>>(EncoderChoice::Target, dev)
            .unwrap(),
    };
    let batch = Batch::<G> {
        images: npy("official/x.npy").to_tensor(dev),
        masks_enc: m_enc,
        masks_pred: m_pred,
        second_view: None,
    };
    let g = loss_and_grads(
        &nets,
        &batch,
        LossKind::SmoothL1,
        ijepa::ops::Precision::F32,
    );
    let steps: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference("official/train_steps/steps.json")).unwrap(),
    )
    .unwrap();
    let want_loss = steps["steps"][0]["loss"].as_f64().unwrap();
    assert!(
        (g.loss - want_loss).abs() < tol as f64,
        "loss {} vs {want_loss}",
        g.loss
    );
    let mut shapes = std::collections::BTreeMap::new();
    for (k, v) in ijepa::checkpoint::tensors::parameter_shapes::<G, _>(&nets.encoder) {
        shapes.insert(format!("encoder.{k}"), v);
    }
    for (k, v) in ijepa::checkpoint::tensors::parameter_shapes::<G, _>(&nets.predictor) {
        shapes.insert(format!("predictor.{k}"), v);
    }
    let got = ijepa::train::optim::to_host(&g.grads, &shapes);
    let (want, _) = ijepa::checkpoint::safetensors_io::read(&reference(
        "official/train_steps/grads_1.safetensors",
    ))
    .unwrap();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        assert_close(&format!("gradient {k}"), &got[k], w, tol);
    }
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    type G = ijepa::WgpuAutodiff;

    fn device() -> burn_wgpu::WgpuDevice {
        burn_wgpu::WgpuDevice::default()
    }

    #[test]
    fn attention_matches_the_composed_op_on_wgpu() {
        attention_matches::<G>(&device());
    }

    #[test]
    fn layer_norm_matches_the_composed_op_on_wgpu() {
        layer_norm_matches::<G>(&device());
    }

    #[test]
    fn linear_epilogues_match_the_composed_ops_on_wgpu() {
        linear_epilogues_match::<G>(&device());
    }

    #[test]
    fn optimizer_updates_match_the_composed_ops_on_wgpu() {
        optimizer_matches::<ijepa::Wgpu>(&device());
    }

    #[test]
    fn official_reference_outputs_and_gradients_match_on_wgpu() {
        official_reference_matches::<G>(&device(), 1e-5);
    }

    /// Sizes of every file under `dir`, by path.
    fn files(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, u64> {
        let mut out = std::collections::BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.insert(p.clone(), e.metadata().map_or(0, |m| m.len()));
                }
            }
        }
        out
    }

    /// `IJEPA_KERNEL_CACHE` is where cubecl keeps its autotune results: a first process (this
    /// test binary in a child process) writes them there, a second one finds them and tunes
    /// nothing more (the files stay as they were).
    #[test]
    fn kernel_cache_is_written_and_reused_on_wgpu() {
        const CHILD: &str = "IJEPA_TEST_KERNEL_CACHE_CHILD";
        if let Some(dir) = std::env::var_os(CHILD) {
            let used = ijepa::kernel_cache::configure().unwrap();
            assert_eq!(used, std::path::PathBuf::from(dir));
            let a = Tensor::<ijepa::Wgpu, 2>::ones([48, 40], &device());
            let s: f32 = a.clone().matmul(a.transpose()).sum().into_scalar().elem();
            assert_eq!(s, 48.0 * 48.0 * 40.0);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("kernels");
        let child = || {
            let t0 = std::time::Instant::now();
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "wgpu::kernel_cache_is_written_and_reused_on_wgpu",
                    "--exact",
                ])
                .env(CHILD, &cache)
                .env(ijepa::kernel_cache::ENV, &cache)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "child: {text}"
            );
            t0.elapsed().as_secs_f64()
        };
        let first = child();
        let written = files(&cache);
        assert!(
            written
                .keys()
                .any(|p| p.to_string_lossy().contains("autotune")),
            "no autotune results under {}: {written:?}",
            cache.display()
        );
        let second = child();
        assert_eq!(files(&cache), written, "the second process tuned again");
        eprintln!("first process {first:.1} s, second {second:.1} s");
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    type G = ijepa::CudaAutodiff;

    fn device() -> burn_cuda::CudaDevice {
        ijepa::device::cuda_device(0).unwrap()
    }

    #[test]
    fn attention_matches_the_composed_op_on_cuda() {
        attention_matches::<G>(&device());
    }

    #[test]
    fn layer_norm_matches_the_composed_op_on_cuda() {
        layer_norm_matches::<G>(&device());
    }

    #[test]
    fn linear_epilogues_match_the_composed_ops_on_cuda() {
        linear_epilogues_match::<G>(&device());
    }

    #[test]
    fn optimizer_updates_match_the_composed_ops_on_cuda() {
        optimizer_matches::<ijepa::Cuda>(&device());
    }

    /// Within 1e-4 on a GPU (its reductions and products run in another order), as the
    /// `*_on_cuda` parity tests.
    #[test]
    fn official_reference_outputs_and_gradients_match_on_cuda() {
        official_reference_matches::<G>(&device(), 1e-4);
    }
}
