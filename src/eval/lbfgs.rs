//! Full-batch L-BFGS (memory [`LBFGS_MEMORY`]) with a weak-Wolfe bracketing line search, all
//! in f64: the solver of the linear probe.

use std::collections::VecDeque;

use serde::Serialize;

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
pub fn lbfgs<F>(mut f: F, mut x: Vec<f64>, max_iter: usize, gtol: f64) -> (Vec<f64>, FitInfo)
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

/// The solver's gradient tolerance must be a finite number >= 0.
pub fn check_solver_args(tol: f64) -> crate::eval::error::Result<()> {
    if !(tol.is_finite() && tol >= 0.0) {
        return Err(crate::eval::error::EvalError::Config(
            crate::error::Setting::new("tol", "a finite number >= 0", tol),
        ));
    }
    Ok(())
}
