//! Exact GELU `0.5·x·(1 + erf(x/√2))` and its derivative `Φ(x) + x·φ(x)`.
//!
//! Why: burn-flex evaluates GELU through scalar libm `erf` (and autodiff records a
//! chain of elementwise ops for the backward). Here the value and, in training, the slope
//! come from one vectorisable pass with a single [`crate::ops::kernels::math::erf_f32`],
//! run by [`crate::ops::kernels::linear`] on each output block while it is in cache.
//! Formulas follow PyTorch's CPU kernels (`(x·0.5)·(1 + erf(x·√½))`, `dy·(cdf + x·pdf)`),
//! so tails behave the same way.

#[cfg(target_arch = "x86_64")]
use crate::ops::kernels::cpu::{KernelPath, path};
#[cfg(target_arch = "x86_64")]
use crate::ops::kernels::math::Fused;
use crate::ops::kernels::math::{MulAdd, Separate, erf_with, exp2_core_with};
use std::f32::consts::FRAC_1_SQRT_2;
use std::mem::MaybeUninit;

/// 1/√(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;
/// -log2(e)/2
const NEG_HALF_LOG2E: f32 = -0.721_347_5;

/// Scalar exact GELU (inlined into vectorised loops).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    gelu_with::<Separate>(x)
}

/// Scalar derivative of exact GELU: `Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    gelu_and_grad_with::<Separate>(x).1
}

/// `(gelu(x), gelu'(x))` from one erf: bitwise equal to [`gelu`] and [`gelu_grad`].
#[inline(always)]
pub fn gelu_and_grad(x: f32) -> (f32, f32) {
    gelu_and_grad_with::<Separate>(x)
}

/// [`gelu`] with the multiply-adds evaluated by `M`.
#[inline(always)]
pub fn gelu_with<M: MulAdd>(x: f32) -> f32 {
    (x * 0.5) * (1.0 + erf_with::<M>(x * FRAC_1_SQRT_2))
}

/// [`gelu_and_grad`] with the multiply-adds evaluated by `M`; its value is bitwise
/// [`gelu_with::<M>`].
#[inline(always)]
pub fn gelu_and_grad_with<M: MulAdd>(x: f32) -> (f32, f32) {
    let e = erf_with::<M>(x * FRAC_1_SQRT_2);
    let cdf = 0.5 * (1.0 + e);
    // √(2π)·φ(x) = exp(-x²/2) = 2^(-x²·log2(e)/2); below 2^-126 it is flushed to 0.
    let u = x * x * NEG_HALF_LOG2E;
    let p = exp2_core_with::<M>(u);
    let p = if u < -126.0 { 0.0 } else { p };
    ((x * 0.5) * (1.0 + e), M::mul_add(x, p * INV_SQRT_2PI, cdf))
}

/// In place: `v = gelu(v)`, and `slope = gelu'(v)` (of the input) when given. Single-threaded.
/// `slope` may be uninitialised (it is only written). On the AVX-512 and AVX2 kernel paths the
/// values are those of [`gelu_and_grad_with::<Fused>`] (the same on both), on the portable one
/// those of [`gelu_and_grad`].
pub fn gelu_in_place(v: &mut [f32], slope: Option<&mut [MaybeUninit<f32>]>) {
    if let Some(s) = &slope {
        assert_eq!(s.len(), v.len());
    }
    #[cfg(target_arch = "x86_64")]
    match path() {
        // SAFETY (both): `path()` returns a path only when the CPU has its features.
        KernelPath::Avx512 => return unsafe { gelu_in_place_avx512(v, slope) },
        KernelPath::Avx2 => return unsafe { gelu_in_place_avx2(v, slope) },
        KernelPath::Portable => {}
    }
    gelu_in_place_body::<Separate>(v, slope)
}

// The loop is compute-bound (a rational erf per element): compiled again for AVX-512 and for
// AVX2 + FMA and picked at run time, it runs four or two times as wide as the baseline x86-64
// (SSE2) build, with one instruction per multiply-add (unlike `simd_fn!`, which keeps separate
// multiplies and adds).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
fn gelu_in_place_avx512(v: &mut [f32], slope: Option<&mut [MaybeUninit<f32>]>) {
    gelu_in_place_body::<Fused>(v, slope)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gelu_in_place_avx2(v: &mut [f32], slope: Option<&mut [MaybeUninit<f32>]>) {
    gelu_in_place_body::<Fused>(v, slope)
}

#[inline(always)]
fn gelu_in_place_body<M: MulAdd>(v: &mut [f32], slope: Option<&mut [MaybeUninit<f32>]>) {
    match slope {
        Some(slope) => {
            for (x, s) in v.iter_mut().zip(slope) {
                let (y, g) = gelu_and_grad_with::<M>(*x);
                *x = y;
                s.write(g);
            }
        }
        None => {
            for x in v.iter_mut() {
                *x = gelu_with::<M>(*x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::kernels::testutil::*;

    /// What `gelu_in_place` computes per element on this CPU.
    fn dispatched(x: f32) -> (f32, f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if path() != KernelPath::Portable {
            let (y, g) = gelu_and_grad_with::<Fused>(x);
            return (y, g, gelu_with::<Fused>(x));
        }
        let (y, g) = gelu_and_grad(x);
        (y, g, gelu(x))
    }

    #[test]
    fn fused_value_and_slope_are_bitwise_the_separate_ones() {
        let mut r = rng(3);
        let mut x = uniform(&mut r, 10_000, 8.0);
        x.extend([
            0.0,
            -0.0,
            1e-30,
            -40.0,
            40.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        let mut v = x.clone();
        let mut slope = crate::ops::kernels::uninit(x.len());
        gelu_in_place(&mut v, Some(&mut slope));
        // SAFETY: gelu_in_place wrote every element.
        let slope = unsafe { crate::ops::kernels::assume_init(slope) };
        let mut only = x.clone();
        gelu_in_place(&mut only, None);
        for (i, &xi) in x.iter().enumerate() {
            // the scalar pair and the scalar value agree bitwise, in both evaluation modes
            assert_eq!(gelu_and_grad(xi).0.to_bits(), gelu(xi).to_bits());
            assert_eq!(gelu_and_grad(xi).1.to_bits(), gelu_grad(xi).to_bits());
            let (y, g, y_only) = dispatched(xi);
            assert_eq!(y.to_bits(), y_only.to_bits(), "gelu({xi}) fused vs alone");
            assert_eq!(v[i].to_bits(), y.to_bits(), "gelu({xi})");
            assert_eq!(only[i].to_bits(), y.to_bits(), "gelu({xi}) without slope");
            assert_eq!(slope[i].to_bits(), g.to_bits(), "gelu'({xi})");
        }
    }

    #[test]
    fn both_evaluation_modes_match_f64() {
        // the scalar forms of both modes (the in-place loop runs one of them, tested below)
        let mut worst = [0.0f64; 4];
        for i in -120_000..=120_000 {
            let x = i as f32 * 1e-4;
            let (w, wg) = (gelu_f64(x as f64), gelu_grad_f64(x as f64));
            let sep = gelu_and_grad_with::<Separate>(x);
            let fus = gelu_and_grad_with::<crate::ops::kernels::math::Fused>(x);
            let scale = (x.abs() as f64).max(1.0);
            for (j, (got, want)) in [(sep.0, w), (sep.1, wg), (fus.0, w), (fus.1, wg)]
                .into_iter()
                .enumerate()
            {
                worst[j] = worst[j].max((got as f64 - want).abs() / scale);
            }
        }
        println!("gelu / gelu' max error (separate, fused): {worst:?}");
        assert!(worst.iter().all(|&e| e < 3e-7), "{worst:?}");
    }

    #[test]
    fn forward_and_backward_match_f64() {
        let mut r = rng(1);
        for &n in &[1usize, 7, 1000, 40_001] {
            let mut x = uniform(&mut r, n, 6.0);
            if n > 10 {
                x[0] = 0.0;
                x[1] = -12.0;
                x[2] = 12.0;
                x[3] = 1e-20;
            }
            let dy = uniform(&mut r, n, 1.0);
            let mut y = x.clone();
            let mut slope = crate::ops::kernels::uninit(n);
            gelu_in_place(&mut y, Some(&mut slope));
            // SAFETY: gelu_in_place wrote every element.
            let slope = unsafe { crate::ops::kernels::assume_init(slope) };
            let dx: Vec<f32> = dy.iter().zip(&slope).map(|(&g, &s)| g * s).collect();
            let want_y: Vec<f64> = x.iter().map(|&v| gelu_f64(v as f64)).collect();
            let want_dx: Vec<f64> = x
                .iter()
                .zip(&dy)
                .map(|(&v, &g)| g as f64 * gelu_grad_f64(v as f64))
                .collect();
            // Elementwise: absolute error bounded by ~|x|·erf error, relative where not in the tail.
            for (i, (&g, &w)) in y.iter().zip(&want_y).enumerate() {
                let tol = 2e-7 * (x[i].abs() as f64).max(1.0) + 2e-7 * w.abs();
                assert!((g as f64 - w).abs() <= tol, "gelu({}) = {g} vs {w}", x[i]);
            }
            for (i, (&g, &w)) in dx.iter().zip(&want_dx).enumerate() {
                let tol = 4e-7 * (x[i].abs() as f64).max(1.0) * dy[i].abs() as f64;
                assert!((g as f64 - w).abs() <= tol, "gelu'({}) = {g} vs {w}", x[i]);
            }
            if n > 10 {
                assert_close("gelu fwd", &y, &want_y, 1e-6);
                assert_close("gelu bwd", &dx, &want_dx, 1e-6);
            }
        }
    }

    #[test]
    fn grad_matches_finite_difference_of_f64_reference() {
        // d/dx of the f64 reference GELU by central differences.
        for i in -600..=600 {
            let x = i as f64 / 100.0;
            let h = 1e-6;
            let fd = (gelu_f64(x + h) - gelu_f64(x - h)) / (2.0 * h);
            let got = gelu_grad(x as f32) as f64;
            assert!((got - fd).abs() < 3e-6, "x={x}: {got} vs fd {fd}");
        }
    }

    #[test]
    fn special_values() {
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu(f32::INFINITY), f32::INFINITY);
        assert_eq!(gelu(-30.0), 0.0);
        assert_eq!(gelu(30.0), 30.0);
        assert!(gelu(f32::NAN).is_nan());
        assert_eq!(gelu_grad(30.0), 1.0);
        assert_eq!(gelu_grad(-30.0), 0.0);
        assert!((gelu_grad(0.0) - 0.5).abs() < 1e-7);
        assert!(gelu_grad(f32::NAN).is_nan());
    }
}
