//! Multinomial logistic regression: the objective (mean form, bias not penalised),
//! `L(W, b) = 1/n * sum_i CE(softmax(W x_i + b), y_i) + lambda/2 * ||W||_F^2`, its gradient,
//! the fit by L-BFGS and the classifier it gives.
//!
//! Rows are cut into chunks fixed by the problem's shape alone, each chunk reduced
//! sequentially, chunks summed in order: results are bitwise the same whatever the rayon
//! thread count.

use std::ops::Range;

use rayon::prelude::*;
use serde::Serialize;

use super::error::{EvalError, Result};
use super::lbfgs::{FitInfo, check_solver_args, lbfgs};
use super::matrix::{Features, check_labels};
use crate::error::Setting;
use crate::ops::kernels::matmul::{Parallelism, View, gemm_strided};

/// Softmax classifier `argmax_c (W x + b)_c`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinearModel {
    pub num_classes: usize,
    pub dim: usize,
    /// Row-major `num_classes x dim`.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub fit: FitInfo,
}

impl LinearModel {
    /// Predicted class per row; ties go to the lowest class index.
    pub fn predict(&self, x: &Features) -> Result<Vec<usize>> {
        x.validate("features to predict")?;
        let c = self.num_classes;
        if self.weights.len() != c * self.dim || self.bias.len() != c || c == 0 {
            return Err(EvalError::Shape(format!(
                "model: {} weights and {} biases for {c} classes x {} dims",
                self.weights.len(),
                self.bias.len(),
                self.dim
            )));
        }
        if x.dim != self.dim {
            return Err(EvalError::Shape(format!(
                "model expects {} dims, features have {}",
                self.dim, x.dim
            )));
        }
        let theta: Vec<f64> = self
            .weights
            .iter()
            .chain(&self.bias)
            .map(|&v| v as f64)
            .collect();
        Ok(predict_theta(x, c, &theta))
    }
}

pub(crate) fn predict_theta(x: &Features, c: usize, theta: &[f64]) -> Vec<usize> {
    let d = x.dim;
    let (w, b) = theta.split_at(c * d);
    let mut out = vec![0usize; x.n];
    out.par_chunks_mut(PRED_ROWS)
        .enumerate()
        .for_each(|(ci, preds)| {
            let rows = ci * PRED_ROWS..ci * PRED_ROWS + preds.len();
            let z = logits(&rows_f64(x, rows), d, w, b);
            for (p, zr) in preds.iter_mut().zip(z.chunks_exact(c)) {
                *p = argmax(zr);
            }
        });
    out
}

const PRED_ROWS: usize = 256;

/// First index of the maximum: deterministic tie-break.
fn argmax(z: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = i;
        }
    }
    best
}

/// Fit the L2-regularised multinomial logistic regression (objective in the module doc) from zero.
pub fn train_logreg(
    x: &Features,
    y: &[usize],
    num_classes: usize,
    l2: f64,
    max_iter: usize,
    tol: f64,
) -> Result<LinearModel> {
    x.validate("train features")?;
    check_labels(y, x.n, num_classes, "train labels")?;
    if !(l2.is_finite() && l2 >= 0.0) {
        return Err(EvalError::Config(Setting::new(
            "l2 strength",
            "a finite number >= 0",
            l2,
        )));
    }
    check_solver_args(tol)?;
    let (theta, info) = fit_theta(x, y, num_classes, l2, max_iter, tol, None);
    Ok(to_model(num_classes, x.dim, &theta, info))
}

pub(crate) fn to_model(c: usize, d: usize, theta: &[f64], fit: FitInfo) -> LinearModel {
    LinearModel {
        num_classes: c,
        dim: d,
        weights: theta[..c * d].iter().map(|&v| v as f32).collect(),
        bias: theta[c * d..].iter().map(|&v| v as f32).collect(),
        fit,
    }
}

/// Inputs already validated; `init` is a warm start of length `c * (d + 1)`.
pub(crate) fn fit_theta(
    x: &Features,
    y: &[usize],
    c: usize,
    l2: f64,
    max_iter: usize,
    tol: f64,
    init: Option<&[f64]>,
) -> (Vec<f64>, FitInfo) {
    let mut obj = Objective::new(x, y, c, l2);
    let x0 = init.map_or_else(|| vec![0.0; c * (x.dim + 1)], <[f64]>::to_vec);
    lbfgs(|t, g| obj.eval(t, g), x0, max_iter, tol)
}

// ---------------------------------------------------------------------------------------------
// Objective: mean softmax cross-entropy + lambda/2 ||W||^2, parameters theta = [W (c x d), b (c)].
//
// Per chunk of rows, two matrix products on the crate's GEMM in f64: the logits `X Wᵀ + b`
// and the gradient `Rᵀ X` of the residuals `R = softmax - onehot` (`cargo bench --bench
// eval_products`: 1.2-2.4x the hand-written register tiles they replaced).

/// Smallest number of rows worth a parallel task.
const MIN_TASK_ROWS: usize = 256;
/// Most tasks per evaluation (each owns a gradient buffer).
const MAX_TASKS: usize = 64;
/// Memory budget for all per-task gradient buffers together.
const PARTIAL_BYTES: usize = 256 << 20;

/// The probe objective and its gradient on fixed data, with the buffers every evaluation
/// reuses.
pub struct Objective<'a> {
    x: &'a Features,
    y: &'a [usize],
    c: usize,
    l2: f64,
    ranges: Vec<Range<usize>>,
    /// Per task: the unscaled gradient of W (`c x d`, theta's layout), then the `c` biases.
    partials: Vec<Vec<f64>>,
}

/// The rows of each parallel task for `n` rows and `params` parameters (each task owns a
/// gradient buffer of `params` values): a function of the shapes alone.
pub fn task_ranges(n: usize, params: usize) -> Vec<Range<usize>> {
    let by_mem = (PARTIAL_BYTES / (8 * params)).max(1);
    let tasks = n.div_ceil(MIN_TASK_ROWS).min(MAX_TASKS).min(by_mem).max(1);
    let per = n.div_ceil(tasks);
    (0..tasks)
        .map(|t| (t * per).min(n)..((t + 1) * per).min(n))
        .collect()
}

impl<'a> Objective<'a> {
    /// The row chunking depends only on (n, c, d), never on the thread count.
    pub fn new(x: &'a Features, y: &'a [usize], c: usize, l2: f64) -> Self {
        let p = c * (x.dim + 1);
        let ranges = task_ranges(x.n, p);
        let partials = vec![vec![0.0; p]; ranges.len()];
        Objective {
            x,
            y,
            c,
            l2,
            ranges,
            partials,
        }
    }

    /// Objective value; writes the gradient (layout of `theta`) into `grad`.
    pub fn eval(&mut self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (x, y, c) = (self.x, self.y, self.c);
        let nw = c * x.dim;
        let (w, b) = theta.split_at(nw);
        let losses: Vec<f64> = self
            .partials
            .par_iter_mut()
            .zip(self.ranges.par_iter())
            .map(|(g, r)| chunk_loss_grad(x, y, c, (w, b), r.clone(), g))
            .collect();
        // Sum the task buffers in task order (fixed).
        let inv_n = 1.0 / x.n as f64;
        let parts = &self.partials;
        grad.par_iter_mut().enumerate().for_each(|(i, gi)| {
            *gi = parts.iter().map(|p| p[i]).sum::<f64>() * inv_n;
        });
        let mut sq = 0.0;
        for (g, &w) in grad[..nw].iter_mut().zip(w) {
            *g += self.l2 * w;
            sq += w * w;
        }
        losses.iter().sum::<f64>() * inv_n + 0.5 * self.l2 * sq
    }
}

/// The rows `rows` of `x` in f64, row-major.
fn rows_f64(x: &Features, rows: Range<usize>) -> Vec<f64> {
    x.data[rows.start * x.dim..rows.end * x.dim]
        .iter()
        .map(|&v| f64::from(v))
        .collect()
}

/// `xs Wᵀ + b` in f64 for `xs` of `d` columns, row-major `rows x c`.
fn logits(xs: &[f64], d: usize, w: &[f64], b: &[f64]) -> Vec<f64> {
    let (c, m) = (b.len(), xs.len() / d);
    let mut z = vec![0.0f64; m * c];
    for zr in z.chunks_exact_mut(c) {
        zr.copy_from_slice(b);
    }
    let (lhs, rhs) = (View::rows(xs, d), View::t(w, d));
    gemm_strided(m, c, d, &mut z, c, true, lhs, rhs, 1.0, Parallelism::None);
    z
}

/// Sum of CE over `rows`; the matching unscaled gradient (layout of theta) goes into `g`.
fn chunk_loss_grad(
    x: &Features,
    y: &[usize],
    c: usize,
    (w, b): (&[f64], &[f64]),
    rows: Range<usize>,
    g: &mut [f64],
) -> f64 {
    let d = x.dim;
    let m = rows.len();
    let xs = rows_f64(x, rows.clone());
    let mut z = logits(&xs, d, w, b);
    let mut loss = 0.0;
    for (zr, &label) in z.chunks_exact_mut(c).zip(&y[rows.clone()]) {
        loss += softmax_residual(zr, label);
    }
    let (gw, gb) = g.split_at_mut(c * d);
    let (lhs, rhs) = (View::t(&z, c), View::rows(&xs, d));
    gemm_strided(c, d, m, gw, d, false, lhs, rhs, 1.0, Parallelism::None);
    gb.fill(0.0);
    for zr in z.chunks_exact(c) {
        for (gbk, &v) in gb.iter_mut().zip(zr) {
            *gbk += v;
        }
    }
    loss
}

/// Stable log-sum-exp; replaces `z` by `softmax(z) - onehot(label)` and returns the CE.
/// Public for `benches/eval_products.rs` (the register tiles measured there use it too).
#[doc(hidden)]
pub fn softmax_residual(z: &mut [f64], label: usize) -> f64 {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // From the raw logit, not from exp(): a far-off label must cost a large finite CE, not inf.
    let z_label = z[label];
    let mut sum = 0.0;
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    z.iter_mut().for_each(|v| *v *= inv);
    z[label] -= 1.0;
    max + sum.ln() - z_label
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::super::lbfgs::StopReason;
    use super::super::probe::{ProbeConfig, linear_probe};
    use super::super::testutil::{clusters, normal, random_labels, sample};
    use super::*;
    use crate::eval::matrix::top1_percent;

    fn weight_norm(m: &LinearModel) -> f64 {
        m.weights
            .iter()
            .map(|&w| w as f64 * w as f64)
            .sum::<f64>()
            .sqrt()
    }

    /// The objective written the obvious way, row by row: the reference for the kernels.
    fn naive_objective(x: &Features, y: &[usize], c: usize, l2: f64, theta: &[f64]) -> f64 {
        let d = x.dim;
        let mut total = 0.0;
        for i in 0..x.n {
            let z: Vec<f64> = (0..c)
                .map(|k| {
                    theta[c * d + k]
                        + (0..d)
                            .map(|j| theta[k * d + j] * x.row(i)[j] as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            total += lse - z[y[i]];
        }
        let sq: f64 = theta[..c * d].iter().map(|w| w * w).sum();
        total / x.n as f64 + 0.5 * l2 * sq
    }

    fn check_gradient(n: usize, d: usize, c: usize, l2: f64, seed: u64) {
        let (x, _, _) = clusters(n, d, c, 1.0, seed);
        let y = random_labels(n, c, seed + 7);
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 9);
        let theta: Vec<f64> = (0..c * (d + 1)).map(|_| 0.5 * normal(&mut rng)).collect();
        let mut obj = Objective::new(&x, &y, c, l2);
        let mut g = vec![0.0; theta.len()];
        let f = obj.eval(&theta, &mut g);
        let f_ref = naive_objective(&x, &y, c, l2, &theta);
        assert!((f - f_ref).abs() <= 1e-12 * f_ref.abs(), "{f} vs {f_ref}");
        // Fourth-order central differences: truncation ~ h^4, rounding ~ n eps |f| / h.
        let h = 1e-3;
        let f_at = |i: usize, step: f64| {
            let mut t = theta.clone();
            t[i] += step;
            naive_objective(&x, &y, c, l2, &t)
        };
        let mut worst = 0.0f64;
        for (i, gi) in g.iter().enumerate() {
            let fd = (8.0 * (f_at(i, h) - f_at(i, -h)) - (f_at(i, 2.0 * h) - f_at(i, -2.0 * h)))
                / (12.0 * h);
            worst = worst.max((fd - gi).abs() / (1e-4 + fd.abs()));
        }
        assert!(worst < 1e-6, "worst relative gradient error {worst:e}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // Odd sizes: a partial row tile, padded classes.
        check_gradient(7, 3, 3, 0.3, 1);
        check_gradient(1, 1, 1, 0.0, 2);
        check_gradient(2, 5, 2, 1e-3, 3);
        // Several parallel tasks (rows > MIN_TASK_ROWS), classes past one tile.
        check_gradient(601, 6, 9, 0.05, 4);
    }

    #[test]
    fn separable_mixture_is_learned() {
        let means = [6.0, 0.0, 0.0, 0.0, 6.0, 0.0, -6.0, -6.0, 0.0];
        // 3 classes in 3 dims (the third dim is pure noise).
        let (x, y, _) = sample(300, 3, 3, &means, 1);
        let (xt, yt, _) = sample(600, 3, 3, &means, 2);
        let m = train_logreg(&x, &y, 3, 1e-3, 500, 1e-6).unwrap();
        let acc = top1_percent(&m.predict(&xt).unwrap(), &yt);
        assert!(acc > 95.0, "test top-1 {acc}");
        assert!(matches!(
            m.fit.stop,
            StopReason::Gradient | StopReason::LossChange
        ));

        let r = linear_probe(x, &y, xt, &yt, 3, &ProbeConfig::default()).unwrap();
        assert!(r.top1 > 95.0, "{r:?}");
        assert!(r.train_top1 > 95.0, "{r:?}");
        assert_eq!(r.val_top1.len(), 6);
        assert_eq!((r.n_train, r.n_val), (300, 30));
    }

    #[test]
    fn random_labels_stay_at_chance() {
        let (x, _, _) = clusters(600, 20, 3, 0.0, 3);
        let y = random_labels(600, 3, 4);
        let (xt, _, _) = clusters(3000, 20, 3, 0.0, 5);
        let yt = random_labels(3000, 3, 6);
        let m = train_logreg(&x, &y, 3, 1e-4, 500, 1e-6).unwrap();
        let train = top1_percent(&m.predict(&x).unwrap(), &y);
        let test = top1_percent(&m.predict(&xt).unwrap(), &yt);
        // Test labels are independent of everything: any classifier scores 1/3 +- 0.9 % (1 sd).
        assert!((28.0..39.0).contains(&test), "test top-1 {test}");
        // 600 points in 20 dims: some memorisation on train.
        assert!(train > test + 3.0, "train {train} test {test}");
    }

    #[test]
    fn l2_shrinks_weights_monotonically() {
        let (x, y, _) = clusters(200, 6, 4, 0.7, 8);
        let mut last = f64::INFINITY;
        for l2 in [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0] {
            let m = train_logreg(&x, &y, 4, l2, 2000, 1e-9).unwrap();
            let norm = weight_norm(&m);
            assert!(norm < last, "lambda {l2}: |W| {norm} not below {last}");
            last = norm;
        }
    }

    /// Two classes in 1-D, x = +1 (class 1) and x = -1 (class 0), two points each. By symmetry
    /// the optimum has w1 = -w0 = delta/2 and equal biases; the mean loss is
    /// `ln(1 + e^-delta) + lambda delta^2 / 4`, stationary where `sigmoid(-delta) = lambda delta / 2`.
    #[test]
    fn symmetric_two_class_closed_form() {
        let x = Features::new(4, 1, vec![1.0, -1.0, 1.0, -1.0]).unwrap();
        let y = [1, 0, 1, 0];
        for l2 in [0.01, 0.1, 1.0] {
            let (mut lo, mut hi) = (0.0f64, 100.0f64);
            for _ in 0..200 {
                let mid = 0.5 * (lo + hi);
                if 1.0 / (1.0 + mid.exp()) > l2 * mid / 2.0 {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let delta = 0.5 * (lo + hi);
            let m = train_logreg(&x, &y, 2, l2, 200, 1e-12).unwrap();
            let (w0, w1) = (m.weights[0] as f64, m.weights[1] as f64);
            assert!(
                (w1 - delta / 2.0).abs() < 1e-6,
                "l2 {l2}: w1 {w1} vs {}",
                delta / 2.0
            );
            assert!((w0 + delta / 2.0).abs() < 1e-6, "l2 {l2}: w0 {w0}");
            assert!((m.bias[0] - m.bias[1]).abs() < 1e-6);
            let p = m
                .predict(&Features::new(2, 1, vec![0.5, -0.2]).unwrap())
                .unwrap();
            assert_eq!(p, vec![1, 0]);
        }
        // Bias is not penalised: with x = 0 the biases reach the log class ratio whatever lambda.
        let x0 = Features::new(4, 1, vec![0.0; 4]).unwrap();
        let m = train_logreg(&x0, &[1, 1, 1, 0], 2, 100.0, 200, 1e-12).unwrap();
        let gap = (m.bias[1] - m.bias[0]) as f64;
        assert!((gap - 3f64.ln()).abs() < 1e-6, "bias gap {gap}");
    }
}
