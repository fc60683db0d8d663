//! The prototype term of MSN (Assran et al., ECCV 2022, "Masked Siamese Networks for
//! label-efficient learning"; the first author's masked-view predecessor of I-JEPA): the
//! masked view's image feature must fall on the same learned prototypes as the full view's.
//!
//! For an anchor `a_n` (the masked context's image feature), its target `t_n` (the target
//! encoder's feature of the full view, no gradient) and prototypes `q_k` (rows of `[K, D]`),
//! all L2-normalised:
//!
//! - `p_n = softmax(a_n · q / τ)`, `p⁺_n = softmax(t_n · q / τ⁺)` with `τ⁺ < τ` (sharpening),
//!   the prototypes taken without gradient on the target side;
//! - `loss = (1/N) Σ_n H(p⁺_n, p_n) - λ H(p̄)`, `H(p⁺, p) = -Σ_k p⁺_k log p_k`,
//!   `p̄ = (1/N) Σ_n p_n`: the cross-entropy pulls the masked view to the full view's
//!   prototypes, and the mean-entropy maximisation (ME-MAX) keeps every prototype in use, so
//!   that the assignments cannot collapse onto one.
//!
//! MSN's target side has its own (EMA) projection head; here the target is the target
//! encoder's mean token itself, so the prototypes partition the very features the evaluation
//! reads. Sinkhorn on the targets (an MSN option) is left out.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// `(τ, τ⁺)`: the anchor's and the target's softmax temperatures.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Temperatures {
    pub anchor: f64,
    pub target: f64,
}

/// MSN's defaults (0.1 and 0.025).
pub const DEFAULT_TEMPERATURES: Temperatures = Temperatures {
    anchor: 0.1,
    target: 0.025,
};

/// MSN's weight λ of the mean-entropy maximisation.
pub const DEFAULT_ME_MAX: f64 = 1.0;

/// Prototypes unless configured (MSN's count for ImageNet).
pub const DEFAULT_PROTOTYPES: usize = 1024;

/// Below this norm a row is left as it is (`F.normalize`'s ε).
const NORM_EPS: f64 = 1e-12;

fn normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = (x.clone() * x.clone())
        .sum_dim(1)
        .sqrt()
        .clamp_min(NORM_EPS);
    x / norm
}

/// The loss above for anchors and targets `[N, D]` and prototypes `[K, D]`; `me_max` is λ.
pub fn msn<B: Backend>(
    anchor: Tensor<B, 2>,
    target: Tensor<B, 2>,
    prototypes: Tensor<B, 2>,
    t: Temperatures,
    me_max: f64,
) -> Tensor<B, 1> {
    let [n, _] = anchor.dims();
    let q = normalize(prototypes);
    let target_q = q.clone().detach().transpose();
    let p_target = softmax(
        normalize(target.detach())
            .matmul(target_q)
            .div_scalar(t.target),
        1,
    );
    let logits = normalize(anchor).matmul(q.transpose()).div_scalar(t.anchor);
    let log_p = log_softmax(logits, 1);
    let cross_entropy = (p_target * log_p.clone()).sum().neg().div_scalar(n as f64);
    if me_max == 0.0 {
        return cross_entropy;
    }
    let mean_p = log_p.exp().mean_dim(0);
    // -H(p̄) = Σ_k p̄_k log p̄_k
    let neg_entropy = (mean_p.clone() * mean_p.clamp_min(1e-30).log()).sum();
    cross_entropy + neg_entropy.mul_scalar(me_max)
}

/// The loss written from the paper's equations in f64, for the tests here and the step's.
#[cfg(test)]
pub(crate) mod reference {
    use super::{NORM_EPS, Temperatures};

    fn normalize_f64(rows: &[f64], d: usize) -> Vec<f64> {
        rows.chunks(d)
            .flat_map(|r| {
                let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt().max(NORM_EPS);
                r.iter().map(move |v| v / norm)
            })
            .collect()
    }

    fn softmax_f64(logits: &[f64]) -> Vec<f64> {
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    fn probs_f64(x: &[f64], q: &[f64], d: usize, tau: f64) -> Vec<Vec<f64>> {
        let (x, q) = (normalize_f64(x, d), normalize_f64(q, d));
        x.chunks(d)
            .map(|row| {
                let logits: Vec<f64> = q
                    .chunks(d)
                    .map(|p| row.iter().zip(p).map(|(a, b)| a * b).sum::<f64>() / tau)
                    .collect();
                softmax_f64(&logits)
            })
            .collect()
    }

    /// The loss from the paper's equations; `q_target` is the (gradient-free) copy of the
    /// prototypes the target side sees.
    pub fn msn_f64(
        anchor: &[f64],
        target: &[f64],
        q: &[f64],
        q_target: &[f64],
        d: usize,
        t: Temperatures,
        me_max: f64,
    ) -> f64 {
        let p = probs_f64(anchor, q, d, t.anchor);
        let p_plus = probs_f64(target, q_target, d, t.target);
        let n = p.len();
        let k = p[0].len();
        let ce: f64 = p
            .iter()
            .zip(&p_plus)
            .map(|(p, pp)| -pp.iter().zip(p).map(|(a, b)| a * b.ln()).sum::<f64>())
            .sum::<f64>()
            / n as f64;
        let mean: Vec<f64> = (0..k)
            .map(|j| p.iter().map(|r| r[j]).sum::<f64>() / n as f64)
            .collect();
        let entropy = -mean.iter().map(|m| m * m.ln()).sum::<f64>();
        ce - me_max * entropy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuAutodiff;
    use burn::tensor::TensorData;
    use reference::msn_f64;

    type B = CpuAutodiff;

    fn values(n: usize, salt: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|i| scale * ((((i + salt) * 7919 % 103) as f64 / 51.0) - 1.0))
            .collect()
    }

    fn tensor(v: &[f64], shape: [usize; 2]) -> Tensor<B, 2> {
        let f: Vec<f32> = v.iter().map(|x| *x as f32).collect();
        Tensor::from_data(TensorData::new(f, shape), &Default::default())
    }

    /// Value and gradients (anchor and prototypes; none through the target side) against the
    /// f64 equations, with and without ME-MAX, by central differences.
    #[test]
    fn loss_and_gradients_match_f64() {
        let (n, d, k) = (6, 5, 7);
        let t = Temperatures {
            anchor: 0.5,
            target: 0.2,
        };
        let anchor = values(n * d, 3, 1.3);
        let target = values(n * d, 40, 0.9);
        let q = values(k * d, 11, 0.7);
        for me_max in [0.0, 1.0] {
            let a = tensor(&anchor, [n, d]).require_grad();
            let tt = tensor(&target, [n, d]).require_grad();
            let qt = tensor(&q, [k, d]).require_grad();
            let out = msn(a.clone(), tt.clone(), qt.clone(), t, me_max);
            let value: f64 = out.clone().into_scalar().into();
            let want = msn_f64(&anchor, &target, &q, &q, d, t, me_max);
            assert!(
                (value - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "λ {me_max}: {value} vs {want}"
            );
            let grads = out.backward();
            assert!(tt.grad(&grads).is_none(), "no gradient reaches the target");
            let grad = |x: &Tensor<B, 2>| -> Vec<f32> {
                x.grad(&grads).unwrap().into_data().to_vec().unwrap()
            };
            let (ga, gq) = (grad(&a), grad(&qt));
            let eps = 1e-6;
            let fd = |f: &dyn Fn(f64) -> f64| (f(eps) - f(-eps)) / (2.0 * eps);
            for i in 0..n * d {
                let want = fd(&|h| {
                    let mut x = anchor.clone();
                    x[i] += h;
                    msn_f64(&x, &target, &q, &q, d, t, me_max)
                });
                assert!(
                    (f64::from(ga[i]) - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "λ {me_max} d/da[{i}]: {} vs {want}",
                    ga[i]
                );
            }
            for i in 0..k * d {
                // Only the anchor side's prototypes move: the target's are fixed.
                let want = fd(&|h| {
                    let mut x = q.clone();
                    x[i] += h;
                    msn_f64(&anchor, &target, &x, &q, d, t, me_max)
                });
                assert!(
                    (f64::from(gq[i]) - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "λ {me_max} d/dq[{i}]: {} vs {want}",
                    gq[i]
                );
            }
        }
    }

    /// ME-MAX at its best: anchors spread evenly over the prototypes give `-log K`, and
    /// anchors that all pick one prototype pay (almost) nothing for diversity.
    #[test]
    fn me_max_rewards_spread_assignments() {
        let k = 4;
        let eye: Vec<f64> = (0..k * k)
            .map(|i| if i % (k + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        let t = Temperatures {
            anchor: 1e-3,
            target: 1e-3,
        };
        let at = |rows: &[f64]| -> f64 {
            msn(
                tensor(rows, [k, k]),
                tensor(rows, [k, k]),
                tensor(&eye, [k, k]),
                t,
                1.0,
            )
            .into_scalar()
            .into()
        };
        let spread = at(&eye);
        assert!((spread + (k as f64).ln()).abs() < 1e-4, "{spread}");
        let one: Vec<f64> = (0..k * k)
            .map(|i| if i % k == 0 { 1.0 } else { 0.0 })
            .collect();
        let collapsed = at(&one);
        assert!(collapsed.abs() < 1e-4, "{collapsed}");
    }
}
