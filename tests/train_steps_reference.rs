//! Three full official training iterations (`reference/official/train_steps`): losses, every
//! gradient, AdamW moments, and the encoder, predictor and target after the third step.

mod common;

use std::collections::BTreeMap;

use common::{assert_close, assert_close_rel, expected_json, npy, reference};
use ijepa::CpuAutodiff;
use ijepa::checkpoint::tensors::parameter_shapes;
use ijepa::checkpoint::{
    Checkpoint, EncoderChoice, LoadOptions, NamedTensors, encoder_state, predictor_state,
    safetensors_io,
};
use ijepa::model::MaskIndices;
use ijepa::ops::{Precision, TrainBackend};
use ijepa::train::loss::LossKind;
use ijepa::train::optim::{AdamW, to_host};
use ijepa::train::schedule::Schedules;
use ijepa::train::step::{Batch, Networks, UpdateHyper, apply_update, loss_and_grads};

fn read(rel: &str) -> NamedTensors {
    safetensors_io::read(&reference(rel))
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

fn masks(rel: &str, n: usize) -> MaskIndices {
    let (shape, values) = ijepa::npy::read_i64(&reference(rel)).unwrap();
    MaskIndices::from_array(&shape, &values, n).unwrap()
}

#[test]
fn three_official_iterations_match() {
    three_iterations::<CpuAutodiff>(&Default::default(), 1e-5, 1e-3);
}

/// On a GPU within 1e-4 (reductions and matrix products run in another order there).
#[cfg(feature = "cuda")]
#[test]
fn three_official_iterations_match_on_cuda() {
    three_iterations::<ijepa::CudaAutodiff>(&ijepa::device::cuda_device(0).unwrap(), 1e-4, 1e-2);
}

/// `tol`: absolute tolerance of every compared value; `rel`: gradients also within `rel` of
/// their own scale.
fn three_iterations<B: TrainBackend>(dev: &B::Device, tol: f32, rel: f32) {
    let steps: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference("official/train_steps/steps.json")).unwrap(),
    )
    .unwrap();
    let st = &steps["settings"];
    let f = |k: &str| st[k].as_f64().unwrap_or_else(|| panic!("settings.{k}"));
    let sched = Schedules::official(
        f("iterations_per_epoch") as usize,
        f("num_epochs") as usize,
        f("warmup"),
        f("ipe_scale"),
        (f("start_lr"), f("ref_lr"), f("final_lr")),
        (f("wd"), f("final_wd")),
        (
            st["ema"][0].as_f64().unwrap(),
            st["ema"][1].as_f64().unwrap(),
        ),
    );

    let s = &expected_json()["settings"]["official"];
    let opts = LoadOptions {
        num_heads: s["num_heads"].as_u64().map(|v| v as usize),
        pred_num_heads: s["pred_num_heads"].as_u64().map(|v| v as usize),
    };
    let dev = dev.clone();
    let ck = Checkpoint::read(&reference("official/checkpoint.pth.tar"), &opts).unwrap();
    let mut nets = Networks::<B> {
        encoder: ck.build_encoder(EncoderChoice::Context, &dev).unwrap(),
        predictor: ck.build_predictor(&dev).unwrap(),
        target: ck
            .build_encoder::<B::InnerBackend>(EncoderChoice::Target, &dev)
            .unwrap(),
    };
    let n = ck.description.encoder.num_patches();
    let batch = Batch::<B> {
        images: npy("official/x.npy").to_tensor(&dev),
        masks_enc: masks("official/masks_enc.npy", n),
        masks_pred: masks("official/masks_pred.npy", n),
        second_view: None,
    };
    let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (k, v) in parameter_shapes::<B, _>(&nets.encoder) {
        shapes.insert(format!("encoder.{k}"), v);
    }
    for (k, v) in parameter_shapes::<B, _>(&nets.predictor) {
        shapes.insert(format!("predictor.{k}"), v);
    }

    let mut adam = AdamW::default();
    for (i, want) in steps["steps"].as_array().unwrap().iter().enumerate() {
        let it = i as u64 + 1;
        assert!((sched.lr(it) - want["scheduler_lr"].as_f64().unwrap()).abs() < 1e-15);
        assert!((sched.wd(it) - want["scheduler_wd"].as_f64().unwrap()).abs() < 1e-15);
        assert!((sched.momentum(it) - want["momentum"].as_f64().unwrap()).abs() < 1e-15);

        let g = loss_and_grads(&nets, &batch, LossKind::SmoothL1, Precision::F32);
        let want_loss = want["loss"].as_f64().unwrap();
        assert!(
            (g.loss - want_loss).abs() < tol as f64,
            "iteration {it}: loss {} vs {want_loss}",
            g.loss
        );
        eprintln!(
            "iteration {it}: loss {:.9} (official {want_loss:.9})",
            g.loss
        );

        let got = to_host(&g.grads, &shapes);
        let want_grads = read(&format!("official/train_steps/grads_{it}.safetensors"));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want_grads.keys().collect::<Vec<_>>(),
            "gradient names"
        );
        for (k, w) in &want_grads {
            assert_close(&format!("iteration {it} grad {k}"), &got[k], w, tol);
            // gradients are small: also within 0.1 % of their own scale
            assert_close_rel(
                &format!("iteration {it} grad {k} (relative)"),
                &got[k],
                w,
                rel,
            );
        }
        let h = UpdateHyper {
            lr: sched.lr(it),
            weight_decay: sched.wd(it),
            momentum: sched.momentum(it),
            grad_clip: None,
        };
        nets = apply_update(nets, &mut adam, g.grads, h).0;
    }

    for (name, got) in [
        ("encoder", encoder_state(&nets.encoder)),
        ("predictor", predictor_state(&nets.predictor)),
        ("target_encoder", encoder_state(&nets.target)),
    ] {
        let want = read(&format!("official/train_steps/{name}.safetensors"));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{name} keys"
        );
        for (k, w) in &want {
            assert_close(&format!("{name} {k} after 3 steps"), &got[k], w, tol);
        }
    }
    let adam_want = read("official/train_steps/adam_state.safetensors");
    let m = to_host(&adam.exp_avg, &shapes);
    let v = to_host(&adam.exp_avg_sq, &shapes);
    for (k, w) in &adam_want {
        if let Some(name) = k.strip_suffix(".exp_avg") {
            assert_close(&format!("exp_avg {name}"), &m[name], w, tol);
        } else if let Some(name) = k.strip_suffix(".exp_avg_sq") {
            assert_close(&format!("exp_avg_sq {name}"), &v[name], w, tol);
        } else if k.ends_with(".step") {
            assert_eq!(w.data[0] as u64, adam.step, "{k}");
        }
    }
}
