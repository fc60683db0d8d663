//! The feature matrix every evaluation reads, its labels, and the top-1 metric.

use super::error::{EvalError, Result};
use crate::error::Setting;

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
pub fn check_labels(y: &[usize], n: usize, num_classes: usize, what: &str) -> Result<()> {
    if num_classes == 0 {
        return Err(EvalError::Config(Setting::new(
            "num_classes",
            "at least 1",
            0,
        )));
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

/// Top-1 accuracy in percent.
pub fn top1_percent(pred: &[usize], y: &[usize]) -> f64 {
    if y.is_empty() {
        return 0.0;
    }
    let ok = pred.iter().zip(y).filter(|(p, t)| p == t).count();
    100.0 * ok as f64 / y.len() as f64
}
