//! Antialiased bilinear resizing of 8-bit images, in the two fixed-point conventions that
//! matter for parity: Pillow's (`Image.resize(BILINEAR)`, what the official training
//! transforms run on PIL images) and torchvision's uint8 kernel (what Hugging Face's image
//! processors run by default). Both use the triangle filter with its support stretched by the
//! downscale factor and weights normalised to 1, a horizontal then a vertical pass, each
//! rounded to 8 bits, and skip an axis whose size does not change; they differ only in the
//! fixed-point precision of the weights, which moves a few pixels by one level.

/// Which library's integer arithmetic to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// 22 fractional bits (Pillow's `PRECISION_BITS = 32 - 8 - 2`).
    Pillow,
    /// The largest precision (up to 22 bits) that keeps every weight of the pass within
    /// int16, chosen per pass (torch's `_compute_index_ranges_int16_weights`).
    Torchvision,
}

/// Per output pixel: the first input index and the fixed-point weights; and the precision.
fn coefficients(
    in_size: usize,
    out_size: usize,
    rounding: Rounding,
) -> (Vec<(usize, Vec<i64>)>, u32) {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    let float: Vec<(usize, Vec<f64>)> = (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax.max(xmin))
                .map(|x| (1.0 - ((x as f64 - center + 0.5) / filter_scale).abs()).max(0.0))
                .collect();
            let total: f64 = w.iter().sum();
            (
                xmin,
                w.iter()
                    .map(|v| if total != 0.0 { v / total } else { *v })
                    .collect(),
            )
        })
        .collect();
    let precision = match rounding {
        Rounding::Pillow => 22,
        Rounding::Torchvision => {
            let max_weight = float
                .iter()
                .flat_map(|(_, w)| w.iter().copied())
                .fold(0.0, f64::max);
            let mut p = 0u32;
            while p < 22 && ((0.5 + max_weight * (1u64 << (p + 1)) as f64) as i64) < (1 << 15) {
                p += 1;
            }
            p
        }
    };
    let unit = (1u64 << precision) as f64;
    let fixed = float
        .into_iter()
        .map(|(start, w)| {
            (
                start,
                w.iter()
                    .map(|v| {
                        if *v < 0.0 {
                            (-0.5 + v * unit) as i64
                        } else {
                            (0.5 + v * unit) as i64
                        }
                    })
                    .collect(),
            )
        })
        .collect();
    (fixed, precision)
}

/// Resize interleaved `w x h x c` pixels to `out_w x out_h`. Returns an empty vector when
/// `src` is shorter than `w * h * c` or a non-empty output is asked of an empty input.
pub fn resize_bilinear_aa(
    src: &[u8],
    w: usize,
    h: usize,
    c: usize,
    out_w: usize,
    out_h: usize,
    rounding: Rounding,
) -> Vec<u8> {
    if src.len() < w * h * c || ((w == 0 || h == 0) && out_w * out_h > 0) {
        return Vec::new();
    }
    let clip = |acc: i64, p: u32| (acc >> p).clamp(0, 255) as u8;
    let tmp: Vec<u8> = if out_w == w {
        src[..w * h * c].to_vec()
    } else {
        let (coeffs, p) = coefficients(w, out_w, rounding);
        let round = 1i64 << p.saturating_sub(1);
        let mut tmp = vec![0u8; out_w * h * c];
        for y in 0..h {
            let row = &src[y * w * c..(y + 1) * w * c];
            let out = &mut tmp[y * out_w * c..(y + 1) * out_w * c];
            for (x, (start, weights)) in coeffs.iter().enumerate() {
                for ch in 0..c {
                    let acc = weights.iter().enumerate().fold(round, |a, (k, wk)| {
                        a + row[(start + k) * c + ch] as i64 * wk
                    });
                    out[x * c + ch] = clip(acc, p);
                }
            }
        }
        tmp
    };
    if out_h == h {
        return tmp;
    }
    let (coeffs, p) = coefficients(h, out_h, rounding);
    let round = 1i64 << p.saturating_sub(1);
    let stride = out_w * c;
    let mut out = vec![0u8; out_h * stride];
    let mut acc_row = vec![0i64; stride];
    for (y, (start, weights)) in coeffs.iter().enumerate() {
        acc_row.fill(round);
        for (k, &wk) in weights.iter().enumerate() {
            let src_row = &tmp[(start + k) * stride..(start + k + 1) * stride];
            for (a, &v) in acc_row.iter_mut().zip(src_row) {
                *a += v as i64 * wk;
            }
        }
        for (o, &a) in out[y * stride..(y + 1) * stride].iter_mut().zip(&acc_row) {
            *o = clip(a, p);
        }
    }
    out
}
