//! I-JEPA (Assran et al., CVPR 2023) in Rust on burn: the official multi-block masks, the ViT
//! encoder and predictor with the official math and parameter layout, the training objective,
//! and readers / writers for the official, Hugging Face and native checkpoints.
//!
//! Data flows one way: [`data`] -> [`masks`] -> [`model`] -> [`train`] -> [`checkpoint`].

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod kernel_cache;
pub mod masks;
pub mod model;
pub mod npy;
pub mod ops;
pub mod rng;
pub mod train;
pub mod viz;

pub use error::{Error, Result};

/// The default CPU backend.
pub type Cpu = burn::backend::Flex;
/// The default CPU backend with autodiff, for training.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;

/// burn's CUDA backend (the `cuda` cargo feature).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;
/// burn's CUDA backend with autodiff, for training.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<Cuda>;

/// burn's wgpu backend without its fusion (the `wgpu` cargo feature): Vulkan, Metal, DX12, or
/// Mesa's software Vulkan on a CPU, which is how CI runs the GPU kernels.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn_wgpu::Wgpu;
/// The wgpu backend with autodiff.
#[cfg(feature = "wgpu")]
pub type WgpuAutodiff = burn::backend::Autodiff<Wgpu>;
