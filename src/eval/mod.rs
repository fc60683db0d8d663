//! Using trained encoders: feature extraction, and inspection of the predictor.

pub mod features;
pub mod predict;
