//! placeholder until the sampler lands
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MaskError(pub String);
