//! The invariance, variance and covariance terms of VICReg (Bardes, Ponce & LeCun, ICLR 2022), which
//! C-JEPA (Mo & Tong, NeurIPS 2024) adds to I-JEPA on the context encoder's features to keep
//! them from collapsing. For embeddings `z_n` (rows of `[N, D]`), with `z̄` their mean and
//! `C = (1/(N-1)) Σ_n (z_n - z̄)(z_n - z̄)ᵀ` their covariance:
//!
//! - invariance: `s(Z, Z') = (1/(N D)) Σ_n ||z_n - z'_n||²` between two views' embeddings
//!   (the mean squared error, as VICReg's code computes it);
//! - variance: `v(Z) = (1/D) Σ_j max(0, γ - sqrt(C_jj + ε))`, γ = 1, ε = 1e-4: a hinge that
//!   keeps the standard deviation of every dimension across the batch at least γ;
//! - covariance: `c(Z) = (1/D) Σ_{i≠j} C_ij²`: decorrelates the dimensions, so that they do
//!   not all carry the same information.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The hinge's target standard deviation.
pub const GAMMA: f64 = 1.0;
/// Added to the variance under the square root.
pub const EPS: f64 = 1e-4;

fn centred<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 2> {
    z.clone() - z.mean_dim(0)
}

/// `s(Z, Z')`.
pub fn invariance<B: Backend>(z: Tensor<B, 2>, other: Tensor<B, 2>) -> Tensor<B, 1> {
    let diff = z - other;
    (diff.clone() * diff).mean()
}

/// `v(Z)`.
pub fn variance<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, _] = z.dims();
    let c = centred(z);
    let var = (c.clone() * c).sum_dim(0).div_scalar((n.max(2) - 1) as f64);
    let std = var.add_scalar(EPS).sqrt();
    std.neg().add_scalar(GAMMA).clamp_min(0.0).mean()
}

/// `c(Z)`.
pub fn covariance<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, d] = z.dims();
    let c = centred(z);
    let cov = c
        .clone()
        .transpose()
        .matmul(c)
        .div_scalar((n.max(2) - 1) as f64);
    let var = (c_diag(cov.clone())).powi_scalar(2).sum();
    (cov.clone() * cov).sum().sub(var).div_scalar(d as f64)
}

/// Every token of `z` (`[rows, K, D]`) minus the mean of the batch's tokens at the same grid
/// position; `positions` holds each token's position (row-major `[rows, K]`). Written as
/// products with the one-hot `[rows K, N]` matrix of the positions (N: the largest position
/// plus one), so that the gradient flows through the means too.
pub fn centre_by_position<B: Backend>(z: Tensor<B, 3>, positions: &[usize]) -> Tensor<B, 3> {
    let [rows, k, d] = z.dims();
    assert_eq!(positions.len(), rows * k, "one position per token");
    let num_patches = positions.iter().max().map_or(0, |p| p + 1);
    let mut onehot = vec![0f32; rows * k * num_patches];
    let mut counts = vec![0f32; num_patches];
    for (t, &p) in positions.iter().enumerate() {
        onehot[t * num_patches + p] = 1.0;
        counts[p] += 1.0;
    }
    let device = z.device();
    let m = Tensor::<B, 2>::from_data(
        burn::tensor::TensorData::new(onehot, [rows * k, num_patches]),
        &device,
    );
    let inv: Vec<f32> = counts.iter().map(|&c| 1.0 / c.max(1.0)).collect();
    let inv = Tensor::<B, 2>::from_data(
        burn::tensor::TensorData::new(inv, [num_patches, 1]),
        &device,
    );
    let tokens = z.reshape([rows * k, d]);
    let means = m.clone().transpose().matmul(tokens.clone()) * inv;
    (tokens - m.matmul(means)).reshape([rows, k, d])
}

/// The diagonal of a square matrix, as a row `[1, D]`.
fn c_diag<B: Backend>(m: Tensor<B, 2>) -> Tensor<B, 2> {
    let [d, _] = m.dims();
    let eye = Tensor::<B, 2>::eye(d, &m.device());
    (m * eye).sum_dim(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuAutodiff;
    use burn::tensor::TensorData;

    type B = CpuAutodiff;

    fn cov_f64(z: &[f64], n: usize, d: usize) -> Vec<f64> {
        let mean: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|r| z[r * d + j]).sum::<f64>() / n as f64)
            .collect();
        let mut c = vec![0.0; d * d];
        for r in 0..n {
            for i in 0..d {
                for j in 0..d {
                    c[i * d + j] +=
                        (z[r * d + i] - mean[i]) * (z[r * d + j] - mean[j]) / (n - 1) as f64;
                }
            }
        }
        c
    }

    fn variance_f64(z: &[f64], n: usize, d: usize) -> f64 {
        let c = cov_f64(z, n, d);
        (0..d)
            .map(|j| (GAMMA - (c[j * d + j] + EPS).sqrt()).max(0.0))
            .sum::<f64>()
            / d as f64
    }

    fn covariance_f64(z: &[f64], n: usize, d: usize) -> f64 {
        let c = cov_f64(z, n, d);
        let mut s = 0.0;
        for i in 0..d {
            for j in 0..d {
                if i != j {
                    s += c[i * d + j].powi(2);
                }
            }
        }
        s / d as f64
    }

    /// Each token minus the mean of the tokens at its position (over every row), against f64;
    /// the map is a symmetric projection, so the gradient of `sum(out * w)` is `w` centred
    /// the same way. A position no token sits at is left alone.
    #[test]
    fn centre_by_position_subtracts_each_positions_mean() {
        let (rows, k, d, n) = (3, 2, 4, 5);
        let positions = [0, 3, 3, 1, 0, 3];
        let values: Vec<f64> = (0..rows * k * d)
            .map(|i| ((i * 13 % 11) as f64) / 4.0 - 1.2)
            .collect();
        let centre = |v: &[f64]| -> Vec<f64> {
            let mut out = v.to_vec();
            for p in 0..n {
                let at: Vec<usize> = (0..rows * k).filter(|&t| positions[t] == p).collect();
                for j in 0..d {
                    let mean =
                        at.iter().map(|&t| v[t * d + j]).sum::<f64>() / at.len().max(1) as f64;
                    for &t in &at {
                        out[t * d + j] -= mean;
                    }
                }
            }
            out
        };
        let device = Default::default();
        let tensor = |v: &[f64]| {
            Tensor::<B, 3>::from_data(
                TensorData::new(
                    v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                    [rows, k, d],
                ),
                &device,
            )
        };
        let z = tensor(&values).require_grad();
        let out = centre_by_position(z.clone(), &positions);
        let got: Vec<f32> = out.clone().into_data().to_vec().unwrap();
        for (g, w) in got.iter().zip(centre(&values)) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
        let w: Vec<f64> = (0..rows * k * d)
            .map(|i| ((i * 7 % 5) as f64) - 2.0)
            .collect();
        let grads = (out * tensor(&w)).sum().backward();
        let grad: Vec<f32> = z.grad(&grads).unwrap().into_data().to_vec().unwrap();
        for (g, want) in grad.iter().zip(centre(&w)) {
            assert!((*g as f64 - want).abs() < 1e-5, "{g} vs {want}");
        }
    }

    /// The second view of the invariance test: a fixed function of the position.
    fn other_view(i: usize) -> f64 {
        ((i * 31 % 17) as f64 / 9.0) - 0.7
    }

    fn invariance_f64(z: &[f64], n: usize, d: usize) -> f64 {
        let mut s = 0.0;
        for r in 0..n {
            let mut row = 0.0;
            for j in 0..d {
                row += (z[r * d + j] - other_view(r * d + j)).powi(2);
            }
            s += row;
        }
        s / (n * d) as f64
    }

    fn invariance_to_other(z: Tensor<B, 2>) -> Tensor<B, 1> {
        let [n, d] = z.dims();
        let other: Vec<f32> = (0..n * d).map(|i| other_view(i) as f32).collect();
        let other = Tensor::from_data(TensorData::new(other, [n, d]), &z.device());
        invariance(z, other)
    }

    type F64Term = fn(&[f64], usize, usize) -> f64;
    type Term = fn(Tensor<B, 2>) -> Tensor<B, 1>;

    /// Values and gradients of the three terms against the f64 formulas (gradients by central
    /// differences). Dimension scales straddle γ so that some hinges are active and some not.
    #[test]
    fn terms_and_gradients_match_f64() {
        let (n, d) = (9, 4);
        let z: Vec<f64> = (0..n * d)
            .map(|i| {
                let scale = [0.3, 0.8, 2.0, 1.4][i % d];
                let raw = ((i * 7919 % 101) as f64 / 50.0) - 1.0;
                scale * raw + 0.2 * ((i / d) as f64).sin()
            })
            .collect();
        let cases: [(&str, Term, F64Term); 3] = [
            ("invariance", invariance_to_other, invariance_f64),
            ("variance", variance::<B>, variance_f64),
            ("covariance", covariance::<B>, covariance_f64),
        ];
        for (name, term, reference) in cases {
            let zf: Vec<f32> = z.iter().map(|v| *v as f32).collect();
            let zt = Tensor::<B, 2>::from_data(TensorData::new(zf, [n, d]), &Default::default())
                .require_grad();
            let out = term(zt.clone());
            let value: f64 = out.clone().into_scalar().into();
            let want = reference(&z, n, d);
            assert!(
                (value - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{name}: {value} vs {want}"
            );
            assert!(want > 1e-3, "{name}: the case should not be trivial");
            let g = zt
                .grad(&out.backward())
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let eps = 1e-6;
            for i in 0..n * d {
                let (mut up, mut down) = (z.clone(), z.clone());
                up[i] += eps;
                down[i] -= eps;
                let fd = (reference(&up, n, d) - reference(&down, n, d)) / (2.0 * eps);
                assert!(
                    (f64::from(g[i]) - fd).abs() <= 1e-4 * (1.0 + fd.abs()),
                    "{name} d/dz[{i}]: {} vs {fd}",
                    g[i]
                );
            }
        }
    }

    /// Whitened features cost nothing; collapsed ones pay the full hinge.
    #[test]
    fn whitened_features_cost_nothing() {
        let d = 3;
        // Rows ±sqrt(n-1)·e_j: per-dimension variance exactly 2 (> γ²), no covariance.
        let s = 2f32.sqrt();
        let mut rows = Vec::new();
        for j in 0..d {
            for sign in [1.0, -1.0] {
                let mut r = vec![0f32; d];
                r[j] = sign * s * (5f32 / 2.0).sqrt();
                rows.extend(r);
            }
        }
        let z = Tensor::<B, 2>::from_data(TensorData::new(rows, [2 * d, d]), &Default::default());
        let v: f64 = variance(z.clone()).into_scalar().into();
        let c: f64 = covariance(z).into_scalar().into();
        assert_eq!(v, 0.0);
        assert!(c.abs() < 1e-9, "{c}");
        let flat = Tensor::<B, 2>::ones([8, d], &Default::default());
        let v: f64 = variance(flat).into_scalar().into();
        assert!((v - (1.0 - EPS.sqrt())).abs() < 1e-6, "{v}");
    }
}
