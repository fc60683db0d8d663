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

use super::RawImage;
use super::augment::{CropParams, crop, pad_image};
use super::resize::{Rounding, resize_bilinear_aa};
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

    /// Turn a decoded image into normalised CHW f32 pixels.
    pub fn apply(&self, img: &DynamicImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let (pixels, channels) = if self.channels == 1 {
            (img.to_luma8().into_raw(), 1)
        } else {
            (img.to_rgb8().into_raw(), 3)
        };
        self.apply_raw(&RawImage {
            width: w as usize,
            height: h as usize,
            channels,
            pixels,
        })
    }

    /// The same from 8-bit pixels in any channel count ([`RawImage::to_channels`] converts
    /// them). An empty or short image gives zeros of the right length instead of failing.
    pub fn apply_raw(&self, img: &RawImage) -> Vec<f32> {
        let s = self.size;
        let c = self.channels;
        let img = img.to_channels(c);
        if img.width == 0 || img.height == 0 || img.pixels.len() < img.width * img.height * c {
            return vec![0.0; c * s * s];
        }
        let img = pad_image(&img, self.pad);
        let (w, h) = (img.width, img.height);
        let resized = |nw: usize, nh: usize| RawImage {
            pixels: resize_bilinear_aa(&img.pixels, w, h, c, nw, nh, Rounding::Torchvision),
            width: nw,
            height: nh,
            channels: c,
        };
        let mut img = match self.resize {
            Resize::Exact if (w, h) != (s, s) => resized(s, s),
            Resize::ShorterSide { ratio } => {
                let short = ((s as f64) * ratio).round().max(1.0);
                let scale = short / w.min(h) as f64;
                let nw = ((w as f64) * scale).round().max(1.0) as usize;
                let nh = ((h as f64) * scale).round().max(1.0) as usize;
                resized(nw, nh)
            }
            Resize::None | Resize::Exact => img,
        };
        if self.center_crop || (img.width, img.height) != (s, s) {
            let (cw, ch) = (s.min(img.width), s.min(img.height));
            // torchvision's CenterCrop offsets: round((size - crop) / 2)
            let params = CropParams {
                left: ((img.width - cw) as f64 / 2.0).round() as usize,
                top: ((img.height - ch) as f64 / 2.0).round() as usize,
                width: cw,
                height: ch,
            };
            img = crop(&img, params);
            if (cw, ch) != (s, s) {
                img = RawImage {
                    pixels: resize_bilinear_aa(&img.pixels, cw, ch, c, s, s, Rounding::Torchvision),
                    width: s,
                    height: s,
                    channels: c,
                };
            }
        }
        let n = s * s;
        let mut out = vec![0f32; c * n];
        for ch in 0..c {
            // (v - mean/r) / (std/r) with r = 1/255: the fused form of the HF processor.
            let m = self.mean[ch] * 255.0;
            let sd = self.std[ch] * 255.0;
            for i in 0..n {
                out[ch * n + i] = (img.pixels[i * c + ch] as f32 - m) / sd;
            }
        }
        out
    }

    pub fn validate(&self) -> crate::error::Result<()> {
        if self.size == 0
            || !(self.channels == 1 || self.channels == 3)
            || self.mean.len() != self.channels
            || self.std.len() != self.channels
            || self.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err(crate::error::ConfigError::value(
                "preprocess",
                "channels 1 or 3, with one finite mean and one positive std per channel",
                format_args!("{self:?}"),
            )
            .into());
        }
        Ok(())
    }
}
