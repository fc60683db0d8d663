//! The encoder, predictor, targets, losses and EMA against the official PyTorch code
//! (`../shared/reference/official`), within 1e-5.

mod common;

use burn::tensor::Tensor;
use common::{assert_close, expected_json, npy, reference};
use ijepa::Cpu;
use ijepa::checkpoint::{Checkpoint, EncoderChoice, HostTensor, LoadOptions, encoder_state};
use ijepa::model::MaskIndices;
use ijepa::train::{ema::ema_update, loss};

const TOL: f32 = 1e-5;

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
    let dev = Default::default();
    let ck = Checkpoint::read(&reference("official/checkpoint.pth.tar"), &options()).unwrap();
    let context = ck
        .build_encoder::<Cpu>(EncoderChoice::Context, &dev)
        .unwrap();
    let target = ck
        .build_encoder::<Cpu>(EncoderChoice::Target, &dev)
        .unwrap();
    let predictor = ck.build_predictor::<Cpu>(&dev).unwrap();
    let n = context.num_patches();

    let x: Tensor<Cpu, 4> = npy("official/x.npy").to_tensor(&dev);
    let m_enc = masks("official/masks_enc.npy", n);
    let m_pred = masks("official/masks_pred.npy", n);

    let full = context.forward(x.clone(), None);
    assert_close(
        "encoder_full",
        &HostTensor::from_tensor(full),
        &npy("official/encoder_full.npy"),
        TOL,
    );

    let raw = target.forward(x.clone(), None);
    assert_close(
        "target_raw",
        &HostTensor::from_tensor(raw.clone()),
        &npy("official/target_raw.npy"),
        TOL,
    );
    let h = loss::normalize_targets(raw);
    assert_close(
        "target_h",
        &HostTensor::from_tensor(h.clone()),
        &npy("official/target_h.npy"),
        TOL,
    );
    let targets = loss::gather_targets(h, &m_pred, m_enc.n_masks());
    assert_close(
        "targets",
        &HostTensor::from_tensor(targets.clone()),
        &npy("official/targets.npy"),
        TOL,
    );

    let z = context.forward(x, Some(&m_enc));
    assert_close(
        "context_z",
        &HostTensor::from_tensor(z.clone()),
        &npy("official/context_z.npy"),
        TOL,
    );
    let pred = predictor.forward(z, &m_enc, &m_pred);
    assert_close(
        "pred",
        &HostTensor::from_tensor(pred.clone()),
        &npy("official/pred.npy"),
        TOL,
    );

    let want = expected_json()["official_loss"].clone();
    let sl1 = loss::smooth_l1(pred.clone(), targets.clone()).into_scalar();
    let mse = loss::l2(pred, targets).into_scalar();
    assert!(
        (sl1 as f64 - want["loss"].as_f64().unwrap()).abs() < 1e-5,
        "smooth_l1 {sl1} vs {}",
        want["loss"]
    );
    assert!(
        (mse as f64 - want["mse"].as_f64().unwrap()).abs() < 1e-5,
        "mse {mse} vs {}",
        want["mse"]
    );
}

#[test]
fn one_ema_step_matches() {
    let dev = Default::default();
    let ck = Checkpoint::read(&reference("official/checkpoint.pth.tar"), &options()).unwrap();
    let context = ck
        .build_encoder::<Cpu>(EncoderChoice::Context, &dev)
        .unwrap();
    let target = ck
        .build_encoder::<Cpu>(EncoderChoice::Target, &dev)
        .unwrap();
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
        assert_close(&format!("ema {k}"), &updated[k], w, TOL);
    }
}
