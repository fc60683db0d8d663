//! Static shapes (`meta.static_shapes`): a batch whose context and target index lists are
//! padded to bucket sizes gives, for the real tokens, the outputs, loss and gradients of the
//! unpadded batch (the padding is kept out of the attention's keys and out of the loss).
//!
//! Checked with the CPU backend's fused kernels and, in a child process of this test binary
//! run with `IJEPA_KERNELS=composed`, with the composed ops (what the GPU backends run where
//! they have no kernel of their own).

use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use ijepa::model::padding::pad_batch;
use ijepa::model::{
    EncoderConfig, Init, MaskIndices, Predictor, PredictorConfig, VisionTransformer,
};
use ijepa::ops::{Precision, TrainBackend};
use ijepa::train::loss::LossKind;
use ijepa::train::objective::{Objective, RegFeatures};
use ijepa::train::step::{Batch, Networks, loss_and_grads};

fn config() -> (EncoderConfig, PredictorConfig) {
    let enc = EncoderConfig {
        image_size: 32,
        patch_size: 4,
        in_chans: 2,
        embed_dim: 32,
        depth: 2,
        num_heads: 2,
        mlp_hidden: 64,
        qkv_bias: true,
        layer_norm_eps: 1e-6,
        patch_embed: ijepa::model::config::PatchEmbedKind::Shared,
    };
    let pred = PredictorConfig::for_encoder(&enc, 16, 2, 2).unwrap();
    (enc, pred)
}

fn random_masks(rng: &mut ChaCha8Rng, n_masks: usize, batch: usize, k: usize) -> MaskIndices {
    let sets: Vec<Vec<Vec<usize>>> = (0..n_masks)
        .map(|_| {
            (0..batch)
                .map(|_| {
                    let mut v = sample(rng, 64, k).into_vec();
                    v.sort_unstable();
                    v
                })
                .collect()
        })
        .collect();
    MaskIndices::new(&sets, 64).unwrap()
}

fn floats<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// Largest `|a - b|`, after checking the lengths.
fn max_diff(a: &[f32], b: &[f32], what: &str) -> f32 {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The first `valid` tokens of every row of `[rows, k, d]`.
fn real_tokens<B: burn::tensor::backend::Backend>(t: Tensor<B, 3>, valid: usize) -> Tensor<B, 3> {
    let [rows, _, d] = t.dims();
    t.slice([0..rows, 0..valid, 0..d])
}

/// Padded against unpadded on backend `B`: context encoder and predictor outputs on the real
/// tokens, the loss and every gradient, for both losses, within `tol`.
pub fn padded_batches_match<B: TrainBackend>(device: &B::Device, tol: f32) {
    let (enc_cfg, pred_cfg) = config();
    let mut init = Init::new(5);
    let encoder = VisionTransformer::<B>::new(&enc_cfg, &mut init, device);
    let predictor = Predictor::<B>::new(&pred_cfg, &mut init, device);
    let nets = Networks {
        target: encoder.valid(),
        encoder,
        predictor,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let batch = 3;
    // 13 context and 5 target tokens (buckets 16 and 8), two context masks and three targets.
    let masks_enc = random_masks(&mut rng, 2, batch, 13);
    let masks_pred = random_masks(&mut rng, 3, batch, 5);
    let (pad_enc, pad_pred) = pad_batch(&masks_enc, &masks_pred, 64).unwrap();
    assert_eq!((pad_enc.k(), pad_pred.k()), (16, 8));
    let pixels: Vec<f32> = (0..batch * 2 * 32 * 32)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let images = Tensor::<B::InnerBackend, 4>::from_data(
        TensorData::new(pixels, [batch, 2, 32, 32]),
        device,
    );

    // Forward outputs of the real tokens.
    let imgs = Tensor::<B, 4>::from_inner(images.clone());
    let z = nets.encoder.forward(imgs.clone(), Some(&masks_enc));
    let z_pad = nets.encoder.forward(imgs, Some(&pad_enc));
    assert_eq!(z_pad.dims(), [2 * batch, 16, 32]);
    let d = max_diff(
        &floats(z.clone()),
        &floats(real_tokens(z_pad.clone(), 13)),
        "context encoder",
    );
    assert!(d <= tol, "context encoder outputs differ by {d}");
    let cases = [
        (&masks_enc, &masks_pred, z.clone()),
        (&pad_enc, &masks_pred, z_pad.clone()),
        (&masks_enc, &pad_pred, z.clone()),
        (&pad_enc, &pad_pred, z_pad),
    ];
    let want = floats(nets.predictor.forward(z, &masks_enc, &masks_pred));
    for (i, (me, mp, z)) in cases.into_iter().enumerate().skip(1) {
        let p = nets.predictor.forward(z, me, mp);
        assert_eq!(p.dims(), [3 * 2 * batch, mp.k(), 32]);
        let d = max_diff(&want, &floats(real_tokens(p, 5)), "predictor");
        assert!(d <= tol, "case {i}: predictor outputs differ by {d}");
    }

    // Loss and every gradient, padding on both, on one side only.
    for kind in [LossKind::SmoothL1, LossKind::L2] {
        let run = |me: &MaskIndices, mp: &MaskIndices| {
            let b = Batch::<B> {
                images: images.clone(),
                masks_enc: me.clone(),
                masks_pred: mp.clone(),
                second_view: None,
            };
            loss_and_grads(&nets, &b, kind, Precision::F32)
        };
        let want = run(&masks_enc, &masks_pred);
        for (me, mp) in [
            (&pad_enc, &pad_pred),
            (&pad_enc, &masks_pred),
            (&masks_enc, &pad_pred),
        ] {
            let got = run(me, mp);
            let what = format!("{kind:?}, padded to {} / {}", me.k(), mp.k());
            assert!(
                (got.loss - want.loss).abs() <= tol as f64 * want.loss.abs().max(1.0),
                "{what}: loss {} vs {}",
                got.loss,
                want.loss
            );
            assert_eq!(
                got.grads.keys().collect::<Vec<_>>(),
                want.grads.keys().collect::<Vec<_>>()
            );
            let mut worst = 0.0f32;
            for (name, g) in &want.grads {
                let g = floats(g.clone());
                let d = max_diff(&g, &floats(got.grads[name].clone()), name);
                assert!(d <= tol, "{what}: gradient of {name} differs by {d}");
                worst = worst.max(d);
            }
            eprintln!("{what}: loss {:.8} max gradient diff {worst:.2e}", got.loss);
        }
    }
}

#[test]
fn padded_batches_match_unpadded_with_the_cpu_kernels() {
    padded_batches_match::<ijepa::CpuAutodiff>(&Default::default(), 1e-6);
}

/// The same on the composed ops: this test binary again, in a child process with
/// `IJEPA_KERNELS=composed` (the setting is read once per process).
#[test]
fn padded_batches_match_unpadded_with_the_composed_ops() {
    if std::env::var("IJEPA_KERNELS").is_ok_and(|v| v == "composed") {
        padded_batches_match::<ijepa::CpuAutodiff>(&Default::default(), 1e-6);
        return;
    }
    let name = "padded_batches_match_unpadded_with_the_composed_ops";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env("IJEPA_KERNELS", "composed")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "composed-ops run failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the child process did not run the test:\n{text}"
    );
}

/// The cubecl kernels (padding keys skipped inside the attention kernel) on burn's wgpu
/// backend (CI: Mesa's software Vulkan).
#[cfg(feature = "wgpu")]
#[test]
fn padded_batches_match_unpadded_on_wgpu() {
    padded_batches_match::<ijepa::WgpuAutodiff>(&burn_wgpu::WgpuDevice::default(), 1e-6);
}

#[cfg(feature = "cuda")]
#[test]
fn padded_batches_match_unpadded_on_cuda() {
    padded_batches_match::<ijepa::CudaAutodiff>(&ijepa::device::cuda_device(0).unwrap(), 1e-5);
}

/// What `pretrain` runs: `train_step` with `static_shapes` pads each micro-batch itself and
/// takes the step the unpadded batches would take (same loss, same updated encoder and
/// EMA target, within 1e-6), with the official objective and with the regularisers (which
/// must leave the padded context tokens out).
#[test]
fn train_step_with_static_shapes_takes_the_unpadded_step() {
    use ijepa::train::distributed::Single;
    use ijepa::train::optim::AdamW;
    use ijepa::train::step::{StepSettings, UpdateHyper, train_step};
    type B = ijepa::CpuAutodiff;
    let device = Default::default();
    let (enc_cfg, pred_cfg) = config();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Two micro-batches (accumulation), token counts off the buckets: 13/5 and 21/7.
    let micro: Vec<(MaskIndices, MaskIndices, Vec<f32>)> = [(13, 5), (21, 7)]
        .into_iter()
        .map(|(ke, kp)| {
            let me = random_masks(&mut rng, 2, 2, ke);
            let mp = random_masks(&mut rng, 3, 2, kp);
            let px = (0..2 * 2 * 32 * 32)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            (me, mp, px)
        })
        .collect();
    let probe = Tensor::<B, 4>::from_data(
        TensorData::new(
            (0..2 * 32 * 32).map(|i| (i as f32 * 0.37).sin()).collect(),
            [1, 2, 32, 32],
        ),
        &device,
    );
    let step = |static_shapes: bool, objective: Objective| {
        let mut init = Init::new(5);
        let encoder = VisionTransformer::<B>::new(&enc_cfg, &mut init, &device);
        let predictor = Predictor::<B>::new(&pred_cfg, &mut init, &device);
        let nets = Networks {
            target: encoder.valid(),
            encoder,
            predictor,
        };
        let batches: Vec<Batch<B>> = micro
            .iter()
            .map(|(me, mp, px)| Batch {
                images: Tensor::from_data(TensorData::new(px.clone(), [2, 2, 32, 32]), &device),
                masks_enc: me.clone(),
                second_view: None,
                masks_pred: mp.clone(),
            })
            .collect();
        let settings = StepSettings {
            step: 1,
            objective,
            seed: 0,
            first_replica: 0,
            precision: Precision::F32,
            hyper: UpdateHyper {
                lr: 1e-3,
                weight_decay: 0.04,
                momentum: 0.9,
                grad_clip: None,
            },
            static_shapes,
        };
        let mut adam = AdamW::default();
        let (nets, loss) = train_step(nets, &mut adam, &batches, &Single, settings).unwrap();
        let enc = floats(nets.encoder.forward(probe.clone(), None));
        let target = floats(nets.target.forward(probe.clone().inner(), None));
        (loss.loss, enc, target)
    };
    let official = Objective::official(LossKind::SmoothL1);
    let regularised = Objective {
        vicreg_variance_weight: 1.0,
        vicreg_covariance_weight: 0.5,
        features: RegFeatures::Both,
        invariance_weight: 1.0,
        ..official
    };
    let mut enc = Vec::new();
    for objective in [regularised, official] {
        let (loss, e, target) = step(false, objective);
        let (loss_p, enc_p, target_p) = step(true, objective);
        assert!(
            (loss - loss_p).abs() <= 1e-6 * loss.abs().max(1.0),
            "loss {loss_p} vs {loss} ({objective:?})"
        );
        let d = max_diff(&e, &enc_p, "encoder");
        assert!(d <= 1e-6, "updated encoder outputs differ by {d}");
        let d = max_diff(&target, &target_p, "target");
        assert!(d <= 1e-6, "updated target outputs differ by {d}");
        enc = e;
    }
    // The step changed the weights (the comparison is not of two untouched networks).
    let mut init = Init::new(5);
    let fresh = VisionTransformer::<B>::new(&enc_cfg, &mut init, &device);
    let d = max_diff(&floats(fresh.forward(probe, None)), &enc, "fresh");
    assert!(d > 1e-4, "the step left the encoder as it was ({d})");
}
