//! Using trained encoders: feature extraction, the paper's evaluation protocol (linear probe,
//! kNN), and inspection of the predictor.

pub mod features;
pub mod knn;
pub mod predict;
pub mod probe;
pub mod protocol;
