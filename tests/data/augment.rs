use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use ijepa::data::RawImage;
use ijepa::data::augment::{
    CropParams, FASHION_MNIST_MEAN, FASHION_MNIST_STD, TrainTransform, adjust_brightness,
    adjust_contrast, adjust_hue, adjust_saturation, grayscale, hsv_to_rgb,
    random_resized_crop_params, rgb_to_hsv,
};
use ijepa::data::resize::{Rounding, resize_bilinear_aa};
use ijepa::data::transform::{Preprocess, Resize};

use crate::pil_golden as golden;

fn pattern(w: usize, h: usize, c: usize) -> Vec<u8> {
    (0..w * h * c)
        .map(|i| ((i * 37 + (i * i) % 101) % 256) as u8)
        .collect()
}

fn rgb(w: usize, h: usize, seed: usize) -> RawImage {
    RawImage {
        width: w,
        height: h,
        channels: 3,
        pixels: (0..w * h * 3)
            .map(|i| ((i * 73 + seed * 11 + (i * i) % 97) % 256) as u8)
            .collect(),
    }
}

#[test]
fn crop_areas_and_ratios_stay_in_range() {
    let (w, h) = (100usize, 80usize);
    let mut fallback = 0;
    for seed in 0..2000u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let p = random_resized_crop_params(w, h, (0.3, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng);
        assert!(p.width >= 1 && p.height >= 1);
        assert!(p.left + p.width <= w && p.top + p.height <= h, "{p:?}");
        let frac = (p.width * p.height) as f64 / (w * h) as f64;
        if (p.width, p.height) == (w, h) {
            fallback += 1;
            continue;
        }
        // w and h are each rounded, so allow the rounding slack.
        let lo = 0.3 * (1.0 - 0.5 / p.width as f64) * (1.0 - 0.5 / p.height as f64);
        assert!(frac >= lo && frac <= 1.0, "area fraction {frac} for {p:?}");
        let ar = p.width as f64 / p.height as f64;
        let slack = 0.5 / p.width.min(p.height) as f64;
        assert!(
            ar >= 0.75 * (1.0 - 2.0 * slack) && ar <= 4.0 / 3.0 * (1.0 + 2.0 * slack),
            "aspect {ar} for {p:?}"
        );
    }
    assert!(fallback < 40, "fallback used {fallback} times out of 2000");
}

#[test]
fn impossible_ratio_takes_the_center_crop_fallback() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let p = random_resized_crop_params(40, 40, (0.9, 1.0), (10.0, 20.0), &mut rng);
    assert_eq!(
        p,
        CropParams {
            top: 18,
            left: 0,
            height: 4,
            width: 40
        }
    );
    let p = random_resized_crop_params(40, 30, (0.9, 1.0), (0.01, 0.02), &mut rng);
    // w = round(30 * 0.02) = round(0.6) = 1.
    assert_eq!(
        p,
        CropParams {
            top: 0,
            left: 19,
            height: 30,
            width: 1
        }
    );
    // In-range image ratio but areas that never fit: the whole image.
    let p = random_resized_crop_params(10, 10, (1.5, 2.0), (0.9, 1.1), &mut rng);
    assert_eq!(
        p,
        CropParams {
            top: 0,
            left: 0,
            height: 10,
            width: 10
        }
    );
}

#[test]
fn train_transform_shape_determinism_and_seed_dependence() {
    let t = TrainTransform::official(16, 3);
    let img = rgb(40, 30, 3);
    let a = t.apply(&img, &mut ChaCha8Rng::seed_from_u64(7));
    let b = t.apply(&img, &mut ChaCha8Rng::seed_from_u64(7));
    let c = t.apply(&img, &mut ChaCha8Rng::seed_from_u64(8));
    assert_eq!(a.len(), 3 * 16 * 16);
    assert_eq!(a, b);
    assert_ne!(a, c);
    let g = TrainTransform::fashion_mnist();
    let gray = RawImage {
        width: 28,
        height: 28,
        channels: 1,
        pixels: pattern(28, 28, 1),
    };
    let out = g.apply(&gray, &mut ChaCha8Rng::seed_from_u64(0));
    assert_eq!(out.len(), 32 * 32);
    // RGB input to a 1-channel transform is converted, not rejected.
    assert_eq!(
        g.apply(&img, &mut ChaCha8Rng::seed_from_u64(0)).len(),
        32 * 32
    );
    let lo = (0.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD;
    let hi = (1.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD;
    assert!(out.iter().all(|v| *v >= lo - 1e-6 && *v <= hi + 1e-6));
    assert!(t.validate().is_ok() && g.validate().is_ok());
    let bad = TrainTransform {
        mean: vec![0.5],
        ..TrainTransform::official(16, 3)
    };
    assert!(bad.validate().is_err());
}

#[test]
fn flip_mirrors_the_unflipped_result() {
    let base = TrainTransform::official(12, 3);
    let flip = TrainTransform {
        horizontal_flip: true,
        ..base.clone()
    };
    let img = rgb(20, 20, 1);
    let (mut same, mut mirrored) = (0, 0);
    for seed in 0..40 {
        let a = base.apply(&img, &mut ChaCha8Rng::seed_from_u64(seed));
        let b = flip.apply(&img, &mut ChaCha8Rng::seed_from_u64(seed));
        let mut m = a.clone();
        for ch in 0..3 {
            for y in 0..12 {
                m[ch * 144 + y * 12..ch * 144 + y * 12 + 12].reverse();
            }
        }
        if b == a {
            same += 1;
        } else {
            assert_eq!(b, m);
            mirrored += 1;
        }
    }
    assert!(same > 5 && mirrored > 5, "{same} / {mirrored}");
}

#[test]
fn color_jitter_is_deterministic_and_changes_colours() {
    let t = TrainTransform {
        color_jitter: 1.0,
        ..TrainTransform::official(12, 3)
    };
    let plain = TrainTransform::official(12, 3);
    let img = rgb(20, 20, 2);
    let mut changed = 0;
    for seed in 0..20 {
        let a = t.apply(&img, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(a, t.apply(&img, &mut ChaCha8Rng::seed_from_u64(seed)));
        let p = plain.apply(&img, &mut ChaCha8Rng::seed_from_u64(seed));
        changed += usize::from(a != p);
    }
    assert!(changed >= 14, "jitter changed only {changed} of 20");
    // Grayscale input works too (saturation and hue are no-ops there).
    let g = TrainTransform {
        color_jitter: 1.0,
        ..TrainTransform::fashion_mnist()
    };
    let gray = RawImage {
        width: 28,
        height: 28,
        channels: 1,
        pixels: pattern(28, 28, 1),
    };
    assert_eq!(
        g.apply(&gray, &mut ChaCha8Rng::seed_from_u64(3)).len(),
        1024
    );
}

#[test]
fn resize_keeps_constants_and_identity() {
    for (w, h, ow, oh) in [
        (7, 5, 3, 2),
        (5, 9, 31, 4),
        (64, 3, 17, 17),
        (1, 1, 4, 4),
        (30, 20, 1, 1),
    ] {
        for c in [1, 3] {
            let src = vec![173u8; w * h * c];
            let out = resize_bilinear_aa(&src, w, h, c, ow, oh, Rounding::Pillow);
            assert_eq!(out.len(), ow * oh * c);
            assert!(out.iter().all(|&v| v == 173), "{w}x{h}->{ow}x{oh}");
        }
    }
    let src = pattern(13, 9, 3);
    assert_eq!(
        resize_bilinear_aa(&src, 13, 9, 3, 13, 9, Rounding::Pillow),
        src
    );
    // Too-short input gives an empty result, not a panic.
    assert!(resize_bilinear_aa(&src[..10], 13, 9, 3, 5, 5, Rounding::Pillow).is_empty());
}

#[test]
fn downscale_matches_a_hand_computed_case() {
    // 4 -> 2: scale 2, support 2. Output 0 has center 1.0 and taps x = 0, 1, 2 with triangle
    // weights 0.75, 0.75, 0.25 (normalised 3/7, 3/7, 1/7): (0*3 + 70*3 + 140) / 7 = 50.
    // Output 1 has center 3.0, taps 1, 2, 3 with 1/7, 3/7, 3/7: (70 + 140*3 + 210*3) / 7 = 160.
    assert_eq!(
        resize_bilinear_aa(&[0, 70, 140, 210], 4, 1, 1, 2, 1, Rounding::Pillow),
        [50, 160]
    );
    // Same vertically.
    assert_eq!(
        resize_bilinear_aa(&[0, 70, 140, 210], 1, 4, 1, 1, 2, Rounding::Pillow),
        [50, 160]
    );
    // 2x2 -> 1x1: plain average (100 + 0 + 50 + 250) / 4 = 100.
    assert_eq!(
        resize_bilinear_aa(&[100, 0, 50, 250], 2, 2, 1, 1, 1, Rounding::Pillow),
        [100]
    );
}

#[test]
fn resize_matches_pillow() {
    for &(c, w, h, ow, oh, expected) in golden::RESIZE {
        let out = resize_bilinear_aa(&pattern(w, h, c), w, h, c, ow, oh, Rounding::Pillow);
        assert_eq!(out, expected, "{c}ch {w}x{h} -> {ow}x{oh}");
    }
}

#[test]
fn colour_ops_match_pillow() {
    let img = RawImage {
        width: 9,
        height: 7,
        channels: 3,
        pixels: golden::INPUT_9X7_RGB.to_vec(),
    };
    assert_eq!(img.pixels, pattern(9, 7, 3));
    type Op = fn(&mut RawImage, f32);
    let cases: [(&str, Op, f32, &[u8]); 8] = [
        ("brightness", adjust_brightness, 0.3, golden::BRIGHTNESS_0_3),
        ("brightness", adjust_brightness, 1.7, golden::BRIGHTNESS_1_7),
        ("contrast", adjust_contrast, 0.3, golden::CONTRAST_0_3),
        ("contrast", adjust_contrast, 1.7, golden::CONTRAST_1_7),
        ("saturation", adjust_saturation, 0.3, golden::SATURATION_0_3),
        ("saturation", adjust_saturation, 1.7, golden::SATURATION_1_7),
        ("hue", adjust_hue, 0.13, golden::HUE_0_13),
        ("hue", adjust_hue, -0.31, golden::HUE_M0_31),
    ];
    for (name, op, f, expected) in cases {
        let mut x = img.clone();
        op(&mut x, f);
        assert_eq!(x.pixels, expected, "{name} {f}");
    }
    let mut g = img.clone();
    grayscale(&mut g);
    let gray: Vec<u8> = g.pixels.chunks(3).map(|p| p[0]).collect();
    assert_eq!(gray, golden::GRAY_9X7);
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn larger_resizes_and_colour_ops_match_pillow_hashes() {
    for &(c, w, h, ow, oh, hash) in golden::RESIZE_HASHED {
        let out = resize_bilinear_aa(&pattern(w, h, c), w, h, c, ow, oh, Rounding::Pillow);
        assert_eq!(fnv1a64(&out), hash, "{c}ch {w}x{h} -> {ow}x{oh}");
    }
    let img = RawImage {
        width: 64,
        height: 64,
        channels: 3,
        pixels: pattern(64, 64, 3),
    };
    for &(op, f, hash) in golden::COLOUR_HASHED {
        let mut x = img.clone();
        match op {
            "brightness" => adjust_brightness(&mut x, f),
            "contrast" => adjust_contrast(&mut x, f),
            "saturation" => adjust_saturation(&mut x, f),
            _ => adjust_hue(&mut x, f),
        }
        assert_eq!(fnv1a64(&x.pixels), hash, "{op} {f}");
    }
}

#[test]
fn hsv_conversions_match_pillow_on_every_colour() {
    let (mut to_hsv, mut to_rgb) = (Vec::with_capacity(3 << 24), Vec::with_capacity(3 << 24));
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            for c in 0..=255u8 {
                let (h, s, v) = rgb_to_hsv(a, b, c);
                to_hsv.extend_from_slice(&[h, s, v]);
                let (r, g, bl) = hsv_to_rgb(a, b, c);
                to_rgb.extend_from_slice(&[r, g, bl]);
            }
        }
    }
    assert_eq!(fnv1a64(&to_hsv), golden::RGB_TO_HSV_CUBE);
    assert_eq!(fnv1a64(&to_rgb), golden::HSV_TO_RGB_CUBE);
}

#[test]
fn odd_inputs_never_panic() {
    let t = TrainTransform::official(8, 3);
    let e = Preprocess {
        pad: 1,
        size: 8,
        resize: Resize::Exact,
        center_crop: false,
        channels: 3,
        mean: vec![0.5; 3],
        std: vec![0.5; 3],
    };
    let rgba = RawImage {
        width: 5,
        height: 4,
        channels: 4,
        pixels: vec![200; 80],
    };
    let cases = [
        rgba.clone(),
        RawImage {
            channels: 2,
            pixels: vec![9; 40],
            ..rgba.clone()
        },
        RawImage {
            width: 0,
            pixels: vec![],
            ..rgba.clone()
        },
        RawImage {
            pixels: vec![1, 2, 3],
            ..rgba.clone()
        },
        RawImage {
            width: 1,
            height: 1,
            channels: 1,
            pixels: vec![7],
        },
    ];
    for img in &cases {
        assert_eq!(t.apply(img, &mut ChaCha8Rng::seed_from_u64(0)).len(), 192);
        assert_eq!(e.apply_raw(img).len(), 192);
    }
    // Alpha is dropped: an opaque RGBA image gives the same tensor as its RGB version.
    let rgb = rgba.to_channels(3);
    assert_eq!(rgb.pixels, vec![200; 60]);
    assert_eq!(e.apply_raw(&rgba), e.apply_raw(&rgb));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(
        random_resized_crop_params(0, 5, (0.3, 1.0), (0.75, 1.33), &mut rng).width,
        0
    );
    let weird = TrainTransform {
        channels: 0,
        crop_size: 0,
        ratio: (f64::NAN, -1.0),
        crop_scale: (f64::NAN, 0.0),
        horizontal_flip: true,
        color_jitter: 1.0,
        ..TrainTransform::official(8, 3)
    };
    assert!(weird.validate().is_err());
    assert!(weird.apply(&rgba, &mut rng).is_empty());
}
