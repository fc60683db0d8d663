//! Unit tests of the register-tile products against f64 references, on every kernel path
//! this CPU runs.

use super::*;
use crate::ops::kernels::as_uninit;
use crate::ops::kernels::testutil::*;

/// The kernel paths this CPU runs.
fn paths() -> impl Iterator<Item = KernelPath> {
    KernelPath::ALL.into_iter().filter(|p| p.supported())
}

const SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (5, 3, 17),
    (6, 16, 16),
    (7, 0, 5),
    (13, 33, 40),
    (50, 128, 100),
    (20, 40, 48),
    (29, 64, 80),
    (37, 17, 32),
];

/// `gemm_rows` against an f64 reference: edge rows (m % 6, m % 12) and columns (n % 16,
/// n % 32), k = 0, bias or none, a transposed (strided) right operand, on every kernel path
/// this CPU runs (the portable one is `gemm`).
#[test]
fn gemm_rows_vs_f64() {
    let mut rg = rng(7);
    for &(m, k, n) in &SHAPES {
        for transposed in [false, true] {
            for with_bias in [false, true] {
                for tiles in paths() {
                    let lda = k + 3; // a row stride wider than k
                    let a = uniform(&mut rg, m * lda, 1.0);
                    let b = uniform(&mut rg, k * n, 1.0);
                    let bias = uniform(&mut rg, n, 1.0);
                    // B as [k, n] row-major, or stored transposed as [n, k]
                    let (bv, get): (View<'_>, Box<dyn Fn(usize, usize) -> f64>) = if transposed {
                        (View::t(&b, k), Box::new(|p, j| b[j * k + p] as f64))
                    } else {
                        (View::rows(&b, n), Box::new(|p, j| b[p * n + j] as f64))
                    };
                    let rhs = PackedRhs::build(bv, k, n, tiles);
                    let mut dst = crate::ops::kernels::uninit(m * n);
                    let got = gemm_rows(m, &a, lda, &rhs, with_bias.then_some(&bias[..]), &mut dst);
                    let want: Vec<f64> = (0..m * n)
                        .map(|e| {
                            let (i, j) = (e / n, e % n);
                            let dot: f64 = (0..k).map(|p| a[i * lda + p] as f64 * get(p, j)).sum();
                            dot + if with_bias { bias[j] as f64 } else { 0.0 }
                        })
                        .collect();
                    assert_close(
                        &format!("{m}x{k}x{n} t={transposed} bias={with_bias} {tiles}"),
                        got,
                        &want,
                        1e-6,
                    );
                    // with a residual: the product's floats plus the residual, bitwise
                    let got = got.to_vec();
                    let res = uniform(&mut rg, m * n, 2.0);
                    let mut dst = crate::ops::kernels::uninit(m * n);
                    let b = with_bias.then_some(&bias[..]);
                    let plus = gemm_rows_plus(m, &a, lda, &rhs, b, &res, &mut dst);
                    let apart: Vec<f32> = got.iter().zip(&res).map(|(&y, &r)| r + y).collect();
                    assert_eq!(plus, &apart[..], "{m}x{k}x{n} residual {tiles}");
                    // strided destination: the gaps between rows keep their values;
                    // returns (the product's rows, the whole destination)
                    let ldc = n + 2;
                    let b = with_bias.then_some(&bias[..]);
                    let strided = |rhs: &PackedRhs<'_>| {
                        let mut dst = vec![7.0f32; m * ldc];
                        // SAFETY: the product only writes floats.
                        let out = unsafe { as_uninit(&mut dst) };
                        gemm_rows_strided(m, &a, lda, rhs, b, out, ldc);
                        let got: Vec<f32> = dst
                            .chunks_exact(ldc)
                            .flat_map(|r| r[..n].iter().copied())
                            .collect();
                        (got, dst)
                    };
                    let (got, dst) = strided(&rhs);
                    assert_close(&format!("strided {m}x{k}x{n}"), &got, &want, 1e-6);
                    assert!(dst.chunks_exact(ldc).all(|r| r[n..] == [7.0, 7.0]));
                    // read in place (row-contiguous operands with n % 16 == 0), else packed
                    let (got, _) = strided(&PackedRhs::in_place_on(bv, k, n, tiles));
                    assert_close(&format!("in place {m}x{k}x{n}"), &got, &want, 1e-6);
                }
            }
        }
    }
}

/// The AVX-512 and AVX2 tiles compute every element the same way (bias, one fused
/// multiply-add per step of k in order, residual): the same bits, packed or in place.
#[test]
fn avx512_and_avx2_tiles_agree_bitwise() {
    if !(KernelPath::Avx512.supported() && KernelPath::Avx2.supported()) {
        println!("skipped: this CPU lacks AVX-512");
        return;
    }
    let mut rg = rng(8);
    for &(m, k, n) in SHAPES.iter().chain(&[(100, 96, 160), (64, 64, 16)]) {
        let a = uniform(&mut rg, m * k, 1.0);
        let b = uniform(&mut rg, k * n, 1.0);
        let bias = uniform(&mut rg, n, 1.0);
        let res = uniform(&mut rg, m * n, 1.0);
        let run = |path, in_place: bool, residual: bool| {
            let bv = View::rows(&b, n);
            let rhs = if in_place {
                PackedRhs::in_place_on(bv, k, n, path)
            } else {
                PackedRhs::build(bv, k, n, path)
            };
            let mut dst = crate::ops::kernels::uninit(m * n);
            let out = if residual {
                gemm_rows_plus(m, &a, k, &rhs, Some(&bias), &res, &mut dst)
            } else {
                gemm_rows(m, &a, k, &rhs, None, &mut dst)
            };
            bits(out)
        };
        for in_place in [false, true] {
            for residual in [false, true] {
                assert_eq!(
                    run(KernelPath::Avx512, in_place, residual),
                    run(KernelPath::Avx2, in_place, residual),
                    "{m}x{k}x{n} in place {in_place} residual {residual}"
                );
            }
        }
    }
}
