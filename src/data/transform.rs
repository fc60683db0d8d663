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

use image::imageops::FilterType;
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
        let mut img = if self.pad > 0 {
            let (w, h) = img.dimensions();
            let p = self.pad as u32;
            let mut canvas = DynamicImage::new(w + 2 * p, h + 2 * p, img.color());
            image::imageops::overlay(&mut canvas, img, p as i64, p as i64);
            canvas
        } else {
            img.clone()
        };
        let s = self.size as u32;
        img = match self.resize {
            Resize::None => img,
            Resize::Exact => img.resize_exact(s, s, FilterType::Triangle),
            Resize::ShorterSide { ratio } => {
                let (w, h) = img.dimensions();
                let short = ((self.size as f64) * ratio).round().max(1.0);
                let scale = short / w.min(h) as f64;
                let (nw, nh) = (
                    ((w as f64) * scale).round().max(1.0) as u32,
                    ((h as f64) * scale).round().max(1.0) as u32,
                );
                img.resize_exact(nw, nh, FilterType::Triangle)
            }
        };
        if self.center_crop || img.dimensions() != (s, s) {
            let (w, h) = img.dimensions();
            let (cw, ch) = (s.min(w), s.min(h));
            let left = (w - cw) / 2;
            let top = (h - ch) / 2;
            img = img.crop_imm(left, top, cw, ch);
            if img.dimensions() != (s, s) {
                img = img.resize_exact(s, s, FilterType::Triangle);
            }
        }
        let raw: Vec<u8> = if self.channels == 1 {
            img.to_luma8().into_raw()
        } else {
            img.to_rgb8().into_raw()
        };
        let c = self.channels;
        let n = (s * s) as usize;
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
