//! Training: the objective, the EMA target.

pub mod ema;
pub mod loss;
