//! Errors of the evaluation code: every variant says which input is wrong and how.

use crate::error::Setting;

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
    Config(Setting),
    /// A test class the training split does not have: it cannot be scored.
    #[error(
        "test data {spec}: class '{class}' does not occur in the training data (its classes: {})",
        train_classes.join(", ")
    )]
    UnseenClass {
        spec: String,
        class: String,
        train_classes: Vec<String>,
    },
}

pub type Result<T> = std::result::Result<T, EvalError>;
