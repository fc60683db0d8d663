//! Using trained encoders: feature extraction, the paper's evaluation protocol (linear probe,
//! kNN), and inspection of the predictor.
//!
//! The linear probe is built from parts in files of their own: [`matrix`] (the features and
//! labels), [`standardize`], [`logreg`] (the objective and classifier) and [`lbfgs`] (its
//! solver); [`probe`] puts them together as the paper's protocol.

pub mod error;
pub mod features;
pub mod knn;
pub mod lbfgs;
pub mod logreg;
pub mod matrix;
pub mod predict;
pub mod probe;
pub mod protocol;
pub mod standardize;
#[cfg(test)]
pub(crate) mod testutil;

pub use error::EvalError;
pub use matrix::Features;
