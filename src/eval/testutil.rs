//! Synthetic labelled features for the evaluation tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::matrix::Features;

/// Standard normal by Box-Muller (rand_distr is not a dependency).
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Balanced mixture: class means ~ N(0, sep^2 I), samples mean + N(0, I).
pub(crate) fn clusters(
    n: usize,
    d: usize,
    classes: usize,
    sep: f64,
    seed: u64,
) -> (Features, Vec<usize>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let means: Vec<f64> = (0..classes * d).map(|_| sep * normal(&mut rng)).collect();
    // A sample stream of its own: `sample(.., seed + 1)` must not replay the train rows.
    sample(n, d, classes, &means, seed.wrapping_add(0x9E37_79B9))
}

/// Samples around given class means (labels cycle through the classes).
pub(crate) fn sample(
    n: usize,
    d: usize,
    classes: usize,
    means: &[f64],
    seed: u64,
) -> (Features, Vec<usize>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(n * d);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        y.push(c);
        for j in 0..d {
            data.push((means[c * d + j] + normal(&mut rng)) as f32);
        }
    }
    (Features { n, dim: d, data }, y, means.to_vec())
}

pub(crate) fn random_labels(n: usize, classes: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..classes)).collect()
}
