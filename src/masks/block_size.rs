//! Block sizes: the official `_sample_block_size` formula (one size per step, shared by all
//! images and blocks of the step) and the exact enumeration of every size it can produce, which
//! [`super::MaskConfig::validate`] uses to refuse settings that could loop forever.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use super::MaskMode;
use crate::rng::{Rng, unit_f64};

/// Largest value the uniform generator returns: `1 - 2^-53`.
pub(crate) const R_MAX: f64 = 1.0 - f64::EPSILON / 2.0;
/// Points per axis of the sweep that backs up the exact enumeration in `validate`.
const SWEEP_OFFICIAL: u32 = 4096;
const SWEEP_FIXED: u32 = 128;

/// Round half to even (Python's `round`) and convert to a non-negative count.
fn round_count(x: f64) -> usize {
    let r = x.round_ties_even();
    if r.is_finite() && r > 0.0 {
        r as usize
    } else {
        0
    }
}

/// The block-size formula of one block kind (target or context).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SizeRule {
    pub(crate) grid: (usize, usize),
    pub(crate) scale: (f64, f64),
    pub(crate) aspect: (f64, f64),
    pub(crate) mode: MaskMode,
}

impl SizeRule {
    /// `max_keep = floor(H * W * scale(r))`.
    fn max_keep(&self, r: f64) -> usize {
        let s = self.scale.0 + r * (self.scale.1 - self.scale.0);
        let v = ((self.grid.0 * self.grid.1) as f64 * s).floor();
        if v.is_finite() && v > 0.0 {
            v as usize
        } else {
            0
        }
    }

    fn aspect_at(&self, r: f64) -> f64 {
        self.aspect.0 + r * (self.aspect.1 - self.aspect.0)
    }

    fn clamp(&self, v: usize, g: usize) -> usize {
        match self.mode {
            // `while h >= H: h -= 1`
            MaskMode::Official => v.min(g.saturating_sub(1)),
            MaskMode::Fixed => v.min(g),
        }
    }

    fn dims(&self, k: usize, ar: f64) -> (usize, usize) {
        let k = k as f64;
        let h = round_count((k * ar).sqrt());
        let w = round_count((k / ar).sqrt());
        (self.clamp(h, self.grid.0), self.clamp(w, self.grid.1))
    }

    /// A lower bound of the block area for every `k' >= k` and aspect ratio in
    /// `[ar0, ar1]`, from `round(y) >= y - 1/2`: with `x = sqrt(ar)`,
    /// `area >= min(Hc, max(0, sqrt(k) x - 1/2)) * min(Wc, max(0, sqrt(k) / x - 1/2))`.
    /// Between its kinks this is zero, constant, monotone or concave in `x`, so
    /// its minimum lies at `x0`, `x1` or a kink. A small margin absorbs rounding.
    fn area_lower_bound(&self, k: usize, ar0: f64, ar1: f64) -> f64 {
        if k == 0 {
            return 0.0;
        }
        let sk = (k as f64).sqrt();
        let hc = self.clamp(usize::MAX, self.grid.0) as f64;
        let wc = self.clamp(usize::MAX, self.grid.1) as f64;
        let f = |x: f64| {
            let a = (sk * x - 0.5).clamp(0.0, hc);
            let b = (sk / x - 0.5).clamp(0.0, wc);
            a * b
        };
        let (x0, x1) = (ar0.sqrt(), ar1.sqrt());
        let kinks = [(hc + 0.5) / sk, 0.5 / sk, sk / (wc + 0.5), sk / 0.5];
        let mut m = f(x0).min(f(x1));
        for x in kinks {
            if x > x0 && x < x1 {
                m = m.min(f(x));
            }
        }
        m * (1.0 - 1e-9) - 1e-6
    }

    /// Block size for the scale uniform `rs` and the aspect uniform `ra`
    /// (equal in official mode).
    fn size(&self, rs: f64, ra: f64) -> (usize, usize) {
        self.dims(self.max_keep(rs), self.aspect_at(ra))
    }

    /// The official `_sample_block_size`: draws this block kind's uniforms from `rng` (official
    /// mode: one `r` for scale and aspect ratio; fixed mode: the scale's, then the aspect
    /// ratio's) and returns the size `(h, w)` with the uniforms `(scale, aspect)`.
    pub(crate) fn sample_block_size(&self, rng: &mut Rng) -> ((usize, usize), (f64, f64)) {
        let u = match self.mode {
            MaskMode::Official => {
                let r = unit_f64(rng);
                (r, r)
            }
            MaskMode::Fixed => {
                let scale = unit_f64(rng);
                (scale, unit_f64(rng))
            }
        };
        (self.size(u.0, u.1), u)
    }

    /// Visits every reachable size, except in regions whose area lower bound
    /// exceeds the threshold (`initial`, then the value returned by the last
    /// visit; `None` stops the scan).
    ///
    /// Exact enumeration: with `k = max_keep` fixed, `h` is nondecreasing and
    /// `w` nonincreasing in the aspect ratio, so an interval whose end points
    /// have equal `k` and equal `h` (or equal `w`) reaches exactly the sizes
    /// between its end points; other intervals are bisected (down to adjacent
    /// floats). Official mode bisects the shared `r` (`k` and the aspect ratio
    /// both nondecreasing in `r`); fixed mode loops over the reachable `k`
    /// (every integer between `k(0)` and `k(r_max)`) and bisects the aspect
    /// uniform for each.
    fn scan(&self, initial: usize, visit: &mut dyn FnMut((usize, usize)) -> Option<usize>) {
        let mut sc = Scan {
            threshold: initial,
            visit,
        };
        match self.mode {
            MaskMode::Official => {
                let mut stack = vec![(0.0f64, R_MAX)];
                while let Some((a, b)) = stack.pop() {
                    let (ka, kb) = (self.max_keep(a), self.max_keep(b));
                    let (ara, arb) = (self.aspect_at(a), self.aspect_at(b));
                    let (sa, sb) = (self.dims(ka, ara), self.dims(kb, arb));
                    // h >= h(a); w >= w(k(a), ar(b)).
                    let w_lo = self.dims(ka, arb).1;
                    if sa.0.saturating_mul(w_lo) > sc.threshold
                        || self.area_lower_bound(ka, ara, arb) > sc.threshold as f64
                    {
                        continue;
                    }
                    if ka == kb && (sa.0 == sb.0 || sa.1 == sb.1) {
                        if sc.segment(sa, sb).is_break() {
                            return;
                        }
                        continue;
                    }
                    let mid = a + (b - a) / 2.0;
                    if mid <= a || mid >= b {
                        if sc.emit(sa).is_break() || sc.emit(sb).is_break() {
                            return;
                        }
                        continue;
                    }
                    stack.push((mid, b));
                    stack.push((a, mid));
                }
            }
            MaskMode::Fixed => {
                let (ar_lo, ar_hi) = (self.aspect_at(0.0), self.aspect_at(R_MAX));
                for k in self.max_keep(0.0)..=self.max_keep(R_MAX) {
                    // The bound also holds for every larger k: stop here.
                    if self.area_lower_bound(k, ar_lo, ar_hi) > sc.threshold as f64 {
                        return;
                    }
                    let mut stack = vec![(0.0f64, R_MAX)];
                    while let Some((a, b)) = stack.pop() {
                        let (ara, arb) = (self.aspect_at(a), self.aspect_at(b));
                        let (da, db) = (self.dims(k, ara), self.dims(k, arb));
                        if da.0.saturating_mul(db.1) > sc.threshold
                            || self.area_lower_bound(k, ara, arb) > sc.threshold as f64
                        {
                            continue;
                        }
                        if da.0 == db.0 || da.1 == db.1 {
                            if sc.segment(da, db).is_break() {
                                return;
                            }
                            continue;
                        }
                        let mid = a + (b - a) / 2.0;
                        if mid <= a || mid >= b {
                            if sc.emit(da).is_break() || sc.emit(db).is_break() {
                                return;
                            }
                            continue;
                        }
                        stack.push((mid, b));
                        stack.push((a, mid));
                    }
                }
            }
        }
    }

    /// Sizes seen by a regular sweep of the uniform draws (backs up `scan`).
    fn sweep(&self, visit: &mut dyn FnMut((usize, usize))) {
        match self.mode {
            MaskMode::Official => {
                for i in 0..=SWEEP_OFFICIAL {
                    let r = (f64::from(i) / f64::from(SWEEP_OFFICIAL)).min(R_MAX);
                    visit(self.size(r, r));
                }
            }
            MaskMode::Fixed => {
                for i in 0..=SWEEP_FIXED {
                    let rs = (f64::from(i) / f64::from(SWEEP_FIXED)).min(R_MAX);
                    for j in 0..=SWEEP_FIXED {
                        let ra = (f64::from(j) / f64::from(SWEEP_FIXED)).min(R_MAX);
                        visit(self.size(rs, ra));
                    }
                }
            }
        }
    }

    /// The smallest-area reachable block with `area <= limit`, if any.
    pub(crate) fn smallest_block(&self, limit: usize) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        let consider = |d: (usize, usize), best: &mut Option<(usize, usize)>| {
            let area = d.0 * d.1;
            if area <= limit && best.is_none_or(|b| area < b.0 * b.1) {
                *best = Some(d);
            }
        };
        self.sweep(&mut |d| consider(d, &mut best));
        let initial = match best {
            Some(b) => match (b.0 * b.1).checked_sub(1) {
                Some(t) => t,
                None => return best,
            },
            None => limit,
        };
        self.scan(initial, &mut |d| {
            consider(d, &mut best);
            match best {
                Some(b) => (b.0 * b.1).checked_sub(1),
                None => Some(limit),
            }
        });
        best
    }

    pub(crate) fn all_sizes(&self) -> Vec<(usize, usize)> {
        let mut set = BTreeSet::new();
        self.scan(usize::MAX, &mut |d| {
            set.insert(d);
            Some(usize::MAX)
        });
        set.into_iter().collect()
    }
}

/// State of one [`SizeRule::scan`]: the visitor and its current threshold.
struct Scan<'a> {
    threshold: usize,
    visit: &'a mut dyn FnMut((usize, usize)) -> Option<usize>,
}

impl Scan<'_> {
    fn emit(&mut self, d: (usize, usize)) -> ControlFlow<()> {
        match (self.visit)(d) {
            Some(t) => {
                self.threshold = t;
                ControlFlow::Continue(())
            }
            None => ControlFlow::Break(()),
        }
    }

    /// Emits every size between `a` and `b`, which share `h` or `w`.
    fn segment(&mut self, a: (usize, usize), b: (usize, usize)) -> ControlFlow<()> {
        if a.0 == b.0 {
            for w in a.1.min(b.1)..=a.1.max(b.1) {
                self.emit((a.0, w))?;
            }
        } else {
            for h in a.0.min(b.0)..=a.0.max(b.0) {
                self.emit((h, a.1))?;
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::MaskConfig;
    use super::super::testutil::{fixed, official};
    use super::*;
    use crate::rng::{Expansion, below, keyed};

    #[test]
    fn round_half_even_like_python() {
        assert_eq!(round_count(2.5), 2);
        assert_eq!(round_count(3.5), 4);
        assert_eq!(round_count(4.4999), 4);
        assert_eq!(round_count(0.5), 0);
        assert_eq!(round_count(-1.0), 0);
        assert_eq!(round_count(f64::NAN), 0);
    }

    #[test]
    fn official_size_formula_anchors() {
        // Spec 1.4: 16x16 targets from 5x7 (r=0) to 9x6 (r->1); 14x14: 5x6 .. 8x5.
        let (p16, _) = official(16, 10).rules();
        assert_eq!(p16.size(0.0, 0.0), (5, 7));
        assert_eq!(p16.size(R_MAX, R_MAX), (9, 6));
        let (p14, _) = official(14, 10).rules();
        assert_eq!(p14.size(0.0, 0.0), (5, 6));
        assert_eq!(p14.size(R_MAX, R_MAX), (8, 5));
        // Reference JSON, step 0 of the 14x14 file: u_pred 0.49626 -> 6x6, u=0.75763 -> 7x5.
        assert_eq!(p14.size(0.49625658988952637, 0.49625658988952637), (6, 6));
        assert_eq!(p14.size(0.7576315999031067, 0.7576315999031067), (7, 5));
        let (p8, _) = official(8, 4).rules();
        assert_eq!(p8.size(0.49625658988952637, 0.49625658988952637), (4, 3));
        // Context: always (H-1)x(W-1) on these grids.
        let (_, ctx) = official(16, 10).reachable_block_sizes().unwrap();
        assert_eq!(ctx, vec![(15, 15)]);
        let (t14, ctx) = official(14, 10).reachable_block_sizes().unwrap();
        assert_eq!(ctx, vec![(13, 13)]);
        let mut hs: Vec<usize> = t14.iter().map(|d| d.0).collect();
        hs.sort();
        assert_eq!((hs[0], hs[hs.len() - 1]), (5, 8));
        assert!(t14.iter().all(|d| d.1 == 5 || d.1 == 6));
    }

    #[test]
    fn enumeration_agrees_with_dense_sweep() {
        let configs = [
            official(14, 10),
            official(16, 10),
            official(8, 4),
            fixed(14, 10),
            fixed(8, 4),
            MaskConfig {
                aspect_ratio: (0.3, 3.0),
                pred_mask_scale: (0.2, 0.8),
                enc_mask_scale: (0.2, 0.8),
                ..fixed(10, 1)
            },
            MaskConfig {
                aspect_ratio: (0.3, 3.0),
                pred_mask_scale: (0.05, 0.8),
                ..official(28, 4)
            },
            MaskConfig {
                aspect_ratio: (0.01, 100.0),
                pred_mask_scale: (0.05, 0.9),
                ..fixed(12, 4)
            },
            MaskConfig {
                grid: (2, 40),
                aspect_ratio: (0.1, 10.0),
                ..fixed(2, 3)
            },
            MaskConfig {
                grid: (3, 30),
                aspect_ratio: (0.1, 10.0),
                ..official(3, 3)
            },
        ];
        for cfg in configs {
            let (pred, enc) = cfg.rules();
            for rule in [pred, enc] {
                let exact: BTreeSet<_> = rule.all_sizes().into_iter().collect();
                let mut swept = BTreeSet::new();
                let steps = 20_000u32;
                for i in 0..steps {
                    let r = f64::from(i) / f64::from(steps);
                    match cfg.mode {
                        MaskMode::Official => {
                            swept.insert(rule.size(r, r));
                        }
                        MaskMode::Fixed => {
                            if i % 50 == 0 {
                                for j in 0..400u32 {
                                    swept.insert(rule.size(r, f64::from(j) / 400.0));
                                }
                            }
                        }
                    }
                }
                assert!(swept.is_subset(&exact), "{cfg:?}: {swept:?} vs {exact:?}");
                let min_exact = exact.iter().map(|d| d.0 * d.1).min();
                let min_swept = swept.iter().map(|d| d.0 * d.1).min();
                assert_eq!(min_exact, min_swept, "{cfg:?}");
                let limit = usize::MAX;
                let smallest = rule.smallest_block(limit).map(|d| d.0 * d.1);
                assert_eq!(smallest, min_exact);
            }
        }
    }

    #[test]
    fn area_lower_bound_is_a_lower_bound() {
        let mut rng = keyed(&[7], Expansion::Generator);
        for (grid, mode) in [
            ((14, 14), MaskMode::Official),
            ((14, 14), MaskMode::Fixed),
            ((2, 40), MaskMode::Fixed),
            ((40, 3), MaskMode::Official),
            ((64, 64), MaskMode::Fixed),
        ] {
            let rule = SizeRule {
                grid,
                scale: (0.01, 1.0),
                aspect: (0.01, 100.0),
                mode,
            };
            for _ in 0..300 {
                let k = below(&mut rng, grid.0 * grid.1 + 1);
                let a = 0.01 + unit_f64(&mut rng) * 20.0;
                let b = a + unit_f64(&mut rng) * 20.0;
                let bound = rule.area_lower_bound(k, a, b);
                for i in 0..=2000 {
                    let ar = a + (b - a) * f64::from(i) / 2000.0;
                    for kk in [k, k + 1, k + 7] {
                        let (h, w) = rule.dims(kk, ar);
                        assert!((h * w) as f64 >= bound, "{grid:?} k={kk} ar={ar} {bound}");
                    }
                }
            }
        }
    }
}
