//! The three schedules of the official training (spec 1.10), as pure functions of the step so
//! that resuming is exact. Step numbers are those the official schedulers see: their `step()`
//! is called *before* each update, so the first optimizer step uses `s = 1`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedules {
    pub start_lr: f64,
    pub ref_lr: f64,
    pub final_lr: f64,
    /// `int(warmup_epochs * ipe)`.
    pub warmup_steps: u64,
    /// `int(ipe_scale * epochs * ipe)`.
    pub total_steps: u64,
    pub ref_wd: f64,
    pub final_wd: f64,
    pub ema_start: f64,
    pub ema_end: f64,
    /// `ipe * epochs * ipe_scale` (the momentum generator's denominator, a float).
    pub ema_span: f64,
}

impl Schedules {
    /// As `init_opt` and train.py build them.
    #[allow(clippy::too_many_arguments)]
    pub fn official(
        ipe: usize,
        epochs: usize,
        warmup_epochs: f64,
        ipe_scale: f64,
        (start_lr, ref_lr, final_lr): (f64, f64, f64),
        (ref_wd, final_wd): (f64, f64),
        (ema_start, ema_end): (f64, f64),
    ) -> Self {
        Self {
            start_lr,
            ref_lr,
            final_lr,
            warmup_steps: (warmup_epochs * ipe as f64) as u64,
            total_steps: (ipe_scale * epochs as f64 * ipe as f64) as u64,
            ref_wd,
            final_wd,
            ema_start,
            ema_end,
            ema_span: ipe as f64 * epochs as f64 * ipe_scale,
        }
    }

    /// `WarmupCosineSchedule` at call `s` (1-based): linear warmup, then cosine to `final_lr`.
    pub fn lr(&self, s: u64) -> f64 {
        if s < self.warmup_steps {
            let progress = s as f64 / self.warmup_steps as f64;
            return self.start_lr + progress * (self.ref_lr - self.start_lr);
        }
        let t = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = (s - self.warmup_steps) as f64 / t;
        let lr = self.final_lr
            + (self.ref_lr - self.final_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        lr.max(self.final_lr)
    }

    /// `CosineWDSchedule` at call `s` (1-based).
    pub fn wd(&self, s: u64) -> f64 {
        let progress = s as f64 / self.total_steps.max(1) as f64;
        let wd = self.final_wd
            + (self.ref_wd - self.final_wd) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        if self.final_wd <= self.ref_wd {
            wd.max(self.final_wd)
        } else {
            wd.min(self.final_wd)
        }
    }

    /// EMA momentum used after optimizer step `s` (1-based): the generator's `s-1`-th value.
    pub fn momentum(&self, s: u64) -> f64 {
        let i = s.saturating_sub(1) as f64;
        let m = self.ema_start + i * (self.ema_end - self.ema_start) / self.ema_span.max(1.0);
        // The official generator stops at ema_end; past it we stay there.
        if self.ema_end >= self.ema_start {
            m.min(self.ema_end)
        } else {
            m.max(self.ema_end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values the official schedulers returned in `reference/official/train_steps/steps.json`
    /// (ipe 2, 2 epochs, warmup 1): lr 6e-4, 1e-3, 5.005e-4; wd 0.0927, 0.22, 0.3473; m .996-.998.
    #[test]
    fn matches_the_official_schedulers() {
        let s = Schedules::official(
            2,
            2,
            1.0,
            1.0,
            (2e-4, 1e-3, 1e-6),
            (0.04, 0.4),
            (0.996, 1.0),
        );
        let lr = [0.0006000000000000001, 0.001, 0.0005005000000000001];
        let wd = [0.09272077938642143, 0.22, 0.3472792206135786];
        let m = [0.996, 0.997, 0.998];
        for i in 0..3 {
            assert!((s.lr(i as u64 + 1) - lr[i]).abs() < 1e-15, "lr {i}");
            assert!((s.wd(i as u64 + 1) - wd[i]).abs() < 1e-15, "wd {i}");
            assert!((s.momentum(i as u64 + 1) - m[i]).abs() < 1e-15, "m {i}");
        }
        // H/14 recipe: 25,000 warmup steps, 187,500 in all, lr ends at final_lr
        let h = Schedules::official(
            625,
            300,
            40.0,
            1.0,
            (2e-4, 1e-3, 1e-6),
            (0.04, 0.4),
            (0.996, 1.0),
        );
        assert_eq!((h.warmup_steps, h.total_steps), (25_000, 187_500));
        assert!((h.lr(25_000) - 1e-3).abs() < 1e-12);
        assert!((h.lr(187_500) - 1e-6).abs() < 1e-12);
        assert!((h.wd(187_500) - 0.4).abs() < 1e-12);
    }
}
