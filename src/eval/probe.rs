//! Linear probe on frozen features, as in the I-JEPA paper's linear evaluation.
//!
//! Protocol: standardise with the train split's per-dimension mean and std (floor
//! [`super::standardize::Standardizer::STD_FLOOR`], the same transform applied to test), hold out a stratified
//! [`ProbeConfig::val_fraction`] of train, fit a multinomial logistic regression for each L2
//! strength of the grid, keep the one with the best validation top-1, refit on all of train,
//! report top-1 on test.
//!
//! Objective (mean form, bias not penalised):
//! `L(W, b) = 1/n * sum_i CE(softmax(W x_i + b), y_i) + lambda/2 * ||W||_F^2`.
//! scikit-learn's `LogisticRegression(C=..)` minimises `1/2 ||W||^2 + C * sum_i CE`, which is the
//! same problem scaled by `C n`: `C = 1 / (lambda * n)` (n = rows of the split being fitted).
//!
//! Solver: full-batch L-BFGS (memory [`super::lbfgs::LBFGS_MEMORY`], weak-Wolfe line search), all sums in f64.
//! Rows are cut into chunks fixed by the problem's shape alone, each chunk reduced sequentially,
//! chunks summed in order: results are bitwise the same whatever the rayon thread count.

use rand::seq::SliceRandom;
use serde::Serialize;

use super::error::{EvalError, Result};
use super::lbfgs::{StopReason, check_solver_args};
use super::logreg::{fit_theta, predict_theta, to_model};
use super::matrix::{Features, check_labels, top1_percent};
use super::standardize::standardize;
use crate::error::Setting;
use crate::rng;

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
            return Err(EvalError::Config(Setting::new(
                "l2_grid",
                "at least one strength",
                "[]",
            )));
        }
        if let Some(l) = self.l2_grid.iter().find(|l| !(l.is_finite() && **l >= 0.0)) {
            return Err(EvalError::Config(Setting::new(
                "l2 strength",
                "a finite number >= 0",
                l,
            )));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(EvalError::Config(Setting::new(
                "val_fraction",
                "a number in (0, 1)",
                self.val_fraction,
            )));
        }
        check_solver_args(self.tol)
    }
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
        return Err(EvalError::Config(Setting::new(
            "val_fraction",
            "a number in (0, 1)",
            val_fraction,
        )));
    }
    let n = y.len();
    if n < 2 {
        return Err(EvalError::Empty(format!(
            "cannot hold out a validation set from {n} sample(s)"
        )));
    }
    let mut rng = rng::seeded(seed);
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

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::super::logreg::train_logreg;
    use super::super::testutil::{clusters, normal, sample};
    use super::*;

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
