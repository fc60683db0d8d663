//! Per-dimension standardisation fitted on the train split only.

use rayon::prelude::*;
use serde::Serialize;

use super::error::{EvalError, Result};
use super::matrix::Features;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
