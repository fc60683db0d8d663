//! Every random stream of the program comes from here: a ChaCha8 generator keyed by a tuple
//! of `u64` parts (so that a stream is a pure function of, say, `(seed, epoch, index)` and can
//! be rebuilt anywhere: resume, data parallelism, any thread count), and the few ways the
//! program turns its output into numbers. The sequences are pinned here, not by a library's
//! sampling strategy: a stream written today reads the same tomorrow.
//!
//! * [`keyed`]: the key is derived from the parts by a splitmix64 chain,
//!   `h = 0; h = splitmix64(h ^ part)` for each part, then expanded to ChaCha's 32-byte seed
//!   by four more splitmix64 outputs, little-endian. Two expansions exist, each the one its
//!   streams were defined with (see [`Expansion`]).
//! * [`seeded`]: `ChaCha8Rng::seed_from_u64`, for streams keyed by one seed only (weight
//!   initialisation, the probe's validation split, the benchmark's masks).
//! * [`unit_f64`], [`uniform`], [`below`]: uniform floats from 53 random bits and unbiased
//!   integers by Lemire's multiply-and-reject, each consuming whole `u64`s.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The generator of every stream.
pub type Rng = ChaCha8Rng;

/// splitmix64's increment (the golden ratio in 64-bit fixed point).
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 output function of state `x` (Steele et al.): `x + gamma`, then the
/// finaliser. A bijective 64-bit mix with good avalanche.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How the 64-bit hash of the parts becomes the 32-byte ChaCha seed: word `i` (0..4) is
/// `splitmix64(h + i * stride)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expansion {
    /// `stride = GOLDEN_GAMMA`: successive outputs of one splitmix64 generator started at
    /// `h` (the mask sampler's streams).
    Generator,
    /// `stride = 1`: the hash of `h + i` (the data loader's order and augmentation streams).
    Counter,
}

/// The 32-byte ChaCha seed of `parts`.
pub fn derive_key(parts: &[u64], expansion: Expansion) -> [u8; 32] {
    let h = parts.iter().fold(0u64, |h, &p| splitmix64(h ^ p));
    let stride = match expansion {
        Expansion::Generator => GOLDEN_GAMMA,
        Expansion::Counter => 1,
    };
    let mut key = [0u8; 32];
    for (i, chunk) in key.chunks_exact_mut(8).enumerate() {
        let word = splitmix64(h.wrapping_add((i as u64).wrapping_mul(stride)));
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    key
}

/// The generator of the stream named by `parts` (a domain tag first, then seed, step, ...).
pub fn keyed(parts: &[u64], expansion: Expansion) -> Rng {
    Rng::from_seed(derive_key(parts, expansion))
}

/// The generator of a stream named by one seed (`ChaCha8Rng::seed_from_u64`).
pub fn seeded(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

/// Uniform in `[0, 1)` from the top 53 bits of one `u64`.
pub fn unit_f64(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in `[lo, hi)`.
pub fn uniform(rng: &mut impl RngCore, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * unit_f64(rng)
}

/// Unbiased integer in `0..n` (Lemire's multiply-and-reject). `n == 0` returns 0 without
/// drawing; every other `n` (1 included) consumes at least one `u64`.
pub fn below(rng: &mut impl RngCore, n: usize) -> usize {
    let n = n as u64;
    if n == 0 {
        return 0;
    }
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        if (m as u64) >= threshold {
            return (m >> 64) as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two expansions written out as their streams were first defined.
    #[test]
    fn expansions_are_the_defined_ones() {
        let parts = [7u64, 0, 3, 99];
        let h = parts.iter().fold(0u64, |h, &p| splitmix64(h ^ p));
        let generator = derive_key(&parts, Expansion::Generator);
        let mut state = h;
        for chunk in generator.chunks_exact(8) {
            state = state.wrapping_add(GOLDEN_GAMMA);
            let z = state;
            let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            assert_eq!(chunk, (z ^ (z >> 31)).to_le_bytes());
        }
        let counter = derive_key(&parts, Expansion::Counter);
        for (i, chunk) in counter.chunks_exact(8).enumerate() {
            assert_eq!(chunk, splitmix64(h + i as u64).to_le_bytes());
        }
        assert_ne!(generator, counter);
        assert_ne!(derive_key(&[7, 0, 3, 98], Expansion::Counter), counter);
    }

    #[test]
    fn uniform_and_below_are_in_range_and_unbiased() {
        let mut rng = keyed(&[1, 2, 3], Expansion::Generator);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[below(&mut rng, 7)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9500..10500).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(below(&mut rng, 0), 0);
        let mut a = rng.clone();
        assert_eq!(below(&mut rng, 1), 0);
        a.next_u64();
        assert_eq!(a.next_u64(), rng.next_u64(), "below(1) draws one u64");
        for _ in 0..1000 {
            let u = unit_f64(&mut rng);
            assert!((0.0..1.0).contains(&u));
            let v = uniform(&mut rng, -2.0, 3.0);
            assert!((-2.0..3.0).contains(&v));
        }
    }
}
