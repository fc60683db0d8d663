//! Shared test helpers: seeded inputs, f64 references, error reporting, thread pools.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` values uniform in `[-scale, scale)`.
pub fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Reference erf in f64: the all-positive series `2/√π e^{-x²} Σ 2^n x^{2n+1}/(2n+1)!!`
/// for |x| < 3 (no cancellation) and the Laplace continued fraction for erfc above.
/// Accurate to ~1e-15 absolute.
pub fn erf_f64(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 3.0 {
        let x2 = a * a;
        let mut term = a;
        let mut s = a;
        let mut n = 0.0;
        while term > 1e-18 * s {
            n += 1.0;
            term *= 2.0 * x2 / (2.0 * n + 1.0);
            s += term;
        }
        std::f64::consts::FRAC_2_SQRT_PI * (-x2).exp() * s
    } else {
        1.0 - erfc_cf(a)
    };
    r.copysign(x)
}

/// erfc(x) for x ≥ 2 via the continued fraction `e^{-x²}/√π / (x + (1/2)/(x + 1/(x + (3/2)/…)))`.
pub fn erfc_cf(x: f64) -> f64 {
    if x.is_infinite() {
        return 0.0;
    }
    let mut f = x;
    for n in (1..=300).rev() {
        f = x + (n as f64 / 2.0) / f;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

pub fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2))
}

pub fn gelu_grad_f64(x: f64) -> f64 {
    let cdf = 0.5 * (1.0 + erf_f64(x / std::f64::consts::SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    cdf + x * pdf
}

/// Error summary of `got` against the f64 reference `want`.
#[derive(Debug, Clone, Copy)]
pub struct Err {
    /// max |got - want|
    pub max_abs: f64,
    /// max |got - want| / max |want| (error relative to the tensor's scale)
    pub rel_to_max: f64,
    /// max over elements of |got - want| / (|want| + floor), floor = 1e-3 max |want|
    pub max_rel: f64,
}

pub fn err(got: &[f32], want: &[f64]) -> Err {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = (1e-3 * scale).max(1e-30);
    let mut max_abs = 0.0f64;
    let mut max_rel = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        let e = (g as f64 - w).abs();
        assert!(e.is_finite(), "non-finite result {g} vs {w}");
        max_abs = max_abs.max(e);
        max_rel = max_rel.max(e / (w.abs() + floor));
    }
    Err {
        max_abs,
        rel_to_max: if scale > 0.0 {
            max_abs / scale
        } else {
            max_abs
        },
        max_rel,
    }
}

/// Asserts `got ≈ want` with `max |got - want| <= tol * max |want|`, prints the summary.
pub fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) -> Err {
    let e = err(got, want);
    println!(
        "{name}: max abs {:.2e}, max/scale {:.2e}, max elementwise rel {:.2e}",
        e.max_abs, e.rel_to_max, e.max_rel
    );
    assert!(e.rel_to_max <= tol, "{name}: {e:?} exceeds tol {tol:e}");
    e
}

pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

pub fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Largest `|got - want|` over the largest `|want|`.
pub fn rel(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, &w| m.max(w.abs() as f64));
    let worst = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()));
    worst / scale.max(1e-30)
}

/// Whether a bf16 test skips (and says so): the CPU has no bf16 products.
pub fn skip_without_bf16_products() -> bool {
    let skip = !crate::ops::kernels::cpu::bf16_products();
    if skip {
        println!("skipped: no bf16 products on this CPU");
    }
    skip
}

/// Runs `f` in a 1-thread and a 2-thread pool and asserts bitwise equal outputs.
pub fn assert_deterministic<F>(name: &str, f: F)
where
    F: Fn() -> Vec<Vec<f32>> + Sync,
{
    let a = pool(1).install(&f);
    let b = pool(2).install(&f);
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            bits(x) == bits(y),
            "{name}: output {i} differs between 1 and 2 threads"
        );
    }
}

#[test]
fn reference_erf_series_and_fraction_agree() {
    for i in 0..=400 {
        let x = 2.0 + 2.0 * i as f64 / 400.0;
        // series evaluated directly past its switch point
        let x2 = x * x;
        let (mut term, mut s, mut n) = (x, x, 0.0);
        while term > 1e-18 * s {
            n += 1.0;
            term *= 2.0 * x2 / (2.0 * n + 1.0);
            s += term;
        }
        let series = std::f64::consts::FRAC_2_SQRT_PI * (-x2).exp() * s;
        let cf = 1.0 - erfc_cf(x);
        assert!((series - cf).abs() < 2e-15, "x={x}: {series} vs {cf}");
    }
    assert!((erf_f64(0.5) - 0.520_499_877_813_046_5).abs() < 4e-16);
    assert!((erf_f64(1.0) - 0.842_700_792_949_714_9).abs() < 4e-16);
}
