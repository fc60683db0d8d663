//! The I-JEPA networks: ViT encoder (context and EMA target share the architecture) and the
//! narrow predictor, with the official math and parameter layout.

pub mod config;
pub mod gather;
pub mod init;
pub mod layers;
pub mod padding;
pub mod pos_embed;
pub mod predictor;
pub mod vit;

pub use config::{EncoderConfig, PredictorConfig};
pub use gather::{MaskIndexError, MaskIndices};
pub use init::Init;
pub use predictor::Predictor;
pub use vit::VisionTransformer;
