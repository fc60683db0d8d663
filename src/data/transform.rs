//! Image preprocessing for inference: what each model's source expects.
//!
//! * Hugging Face models: the `ViTImageProcessor` of their `preprocessor_config.json`: resize to
//!   exactly `size x size` (bilinear with antialiasing, no crop), rescale 1/255, normalise with
//!   the processor's mean / std (0.5 for the released I-JEPA models).
//! * Official checkpoints (and native ones trained on photos): the usual evaluation transform of
//!   the paper's protocol: resize the shorter side to `size * 256 / 224` (bilinear, antialiased),
//!   center crop `size x size`, ImageNet mean / std (the official training normalisation).
//! * Native checkpoints carry their own settings (e.g. the Fashion-MNIST recipe: grayscale, pad 2
//!   black pixels per side, mean 0.2860 / std 0.3530, no resize).

use image::{DynamicImage, GenericImageView};
use serde::{Deserialize, Serialize};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Keep the image as it is (after padding); it must already have the model's size.
    None,
    /// Resize to exactly `size x size`, ignoring the aspect ratio (HF processors).
    Exact,
    /// Resize so that the shorter side is `round(size * ratio)`, keeping the aspect ratio.
    ShorterSide { ratio: f64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Output side in pixels (the model's `image_size`).
    pub size: usize,
    /// Black pixels added on every side before anything else.
    #[serde(default)]
    pub pad: usize,
    pub resize: Resize,
    pub center_crop: bool,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Preprocess {
    /// HF `ViTImageProcessor` semantics.
    pub fn hf(size: usize, mean: Vec<f32>, std: Vec<f32>) -> Self {
        Self {
            size,
            pad: 0,
            resize: Resize::Exact,
            center_crop: false,
            channels: mean.len(),
            mean,
            std,
        }
    }

    /// Resize 256/224, center crop, ImageNet normalisation (grayscale models use the mean of
    /// the three channel statistics).
    pub fn imagenet_eval(size: usize, channels: usize) -> Self {
        let (mean, std) = if channels == 1 {
            (vec![0.449], vec![0.226])
        } else {
            (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
        };
        Self {
            size,
            pad: 0,
            resize: Resize::ShorterSide {
                ratio: 256.0 / 224.0,
            },
            center_crop: true,
            channels,
            mean,
            std,
        }
    }

    /// Decode-independent part: turn a decoded image into normalised CHW f32 pixels.
    pub fn apply(&self, img: &DynamicImage) -> Vec<f32> {
        let img = if self.pad > 0 {
            let (w, h) = img.dimensions();
            let p = self.pad as u32;
            let mut canvas = DynamicImage::new(w + 2 * p, h + 2 * p, img.color());
            image::imageops::overlay(&mut canvas, img, p as i64, p as i64);
            canvas
        } else {
            img.clone()
        };
        let s = self.size;
        let c = self.channels;
        let (w, h) = img.dimensions();
        let (w, h) = (w as usize, h as usize);
        let raw: Vec<u8> = if c == 1 {
            img.to_luma8().into_raw()
        } else {
            img.to_rgb8().into_raw()
        };
        let (mut raw, mut w, mut h) = match self.resize {
            Resize::None => (raw, w, h),
            Resize::Exact => (resize_bilinear_aa(&raw, w, h, c, s, s), s, s),
            Resize::ShorterSide { ratio } => {
                let short = ((s as f64) * ratio).round().max(1.0);
                let scale = short / w.min(h) as f64;
                let nw = ((w as f64) * scale).round().max(1.0) as usize;
                let nh = ((h as f64) * scale).round().max(1.0) as usize;
                (resize_bilinear_aa(&raw, w, h, c, nw, nh), nw, nh)
            }
        };
        if self.center_crop || (w, h) != (s, s) {
            let (cw, ch) = (s.min(w), s.min(h));
            // torchvision's CenterCrop offsets: round((size - crop) / 2)
            let left = ((w - cw) as f64 / 2.0).round() as usize;
            let top = ((h - ch) as f64 / 2.0).round() as usize;
            let mut cropped = Vec::with_capacity(cw * ch * c);
            for y in top..top + ch {
                cropped.extend_from_slice(&raw[(y * w + left) * c..(y * w + left + cw) * c]);
            }
            (raw, w, h) = (cropped, cw, ch);
            if (w, h) != (s, s) {
                (raw, w, h) = (resize_bilinear_aa(&raw, w, h, c, s, s), s, s);
            }
        }
        debug_assert_eq!((w, h), (s, s));
        let n = s * s;
        let mut out = vec![0f32; c * n];
        for ch in 0..c {
            // (v - mean/r) / (std/r) with r = 1/255: the fused form of the HF processor.
            let m = self.mean[ch] * 255.0;
            let sd = self.std[ch] * 255.0;
            for i in 0..n {
                out[ch * n + i] = (raw[i * c + ch] as f32 - m) / sd;
            }
        }
        out
    }

    pub fn validate(&self) -> crate::error::Result<()> {
        if self.size == 0
            || !(self.channels == 1 || self.channels == 3)
            || self.mean.len() != self.channels
            || self.std.len() != self.channels
            || self.std.iter().any(|s| *s <= 0.0)
        {
            return Err(crate::error::Error::Config(format!(
                "bad preprocessing settings {self:?}: channels must be 1 or 3 with one positive std per channel"
            )));
        }
        Ok(())
    }
}

/// Per output pixel: first input index and fixed-point weights of the antialiased bilinear
/// (triangle) filter, support scaled by the downscale factor, weights normalised to sum 1,
/// then scaled by `2^precision` where `precision` is the largest (up to 22) that keeps every
/// weight within int16, as torch's uint8 antialiased kernel does.
fn aa_weights(in_size: usize, out_size: usize) -> (Vec<(usize, Vec<i64>)>, u32) {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    let float: Vec<(usize, Vec<f64>)> = (0..out_size)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|j| (1.0 - ((j as f64 - center + 0.5) / filter_scale).abs()).max(0.0))
                .collect();
            let total: f64 = w.iter().sum();
            (
                xmin,
                w.iter()
                    .map(|v| if total > 0.0 { v / total } else { 0.0 })
                    .collect(),
            )
        })
        .collect();
    let max_weight = float
        .iter()
        .flat_map(|(_, w)| w.iter().copied())
        .fold(0.0, f64::max);
    let mut precision = 0u32;
    while precision < 22
        && ((0.5 + max_weight * (1u64 << (precision + 1)) as f64) as i64) < (1 << 15)
    {
        precision += 1;
    }
    let unit = (1u64 << precision) as f64;
    let fixed = float
        .into_iter()
        .map(|(start, w)| {
            let w = w
                .iter()
                .map(|v| {
                    if *v < 0.0 {
                        (-0.5 + v * unit) as i64
                    } else {
                        (0.5 + v * unit) as i64
                    }
                })
                .collect();
            (start, w)
        })
        .collect();
    (fixed, precision)
}

/// Antialiased bilinear resize of interleaved 8-bit pixels: a horizontal then a vertical pass
/// in fixed point, rounding to 8 bits after each pass. This reproduces torchvision's
/// `resize(uint8 tensor, antialias=True)` (the HF processors' default backend) exactly; PIL's
/// `resize(BILINEAR)` differs from it by one level on a few pixels.
pub fn resize_bilinear_aa(
    src: &[u8],
    w: usize,
    h: usize,
    c: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    let pass = |precision: u32| {
        let round = 1i64 << precision.saturating_sub(1);
        move |acc: i64| ((acc + round) >> precision).clamp(0, 255) as u8
    };
    let (horizontal, ph) = aa_weights(w, out_w);
    let clip = pass(ph);
    let mut tmp = vec![0u8; out_w * h * c];
    for y in 0..h {
        for (x, (start, weights)) in horizontal.iter().enumerate() {
            for ch in 0..c {
                let acc: i64 = weights
                    .iter()
                    .enumerate()
                    .map(|(k, wk)| wk * src[(y * w + start + k) * c + ch] as i64)
                    .sum();
                tmp[(y * out_w + x) * c + ch] = clip(acc);
            }
        }
    }
    let (vertical, pv) = aa_weights(h, out_h);
    let clip = pass(pv);
    let mut out = vec![0u8; out_w * out_h * c];
    for (y, (start, weights)) in vertical.iter().enumerate() {
        for x in 0..out_w * c {
            let acc: i64 = weights
                .iter()
                .enumerate()
                .map(|(k, wk)| wk * tmp[(start + k) * out_w * c + x] as i64)
                .sum();
            out[y * out_w * c + x] = clip(acc);
        }
    }
    out
}
