//! Branch-free f32 `exp` / `erf` and lane-parallel reductions.
//!
//! Why: libm's `expf`/`erff` are opaque scalar calls that stop LLVM from vectorising
//! the surrounding loop (burn-flex's GELU spends most of its time in scalar `erf`).
//! These versions use only mul/add/compare/select and integer bit tricks, so loops
//! calling them vectorise on any x86-64 level (SSE2 baseline, wider with
//! `target-cpu`). Reductions use a fixed set of 16 lane accumulators: vectorisable
//! and with an evaluation order that depends only on the slice length.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5 * 2^23: adding it rounds a float of magnitude < 2^22 to an integer (ties to even).
const ROUND_MAGIC: f32 = 12_582_912.0;
/// ln 2 split for Cody-Waite reduction; `LN2_HI` has 9 significant bits so `n * LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4; // = 355/512 exactly
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this exp underflows to (sub)normals: we return 0 (abs error < 1.2e-38).
const EXP_LO: f32 = -87.3;
/// Above this `2^n` would overflow the exponent field: we return +inf
/// (exact overflow is at 88.72, so (88.37, 88.72] also returns inf).
const EXP_HI: f32 = 88.37;

/// `e^x` in f32, max relative error 8.2e-8 on [-87.3, 88.37] (Cody-Waite reduction).
/// 0 below, +inf above, NaN in → NaN out.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // No input clamp: out-of-range lanes compute garbage that the final select replaces.
    let k = x * LOG2E + ROUND_MAGIC;
    let n = k - ROUND_MAGIC;
    let r = x - n * LN2_HI;
    let r = r - n * LN2_LO;
    // Cephes expf minimax polynomial on [-ln2/2, ln2/2], evaluated with Estrin's scheme.
    let r2 = r * r;
    let r4 = r2 * r2;
    let p = (0.5 + 1.666_666_5e-1 * r)
        + r2 * (4.166_579_6e-2 + 8.333_452e-3 * r)
        + r4 * (1.398_199_9e-3 + 1.987_569_2e-4 * r);
    let p = p * r2 + r + 1.0;
    // The low mantissa bits of `k` hold n (two's complement); shift them into the exponent.
    let scale = f32::from_bits((k.to_bits() << 23).wrapping_add(127 << 23));
    let y = p * scale;
    if x < EXP_LO {
        0.0
    } else if x > EXP_HI {
        f32::INFINITY
    } else {
        y
    }
}

/// How the polynomial kernels evaluate `a·b + c`: [`Separate`] (a multiply, then an add: what
/// every x86-64 can run) or [`Fused`] (`f32::mul_add`, one rounding: a single instruction inside
/// a function compiled with FMA, a slow library call elsewhere).
///
/// Why: the erf and exp kernels are chains of `a·b + c`; with FMA each is one instruction
/// instead of two, about a third fewer instructions per element in GELU. Rust never contracts
/// `a * b + c` on its own, so the choice is spelled out, once per call site.
pub trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// `a·b + c` as a multiply then an add (two roundings).
pub struct Separate;
/// `a·b + c` fused (one rounding); use only in code compiled with the `fma` target feature.
pub struct Fused;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// `2^u` for `u` in [-126.5, 127.5), max relative error 2.2e-7; no range handling
/// (garbage outside, so callers select the result away or bound `u`).
///
/// Cheaper than [`exp_f32`] (no ln 2 reduction, degree-5 polynomial): used where the
/// argument is already in log2 units and ~2 ulp suffice (erf, GELU's φ).
#[inline(always)]
pub fn exp2_core(u: f32) -> f32 {
    exp2_core_with::<Separate>(u)
}

/// [`exp2_core`] with the multiply-adds evaluated by `M`.
#[inline(always)]
#[allow(clippy::approx_constant)] // fitted coefficient close to ln 2
pub fn exp2_core_with<M: MulAdd>(u: f32) -> f32 {
    let k = u + ROUND_MAGIC;
    let n = k - ROUND_MAGIC;
    let f = u - n; // exact, in [-0.5, 0.5]
    // Estrin scheme: shorter dependency chains than Horner (the loops are latency-bound).
    let f2 = f * f;
    let p01 = M::mul_add(6.931_47e-1, f, 1.0);
    let p23 = M::mul_add(5.550_734e-2, f, 2.402_224_2e-1);
    let p45 = M::mul_add(1.326_473_5e-3, f, 9.671_518e-3);
    let p = M::mul_add(f2, M::mul_add(f2, p45, p23), p01);
    let scale = f32::from_bits((k.to_bits() << 23).wrapping_add(127 << 23));
    p * scale
}

/// `2^u` in f32 (max relative error 2.2e-7): 0 below -126, +inf above 127, NaN → NaN.
///
/// Softmax uses this on log2-scaled scores (the log2(e) factor folded into the GEMM's
/// scale), which is about half the work of [`exp_f32`].
#[inline(always)]
pub fn exp2_f32(u: f32) -> f32 {
    let y = exp2_core(u);
    if u < -126.0 {
        0.0
    } else if u > 127.0 {
        f32::INFINITY
    } else {
        y
    }
}

/// Region split of `erf_f32`: polynomial in x² below, `1 - 2^B(|x|)` above.
const ERF_SPLIT: f32 = 0.921_875;
/// erf(x) rounds to ±1 in f32 for |x| ≥ 3.92; the B fit runs to 3.9375.
const ERF_SAT: f32 = 3.9375;

/// Error function in f32: max abs error 1.03e-7 (dense-grid test) over all f32 inputs (max relative
/// error 9e-8 for normal results with |x| < 0.92), exactly ±1 for |x| ≥ 3.9375
/// and ±inf, NaN → NaN.
///
/// Coefficients: weighted minimax fits (Lawson IRLS, `tools/fit_erf.py`):
/// |x| < 0.921875: `erf = x + x·A(x²)`, A of degree 5, fitted for relative error;
/// 0.921875 ≤ |x| < 3.9375: `erfc = 2^B(|x|)`, B of degree 6 ≈ log2 erfc, fitted for
/// absolute error of erf. Both branches are computed for every lane and selected
/// (lanes outside a branch's range may compute garbage, which is never selected), so
/// the loops calling this vectorise. Polynomials use Estrin's scheme: these loops are
/// latency-bound, and Estrin is ~15% faster than Horner here for 2e-9 more error.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    erf_with::<Separate>(x)
}

/// [`erf_f32`] with the multiply-adds evaluated by `M` (same coefficients; [`Fused`] rounds
/// once where [`Separate`] rounds twice, so the two differ by an ulp here and there).
#[inline(always)]
pub fn erf_with<M: MulAdd>(x: f32) -> f32 {
    let a = x.abs();
    let s = x * x;
    let s2 = s * s;
    let r01 = M::mul_add(-3.761_249_5e-1, s, 1.283_791_5e-1);
    let r23 = M::mul_add(-2.676_661_1e-2, s, 1.128_181_6e-1);
    let r45 = M::mul_add(-5.990_809e-4, s, 4.993_171_4e-3);
    let r = M::mul_add(s2, M::mul_add(s2, r45, r23), r01);
    let small = M::mul_add(x, r, x);

    let a2 = a * a;
    let a4 = a2 * a2;
    let q01 = M::mul_add(-1.626_805_3, a, -3.028_210_2e-4);
    let q23 = M::mul_add(-1.498_079_9e-1, a, -9.194_088_6e-1);
    let q45 = M::mul_add(-4.373_687_3e-3, a, 3.200_104_5e-2);
    let q = M::mul_add(
        a4,
        M::mul_add(a2, 2.809_436_4e-4, q45),
        M::mul_add(a2, q23, q01),
    );
    let e = exp2_core_with::<M>(q);
    // NaN fails the comparison and keeps propagating through `e`.
    let e = if a >= ERF_SAT { 0.0 } else { e };
    let large = (1.0 - e).copysign(x);

    if a < ERF_SPLIT { small } else { large }
}

const LANES: usize = 16;

#[inline(always)]
fn fold_lanes(acc: [f32; LANES]) -> f32 {
    let mut w = LANES;
    let mut acc = acc;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
}

/// Sum of a slice (16 lane accumulators, then a pairwise fold, then the tail).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let mut s = fold_lanes(acc);
    for &v in tail {
        s += v;
    }
    s
}

/// In place `x = 2^(x - shift)` ([`exp2_f32`]), returning the sum of the new values (summed in
/// the order of [`sum`]): one pass instead of two.
#[inline(always)]
pub fn exp2_in_place_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp2_f32(c[i] - shift);
            acc[i] += c[i];
        }
    }
    let mut s = fold_lanes(acc);
    for v in chunks.into_remainder() {
        *v = exp2_f32(*v - shift);
        s += *v;
    }
    s
}

/// Dot product of two equally long slices.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = fold_lanes(acc);
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// Sum of squared deviations `Σ (x - mean)²`.
#[inline(always)]
pub fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    let mut s = fold_lanes(acc);
    for &v in tail {
        let d = v - mean;
        s += d * d;
    }
    s
}

/// Maximum of a non-empty slice (NaN-ignoring like `f32::max`; -inf for empty).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in acc.into_iter().chain(tail.iter().copied()) {
        m = if v > m { v } else { m };
    }
    m
}

/// `simd_fn! { fn name(arg: Type, ...) -> Ret { body } }` defines `name` with its body compiled
/// three times: for AVX-512 (16 lanes), for AVX2 + FMA (8 lanes) and for the build's baseline
/// (SSE2 on x86-64), and runs the copy of the process's kernel path
/// ([`crate::ops::kernels::cpu::path`]). The elementwise and row loops of the kernels (exp,
/// softmax, LayerNorm, the optimizer) then run as wide as the CPU allows.
///
/// Why a macro and not a closure passed to a `#[target_feature]` wrapper: LLVM inlines the
/// closure into the wrapper only when it is small, and compiles it for the baseline when it
/// is not; the kernels' loop bodies were not (a disassembly showed no ymm register in any of
/// them). Here the body is an `#[inline(always)]` function called from the wrappers, which
/// is always inlined. Results are the same on every path: Rust never contracts `a * b + c`
/// into a fused multiply-add, and the reductions fix their lane order in the source (16 lane
/// accumulators: one zmm, two ymm or four xmm registers, the same sums in the same order).
/// The AVX-512 copies of this crate enable `avx512f,avx512bw,avx512vl,avx512dq,avx2,fma`, the
/// features [`crate::ops::kernels::cpu::KernelPath::Avx512`] checks.
/// Helpers the body calls must be `#[inline(always)]` too, or they run in baseline code.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx512($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            match $crate::ops::kernels::cpu::path() {
                // SAFETY (both): `path()` returns a path only when the CPU has its features.
                $crate::ops::kernels::cpu::KernelPath::Avx512 => return unsafe { avx512($($arg),*) },
                $crate::ops::kernels::cpu::KernelPath::Avx2 => return unsafe { avx2($($arg),*) },
                $crate::ops::kernels::cpu::KernelPath::Portable => {}
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::kernels::testutil::erf_f64;

    #[test]
    fn erf_max_error_dense_grid() {
        erf_max_error_dense_grid_with::<Separate>();
        erf_max_error_dense_grid_with::<Fused>();
    }

    fn erf_max_error_dense_grid_with<M: MulAdd>() {
        // Dense grid over [-10, 10] plus every 64th f32 in [0, 4].
        let mut max_err = 0.0f64;
        let mut at = 0.0f32;
        let mut max_rel_small = 0.0f64;
        let mut check = |x: f32| {
            let r = erf_f64(x as f64);
            let got = erf_with::<M>(x) as f64;
            let e = (got - r).abs();
            if e > max_err {
                max_err = e;
                at = x;
            }
            // relative accuracy for normal results (denormal outputs have fewer bits)
            if x.abs() < ERF_SPLIT && x.abs() > 1e-37 {
                max_rel_small = max_rel_small.max(e / r.abs());
            }
        };
        let n = 2_000_000;
        for i in 0..=n {
            check(-10.0 + 20.0 * i as f32 / n as f32);
        }
        let (lo, hi) = (0.0f32.to_bits(), 4.0f32.to_bits());
        for b in (lo..hi).step_by(64) {
            let x = f32::from_bits(b);
            check(x);
            check(-x);
        }
        println!(
            "erf ({}): max abs error {max_err:.3e} at x = {at}; max rel error (|x|<0.92) {max_rel_small:.3e}",
            std::any::type_name::<M>()
        );
        assert!(max_err < 1.5e-7, "max abs error {max_err:e} at {at}");
        assert!(max_rel_small < 2.0e-7);
    }

    #[test]
    fn erf_special_values() {
        erf_special_values_with::<Separate>();
        erf_special_values_with::<Fused>();
    }

    fn erf_special_values_with<M: MulAdd>() {
        assert_eq!(erf_with::<M>(0.0), 0.0);
        assert!(erf_with::<M>(-0.0).is_sign_negative());
        assert_eq!(erf_with::<M>(f32::INFINITY), 1.0);
        assert_eq!(erf_with::<M>(f32::NEG_INFINITY), -1.0);
        assert_eq!(erf_with::<M>(4.0), 1.0);
        assert_eq!(erf_with::<M>(f32::MAX), 1.0);
        assert_eq!(erf_with::<M>(-1e30), -1.0);
        assert!(erf_with::<M>(f32::NAN).is_nan());
        assert!(erf_with::<M>(-f32::NAN).is_nan());
        let tiny = 1e-30f32;
        assert!(
            (erf_with::<M>(tiny) as f64 / (tiny as f64 * std::f64::consts::FRAC_2_SQRT_PI) - 1.0)
                .abs()
                < 1e-6
        );
        // odd and monotone on a grid
        let mut prev = -1.0f32;
        for i in -40000..=40000 {
            let x = i as f32 * 1e-4;
            let y = erf_with::<M>(x);
            assert_eq!(y, -erf_with::<M>(-x));
            assert!(y >= prev, "not monotone at {x}");
            prev = y;
        }
    }

    #[test]
    fn exp_accuracy_and_limits() {
        let mut max_rel = 0.0f64;
        let n = 1_000_000;
        for i in 0..=n {
            let x = -87.3 + (88.3 + 87.3) * i as f32 / n as f32;
            let r = (x as f64).exp();
            max_rel = max_rel.max(((exp_f32(x) as f64) - r).abs() / r);
        }
        println!("exp_f32: max rel error {max_rel:.3e}");
        assert!(max_rel < 2.5e-7);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());

        let mut max_rel2 = 0.0f64;
        for i in 0..=n {
            let u = -126.0 + 253.0 * i as f32 / n as f32;
            let r = (u as f64).exp2();
            max_rel2 = max_rel2.max(((exp2_f32(u) as f64) - r).abs() / r);
        }
        println!("exp2_f32: max rel error {max_rel2:.3e}");
        assert!(max_rel2 < 2.5e-7);
        assert_eq!(exp2_f32(0.0), 1.0);
        assert_eq!(exp2_f32(-1.0), 0.5);
        assert_eq!(exp2_f32(-200.0), 0.0);
        assert_eq!(exp2_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp2_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp2_f32(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_match_f64() {
        for len in [0usize, 1, 7, 16, 17, 100, 1000] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let y: Vec<f32> = (0..len)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
                .collect();
            let s: f64 = x.iter().map(|&v| v as f64).sum();
            let d: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!((sum(&x) as f64 - s).abs() <= 1e-5 * (1.0 + s.abs()));
            assert!((dot(&x, &y) as f64 - d).abs() <= 1e-5 * (1.0 + d.abs()));
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), m);
        }
    }
}
