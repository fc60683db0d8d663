//! SIGReg, the regulariser of LeJEPA (Balestriero & LeCun 2025, "LeJEPA: provable and
//! scalable self-supervised learning without the heuristics"): it pushes the distribution of
//! the embeddings towards an isotropic standard Gaussian, which rules out collapse (every image
//! on one point) and dimensional collapse (a few directions carrying everything).
//!
//! Sketched, as in the paper: the `N` embeddings `z_n` (rows of `[N, D]`) are projected on `M`
//! random unit directions `a_m`, and each one-dimensional sample `h_nm = <z_n, a_m>` is
//! compared with N(0, 1) by the Epps-Pulley statistic, a weighted distance between
//! characteristic functions:
//!
//! `EP_m = N ∫ |φ_m(t) - e^{-t²/2}|² e^{-t²/2} dt`, with `φ_m(t) = (1/N) Σ_n e^{i t h_nm}`.
//!
//! `|φ_m(t) - φ(t)|² = (C_m(t) - e^{-t²/2})² + S_m(t)²` with `C_m` and `S_m` the sample means of
//! `cos(t h)` and `sin(t h)`; the integrand is even in `t`, so the integral is twice the one
//! over `[0, T_MAX]` (trapezoid rule on `KNOTS` points; the weight makes the tail beyond
//! `T_MAX` = 5 negligible). SIGReg is the mean of `EP_m` over the directions, which are drawn
//! afresh at every step (from the run's seed and the step number, so a resumed run and every
//! rank draw the same ones).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand_distr::{Distribution, StandardNormal};

use crate::rng::Rng;

/// Upper end of the integration interval.
pub const T_MAX: f64 = 5.0;
/// Quadrature points on `[0, T_MAX]`.
pub const KNOTS: usize = 17;

/// `M` random unit directions in `D` dimensions, as the columns of a `[D, M]` row-major
/// buffer (Gaussian vectors, normalised).
pub fn directions(dim: usize, m: usize, rng: &mut Rng) -> Vec<f32> {
    let mut cols: Vec<Vec<f64>> = (0..m)
        .map(|_| (0..dim).map(|_| StandardNormal.sample(rng)).collect())
        .collect();
    for c in &mut cols {
        let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        c.iter_mut().for_each(|v| *v /= norm);
    }
    let mut out = vec![0f32; dim * m];
    for (j, c) in cols.iter().enumerate() {
        for (i, v) in c.iter().enumerate() {
            out[i * m + j] = *v as f32;
        }
    }
    out
}

/// The knots `t_k` and the weights `2 Δ_k e^{-t_k²/2}` (trapezoid rule on `[0, T_MAX]`,
/// doubled for the negative half, times the Epps-Pulley weight).
pub fn quadrature() -> (Vec<f64>, Vec<f64>) {
    let dt = T_MAX / (KNOTS - 1) as f64;
    let t: Vec<f64> = (0..KNOTS).map(|k| k as f64 * dt).collect();
    let w = t
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let trap = if k == 0 || k == KNOTS - 1 { 0.5 } else { 1.0 };
            2.0 * trap * dt * (-t * t / 2.0).exp()
        })
        .collect();
    (t, w)
}

/// SIGReg of the rows of `z` (`[N, D]`) along the columns of `dirs` (`[D, M]`): the mean over
/// the directions of the Epps-Pulley statistic.
pub fn sigreg<B: Backend>(z: Tensor<B, 2>, dirs: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, _] = z.dims();
    let m = dirs.dims()[1];
    let device = z.device();
    let (t, w) = quadrature();
    let row = |v: &[f64]| -> Tensor<B, 3> {
        let f: Vec<f32> = v.iter().map(|x| *x as f32).collect();
        Tensor::from_data(TensorData::new(f, [1, 1, KNOTS]), &device)
    };
    let target_cf: Vec<f64> = t.iter().map(|t| (-t * t / 2.0).exp()).collect();
    // [N, M, K]: t_k h_nm
    let th = z.matmul(dirs).reshape([n, m, 1]) * row(&t);
    let cos = th.clone().cos().mean_dim(0);
    let sin = th.sin().mean_dim(0);
    let re = cos - row(&target_cf);
    let err = re.clone() * re + sin.clone() * sin; // [1, M, K]
    (err * row(&w)).sum_dim(2).mul_scalar(n as f64).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuAutodiff;
    use crate::rng::seeded;

    type B = CpuAutodiff;

    /// The statistic straight from its definition, in f64: complex characteristic function,
    /// trapezoid rule over the whole of [-T_MAX, T_MAX] (the even symmetry is not used).
    fn sigreg_f64(z: &[f64], n: usize, d: usize, dirs: &[f64], m: usize) -> f64 {
        let knots = 2 * KNOTS - 1;
        let dt = 2.0 * T_MAX / (knots - 1) as f64;
        let mut total = 0.0;
        for j in 0..m {
            let h: Vec<f64> = (0..n)
                .map(|r| (0..d).map(|i| z[r * d + i] * dirs[i * m + j]).sum())
                .collect();
            let mut ep = 0.0;
            for k in 0..knots {
                let t = -T_MAX + k as f64 * dt;
                let (mut re, mut im) = (0.0, 0.0);
                for x in &h {
                    re += (t * x).cos() / n as f64;
                    im += (t * x).sin() / n as f64;
                }
                let phi = (-t * t / 2.0).exp();
                let integrand = ((re - phi).powi(2) + im.powi(2)) * phi;
                let trap = if k == 0 || k == knots - 1 { 0.5 } else { 1.0 };
                ep += trap * dt * integrand;
            }
            total += n as f64 * ep;
        }
        total / m as f64
    }

    fn sample(n: usize, d: usize, seed: u64, f: impl Fn(f64, usize) -> f64) -> Vec<f64> {
        let mut rng = seeded(seed);
        (0..n * d)
            .map(|i| f(StandardNormal.sample(&mut rng), i))
            .collect()
    }

    fn run(z: &[f64], n: usize, d: usize, dirs: &[f32], m: usize) -> (f64, Vec<f64>) {
        let device = Default::default();
        let zf: Vec<f32> = z.iter().map(|v| *v as f32).collect();
        let zt = Tensor::<B, 2>::from_data(TensorData::new(zf, [n, d]), &device).require_grad();
        let dt = Tensor::<B, 2>::from_data(TensorData::new(dirs.to_vec(), [d, m]), &device);
        let out = sigreg(zt.clone(), dt);
        let value: f64 = out.clone().into_scalar().into();
        let grads = out.backward();
        let g = zt
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        (value, g.into_iter().map(f64::from).collect())
    }

    /// Value and gradient against the f64 definition (gradient by central differences of
    /// the f64 statistic, so it checks the autodiff of cos/sin/matmul end to end).
    #[test]
    fn value_and_gradient_match_the_f64_definition() {
        let (n, d, m) = (12, 5, 7);
        // Not Gaussian: shifted and skewed, so that the gradient is far from zero.
        let z = sample(n, d, 1, |g, i| 0.6 * g + 0.3 * g * g + 0.1 * (i % 3) as f64);
        let dirs32 = directions(d, m, &mut seeded(9));
        let dirs: Vec<f64> = dirs32.iter().map(|v| f64::from(*v)).collect();
        let (value, grad) = run(&z, n, d, &dirs32, m);
        let want = sigreg_f64(&z, n, d, &dirs, m);
        assert!(
            (value - want).abs() <= 2e-5 * want.max(1.0),
            "{value} vs {want}"
        );
        let eps = 1e-5;
        for i in 0..n * d {
            let (mut up, mut down) = (z.clone(), z.clone());
            up[i] += eps;
            down[i] -= eps;
            let fd =
                (sigreg_f64(&up, n, d, &dirs, m) - sigreg_f64(&down, n, d, &dirs, m)) / (2.0 * eps);
            assert!(
                (grad[i] - fd).abs() <= 1e-3 * (1.0 + fd.abs()),
                "d/dz[{i}]: {} vs {fd}",
                grad[i]
            );
        }
    }

    /// The statistic as the paper defines it, an integral over the whole real line, in
    /// closed form (no quadrature): with `w(t) = e^{-t²/2}`,
    /// `∫ |φ(t) - w(t)|² w(t) dt = √(2π)/N² Σ_jk e^{-(h_j-h_k)²/2} - 2√π/N Σ_j e^{-h_j²/4}
    /// + √(2π/3)`, from `∫ cos(at) e^{-t²/2} dt = √(2π) e^{-a²/2}` and
    /// `∫ cos(at) e^{-t²} dt = √π e^{-a²/4}`.
    fn sigreg_closed_form(z: &[f64], n: usize, d: usize, dirs: &[f64], m: usize) -> f64 {
        use std::f64::consts::PI;
        let mut total = 0.0;
        for j in 0..m {
            let h: Vec<f64> = (0..n)
                .map(|r| (0..d).map(|i| z[r * d + i] * dirs[i * m + j]).sum())
                .collect();
            let pairs: f64 = h
                .iter()
                .flat_map(|a| h.iter().map(move |b| (-(a - b).powi(2) / 2.0).exp()))
                .sum();
            let cross: f64 = h.iter().map(|a| (-a * a / 4.0).exp()).sum();
            let nf = n as f64;
            let ep = (2.0 * PI).sqrt() * pairs / (nf * nf) - 2.0 * PI.sqrt() * cross / nf
                + (2.0 * PI / 3.0).sqrt();
            total += nf * ep;
        }
        total / m as f64
    }

    /// The sketch (17 knots on [0, 5]) against the closed-form integral over the real line:
    /// value and gradient (central differences of the closed form), for Gaussian, skewed,
    /// narrow and wide embeddings; the truncation and the trapezoid rule cost < 1e-4.
    #[test]
    fn sketch_matches_the_closed_form_integral() {
        let (n, d, m) = (24, 5, 6);
        let dirs32 = directions(d, m, &mut seeded(11));
        let dirs: Vec<f64> = dirs32.iter().map(|v| f64::from(*v)).collect();
        type Shape = fn(f64, usize) -> f64;
        let cases: [(&str, Shape); 4] = [
            ("gaussian", |g, _| g),
            ("skewed", |g, i| {
                0.6 * g + 0.3 * g * g + 0.1 * (i % 3) as f64
            }),
            ("narrow", |g, _| 0.2 * g),
            ("wide", |g, _| 3.0 * g + 1.0),
        ];
        for (name, shape) in cases {
            let z = sample(n, d, 5, shape);
            let (value, grad) = run(&z, n, d, &dirs32, m);
            let want = sigreg_closed_form(&z, n, d, &dirs, m);
            assert!(
                (value - want).abs() <= 1e-4 * want.max(1.0),
                "{name}: {value} vs {want}"
            );
            let eps = 1e-5;
            for i in 0..n * d {
                let (mut up, mut down) = (z.clone(), z.clone());
                up[i] += eps;
                down[i] -= eps;
                let fd = (sigreg_closed_form(&up, n, d, &dirs, m)
                    - sigreg_closed_form(&down, n, d, &dirs, m))
                    / (2.0 * eps);
                assert!(
                    (grad[i] - fd).abs() <= 1e-3 * (1.0 + fd.abs()),
                    "{name} d/dz[{i}]: {} vs {fd}",
                    grad[i]
                );
            }
        }
    }

    /// Gaussian embeddings score low; collapsed or badly scaled ones score high.
    #[test]
    fn gaussian_embeddings_score_lowest() {
        let (n, d, m) = (256, 8, 32);
        let dirs = directions(d, m, &mut seeded(4));
        let gauss = run(&sample(n, d, 2, |g, _| g), n, d, &dirs, m).0;
        let narrow = run(&sample(n, d, 2, |g, _| 0.2 * g), n, d, &dirs, m).0;
        let collapsed = run(&vec![0.3; n * d], n, d, &dirs, m).0;
        let shifted = run(&sample(n, d, 2, |g, _| g + 2.0), n, d, &dirs, m).0;
        assert!(gauss < 1.0, "{gauss}");
        for bad in [narrow, collapsed, shifted] {
            assert!(bad > 10.0 * gauss, "{bad} vs {gauss}");
        }
    }

    #[test]
    fn directions_are_unit_and_reproducible() {
        let (d, m) = (6, 4);
        let a = directions(d, m, &mut seeded(3));
        assert_eq!(a, directions(d, m, &mut seeded(3)));
        assert_ne!(a, directions(d, m, &mut seeded(4)));
        for j in 0..m {
            let norm: f64 = (0..d).map(|i| f64::from(a[i * m + j]).powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-6);
        }
    }
}
