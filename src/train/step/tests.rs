//! The training step against its definitions: the options' terms in f64, the official
//! objective unchanged.

use burn::tensor::TensorData;

use super::*;
use crate::CpuAutodiff;
use crate::model::{EncoderConfig, Init, PredictorConfig};
use crate::ops::kernels::testutil::{erf_f64, to_f64};
use crate::train::objective::RegFeatures;
use crate::train::vicreg;

type B = CpuAutodiff;

/// A one-block encoder and predictor on 16x16 images (a 4x4 grid), four images, one
/// context block of 6 patches and two target blocks of 3.
fn setup() -> (Networks<B>, Batch<B>) {
    setup_with_head(0)
}

/// [`setup`] with an invariance head of this hidden width (0: none).
fn setup_with_head(invariance_head: usize) -> (Networks<B>, Batch<B>) {
    setup_with(invariance_head, 0)
}

/// [`setup`] with an invariance head and MSN's prototypes (0: none).
fn setup_with(invariance_head: usize, prototypes: usize) -> (Networks<B>, Batch<B>) {
    let device = Default::default();
    let enc = EncoderConfig {
        image_size: 16,
        patch_size: 4,
        in_chans: 1,
        embed_dim: 8,
        depth: 1,
        num_heads: 2,
        mlp_hidden: 16,
        qkv_bias: true,
        layer_norm_eps: 1e-6,
        patch_embed: crate::model::config::PatchEmbedKind::Shared,
    };
    let pred = PredictorConfig {
        embed_dim: 8,
        predictor_embed_dim: 8,
        depth: 1,
        num_heads: 2,
        mlp_hidden: 16,
        grid: 4,
        qkv_bias: true,
        layer_norm_eps: 1e-6,
        invariance_head,
        prototypes,
        expander: 0,
    };
    let mut init = Init::new(3);
    let encoder = VisionTransformer::<B>::new(&enc, &mut init, &device);
    let predictor = Predictor::<B>::new(&pred, &mut init, &device);
    let target = encoder.valid();
    let pixels: Vec<f32> = (0..4 * 256)
        .map(|i| ((i * 7919 % 255) as f32) / 128.0 - 1.0)
        .collect();
    let ctx: Vec<Vec<usize>> = (0..4).map(|b| (b..b + 6).collect()).collect();
    let tgt = |j: usize| -> Vec<Vec<usize>> {
        (0..4)
            .map(|b| (10 + j..13 + j).map(|p| (p + b) % 16).collect())
            .collect()
    };
    let mut tgt_sorted = vec![tgt(0), tgt(1)];
    tgt_sorted
        .iter_mut()
        .flatten()
        .for_each(|m| m.sort_unstable());
    let batch = Batch {
        images: Tensor::from_data(TensorData::new(pixels, [4, 1, 16, 16]), &device),
        masks_enc: MaskIndices::new(&[ctx], 16).unwrap(),
        masks_pred: MaskIndices::new(&tgt_sorted, 16).unwrap(),
        second_view: None,
    };
    let nets = Networks {
        encoder,
        predictor,
        target,
    };
    (nets, batch)
}

/// The mean of each image's context tokens, `[4, 8]` (the pooled context features).
fn z_mean(nets: &Networks<B>, batch: &Batch<B>) -> Tensor<crate::Cpu, 2> {
    nets.encoder
        .valid()
        .forward(batch.images.clone(), Some(&batch.masks_enc))
        .mean_dim(1)
        .reshape([4, 8])
}

/// The target encoder's mean token of each whole image, `[4, 8]`.
fn target_mean(nets: &Networks<B>, batch: &Batch<B>) -> Tensor<crate::Cpu, 2> {
    nets.target
        .forward(batch.images.clone(), None)
        .mean_dim(1)
        .reshape([4, 8])
}

/// The step's loss is its prediction loss plus `want` (the weighted term).
fn assert_term(g: &Gradients<B>, want: f64) {
    assert!(
        (g.loss - g.prediction - want).abs() <= 1e-5 * (1.0 + want.abs()),
        "{} - {} vs {want}",
        g.loss,
        g.prediction
    );
}

/// The step with `objective`, the default key and f32 products.
fn step(nets: &Networks<B>, batch: &Batch<B>, objective: &Objective) -> Gradients<B> {
    loss_and_grads_with(nets, batch, objective, StepKey::default(), Precision::F32)
}

fn grads_differ(a: &Gradients<B>, b: &Gradients<B>) -> bool {
    a.grads.iter().any(|(name, g)| {
        let h = &b.grads[name];
        let (x, y) = (
            g.clone().into_data().to_vec::<f32>().unwrap(),
            h.clone().into_data().to_vec::<f32>().unwrap(),
        );
        x.iter().zip(&y).any(|(p, q)| (p - q).abs() > 1e-7)
    })
}

/// The options reach the step `ijepa pretrain` runs: VICReg's terms are added to the
/// prediction loss with their weights (on the pooled context features), StoP's noise
/// changes the prediction reproducibly per (seed, step, replica) and vanishes with σ,
/// and the official objective is `loss_and_grads` exactly.
#[test]
fn options_reach_the_step() {
    let (nets, batch) = setup();
    let official = Objective::official(LossKind::SmoothL1);
    let run =
        |o: &Objective, key: StepKey| loss_and_grads_with(&nets, &batch, o, key, Precision::F32);
    let key = StepKey {
        seed: 1,
        step: 5,
        replica: 0,
    };
    let base = loss_and_grads(&nets, &batch, LossKind::SmoothL1, Precision::F32);
    assert_eq!(base.loss, base.prediction);
    assert_eq!(run(&official, key).loss, base.loss);

    let vic = Objective {
        vicreg_variance_weight: 0.7,
        vicreg_covariance_weight: 0.3,
        features: RegFeatures::Pooled,
        ..official
    };
    let g = run(&vic, key);
    let z = z_mean(&nets, &batch);
    let scalar = |t: Tensor<crate::Cpu, 1>| -> f64 { t.into_scalar().into() };
    let want = 0.7 * scalar(vicreg::variance(z.clone())) + 0.3 * scalar(vicreg::covariance(z));
    assert!(want > 1e-3, "{want}");
    assert!((g.prediction - base.loss).abs() <= 1e-6 * base.loss);
    assert_term(&g, want);
    assert!(grads_differ(&g, &base));

    // The invariance term: the mean of the context tokens against the target encoder's
    // pooled output of the images themselves (`same`, from the targets' pass) or of a
    // second view; the prediction loss is untouched either way.
    let inv = Objective {
        invariance_weight: 0.6,
        ..official
    };
    let context = z_mean(&nets, &batch);
    let pooled_target = |images: Tensor<crate::Cpu, 4>| {
        nets.target
            .forward(images, None)
            .mean_dim(1)
            .reshape([4, 8])
    };
    let flipped = batch.images.clone().flip([3]);
    let views = [
        (None, batch.images.clone()),
        (Some(flipped.clone()), flipped),
    ];
    for (second_view, view) in views {
        let b = Batch {
            images: batch.images.clone(),
            masks_enc: batch.masks_enc.clone(),
            masks_pred: batch.masks_pred.clone(),
            second_view,
        };
        let g = loss_and_grads_with(&nets, &b, &inv, key, Precision::F32);
        let want = 0.6 * scalar(vicreg::invariance(context.clone(), pooled_target(view)));
        assert!(want > 1e-4, "{want}");
        assert!((g.prediction - base.loss).abs() <= 1e-6 * base.loss);
        assert_term(&g, want);
        assert!(grads_differ(&g, &base));
    }

    let stop = |sigma| Objective {
        stop_sigma: sigma,
        ..official
    };
    let a = run(&stop(0.25), key);
    let other = StepKey { replica: 1, ..key };
    assert_eq!(a.loss, a.prediction);
    assert_ne!(a.loss, base.loss);
    assert_eq!(run(&stop(0.25), key).loss, a.loss);
    assert_ne!(run(&stop(0.25), other).loss, a.loss);
    assert!(grads_differ(&a, &base));
    let tiny = run(&stop(1e-14), key).loss;
    assert!(
        (tiny - base.loss).abs() <= 1e-5 * base.loss,
        "{tiny} vs {}",
        base.loss
    );
}

/// The prediction from a mean token: the term is the weight times smooth-L1 (beta 1, in
/// f64 here) between `forward_pooled` of the mean token and the step's own targets (the
/// layer-normed target tokens of the target blocks); the prediction loss is untouched
/// and the term's gradients reach the encoder. The mean token is each context block's
/// (`context`), or the context encoder's over the whole image (`full`).
fn pooled_prediction_reaches_the_step_from(view: PooledView) {
    let (nets, batch) = setup();
    let base = loss_and_grads(&nets, &batch, LossKind::SmoothL1, Precision::F32);
    let pooled = Objective {
        pooled_prediction_weight: 0.8,
        pooled_prediction_view: view,
        ..Objective::official(LossKind::SmoothL1)
    };
    let g = step(&nets, &batch, &pooled);
    let mean = match view {
        PooledView::Context => z_mean(&nets, &batch),
        PooledView::Full => nets
            .encoder
            .valid()
            .forward(batch.images.clone(), None)
            .mean_dim(1)
            .reshape([4, 8]),
    };
    let predicted = nets
        .predictor
        .valid()
        .forward_pooled(mean.reshape([4, 1, 8]), &batch.masks_pred);
    let targets = crate::train::loss::normalize_targets(nets.target.forward_kept(
        batch.images.clone(),
        &batch.masks_pred,
        1,
    ));
    let flat = |t: Tensor<crate::Cpu, 3>| to_f64(&t.into_data().to_vec::<f32>().unwrap());
    let (p, t) = (flat(predicted), flat(targets));
    assert_eq!(p.len(), 2 * 4 * 3 * 8);
    let smooth_l1: f64 = p
        .iter()
        .zip(&t)
        .map(|(a, b)| {
            let d = (a - b).abs();
            if d < 1.0 { 0.5 * d * d } else { d - 0.5 }
        })
        .sum::<f64>()
        / p.len() as f64;
    let want = 0.8 * smooth_l1;
    assert!(want > 1e-3, "{want}");
    assert!((g.prediction - base.loss).abs() <= 1e-6 * base.loss);
    assert_term(&g, want);
    let encoder_moved = g.grads.iter().any(|(name, x)| {
        let y = &base.grads[name];
        name.starts_with("encoder.")
            && x.clone()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .zip(&y.clone().into_data().to_vec::<f32>().unwrap())
                .any(|(a, b)| (a - b).abs() > 1e-7)
    });
    assert!(encoder_moved);
}

#[test]
fn pooled_prediction_reaches_the_step() {
    pooled_prediction_reaches_the_step_from(PooledView::Context);
}

/// The whole image's mean differs from the context block's (the setup's context blocks
/// leave tokens out), so the two views give different terms.
#[test]
fn pooled_prediction_from_the_full_image_reaches_the_step() {
    pooled_prediction_reaches_the_step_from(PooledView::Full);
    let (nets, batch) = setup();
    let with = |view| Objective {
        pooled_prediction_weight: 0.8,
        pooled_prediction_view: view,
        ..Objective::official(LossKind::SmoothL1)
    };
    let run = |view| step(&nets, &batch, &with(view));
    let (context, full) = (run(PooledView::Context), run(PooledView::Full));
    assert!((context.loss - full.loss).abs() > 1e-6, "{}", context.loss);
}

/// MSN's term reaches the step: the weight times the f64 loss of the context means
/// against the target encoder's means of the images themselves (no second view: `same`)
/// on the predictor's prototypes; the prediction loss is untouched, and the prototypes
/// and the encoder get gradients.
#[test]
fn msn_reaches_the_step() {
    let (nets, batch) = setup_with(0, 5);
    let temperatures = crate::train::msn::Temperatures {
        anchor: 0.3,
        target: 0.1,
    };
    let o = Objective {
        msn_weight: 0.7,
        msn_temperatures: temperatures,
        msn_me_max_weight: 0.5,
        ..Objective::official(LossKind::SmoothL1)
    };
    let g = step(&nets, &batch, &o);
    let f64s = |t: Tensor<crate::Cpu, 2>| to_f64(&t.into_data().to_vec::<f32>().unwrap());
    let context = f64s(z_mean(&nets, &batch));
    let target = f64s(target_mean(&nets, &batch));
    let prototypes = f64s(nets.predictor.prototypes.as_ref().unwrap().val().inner());
    let want = 0.7
        * crate::train::msn::reference::msn_f64(
            &context,
            &target,
            &prototypes,
            &prototypes,
            8,
            temperatures,
            0.5,
        );
    let base = loss_and_grads(&nets, &batch, LossKind::SmoothL1, Precision::F32);
    assert!((g.prediction - base.loss).abs() <= 1e-6 * base.loss);
    assert!(want.abs() > 1e-3, "{want}");
    assert_term(&g, want);
    let norm = |key: &str| -> f32 {
        let grad = g
            .grads
            .get(key)
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        (grad.clone() * grad.clone()).sum().into_scalar()
    };
    assert!(norm("predictor.prototypes") > 0.0);
    assert!(grads_differ(&base, &g));
    assert!(!crate::train::optim::is_decayed("predictor.prototypes", 2));
}

/// An MLP `d -> h -> d` with weights far from the init's 0.02 scale and non-zero biases,
/// so that every part of it moves a term.
fn test_mlp(d: usize, h: usize) -> crate::model::layers::Mlp<B> {
    let device = Default::default();
    let values = |n: usize, shape: Vec<usize>, seed: usize| {
        let v: Vec<f32> = (0..n)
            .map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) / 20.0)
            .collect();
        TensorData::new(v, shape)
    };
    let linear = |i: usize, o: usize, seed: usize| crate::model::layers::Linear::<B> {
        weight: burn::module::Param::from_tensor(Tensor::from_data(
            values(i * o, vec![i, o], seed),
            &device,
        )),
        bias: Some(burn::module::Param::from_tensor(Tensor::from_data(
            values(o, vec![o], seed + 1),
            &device,
        ))),
    };
    crate::model::layers::Mlp {
        fc1: linear(d, h, 1),
        fc2: linear(h, d, 3),
    }
}

fn f64s(t: Tensor<crate::Cpu, 2>) -> Vec<f64> {
    to_f64(&t.into_data().to_vec::<f32>().expect("f32 data"))
}

/// `fc2(gelu(fc1(x)))` of every row of `x` (`[rows, d]`, row-major) in f64, from the
/// MLP's weights.
fn mlp_f64(mlp: &crate::model::layers::Mlp<B>, x: &[f64]) -> Vec<f64> {
    let weight = |l: &crate::model::layers::Linear<B>| f64s(l.weight.val().inner());
    let bias = |l: &crate::model::layers::Linear<B>| {
        let b = l.bias.as_ref().expect("bias").val().inner();
        let n = b.dims()[0];
        f64s(b.reshape([1, n]))
    };
    let (w1, b1, w2, b2) = (
        weight(&mlp.fc1),
        bias(&mlp.fc1),
        weight(&mlp.fc2),
        bias(&mlp.fc2),
    );
    let (d, h) = (b2.len(), b1.len());
    let gelu = |x: f64| 0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2));
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        // burn's Linear weight is [in, out].
        let hidden: Vec<f64> = (0..h)
            .map(|j| gelu(b1[j] + (0..d).map(|i| row[i] * w1[i * h + j]).sum::<f64>()))
            .collect();
        out.extend((0..d).map(|k| b2[k] + (0..h).map(|j| hidden[j] * w2[j * d + k]).sum::<f64>()));
    }
    out
}

/// The invariance head: the term compares `fc2(gelu(fc1(mean context)))` with the
/// target's mean token, against an f64 computation from the head's weights; the head is
/// trained (its gradients are collected under `predictor.invariance_head.`).
#[test]
fn invariance_head_reaches_the_step() {
    let (mut nets, batch) = setup_with_head(12);
    nets.predictor.invariance_head = Some(test_mlp(8, 12));
    let head = nets.predictor.invariance_head.as_ref().expect("a head");
    let d = 8;
    let y = mlp_f64(head, &f64s(z_mean(&nets, &batch)));
    let target = f64s(target_mean(&nets, &batch));
    let want = 0.6 / (4 * d) as f64
        * y.iter()
            .zip(&target)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>();
    let inv = Objective {
        invariance_weight: 0.6,
        ..Objective::official(LossKind::SmoothL1)
    };
    let g = step(&nets, &batch, &inv);
    assert!(want > 1e-4, "{want}");
    assert_term(&g, want);
    assert_trained(&g, "predictor.invariance_head");
    // Without the term the head has no gradient: it only serves the invariance term.
    let official = loss_and_grads(&nets, &batch, LossKind::SmoothL1, Precision::F32);
    assert!(
        !official
            .grads
            .contains_key("predictor.invariance_head.fc1.weight")
    );
}

/// Every weight and bias of the MLP under `prefix` has a non-zero gradient.
fn assert_trained(g: &Gradients<B>, prefix: &str) {
    for name in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"] {
        let key = format!("{prefix}.{name}");
        let grad = g
            .grads
            .get(&key)
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        let norm: f32 = (grad.clone() * grad.clone()).sum().into_scalar();
        assert!(norm > 0.0, "{key}");
    }
}

/// VICReg's variance (hinge at 1, eps 1e-4) and covariance (squared off-diagonal
/// entries over d) terms of the rows of `y` (`[n, d]`), in f64 from their definitions.
fn vicreg_f64(y: &[f64], d: usize) -> (f64, f64) {
    let n = y.len() / d;
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|r| y[r * d + j]).sum::<f64>() / n as f64)
        .collect();
    let cov = |i: usize, j: usize| {
        (0..n)
            .map(|r| (y[r * d + i] - mean[i]) * (y[r * d + j] - mean[j]))
            .sum::<f64>()
            / (n - 1) as f64
    };
    let variance = (0..d)
        .map(|j| (1.0 - (cov(j, j) + 1e-4).sqrt()).max(0.0))
        .sum::<f64>()
        / d as f64;
    let covariance = (0..d)
        .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| cov(i, j).powi(2))
        .sum::<f64>()
        / d as f64;
    (variance, covariance)
}

/// `features: tokens_by_position`: the terms on the context tokens after each is centred
/// on the batch's mean token at its grid position (positions from the context masks),
/// computed in f64; they differ from the plain tokens' terms.
#[test]
fn tokens_by_position_reach_the_step() {
    let (nets, batch) = setup();
    let z = nets
        .encoder
        .valid()
        .forward(batch.images.clone(), Some(&batch.masks_enc));
    let [rows, k, d] = z.dims();
    let mut y = f64s(z.reshape([rows * k, d]));
    let positions = batch.masks_enc.as_flat();
    assert_eq!(positions.len(), rows * k);
    let plain = vicreg_f64(&y, d);
    for p in 0..16 {
        let at: Vec<usize> = (0..rows * k).filter(|&t| positions[t] == p).collect();
        for j in 0..d {
            let mean = at.iter().map(|&t| y[t * d + j]).sum::<f64>() / at.len().max(1) as f64;
            for &t in &at {
                y[t * d + j] -= mean;
            }
        }
    }
    let (variance, covariance) = vicreg_f64(&y, d);
    let objective = |features| Objective {
        vicreg_variance_weight: 0.7,
        vicreg_covariance_weight: 0.3,
        features,
        ..Objective::official(LossKind::SmoothL1)
    };
    let run = |features| step(&nets, &batch, &objective(features));
    let g = run(RegFeatures::TokensByPosition);
    assert_term(&g, 0.7 * variance + 0.3 * covariance);
    assert!((variance - plain.0).abs() + (covariance - plain.1).abs() > 1e-3);
    assert_term(&run(RegFeatures::Tokens), 0.7 * plain.0 + 0.3 * plain.1);
}

/// The expander: VICReg's variance and covariance terms on every context token through
/// `fc2(gelu(fc1(.)))`, against the definitions (spread over the token rows, the
/// hinge at 1, the squared off-diagonal covariances over d) computed in f64 from the
/// expander's weights; the expander is trained, and the prediction loss is untouched.
#[test]
fn expander_reaches_the_step() {
    let (mut nets, batch) = setup();
    nets.predictor.expander = Some(test_mlp(8, 12));
    let expander = nets.predictor.expander.as_ref().expect("an expander");
    let z = nets
        .encoder
        .valid()
        .forward(batch.images.clone(), Some(&batch.masks_enc));
    let [rows, k, d] = z.dims();
    let y = mlp_f64(expander, &f64s(z.reshape([rows * k, d])));
    let (variance, covariance) = vicreg_f64(&y, d);
    let want = 0.7 * variance + 0.3 * covariance;
    let vic = Objective {
        vicreg_variance_weight: 0.7,
        vicreg_covariance_weight: 0.3,
        features: RegFeatures::Tokens,
        ..Objective::official(LossKind::SmoothL1)
    };
    let g = step(&nets, &batch, &vic);
    let base = loss_and_grads(&nets, &batch, LossKind::SmoothL1, Precision::F32);
    assert!(
        variance > 1e-3 && covariance > 1e-3,
        "{variance} {covariance}"
    );
    assert!((g.prediction - base.loss).abs() <= 1e-6 * base.loss);
    assert_term(&g, want);
    assert_trained(&g, "predictor.expander");
}
