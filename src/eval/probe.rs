//! Linear probe on frozen features, as in the I-JEPA paper's linear evaluation.
//!
//! Protocol: standardise with the train split's per-dimension mean and std (floor
//! [`Standardizer::STD_FLOOR`], the same transform applied to test), hold out a stratified
//! [`ProbeConfig::val_fraction`] of train, fit a multinomial logistic regression for each L2
//! strength of the grid, keep the one with the best validation top-1, refit on all of train,
//! report top-1 on test.
//!
//! Objective (mean form, bias not penalised):
//! `L(W, b) = 1/n * sum_i CE(softmax(W x_i + b), y_i) + lambda/2 * ||W||_F^2`.
//! scikit-learn's `LogisticRegression(C=..)` minimises `1/2 ||W||^2 + C * sum_i CE`, which is the
//! same problem scaled by `C n`: `C = 1 / (lambda * n)` (n = rows of the split being fitted).
//!
//! Solver: full-batch L-BFGS (memory [`LBFGS_MEMORY`], weak-Wolfe line search), all sums in f64.
//! Rows are cut into chunks fixed by the problem's shape alone, each chunk reduced sequentially,
//! chunks summed in order: results are bitwise the same whatever the rayon thread count.

use std::collections::VecDeque;
use std::ops::Range;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

/// Errors of the evaluation code: every variant says which input is wrong and how.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("empty input: {0}")]
    Empty(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("{what}: label {label} at row {row} is out of range for {num_classes} classes")]
    Label {
        what: String,
        row: usize,
        label: usize,
        num_classes: usize,
    },
    #[error("{what}: non-finite value at row {row}, column {col}")]
    NonFinite {
        what: String,
        row: usize,
        col: usize,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

type Result<T> = std::result::Result<T, EvalError>;

/// A row-major `n x dim` matrix of f32 features (one row per sample).
///
/// The fields are public for cheap construction and moves; every function re-checks them, so a
/// hand-built inconsistent value gives an error, never a panic.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    pub n: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Features {
    /// Checks that `data` holds exactly `n * dim` values.
    pub fn new(n: usize, dim: usize, data: Vec<f32>) -> Result<Self> {
        let f = Features { n, dim, data };
        f.check_len("features")?;
        Ok(f)
    }

    /// Row `i`. Panics when `i >= n`, like slice indexing.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows `rows`, in that order, as a new matrix. Panics on an out-of-range index.
    pub fn select(&self, rows: &[usize]) -> Features {
        let mut data = Vec::with_capacity(rows.len() * self.dim);
        for &r in rows {
            data.extend_from_slice(self.row(r));
        }
        Features {
            n: rows.len(),
            dim: self.dim,
            data,
        }
    }

    fn check_len(&self, what: &str) -> Result<()> {
        match self.n.checked_mul(self.dim) {
            Some(len) if len == self.data.len() => Ok(()),
            _ => Err(EvalError::Shape(format!(
                "{what}: {} values for {} rows x {} dims",
                self.data.len(),
                self.n,
                self.dim
            ))),
        }
    }

    /// Non-empty, consistent length, all values finite: what every computation here assumes.
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.n == 0 || self.dim == 0 {
            return Err(EvalError::Empty(format!(
                "{what}: {} rows x {} dims",
                self.n, self.dim
            )));
        }
        self.check_len(what)?;
        if let Some(pos) = self.data.iter().position(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite {
                what: what.to_string(),
                row: pos / self.dim,
                col: pos % self.dim,
            });
        }
        Ok(())
    }
}

/// One label per row, each below `num_classes`.
pub(crate) fn check_labels(y: &[usize], n: usize, num_classes: usize, what: &str) -> Result<()> {
    if num_classes == 0 {
        return Err(EvalError::Config("num_classes must be at least 1".into()));
    }
    if y.len() != n {
        return Err(EvalError::Shape(format!(
            "{what}: {} labels for {n} rows",
            y.len()
        )));
    }
    if let Some((row, &label)) = y.iter().enumerate().find(|(_, l)| **l >= num_classes) {
        return Err(EvalError::Label {
            what: what.to_string(),
            row,
            label,
            num_classes,
        });
    }
    Ok(())
}

/// Per-dimension affine map fitted on train: test must never contribute to its statistics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    /// Population std (divisor n), floored at [`Self::STD_FLOOR`] so constant dims stay finite.
    pub std: Vec<f64>,
}

impl Standardizer {
    pub const STD_FLOOR: f64 = 1e-6;

    /// Two passes in f64 (mean, then centred squares) so large offsets do not cancel.
    pub fn fit(x: &Features) -> Result<Self> {
        x.validate("standardizer input")?;
        let d = x.dim;
        let mut mean = vec![0.0f64; d];
        for row in x.data.chunks_exact(d) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= x.n as f64);
        let mut var = vec![0.0f64; d];
        for row in x.data.chunks_exact(d) {
            for ((s, &v), &m) in var.iter_mut().zip(row).zip(&mean) {
                let c = v as f64 - m;
                *s += c * c;
            }
        }
        let std = var
            .iter()
            .map(|s| (s / x.n as f64).sqrt().max(Self::STD_FLOOR))
            .collect();
        Ok(Standardizer { mean, std })
    }

    /// `(x - mean) / std` in place.
    pub fn apply(&self, x: &mut Features) -> Result<()> {
        x.validate("standardizer target")?;
        if x.dim != self.mean.len() || x.dim != self.std.len() {
            return Err(EvalError::Shape(format!(
                "standardizer fitted on {} dims, applied to {} dims",
                self.mean.len(),
                x.dim
            )));
        }
        let inv: Vec<f64> = self.std.iter().map(|s| 1.0 / s).collect();
        x.data.par_chunks_mut(x.dim).for_each(|row| {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&inv) {
                *v = ((*v as f64 - m) * s) as f32;
            }
        });
        Ok(())
    }
}

/// Standardise both splits with the train split's statistics.
pub fn standardize(train: &mut Features, test: &mut Features) -> Result<()> {
    train.validate("train features")?;
    test.validate("test features")?;
    if train.dim != test.dim {
        return Err(EvalError::Shape(format!(
            "train has {} dims, test has {}",
            train.dim, test.dim
        )));
    }
    let s = Standardizer::fit(train)?;
    s.apply(train)?;
    s.apply(test)
}

/// Settings of [`linear_probe`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeConfig {
    /// L2 strengths `lambda` of the mean-loss objective (see the module doc for sklearn's C).
    pub l2_grid: Vec<f64>,
    /// Fraction of train held out to choose `lambda` (stratified by class).
    pub val_fraction: f64,
    /// L-BFGS iterations per fit.
    pub max_iter: usize,
    /// Stop when the largest absolute gradient entry is at most this.
    pub tol: f64,
    /// Seed of the train/validation split.
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            l2_grid: vec![1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
            val_fraction: 0.1,
            max_iter: 1000,
            tol: 1e-5,
            seed: 0,
        }
    }
}

impl ProbeConfig {
    fn validate(&self) -> Result<()> {
        if self.l2_grid.is_empty() {
            return Err(EvalError::Config("l2_grid is empty".into()));
        }
        if let Some(l) = self.l2_grid.iter().find(|l| !(l.is_finite() && **l >= 0.0)) {
            return Err(EvalError::Config(format!(
                "l2 strength {l} must be finite and >= 0"
            )));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(EvalError::Config(format!(
                "val_fraction {} must lie in (0, 1)",
                self.val_fraction
            )));
        }
        check_solver_args(self.tol)
    }
}

fn check_solver_args(tol: f64) -> Result<()> {
    if !(tol.is_finite() && tol >= 0.0) {
        return Err(EvalError::Config(format!(
            "tol {tol} must be finite and >= 0"
        )));
    }
    Ok(())
}

/// Why L-BFGS stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum StopReason {
    /// Largest absolute gradient entry <= tol.
    Gradient,
    /// Relative loss decrease of an iteration <= [`REL_LOSS_TOL`].
    LossChange,
    MaxIter,
    /// No step satisfying Armijo, even along steepest descent: at the floating-point floor.
    LineSearch,
}

/// How a fit went.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FitInfo {
    pub iterations: usize,
    /// Loss + gradient evaluations (each one full pass over the data).
    pub evaluations: usize,
    /// Final objective (mean CE + penalty).
    pub loss: f64,
    pub grad_max: f64,
    pub stop: StopReason,
}

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

fn predict_theta(x: &Features, c: usize, theta: &[f64]) -> Vec<usize> {
    let d = x.dim;
    let (w, b) = theta.split_at(c * d);
    let mut out = vec![0usize; x.n];
    out.par_chunks_mut(PRED_ROWS)
        .enumerate()
        .for_each(|(ci, preds)| {
            let mut xb = vec![0.0f64; d];
            let mut z = vec![0.0f64; c];
            for (r, p) in preds.iter_mut().enumerate() {
                to_f64(x.row(ci * PRED_ROWS + r), &mut xb);
                logits1(&xb, w, b, &mut z);
                *p = argmax(&z);
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

/// Top-1 accuracy in percent.
pub fn top1_percent(pred: &[usize], y: &[usize]) -> f64 {
    if y.is_empty() {
        return 0.0;
    }
    let ok = pred.iter().zip(y).filter(|(p, t)| p == t).count();
    100.0 * ok as f64 / y.len() as f64
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
        return Err(EvalError::Config(format!(
            "l2 strength {l2} must be finite and >= 0"
        )));
    }
    check_solver_args(tol)?;
    let (theta, info) = fit_theta(x, y, num_classes, l2, max_iter, tol, None);
    Ok(to_model(num_classes, x.dim, &theta, info))
}

fn to_model(c: usize, d: usize, theta: &[f64], fit: FitInfo) -> LinearModel {
    LinearModel {
        num_classes: c,
        dim: d,
        weights: theta[..c * d].iter().map(|&v| v as f32).collect(),
        bias: theta[c * d..].iter().map(|&v| v as f32).collect(),
        fit,
    }
}

/// Inputs already validated; `init` is a warm start of length `c * (d + 1)`.
fn fit_theta(
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

/// Result of [`linear_probe`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeResult {
    /// Test top-1, percent.
    pub top1: f64,
    /// The chosen L2 strength (mean-loss convention).
    pub l2: f64,
    /// `(lambda, validation top-1 percent)` in grid order; empty for a one-value grid (no split).
    pub val_top1: Vec<(f64, f64)>,
    /// Top-1 of the refitted model on the whole (standardised) train split, percent.
    pub train_top1: f64,
    /// L-BFGS iterations of the refit.
    pub iterations: usize,
    /// Whether the refit met the gradient or loss-change criterion before `max_iter`.
    pub converged: bool,
    pub n_train: usize,
    pub n_val: usize,
}

/// Standardise, choose lambda on a held-out split, refit on all of train, evaluate on test.
///
/// The grid is walked from the largest lambda down, each fit warm-started from the previous one
/// (same optimum, far fewer iterations); the refit starts from the chosen lambda's split fit.
/// Validation ties go to the larger lambda (the simpler model).
pub fn linear_probe(
    mut train: Features,
    train_y: &[usize],
    mut test: Features,
    test_y: &[usize],
    num_classes: usize,
    cfg: &ProbeConfig,
) -> Result<ProbeResult> {
    cfg.validate()?;
    train.validate("train features")?;
    test.validate("test features")?;
    check_labels(train_y, train.n, num_classes, "train labels")?;
    check_labels(test_y, test.n, num_classes, "test labels")?;
    standardize(&mut train, &mut test)?;

    let c = num_classes;
    let (l2, val_top1, init, n_val) = if cfg.l2_grid.len() == 1 {
        (cfg.l2_grid[0], Vec::new(), None, 0)
    } else {
        let (tr_idx, val_idx) = train_val_split(train_y, c, cfg.val_fraction, cfg.seed)?;
        let x_tr = train.select(&tr_idx);
        let y_tr: Vec<usize> = tr_idx.iter().map(|&i| train_y[i]).collect();
        let x_val = train.select(&val_idx);
        let y_val: Vec<usize> = val_idx.iter().map(|&i| train_y[i]).collect();

        let mut order: Vec<usize> = (0..cfg.l2_grid.len()).collect();
        order.sort_by(|&a, &b| cfg.l2_grid[b].total_cmp(&cfg.l2_grid[a]));
        let mut thetas: Vec<Vec<f64>> = vec![Vec::new(); cfg.l2_grid.len()];
        let mut accs = vec![0.0f64; cfg.l2_grid.len()];
        let mut warm: Option<usize> = None;
        for &gi in &order {
            let init = warm.map(|w| thetas[w].as_slice());
            let (theta, _) = fit_theta(
                &x_tr,
                &y_tr,
                c,
                cfg.l2_grid[gi],
                cfg.max_iter,
                cfg.tol,
                init,
            );
            accs[gi] = top1_percent(&predict_theta(&x_val, c, &theta), &y_val);
            thetas[gi] = theta;
            warm = Some(gi);
        }
        // `order` is by decreasing lambda, so the first maximum is the largest lambda among ties.
        let mut best = order[0];
        for &gi in &order {
            if accs[gi] > accs[best] {
                best = gi;
            }
        }
        let val_top1 = cfg.l2_grid.iter().copied().zip(accs).collect();
        let init = std::mem::take(&mut thetas[best]);
        (cfg.l2_grid[best], val_top1, Some(init), val_idx.len())
    };

    let (theta, info) = fit_theta(
        &train,
        train_y,
        c,
        l2,
        cfg.max_iter,
        cfg.tol,
        init.as_deref(),
    );
    let model = to_model(c, train.dim, &theta, info);
    let train_top1 = top1_percent(&model.predict(&train)?, train_y);
    let top1 = top1_percent(&model.predict(&test)?, test_y);
    Ok(ProbeResult {
        top1,
        l2,
        val_top1,
        train_top1,
        iterations: model.fit.iterations,
        converged: matches!(
            model.fit.stop,
            StopReason::Gradient | StopReason::LossChange
        ),
        n_train: train.n,
        n_val,
    })
}

/// Deterministic stratified split: `(train rows, validation rows)`, each sorted ascending.
///
/// The validation size is `round(fraction * n)` clamped to `[1, n - 1]`, shared among classes in
/// proportion to their counts (largest remainder, seeded tie-break), and no class gives away its
/// last sample, so every class seen in train stays in the fitting split.
pub fn train_val_split(
    y: &[usize],
    num_classes: usize,
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    check_labels(y, y.len(), num_classes, "labels to split")?;
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(EvalError::Config(format!(
            "val_fraction {val_fraction} must lie in (0, 1)"
        )));
    }
    let n = y.len();
    if n < 2 {
        return Err(EvalError::Empty(format!(
            "cannot hold out a validation set from {n} sample(s)"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &l) in y.iter().enumerate() {
        by_class[l].push(i);
    }
    for rows in &mut by_class {
        rows.shuffle(&mut rng);
    }
    let n_val = ((val_fraction * n as f64).round() as usize).clamp(1, n - 1);
    let mut quota: Vec<usize> = by_class.iter().map(|r| n_val * r.len() / n).collect();
    let given: usize = quota.iter().sum();
    let mut tie: Vec<usize> = (0..num_classes).collect();
    tie.shuffle(&mut rng);
    let mut rank: Vec<usize> = (0..num_classes).collect();
    rank.sort_by_key(|&k| (std::cmp::Reverse(n_val * by_class[k].len() % n), tie[k]));
    for &k in rank.iter().take(n_val - given) {
        quota[k] += 1;
    }
    let mut train = Vec::with_capacity(n);
    let mut val = Vec::with_capacity(n_val);
    for (rows, q) in by_class.iter().zip(quota) {
        let q = q.min(rows.len().saturating_sub(1));
        val.extend_from_slice(&rows[..q]);
        train.extend_from_slice(&rows[q..]);
    }
    if val.is_empty() {
        return Err(EvalError::Empty(
            "no validation sample: every class has a single sample (use a one-value l2_grid)"
                .into(),
        ));
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok((train, val))
}

// ---------------------------------------------------------------------------------------------
// Objective: mean softmax cross-entropy + lambda/2 ||W||^2, parameters theta = [W (c x d), b (c)].
//
// The kernels work on 4 rows x 4 classes register tiles: rows are transposed into `xt`
// (`d x 4`), weights into `wt` (`d x cp`, classes padded to a multiple of 4 with zeros), so
// every inner step is a broadcast times a contiguous vector, which the compiler vectorises
// without gathers. Padded rows and classes carry zero residuals and contribute exact zeros.

/// Rows (and classes) per register tile.
const TILE: usize = 4;
/// Smallest number of rows worth a parallel task.
const MIN_TASK_ROWS: usize = 256;
/// Most tasks per evaluation (each owns a gradient buffer).
const MAX_TASKS: usize = 64;
/// Memory budget for all per-task gradient buffers together.
const PARTIAL_BYTES: usize = 256 << 20;

struct Objective<'a> {
    x: &'a Features,
    y: &'a [usize],
    c: usize,
    /// `c` rounded up to a multiple of [`TILE`].
    cp: usize,
    l2: f64,
    ranges: Vec<Range<usize>>,
    /// Per task: gradient of W in the transposed padded layout (`d x cp`), then `cp` biases.
    partials: Vec<Vec<f64>>,
    /// W transposed and padded, then the padded biases: rebuilt at every evaluation.
    wt: Vec<f64>,
}

impl<'a> Objective<'a> {
    /// The row chunking depends only on (n, c, d), never on the thread count.
    fn new(x: &'a Features, y: &'a [usize], c: usize, l2: f64) -> Self {
        let cp = c.div_ceil(TILE) * TILE;
        let p = cp * (x.dim + 1);
        let by_mem = (PARTIAL_BYTES / (8 * p)).max(1);
        let tasks =
            x.n.div_ceil(MIN_TASK_ROWS)
                .min(MAX_TASKS)
                .min(by_mem)
                .max(1);
        let per = x.n.div_ceil(tasks);
        let ranges: Vec<Range<usize>> = (0..tasks)
            .map(|t| (t * per).min(x.n)..((t + 1) * per).min(x.n))
            .collect();
        let partials = vec![vec![0.0; p]; ranges.len()];
        Objective {
            x,
            y,
            c,
            cp,
            l2,
            ranges,
            partials,
            wt: vec![0.0; p],
        }
    }

    /// Objective value; writes the gradient (layout of `theta`) into `grad`.
    fn eval(&mut self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (x, y, c, cp) = (self.x, self.y, self.c, self.cp);
        let d = x.dim;
        for k in 0..c {
            for j in 0..d {
                self.wt[j * cp + k] = theta[k * d + j];
            }
            self.wt[d * cp + k] = theta[c * d + k];
        }
        let wt = &self.wt;
        let losses: Vec<f64> = self
            .partials
            .par_iter_mut()
            .zip(self.ranges.par_iter())
            .map(|(g, r)| {
                g.fill(0.0);
                chunk_loss_grad(x, y, c, cp, wt, r.clone(), g)
            })
            .collect();
        // Sum the task buffers in task order (fixed), transposing back to theta's layout.
        let inv_n = 1.0 / x.n as f64;
        let parts = &self.partials;
        grad.par_chunks_mut(d).enumerate().for_each(|(k, gk)| {
            if k < c {
                for (j, gkj) in gk.iter_mut().enumerate() {
                    let mut s = 0.0;
                    for p in parts {
                        s += p[j * cp + k];
                    }
                    *gkj = s * inv_n;
                }
            } else {
                // The c biases (the last chunk when d >= c; split over chunks otherwise).
                let first = (k - c) * d;
                for (i, gb) in gk.iter_mut().enumerate() {
                    let mut s = 0.0;
                    for p in parts {
                        s += p[d * cp + first + i];
                    }
                    *gb = s * inv_n;
                }
            }
        });
        let nw = c * d;
        let mut sq = 0.0;
        for (g, &w) in grad[..nw].iter_mut().zip(&theta[..nw]) {
            *g += self.l2 * w;
            sq += w * w;
        }
        losses.iter().sum::<f64>() * inv_n + 0.5 * self.l2 * sq
    }
}

/// Sum of CE over `rows`; the matching unscaled gradient is added into `g` (layout of `wt`).
fn chunk_loss_grad(
    x: &Features,
    y: &[usize],
    c: usize,
    cp: usize,
    wt: &[f64],
    rows: Range<usize>,
    g: &mut [f64],
) -> f64 {
    let d = x.dim;
    let (wt, bias) = wt.split_at(d * cp);
    let (gw, gb) = g.split_at_mut(d * cp);
    // Each value stored twice: a ready-made two-lane broadcast (SSE2 has no cheap one).
    let mut xt = vec![[[0.0f64; 2]; TILE]; d];
    // Stand-in for the missing rows of a partial tile.
    let zeros = vec![0.0f32; d];
    // Logits, then residuals p - onehot(y), per row of the block: `TILE x cp`.
    let mut z = vec![0.0f64; TILE * cp];
    let mut loss = 0.0;
    let mut i = rows.start;
    while i < rows.end {
        let m = (rows.end - i).min(TILE);
        let rows4: [&[f32]; TILE] =
            std::array::from_fn(|r| if r < m { x.row(i + r) } else { &zeros[..] });
        let [r0, r1, r2, r3] = rows4;
        for ((((t, &a), &b), &c), &e) in xt.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
            *t = [[a as f64; 2], [b as f64; 2], [c as f64; 2], [e as f64; 2]];
        }
        for k0 in (0..cp).step_by(TILE) {
            let acc = logits_tile(&xt, wt, cp, k0);
            for (r, ar) in acc.iter().enumerate() {
                for (l, a) in ar.iter().enumerate() {
                    z[r * cp + k0 + l] = a + bias[k0 + l];
                }
            }
        }
        for r in 0..TILE {
            let zr = &mut z[r * cp..(r + 1) * cp];
            if r < m {
                loss += softmax_residual(&mut zr[..c], y[i + r]);
                zr[c..].fill(0.0);
            } else {
                zr.fill(0.0);
            }
        }
        for r in 0..m {
            for (b, &v) in gb.iter_mut().zip(&z[r * cp..(r + 1) * cp]) {
                *b += v;
            }
        }
        for k0 in (0..cp).step_by(TILE) {
            let mut rt = [[0.0f64; TILE]; TILE];
            for (r, rr) in rt.iter_mut().enumerate() {
                rr.copy_from_slice(&z[r * cp + k0..r * cp + k0 + TILE]);
            }
            grad_tile(&xt, &rt, gw, cp, k0);
        }
        i += m;
    }
    loss
}

/// `acc[r][l] = sum_j xt[j][r] * wt[j * cp + k0 + l]`, j in increasing order.
#[inline(always)]
fn logits_tile(xt: &[[[f64; 2]; TILE]], wt: &[f64], cp: usize, k0: usize) -> [[f64; TILE]; TILE] {
    let mut acc = [[0.0f64; TILE]; TILE];
    for (xv, wrow) in xt.iter().zip(wt.chunks_exact(cp)) {
        let mut wv = [0.0f64; TILE];
        wv.copy_from_slice(&wrow[k0..k0 + TILE]);
        for r in 0..TILE {
            for l in 0..TILE {
                acc[r][l] += xv[r][l % 2] * wv[l];
            }
        }
    }
    acc
}

/// `gw[j * cp + k0 + l] += sum_r xt[j][r] * rt[r][l]`, rows added in order (r = 0, 1, 2, 3).
#[inline(always)]
fn grad_tile(
    xt: &[[[f64; 2]; TILE]],
    rt: &[[f64; TILE]; TILE],
    gw: &mut [f64],
    cp: usize,
    k0: usize,
) {
    for (xv, grow) in xt.iter().zip(gw.chunks_exact_mut(cp)) {
        let mut gv = [0.0f64; TILE];
        gv.copy_from_slice(&grow[k0..k0 + TILE]);
        for r in 0..TILE {
            for l in 0..TILE {
                gv[l] += xv[r][l % 2] * rt[r][l];
            }
        }
        grow[k0..k0 + TILE].copy_from_slice(&gv);
    }
}

fn to_f64(src: &[f32], dst: &mut [f64]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s as f64;
    }
}

/// Stable log-sum-exp; replaces `z` by `softmax(z) - onehot(label)` and returns the CE.
fn softmax_residual(z: &mut [f64], label: usize) -> f64 {
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

/// Lanes of the f64 accumulators of [`dot1`] (two SSE2 registers).
const LANES: usize = 4;

/// `z[k] = b[k] + <x, w_k>` for one row (prediction path).
#[inline(always)]
fn logits1(x: &[f64], w: &[f64], b: &[f64], z: &mut [f64]) {
    for ((wk, &bk), zk) in w.chunks_exact(x.len()).zip(b).zip(z.iter_mut()) {
        *zk = bk + dot1(x, wk);
    }
}

/// Dot product with `LANES` independent accumulators, then the scalar tail.
#[inline(always)]
fn dot1(x: &[f64], w: &[f64]) -> f64 {
    let (wc, wt) = w.as_chunks::<LANES>();
    let (xc, xt) = x.as_chunks::<LANES>();
    let mut a = [0.0f64; LANES];
    for (wv, xv) in wc.iter().zip(xc) {
        for l in 0..LANES {
            a[l] += xv[l] * wv[l];
        }
    }
    let mut s = (a[0] + a[1]) + (a[2] + a[3]);
    for (p, q) in xt.iter().zip(wt) {
        s += p * q;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// L-BFGS.

/// Correction pairs kept by L-BFGS.
pub const LBFGS_MEMORY: usize = 10;
/// Stop when one iteration lowers the loss by at most this fraction of `max(|f|, 1)`.
pub const REL_LOSS_TOL: f64 = 1e-10;
/// Armijo (sufficient decrease) constant.
const WOLFE_C1: f64 = 1e-4;
/// Curvature constant of the weak Wolfe condition.
const WOLFE_C2: f64 = 0.9;
const MAX_LINE_SEARCH: usize = 30;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

struct Pair {
    s: Vec<f64>,
    y: Vec<f64>,
    rho: f64,
}

/// Minimise `f` (value, gradient written into the second argument) from `x`.
fn lbfgs<F>(mut f: F, mut x: Vec<f64>, max_iter: usize, gtol: f64) -> (Vec<f64>, FitInfo)
where
    F: FnMut(&[f64], &mut [f64]) -> f64,
{
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let mut evals = 1;
    let mut hist: VecDeque<Pair> = VecDeque::with_capacity(LBFGS_MEMORY);
    let mut d = vec![0.0; n];
    let mut x_new = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    let mut alpha = vec![0.0; LBFGS_MEMORY];
    let mut iter = 0;
    let stop = loop {
        if !fx.is_finite() {
            break StopReason::LineSearch;
        }
        if max_abs(&g) <= gtol {
            break StopReason::Gradient;
        }
        if iter >= max_iter {
            break StopReason::MaxIter;
        }
        two_loop(&g, &hist, &mut alpha, &mut d);
        let mut dg = dot(&d, &g);
        if dg.is_nan() || dg >= 0.0 {
            hist.clear();
            d.iter_mut().zip(&g).for_each(|(di, gi)| *di = -gi);
            dg = -dot(&g, &g);
        }
        let t0 = if hist.is_empty() {
            (1.0 / dot(&g, &g).sqrt()).min(1.0)
        } else {
            1.0
        };
        let ls = line_search(&mut f, &x, fx, &d, dg, t0, &mut x_new, &mut g_new);
        evals += ls.1;
        let Some(f_new) = ls.0 else {
            if hist.is_empty() {
                break StopReason::LineSearch;
            }
            // A poor quasi-Newton direction: retry once along steepest descent.
            hist.clear();
            continue;
        };
        let recycled = if hist.len() == LBFGS_MEMORY {
            hist.pop_front()
        } else {
            None
        };
        let mut pair = recycled.unwrap_or_else(|| Pair {
            s: vec![0.0; n],
            y: vec![0.0; n],
            rho: 0.0,
        });
        for i in 0..n {
            pair.s[i] = x_new[i] - x[i];
            pair.y[i] = g_new[i] - g[i];
        }
        let sy = dot(&pair.s, &pair.y);
        let yy = dot(&pair.y, &pair.y);
        // Curvature check: only pairs that keep the inverse Hessian positive definite.
        if sy > f64::EPSILON * yy && sy > 0.0 {
            pair.rho = 1.0 / sy;
            hist.push_back(pair);
        }
        std::mem::swap(&mut x, &mut x_new);
        std::mem::swap(&mut g, &mut g_new);
        let rel = (fx - f_new) / fx.abs().max(f_new.abs()).max(1.0);
        fx = f_new;
        iter += 1;
        if rel <= REL_LOSS_TOL {
            break StopReason::LossChange;
        }
    };
    let info = FitInfo {
        iterations: iter,
        evaluations: evals,
        loss: fx,
        grad_max: max_abs(&g),
        stop,
    };
    (x, info)
}

/// `d = -H g` with the standard two-loop recursion, `H0 = (s'y / y'y) I`.
fn two_loop(g: &[f64], hist: &VecDeque<Pair>, alpha: &mut [f64], d: &mut [f64]) {
    d.iter_mut().zip(g).for_each(|(di, gi)| *di = -gi);
    for (k, p) in hist.iter().enumerate().rev() {
        let a = p.rho * dot(&p.s, d);
        alpha[k] = a;
        d.iter_mut().zip(&p.y).for_each(|(di, yi)| *di -= a * yi);
    }
    if let Some(p) = hist.back() {
        let gamma = 1.0 / (p.rho * dot(&p.y, &p.y));
        d.iter_mut().for_each(|di| *di *= gamma);
    }
    for (k, p) in hist.iter().enumerate() {
        let beta = p.rho * dot(&p.y, d);
        let a = alpha[k];
        d.iter_mut()
            .zip(&p.s)
            .for_each(|(di, si)| *di += (a - beta) * si);
    }
}

/// Bracketing line search for the weak Wolfe conditions (Armijo + curvature), with safeguarded
/// quadratic interpolation. Returns the accepted loss (point and gradient left in `x_new`,
/// `g_new`) and the number of evaluations; `None` when no Armijo point was found.
#[allow(clippy::too_many_arguments)]
fn line_search<F>(
    f: &mut F,
    x: &[f64],
    f0: f64,
    d: &[f64],
    dg0: f64,
    t_init: f64,
    x_new: &mut [f64],
    g_new: &mut [f64],
) -> (Option<f64>, usize)
where
    F: FnMut(&[f64], &mut [f64]) -> f64,
{
    let (mut lo, mut f_lo, mut dg_lo) = (0.0f64, f0, dg0);
    let (mut hi, mut f_hi) = (f64::INFINITY, f64::NAN);
    let mut t = t_init;
    let mut evals = 0;
    let mut step = |t: f64, x_new: &mut [f64], g_new: &mut [f64]| {
        for ((xn, &xi), &di) in x_new.iter_mut().zip(x).zip(d) {
            *xn = xi + t * di;
        }
        f(x_new, g_new)
    };
    for _ in 0..MAX_LINE_SEARCH {
        let ft = step(t, x_new, g_new);
        evals += 1;
        let dgt = dot(g_new, d);
        if !ft.is_finite() || ft > f0 + WOLFE_C1 * t * dg0 || (lo > 0.0 && ft >= f_lo) {
            hi = t;
            f_hi = ft;
        } else if dgt < WOLFE_C2 * dg0 {
            // Sufficient decrease but still steeply downhill: the step is too short.
            lo = t;
            f_lo = ft;
            dg_lo = dgt;
        } else {
            return (Some(ft), evals);
        }
        t = if hi.is_finite() {
            let w = hi - lo;
            let denom = 2.0 * (f_hi - f_lo - dg_lo * w);
            let q = lo - dg_lo * w * w / denom;
            if q.is_finite() && denom > 0.0 {
                q.clamp(lo + 0.1 * w, hi - 0.1 * w)
            } else {
                lo + 0.5 * w
            }
        } else {
            2.0 * t
        };
        if hi.is_finite() && (hi - lo) <= f64::EPSILON * hi.max(1.0) {
            break;
        }
    }
    if lo > 0.0 {
        let ft = step(lo, x_new, g_new);
        return (Some(ft), evals + 1);
    }
    (None, evals)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::Rng;

    /// Standard normal by Box-Muller (rand_distr is not a dependency).
    pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Balanced mixture: class means ~ N(0, sep^2 I), samples mean + N(0, I).
    pub(crate) fn clusters(
        n: usize,
        d: usize,
        classes: usize,
        sep: f64,
        seed: u64,
    ) -> (Features, Vec<usize>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let means: Vec<f64> = (0..classes * d).map(|_| sep * normal(&mut rng)).collect();
        // A sample stream of its own: `sample(.., seed + 1)` must not replay the train rows.
        sample(n, d, classes, &means, seed.wrapping_add(0x9E37_79B9))
    }

    /// Samples around given class means (labels cycle through the classes).
    pub(crate) fn sample(
        n: usize,
        d: usize,
        classes: usize,
        means: &[f64],
        seed: u64,
    ) -> (Features, Vec<usize>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut data = Vec::with_capacity(n * d);
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % classes;
            y.push(c);
            for j in 0..d {
                data.push((means[c * d + j] + normal(&mut rng)) as f32);
            }
        }
        (Features { n, dim: d, data }, y, means.to_vec())
    }

    fn random_labels(n: usize, classes: usize, seed: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(0..classes)).collect()
    }

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

    /// x = (s + u, u) with a shared nuisance u: the signal is x0 - x1, away from the
    /// class-mean direction that strong L2 pulls towards. Validation must see that a small
    /// lambda wins, and its pick must be (near) the best on test as well.
    #[test]
    fn validation_choice_follows_the_data() {
        for seed in 0..4 {
            check_validation_choice(seed);
        }
    }

    fn check_validation_choice(seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut gen_corr = |n: usize| {
            let mut data = Vec::new();
            let mut y = Vec::new();
            for i in 0..n {
                let c = i % 2;
                let s = if c == 1 { 1.0 } else { -1.0 };
                let u = 3.0 * normal(&mut rng);
                data.push((s + u + 0.3 * normal(&mut rng)) as f32);
                data.push((u + 0.3 * normal(&mut rng)) as f32);
                y.push(c);
            }
            (Features { n, dim: 2, data }, y)
        };
        let (x, y) = gen_corr(2000);
        let (xt, yt) = gen_corr(2000);
        let cfg = ProbeConfig {
            val_fraction: 0.3,
            ..ProbeConfig::default()
        };
        let r = linear_probe(x.clone(), &y, xt.clone(), &yt, 2, &cfg).unwrap();
        let val_at = |l: f64| r.val_top1.iter().find(|v| v.0 == l).unwrap().1;
        assert!(r.l2 <= 1e-2, "{r:?}");
        assert!(val_at(r.l2) >= val_at(1e-1) + 2.0, "{r:?}");

        // Oracle: each lambda fitted on all of train and scored on test.
        let (mut xs, mut xts) = (x, xt);
        standardize(&mut xs, &mut xts).unwrap();
        let test_at: Vec<(f64, f64)> = cfg
            .l2_grid
            .iter()
            .map(|&l| {
                let m = train_logreg(&xs, &y, 2, l, cfg.max_iter, cfg.tol).unwrap();
                (l, top1_percent(&m.predict(&xts).unwrap(), &yt))
            })
            .collect();
        let best = test_at.iter().map(|v| v.1).fold(f64::MIN, f64::max);
        let worst = test_at.iter().map(|v| v.1).fold(f64::MAX, f64::min);
        assert!(r.top1 >= best - 1.0, "{r:?} vs oracle {test_at:?}");
        assert!(best >= worst + 4.0, "{test_at:?}");
        assert_eq!(worst, test_at[5].1, "{test_at:?}");
    }

    #[test]
    fn chosen_lambda_is_the_best_on_validation() {
        let (x, y, means) = clusters(400, 30, 5, 0.25, 21);
        let (xt, yt, _) = sample(400, 30, 5, &means, 22);
        let r = linear_probe(x, &y, xt, &yt, 5, &ProbeConfig::default()).unwrap();
        let best = r.val_top1.iter().map(|v| v.1).fold(f64::MIN, f64::max);
        let at = r.val_top1.iter().find(|v| v.0 == r.l2).unwrap().1;
        assert_eq!(at, best);
        // Ties resolved towards the largest lambda.
        let larger_tied = r.val_top1.iter().any(|v| v.1 == best && v.0 > r.l2);
        assert!(!larger_tied, "{r:?}");
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let (x, y, means) = clusters(3001, 17, 5, 0.3, 31);
        let (xt, yt, _) = sample(500, 17, 5, &means, 32);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let m = train_logreg(&x, &y, 5, 1e-4, 300, 1e-8).unwrap();
                let r = linear_probe(x.clone(), &y, xt.clone(), &yt, 5, &ProbeConfig::default())
                    .unwrap();
                (m, r)
            })
        };
        let (m1, r1) = run(1);
        for threads in [2, 3] {
            let (m, r) = run(threads);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&m.weights), bits(&m1.weights), "{threads} threads");
            assert_eq!(bits(&m.bias), bits(&m1.bias));
            assert_eq!(m.fit.loss.to_bits(), m1.fit.loss.to_bits());
            assert_eq!(m.fit.iterations, m1.fit.iterations);
            assert_eq!(r, r1);
        }
    }

    #[test]
    fn standardize_uses_train_statistics() {
        let mut tr = Features::new(3, 2, vec![1.0, 5.0, 2.0, 5.0, 3.0, 5.0]).unwrap();
        let mut te = Features::new(1, 2, vec![4.0, 6.0]).unwrap();
        standardize(&mut tr, &mut te).unwrap();
        let sd = (2.0f64 / 3.0).sqrt();
        let expect = [-1.0 / sd, 0.0, 0.0, 0.0, 1.0 / sd, 0.0];
        for (a, b) in tr.data.iter().zip(expect) {
            assert!((*a as f64 - b).abs() < 1e-6, "{:?}", tr.data);
        }
        // Test: (4 - 2) / sd; the constant dim uses the 1e-6 floor.
        assert!((te.data[0] as f64 - 2.0 / sd).abs() < 1e-5);
        assert!((te.data[1] as f64 - 1.0 / Standardizer::STD_FLOOR).abs() < 1.0);
    }

    #[test]
    fn split_is_stratified_and_deterministic() {
        let y: Vec<usize> = (0..1000)
            .map(|i| if i % 10 < 7 { 0 } else { 1 + i % 2 })
            .collect();
        let (tr, va) = train_val_split(&y, 3, 0.1, 5).unwrap();
        assert_eq!(va.len(), 100);
        assert_eq!(tr.len() + va.len(), 1000);
        let mut all: Vec<usize> = tr.iter().chain(&va).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        let count = |c: usize| va.iter().filter(|&&i| y[i] == c).count();
        assert_eq!((count(0), count(1), count(2)), (70, 10, 20));
        assert_eq!(
            train_val_split(&y, 3, 0.1, 5).unwrap(),
            (tr.clone(), va.clone())
        );
        assert_ne!(train_val_split(&y, 3, 0.1, 6).unwrap().1, va);

        // Tiny: 20 samples, 10 classes: 2 held out, every class keeps a fitting sample.
        let y: Vec<usize> = (0..20).map(|i| i % 10).collect();
        let (tr, va) = train_val_split(&y, 10, 0.1, 0).unwrap();
        assert_eq!(va.len(), 2);
        for c in 0..10 {
            assert!(tr.iter().any(|&i| y[i] == c));
        }
        // A single sample per class leaves nothing to hold out.
        assert!(matches!(
            train_val_split(&[0, 1, 2], 3, 0.5, 0),
            Err(EvalError::Empty(_))
        ));
    }

    #[test]
    fn tiny_and_many_class_problems_work() {
        let (x, y, means) = clusters(20, 8, 10, 2.0, 41);
        let (xt, yt, _) = sample(20, 8, 10, &means, 42);
        let r = linear_probe(x, &y, xt, &yt, 10, &ProbeConfig::default()).unwrap();
        assert_eq!(r.n_val, 2);
        assert!((0.0..=100.0).contains(&r.top1));

        // 1200 classes, 2 train samples each, one-value grid (no split).
        let (x, y, means) = clusters(2400, 16, 1200, 3.0, 43);
        let (xt, yt, _) = sample(1200, 16, 1200, &means, 44);
        let cfg = ProbeConfig {
            l2_grid: vec![1e-3],
            max_iter: 100,
            ..ProbeConfig::default()
        };
        let r = linear_probe(x, &y, xt, &yt, 1200, &cfg).unwrap();
        assert!(r.val_top1.is_empty() && r.n_val == 0);
        assert!(r.top1 > 50.0, "{r:?}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ok = Features::new(4, 2, vec![0.0, 1.0, 1.0, 0.0, 2.0, 1.0, 0.5, 0.5]).unwrap();
        let y = [0, 1, 0, 1];
        let cfg = ProbeConfig::default();
        let probe = |tr: Features, ty: &[usize], te: Features, c: usize, cfg: &ProbeConfig| {
            linear_probe(tr, ty, te, &y, c, cfg)
        };
        // Length does not match the shape.
        assert!(matches!(
            Features::new(3, 2, vec![0.0; 5]),
            Err(EvalError::Shape(_))
        ));
        let broken = Features {
            n: 4,
            dim: 2,
            data: vec![0.0; 7],
        };
        assert!(matches!(
            probe(broken, &y, ok.clone(), 2, &cfg),
            Err(EvalError::Shape(_))
        ));
        // Dimension mismatch.
        let wide = Features::new(4, 3, vec![0.0; 12]).unwrap();
        assert!(matches!(
            probe(ok.clone(), &y, wide.clone(), 2, &cfg),
            Err(EvalError::Shape(_))
        ));
        assert!(matches!(
            standardize(&mut ok.clone(), &mut wide.clone()),
            Err(EvalError::Shape(_))
        ));
        // Empty.
        let empty = Features::new(0, 2, vec![]).unwrap();
        assert!(matches!(
            probe(empty.clone(), &[], ok.clone(), 2, &cfg),
            Err(EvalError::Empty(_))
        ));
        assert!(matches!(
            probe(ok.clone(), &y, empty.clone(), 2, &cfg),
            Err(EvalError::Empty(_))
        ));
        assert!(matches!(
            train_logreg(&empty, &[], 2, 0.1, 10, 1e-6),
            Err(EvalError::Empty(_))
        ));
        // Labels.
        assert!(matches!(
            probe(ok.clone(), &[0, 1, 2, 0], ok.clone(), 2, &cfg),
            Err(EvalError::Label {
                row: 2,
                label: 2,
                ..
            })
        ));
        assert!(matches!(
            probe(ok.clone(), &[0, 1], ok.clone(), 2, &cfg),
            Err(EvalError::Shape(_))
        ));
        assert!(matches!(
            train_logreg(&ok, &y, 0, 0.1, 10, 1e-6),
            Err(EvalError::Config(_))
        ));
        // NaN / inf.
        let mut nan = ok.clone();
        nan.data[5] = f32::NAN;
        assert!(matches!(
            probe(nan.clone(), &y, ok.clone(), 2, &cfg),
            Err(EvalError::NonFinite { row: 2, col: 1, .. })
        ));
        assert!(matches!(
            train_logreg(&nan, &y, 2, 0.1, 10, 1e-6),
            Err(EvalError::NonFinite { .. })
        ));
        let mut inf = ok.clone();
        inf.data[0] = f32::INFINITY;
        assert!(matches!(
            probe(ok.clone(), &y, inf, 2, &cfg),
            Err(EvalError::NonFinite { .. })
        ));
        // Configuration.
        for bad in [
            ProbeConfig {
                l2_grid: vec![],
                ..cfg.clone()
            },
            ProbeConfig {
                l2_grid: vec![-1.0],
                ..cfg.clone()
            },
            ProbeConfig {
                l2_grid: vec![f64::NAN],
                ..cfg.clone()
            },
            ProbeConfig {
                val_fraction: 0.0,
                ..cfg.clone()
            },
            ProbeConfig {
                val_fraction: 1.0,
                ..cfg.clone()
            },
            ProbeConfig {
                tol: f64::NAN,
                ..cfg.clone()
            },
        ] {
            assert!(matches!(
                probe(ok.clone(), &y, ok.clone(), 2, &bad),
                Err(EvalError::Config(_))
            ));
        }
        assert!(matches!(
            train_logreg(&ok, &y, 2, -0.5, 10, 1e-6),
            Err(EvalError::Config(_))
        ));
        // A model applied to features of another width, or a hand-broken model.
        let m = train_logreg(&ok, &y, 2, 0.1, 10, 1e-6).unwrap();
        assert!(matches!(m.predict(&wide), Err(EvalError::Shape(_))));
        let mut broken = m.clone();
        broken.bias.pop();
        assert!(matches!(broken.predict(&ok), Err(EvalError::Shape(_))));
        // Messages say what is wrong.
        let msg = probe(ok.clone(), &[0, 1, 7, 0], ok.clone(), 2, &cfg)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("label 7") && msg.contains("row 2"), "{msg}");
    }
}
