//! The encoder, predictor, targets, losses and EMA against the official PyTorch code
//! (`../shared/reference/official`), within 1e-5.

mod common;

use burn::tensor::{ElementConversion, Tensor};
use common::{assert_close, expected_json, npy, reference};
use ijepa::Cpu;
use ijepa::checkpoint::{Checkpoint, EncoderChoice, HostTensor, LoadOptions, encoder_state};
use ijepa::model::MaskIndices;
use ijepa::ops::IjepaBackend;
use ijepa::train::{ema::ema_update, loss};

/// On the CPU (flex); on a GPU (`--features cuda`) within 1e-4, where reductions run in
/// another order.
const TOL: f32 = 1e-5;
#[cfg(feature = "cuda")]
const TOL_CUDA: f32 = 1e-4;

fn options() -> LoadOptions {
    let s = &expected_json()["settings"]["official"];
    LoadOptions {
        num_heads: s["num_heads"].as_u64().map(|v| v as usize),
        pred_num_heads: s["pred_num_heads"].as_u64().map(|v| v as usize),
    }
}

fn masks(rel: &str, n: usize) -> MaskIndices {
    let (shape, values) = ijepa::npy::read_i64(&reference(rel)).unwrap();
    MaskIndices::from_array(&shape, &values, n).unwrap()
}

#[test]
fn encoder_predictor_targets_and_losses_match() {
    forward_matches::<Cpu>(&Default::default(), TOL);
}

#[test]
fn one_ema_step_matches() {
    ema_matches::<Cpu>(&Default::default(), TOL);
}

#[cfg(feature = "cuda")]
#[test]
fn encoder_predictor_targets_and_losses_match_on_cuda() {
    forward_matches::<ijepa::Cuda>(&ijepa::device::cuda_device(0).unwrap(), TOL_CUDA);
}

#[cfg(feature = "cuda")]
#[test]
fn one_ema_step_matches_on_cuda() {
    ema_matches::<ijepa::Cuda>(&ijepa::device::cuda_device(0).unwrap(), TOL_CUDA);
}

fn forward_matches<B: IjepaBackend>(dev: &B::Device, tol: f32) {
    let dev = dev.clone();
    let ck = Checkpoint::read(&reference("official/checkpoint.pth.tar"), &options()).unwrap();
    let context = ck.build_encoder::<B>(EncoderChoice::Context, &dev).unwrap();
    let target = ck.build_encoder::<B>(EncoderChoice::Target, &dev).unwrap();
    let predictor = ck.build_predictor::<B>(&dev).unwrap();
    let n = context.num_patches();

    let x: Tensor<B, 4> = npy("official/x.npy").to_tensor(&dev);
    let m_enc = masks("official/masks_enc.npy", n);
    let m_pred = masks("official/masks_pred.npy", n);

    let full = context.forward(x.clone(), None);
    assert_close(
        "encoder_full",
        &HostTensor::from_tensor(full),
        &npy("official/encoder_full.npy"),
        tol,
    );

    let raw = target.forward(x.clone(), None);
    assert_close(
        "target_raw",
        &HostTensor::from_tensor(raw.clone()),
        &npy("official/target_raw.npy"),
        tol,
    );
    let h = loss::normalize_targets(raw);
    assert_close(
        "target_h",
        &HostTensor::from_tensor(h.clone()),
        &npy("official/target_h.npy"),
        tol,
    );
    let targets = loss::gather_targets(h, &m_pred, m_enc.n_masks());
    assert_close(
        "targets",
        &HostTensor::from_tensor(targets.clone()),
        &npy("official/targets.npy"),
        tol,
    );

    let z = context.forward(x, Some(&m_enc));
    assert_close(
        "context_z",
        &HostTensor::from_tensor(z.clone()),
        &npy("official/context_z.npy"),
        tol,
    );
    let pred = predictor.forward(z, &m_enc, &m_pred);
    assert_close(
        "pred",
        &HostTensor::from_tensor(pred.clone()),
        &npy("official/pred.npy"),
        tol,
    );

    let want = expected_json()["official_loss"].clone();
    let sl1: f32 = loss::smooth_l1(pred.clone(), targets.clone())
        .into_scalar()
        .elem();
    let mse: f32 = loss::l2(pred, targets).into_scalar().elem();
    assert!(
        (sl1 as f64 - want["loss"].as_f64().unwrap()).abs() < tol as f64,
        "smooth_l1 {sl1} vs {}",
        want["loss"]
    );
    assert!(
        (mse as f64 - want["mse"].as_f64().unwrap()).abs() < tol as f64,
        "mse {mse} vs {}",
        want["mse"]
    );
}

fn ema_matches<B: IjepaBackend>(dev: &B::Device, tol: f32) {
    let dev = dev.clone();
    let ck = Checkpoint::read(&reference("official/checkpoint.pth.tar"), &options()).unwrap();
    let context = ck.build_encoder::<B>(EncoderChoice::Context, &dev).unwrap();
    let target = ck.build_encoder::<B>(EncoderChoice::Target, &dev).unwrap();
    let m = expected_json()["ema_momentum"].as_f64().unwrap();
    let updated = encoder_state(&ema_update(target, &context, m));
    let (want, _) =
        ijepa::checkpoint::safetensors_io::read(&reference("official/ema_target.safetensors"))
            .unwrap();
    assert_eq!(
        updated.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        assert_close(&format!("ema {k}"), &updated[k], w, tol);
    }
}
