//! Data: image decoding and preprocessing.

pub mod transform;
