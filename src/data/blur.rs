//! Gaussian blur, the official `GaussianBlur` augmentation (`use_gaussian_blur`: with
//! probability 0.5, a blur of radius uniform in [0.1, 2.0], PIL's `ImageFilter.GaussianBlur`).
//! PIL approximates the Gaussian with repeated box blurs; this is the Gaussian itself
//! (standard deviation = the radius), separable, truncated at 3 standard deviations and
//! renormalised, with the image's edge pixels extended outwards, rounded to bytes.

use super::RawImage;
use crate::rng::{Rng, uniform, unit_f64};

/// The official probability and radius range.
pub const PROBABILITY: f64 = 0.5;
pub const RADIUS: (f64, f64) = (0.1, 2.0);

/// The normalised 1-D kernel for standard deviation `sigma`, taps `-r..=r`.
pub fn kernel(sigma: f64) -> Vec<f64> {
    let r = (3.0 * sigma).ceil().max(1.0) as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|x| (-((x * x) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = w.iter().sum();
    w.into_iter().map(|v| v / total).collect()
}

/// Blur `img` in place with standard deviation `sigma` (pixels).
pub fn gaussian_blur(img: &mut RawImage, sigma: f64) {
    if sigma.is_nan() || sigma <= 0.0 || img.width == 0 || img.height == 0 {
        return;
    }
    let k = kernel(sigma);
    let (w, h, c) = (img.width, img.height, img.channels);
    // Horizontal pass in f64, then vertical, one rounding at the end.
    let pixels: Vec<f64> = img.pixels.iter().map(|&v| v as f64).collect();
    let tmp = blur_pass(&pixels, &k, (w, h, c), true);
    for (p, s) in img
        .pixels
        .iter_mut()
        .zip(blur_pass(&tmp, &k, (w, h, c), false))
    {
        *p = (s + 0.5).floor().clamp(0.0, 255.0) as u8;
    }
}

/// One pass of the separable blur over `src` (`w x h` pixels of `c` channels): each value
/// the sum of `k`'s taps along the rows (`horizontal`) or the columns, centred on it, the
/// edge pixels extended outwards.
fn blur_pass(
    src: &[f64],
    k: &[f64],
    (w, h, c): (usize, usize, usize),
    horizontal: bool,
) -> Vec<f64> {
    let r = (k.len() / 2) as i64;
    let at = |x: usize, i: usize, lim: usize| {
        (x as i64 + i as i64 - r).clamp(0, lim as i64 - 1) as usize
    };
    let mut out = vec![0f64; src.len()];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let mut s = 0.0;
                for (i, kv) in k.iter().enumerate() {
                    let (xx, yy) = if horizontal {
                        (at(x, i, w), y)
                    } else {
                        (x, at(y, i, h))
                    };
                    s += kv * src[(yy * w + xx) * c + ch];
                }
                out[(y * w + x) * c + ch] = s;
            }
        }
    }
    out
}

/// The official random application: probability 0.5, radius uniform in [0.1, 2.0].
pub fn random_blur(img: &mut RawImage, rng: &mut Rng) {
    if unit_f64(rng) < PROBABILITY {
        let sigma = uniform(rng, RADIUS.0, RADIUS.1);
        gaussian_blur(img, sigma);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blur against a direct 2-D sum in f64: `out(x, y) = Σ_{i,j} g(i) g(j)
    /// in(clamp(x+i), clamp(y+j)) / (Σ g)²` with `g(i) = exp(-i²/2σ²)`, |i| <= ceil(3σ).
    #[test]
    fn matches_a_direct_2d_gaussian_sum() {
        let (w, h) = (9, 7);
        let pixels: Vec<u8> = (0..w * h * 3).map(|i| ((i * 53 + 7) % 256) as u8).collect();
        for sigma in [0.4, 1.0, 1.7] {
            let mut img = RawImage {
                width: w,
                height: h,
                channels: 3,
                pixels: pixels.clone(),
            };
            gaussian_blur(&mut img, sigma);
            let r = (3.0 * sigma).ceil() as i64;
            let g = |i: i64| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp();
            let norm: f64 = (-r..=r).map(g).sum::<f64>().powi(2);
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    for ch in 0..3 {
                        let mut s = 0.0;
                        for j in -r..=r {
                            for i in -r..=r {
                                let xx = (x + i).clamp(0, w as i64 - 1) as usize;
                                let yy = (y + j).clamp(0, h as i64 - 1) as usize;
                                s += g(i) * g(j) * pixels[(yy * w + xx) * 3 + ch] as f64;
                            }
                        }
                        let want = s / norm;
                        let got = img.pixels[(y as usize * w + x as usize) * 3 + ch] as f64;
                        assert!(
                            (got - want).abs() <= 0.5 + 1e-9,
                            "σ {sigma}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn flat_images_stay_flat_and_blur_is_random() {
        let flat = RawImage {
            width: 5,
            height: 4,
            channels: 1,
            pixels: vec![77; 20],
        };
        let mut b = flat.clone();
        gaussian_blur(&mut b, 2.0);
        assert_eq!(b, flat);
        let edge = RawImage {
            width: 8,
            height: 8,
            channels: 1,
            pixels: (0..64).map(|i| if i % 8 < 4 { 0 } else { 255 }).collect(),
        };
        let mut blurred = 0;
        for seed in 0..40 {
            let mut img = edge.clone();
            random_blur(&mut img, &mut crate::rng::seeded(seed));
            blurred += usize::from(img != edge);
        }
        assert!((8..=32).contains(&blurred), "{blurred} of 40 blurred");
    }
}
