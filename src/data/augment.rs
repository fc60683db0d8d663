//! Training and evaluation transforms, written to reproduce the official PIL/torchvision
//! pipeline: `RandomResizedCrop` (torchvision's `get_params`), PIL's antialiased bilinear
//! resize, optional flip and colour distortion, `ToTensor` + `Normalize`.
//!
//! All randomness comes from the `Rng` the caller passes in, so one image with one rng
//! state always gives the same tensor, whatever thread runs it.

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::data::resize::{Rounding, resize_bilinear_aa};
use crate::data::transform::{IMAGENET_MEAN, IMAGENET_STD};
use crate::data::{DataError, RawImage, pil_luma};
use crate::error::Setting;
use crate::rng::{Rng, below, uniform, unit_f64};

/// Fashion-MNIST train-set pixel statistics (of the unpadded 28x28 images).
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
pub const FASHION_MNIST_STD: f32 = 0.3530;

/// One crop rectangle in pixel coordinates of the (padded) image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropParams {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries of a random area fraction in
/// `scale` and a log-uniform aspect ratio in `ratio`; if none fits, a center crop with the
/// image's aspect ratio clamped to `ratio`. Python's `round` (ties to even) is kept. The
/// fallback is kept at least 1 pixel on each side (torchvision would fail there).
pub fn random_resized_crop_params(
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl RngCore,
) -> CropParams {
    if width == 0 || height == 0 {
        return CropParams {
            top: 0,
            left: 0,
            height,
            width,
        };
    }
    let area = (width * height) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if w > 0.0 && w <= width as f64 && h > 0.0 && h <= height as f64 {
            let (w, h) = (w as usize, h as usize);
            let top = below(rng, height - h + 1);
            let left = below(rng, width - w + 1);
            return CropParams {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (lo, hi) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < lo {
        let h = (width as f64 / lo).round_ties_even() as usize;
        (width, h.clamp(1, height))
    } else if in_ratio > hi {
        let w = (height as f64 * hi).round_ties_even() as usize;
        (w.clamp(1, width), height)
    } else {
        (width, height)
    };
    CropParams {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// Adds `pad` black pixels on every side.
pub fn pad_image(img: &RawImage, pad: usize) -> RawImage {
    if pad == 0 {
        return img.clone();
    }
    let c = img.channels;
    let (w, h) = (img.width + 2 * pad, img.height + 2 * pad);
    let mut pixels = vec![0u8; w * h * c];
    for y in 0..img.height {
        let src = &img.pixels[y * img.width * c..(y + 1) * img.width * c];
        let start = ((y + pad) * w + pad) * c;
        pixels[start..start + img.width * c].copy_from_slice(src);
    }
    RawImage {
        width: w,
        height: h,
        channels: c,
        pixels,
    }
}

/// The pixels of `p` (which must lie inside the image).
pub fn crop(img: &RawImage, p: CropParams) -> RawImage {
    let c = img.channels;
    let mut pixels = Vec::with_capacity(p.width * p.height * c);
    for y in p.top..p.top + p.height {
        let start = (y * img.width + p.left) * c;
        pixels.extend_from_slice(&img.pixels[start..start + p.width * c]);
    }
    RawImage {
        width: p.width,
        height: p.height,
        channels: c,
        pixels,
    }
}

/// Mirrors the image left to right.
pub fn hflip(img: &mut RawImage) {
    let c = img.channels;
    let w = img.width;
    if w * c == 0 {
        return;
    }
    for row in img.pixels.chunks_exact_mut(w * c) {
        for x in 0..w / 2 {
            for ch in 0..c {
                row.swap(x * c + ch, (w - 1 - x) * c + ch);
            }
        }
    }
}

/// PIL's `Image.blend(a, b, alpha)` per byte: `a + alpha * (b - a)` in float, clipped, then
/// truncated (not rounded), as Pillow's C code does.
#[inline]
fn blend(a: u8, b: u8, alpha: f32) -> u8 {
    let t = a as f32 + alpha * (b as f32 - a as f32);
    if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// Gray values (PIL `convert("L")`) of an image with 1 or 3 channels.
fn luma(img: &RawImage) -> Vec<u8> {
    if img.channels == 3 {
        img.pixels
            .chunks_exact(3)
            .map(|p| pil_luma(p[0], p[1], p[2]))
            .collect()
    } else {
        img.pixels.clone()
    }
}

/// `adjust_brightness`: blend with black (`ImageEnhance.Brightness`).
pub fn adjust_brightness(img: &mut RawImage, factor: f32) {
    for v in &mut img.pixels {
        *v = blend(0, *v, factor);
    }
}

/// `adjust_contrast`: blend with the gray level `int(mean(L) + 0.5)` (`ImageEnhance.Contrast`).
pub fn adjust_contrast(img: &mut RawImage, factor: f32) {
    let l = luma(img);
    if l.is_empty() {
        return;
    }
    let sum: u64 = l.iter().map(|&v| v as u64).sum();
    let mean = (sum as f64 / l.len() as f64 + 0.5) as u8;
    for v in &mut img.pixels {
        *v = blend(mean, *v, factor);
    }
}

/// `adjust_saturation`: blend with the image's own gray version (`ImageEnhance.Color`); a
/// no-op on grayscale images.
pub fn adjust_saturation(img: &mut RawImage, factor: f32) {
    if img.channels != 3 {
        return;
    }
    for p in img.pixels.chunks_exact_mut(3) {
        let g = pil_luma(p[0], p[1], p[2]);
        for v in p {
            *v = blend(g, *v, factor);
        }
    }
}

/// PIL's RGB to HSV (`convert("HSV")`), all components 0..=255, with its float roundings.
pub fn rgb_to_hsv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return (0, 0, maxc);
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    let rc = (maxc - r) as f32 / cr;
    let gc = (maxc - g) as f32 / cr;
    let bc = (maxc - b) as f32 / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + rc as f64 - bc as f64) as f32
    } else {
        (4.0 + gc as f64 - rc as f64) as f32
    };
    // Pillow stores the wrapped hue back into a `float` before scaling: keep that rounding.
    let h = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
    let uh = ((h as f64 * 255.0) as i32).clamp(0, 255) as u8;
    let us = ((s as f64 * 255.0) as i32).clamp(0, 255) as u8;
    (uh, us, maxc)
}

/// PIL's HSV to RGB.
pub fn hsv_to_rgb(h: u8, s: u8, v: u8) -> (u8, u8, u8) {
    if s == 0 {
        return (v, v, v);
    }
    let hf = h as f32 as f64 * 6.0 / 255.0;
    let i = hf.floor() as i32;
    let f = (hf - i as f32 as f64) as f32;
    let fs = (s as f32 as f64 / 255.0) as f32;
    let vf = v as f32 as f64;
    let p = (vf * (1.0 - fs as f64)).round() as i32;
    let q = (vf * (1.0 - (fs * f) as f64)).round() as i32;
    let t = (vf * (1.0 - (fs * (1.0 - f)) as f64)).round() as i32;
    let (p, q, t) = (
        p.clamp(0, 255) as u8,
        q.clamp(0, 255) as u8,
        t.clamp(0, 255) as u8,
    );
    match i % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// `adjust_hue` of torchvision's PIL backend: to HSV, add `trunc(factor * 255)` to H with
/// 8-bit wrap-around, back to RGB. A no-op on grayscale images.
pub fn adjust_hue(img: &mut RawImage, factor: f32) {
    if img.channels != 3 {
        return;
    }
    let shift = ((factor as f64 * 255.0) as i32).rem_euclid(256) as u8;
    for p in img.pixels.chunks_exact_mut(3) {
        let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
        let (r, g, b) = hsv_to_rgb(h.wrapping_add(shift), s, v);
        p.copy_from_slice(&[r, g, b]);
    }
}

/// `RandomGrayscale`'s conversion: gray (PIL weights) replicated over the channels.
pub fn grayscale(img: &mut RawImage) {
    if img.channels != 3 {
        return;
    }
    for p in img.pixels.chunks_exact_mut(3) {
        let g = pil_luma(p[0], p[1], p[2]);
        p.copy_from_slice(&[g, g, g]);
    }
}

/// `ToTensor` + `Normalize`: HWC bytes to CHW `(v / 255 - mean) / std`.
fn normalize(img: &RawImage, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let c = img.channels;
    let n = img.width * img.height;
    let mut out = vec![0f32; c * n];
    for ch in 0..c {
        let m = mean.get(ch).or(mean.first()).copied().unwrap_or(0.0);
        let s = std.get(ch).or(std.first()).copied().unwrap_or(1.0);
        let dst = &mut out[ch * n..(ch + 1) * n];
        for (i, d) in dst.iter_mut().enumerate() {
            *d = (img.pixels[i * c + ch] as f32 / 255.0 - m) / s;
        }
    }
    out
}

fn check_norm(channels: usize, mean: &[f32], std: &[f32]) -> Result<(), DataError> {
    if channels != 1 && channels != 3 {
        return Err(DataError::Config(Setting::new(
            "channels", "1 or 3", channels,
        )));
    }
    if mean.len() != channels || std.len() != channels {
        return Err(DataError::Config(Setting::new(
            "mean / std",
            format!("one mean and one std per channel ({channels})"),
            format_args!("mean {mean:?} std {std:?}"),
        )));
    }
    if std.iter().any(|s| !(*s > 0.0 && s.is_finite())) || mean.iter().any(|m| !m.is_finite()) {
        return Err(DataError::Config(Setting::new(
            "mean / std",
            "std positive and finite, mean finite",
            format_args!("mean {mean:?} std {std:?}"),
        )));
    }
    Ok(())
}

/// The training augmentation (official `make_transforms`, in its order): pad, random resized
/// crop, optional flip, optional colour distortion, optional Gaussian blur, normalise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainTransform {
    /// Output side in pixels.
    pub crop_size: usize,
    /// Range of the crop's area as a fraction of the (padded) image.
    pub crop_scale: (f64, f64),
    /// Range of the crop's aspect ratio w/h, sampled log-uniformly.
    pub ratio: (f64, f64),
    /// Black pixels added on each side before cropping (2 turns 28x28 into 32x32).
    pub pad: usize,
    pub horizontal_flip: bool,
    /// Colour distortion strength `s` of the official `get_color_distortion`; 0 = off.
    pub color_jitter: f32,
    /// The official Gaussian blur (probability 0.5, radius 0.1-2.0), see [`super::blur`].
    #[serde(default)]
    pub gaussian_blur: bool,
    /// 1 (grayscale) or 3 (RGB); images with the other count are converted first.
    pub channels: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl TrainTransform {
    /// The official recipe: `RandomResizedCrop(crop_size, scale=(0.3, 1.0))`, no flip, no
    /// colour; ImageNet statistics (their channel average for grayscale).
    pub fn official(crop_size: usize, channels: usize) -> Self {
        let (mean, std) = if channels == 1 {
            (vec![0.449], vec![0.226])
        } else {
            (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
        };
        Self {
            crop_size,
            crop_scale: (0.3, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            pad: 0,
            horizontal_flip: false,
            color_jitter: 0.0,
            gaussian_blur: false,
            channels,
            mean,
            std,
        }
    }

    /// Fashion-MNIST: pad 28x28 to 32x32, then the official crop at 32, dataset statistics.
    pub fn fashion_mnist() -> Self {
        Self {
            pad: 2,
            mean: vec![FASHION_MNIST_MEAN],
            std: vec![FASHION_MNIST_STD],
            ..Self::official(32, 1)
        }
    }

    pub fn validate(&self) -> Result<(), DataError> {
        check_norm(self.channels, &self.mean, &self.std)?;
        let (s0, s1) = self.crop_scale;
        let (r0, r1) = self.ratio;
        if self.crop_size == 0 || self.crop_size > 65536 {
            return Err(DataError::Config(Setting::new(
                "crop_size",
                "1..=65536",
                self.crop_size,
            )));
        }
        if !(s0 > 0.0 && s0 <= s1 && s1.is_finite()) {
            return Err(DataError::Config(Setting::new(
                "crop_scale",
                "0 < min <= max",
                format_args!("{:?}", self.crop_scale),
            )));
        }
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(DataError::Config(Setting::new(
                "ratio",
                "0 < min <= max",
                format_args!("{:?}", self.ratio),
            )));
        }
        if !(self.color_jitter >= 0.0 && self.color_jitter.is_finite()) {
            return Err(DataError::Config(Setting::new(
                "color_jitter",
                "a finite number >= 0",
                self.color_jitter,
            )));
        }
        Ok(())
    }

    /// Number of floats `apply` returns: `channels * crop_size^2`.
    pub fn output_len(&self) -> usize {
        self.channels * self.crop_size * self.crop_size
    }

    /// Augments one image into normalised CHW floats. An empty image gives zeros of the
    /// right length (an image decoder never returns one; this keeps the call total).
    pub fn apply(&self, img: &RawImage, rng: &mut Rng) -> Vec<f32> {
        let img = img.to_channels(self.channels);
        if img.width == 0
            || img.height == 0
            || img.pixels.len() < img.width * img.height * img.channels
        {
            return vec![0.0; self.output_len()];
        }
        let img = pad_image(&img, self.pad);
        let p = random_resized_crop_params(img.width, img.height, self.crop_scale, self.ratio, rng);
        let cropped = crop(&img, p);
        let s = self.crop_size;
        let mut out = RawImage {
            pixels: resize_bilinear_aa(
                &cropped.pixels,
                cropped.width,
                cropped.height,
                cropped.channels,
                s,
                s,
                Rounding::Pillow,
            ),
            width: s,
            height: s,
            channels: cropped.channels,
        };
        if self.horizontal_flip && unit_f64(rng) < 0.5 {
            hflip(&mut out);
        }
        if self.color_jitter > 0.0 {
            color_distortion(&mut out, self.color_jitter as f64, rng);
        }
        if self.gaussian_blur {
            super::blur::random_blur(&mut out, rng);
        }
        normalize(&out, &self.mean, &self.std)
    }
}

/// The official `get_color_distortion(s)`: `RandomApply(ColorJitter(0.8s, 0.8s, 0.8s, 0.2s),
/// p=0.8)` then `RandomGrayscale(p=0.2)`. Like torchvision, the four adjustments run in a
/// random order with factors brightness/contrast/saturation in `[max(0, 1-0.8s), 1+0.8s]` and
/// hue in `[-0.2s, 0.2s]` (capped at 0.5). Each adjustment reproduces Pillow's arithmetic
/// byte for byte (tested against Pillow); only the random stream differs from torch's, so
/// the distribution of views is the same but not the individual draws.
pub fn color_distortion(img: &mut RawImage, s: f64, rng: &mut Rng) {
    if unit_f64(rng) < 0.8 {
        let mut order = [0usize, 1, 2, 3];
        for i in (1..4).rev() {
            order.swap(i, below(rng, i + 1));
        }
        let j = 0.8 * s;
        let b = uniform(rng, (1.0 - j).max(0.0), 1.0 + j) as f32;
        let c = uniform(rng, (1.0 - j).max(0.0), 1.0 + j) as f32;
        let sat = uniform(rng, (1.0 - j).max(0.0), 1.0 + j) as f32;
        let hmax = (0.2 * s).min(0.5);
        let hue = uniform(rng, -hmax, hmax) as f32;
        for op in order {
            match op {
                0 => adjust_brightness(img, b),
                1 => adjust_contrast(img, c),
                2 => adjust_saturation(img, sat),
                _ => adjust_hue(img, hue),
            }
        }
    }
    if unit_f64(rng) < 0.2 {
        grayscale(img);
    }
}
