//! Seeded weight initialisation as the official training does it (spec 1.8): every Linear,
//! the patch-embedding conv and the mask token ~ trunc_normal(std 0.02) truncated at +-2
//! *absolute* (so, at std 0.02, a plain normal), biases 0, LayerNorm 1 / 0, no depth rescale
//! (the official `fix_init_weight` rescale is undone by `helper.init_model`).

use crate::rng::{self, Rng};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand_distr::{Distribution, Normal};

/// Deterministic source of initial weights.
pub struct Init {
    rng: Rng,
    std: f64,
    /// Skip the draws (weights about to be overwritten by a checkpoint).
    zeros: bool,
}

impl Init {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: rng::seeded(seed),
            std: 0.02,
            zeros: false,
        }
    }

    /// All-zero "initialisation" for modules that a checkpoint fills right away.
    pub fn zeros() -> Self {
        Self {
            rng: rng::seeded(0),
            std: 0.02,
            zeros: true,
        }
    }

    /// Values of a `trunc_normal_(std=0.02, a=-2, b=2)` tensor.
    pub fn normal_values(&mut self, n: usize) -> Vec<f32> {
        if self.zeros {
            return vec![0.0; n];
        }
        let dist = Normal::new(0.0, self.std).expect("std 0.02 is a valid normal");
        (0..n)
            .map(|_| dist.sample(&mut self.rng).clamp(-2.0, 2.0) as f32)
            .collect()
    }

    pub fn normal<B: Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        device: &B::Device,
    ) -> Tensor<B, D> {
        let values = self.normal_values(shape.iter().product());
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}
