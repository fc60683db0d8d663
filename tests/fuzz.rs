//! A seeded mutation fuzzer over every parser of user input: IDX files, `.npy` arrays, native
//! checkpoints, Hugging Face directories (model.safetensors and config.json), the official
//! pickle guard, YAML configs and `--set` overrides, image files. Each parser gets valid
//! samples mutated by bit flips, byte overwrites, truncations, insertions, deletions, and
//! edits of length fields and headers; no input may panic, hang (a few seconds at most) or
//! run out of memory. An error is the right answer to most of them.
//!
//!     cargo test --release --test fuzz                            # 2,000 inputs per parser
//!     IJEPA_FUZZ_INPUTS=100000 cargo test --release --test fuzz -- --nocapture
//!
//! `IJEPA_FUZZ_SEED` picks another seed (default 0); a failure names the parser and the
//! input number, which with the seed rebuild the input exactly.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{reference, tmp};
use ijepa::checkpoint::{Checkpoint, LoadOptions, native, pickle_guard, prefixed};
use ijepa::rng::{self, Rng, below};
use rand::RngCore;

/// Inputs per parser (`IJEPA_FUZZ_INPUTS`, default 2,000).
fn inputs() -> usize {
    std::env::var("IJEPA_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn seed() -> u64 {
    std::env::var("IJEPA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Longest time one input may take.
const HANG: Duration = Duration::from_secs(5);

const INTERESTING: [u64; 9] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
];

/// One mutation of `data`, drawn from `rng`; mutations favour the first 64 bytes (headers).
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    let pos = |rng: &mut Rng, len: usize| {
        if len == 0 {
            0
        } else if below(rng, 2) == 0 {
            below(rng, len.min(64))
        } else {
            below(rng, len)
        }
    };
    match below(rng, 8) {
        // bit flips
        0 => {
            for _ in 0..1 + below(rng, 8) {
                if !data.is_empty() {
                    let p = pos(rng, data.len());
                    data[p] ^= 1 << below(rng, 8);
                }
            }
        }
        // a byte set to an interesting value
        1 => {
            if !data.is_empty() {
                let p = pos(rng, data.len());
                data[p] = INTERESTING[below(rng, 5)] as u8;
            }
        }
        // truncation
        2 => {
            let keep = below(rng, data.len() + 1);
            data.truncate(keep);
        }
        // a length field: a 2-, 4- or 8-byte word (either endianness) set to an interesting value
        3 => {
            let width = [2, 4, 8][below(rng, 3)];
            if data.len() >= width {
                let p = pos(rng, data.len() - width + 1);
                let v = INTERESTING[below(rng, INTERESTING.len())]
                    .wrapping_add(below(rng, 3) as u64)
                    .wrapping_sub(1);
                let bytes = if below(rng, 2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                let src = if below(rng, 2) == 0 {
                    &bytes[..width]
                } else {
                    &bytes[8 - width..]
                };
                data[p..p + width].copy_from_slice(src);
            }
        }
        // random bytes inserted
        4 => {
            let p = pos(rng, data.len() + 1).min(data.len());
            let n = 1 + below(rng, 16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(p..p, bytes);
        }
        // a range deleted
        5 => {
            if !data.is_empty() {
                let p = pos(rng, data.len());
                let n = 1 + below(rng, 32.min(data.len() - p));
                data.drain(p..p + n);
            }
        }
        // a range duplicated (repeated structures)
        6 => {
            if !data.is_empty() {
                let p = pos(rng, data.len());
                let n = 1 + below(rng, 64.min(data.len() - p));
                let copy = data[p..p + n].to_vec();
                let at = pos(rng, data.len() + 1).min(data.len());
                data.splice(at..at, copy);
            }
        }
        // ASCII digits written (numbers in text formats)
        _ => {
            if !data.is_empty() {
                let p = pos(rng, data.len());
                let n = 1 + below(rng, 12);
                for i in p..(p + n).min(data.len()) {
                    data[i] = b"0123456789-.e"[below(rng, 13)];
                }
            }
        }
    }
}

/// Runs `parse` on `count` mutants of the samples (1 to 4 mutations each, the sample
/// itself first); fails on a panic or on an input that takes longer than [`HANG`].
fn fuzz(name: &str, samples: &[Vec<u8>], mut parse: impl FnMut(&[u8]) -> bool) {
    let count = inputs();
    let mut rng = rng::keyed(
        &[seed(), name.len() as u64, name.bytes().map(u64::from).sum()],
        rng::Expansion::Counter,
    );
    let (mut accepted, start) = (0usize, Instant::now());
    for i in 0..count {
        let mut data = samples[i % samples.len()].clone();
        if i >= samples.len() {
            for _ in 0..1 + below(&mut rng, 4) {
                mutate(&mut rng, &mut data);
            }
        }
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&data)));
        let took = t.elapsed();
        match outcome {
            Ok(ok) => accepted += usize::from(ok),
            Err(_) => panic!("{name}: input {i} (seed {}) panicked", seed()),
        }
        assert!(
            took < HANG,
            "{name}: input {i} (seed {}) took {took:?}",
            seed()
        );
        if i == 0 {
            assert_eq!(accepted, 1, "{name}: the first valid sample is refused");
        }
    }
    println!(
        "{name}: {count} inputs, {accepted} accepted, {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// Writes `data` to `path` (the parsers under test read files).
fn put(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
}

fn idx_sample(gz: bool) -> Vec<u8> {
    let mut raw = vec![0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 6];
    raw.extend((0..4 * 5 * 6).map(|i| (i * 7) as u8));
    if !gz {
        return raw;
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&raw).unwrap();
    enc.finish().unwrap()
}

#[test]
fn idx_files() {
    let dir = tmp("fuzz-idx");
    let path = dir.join("images-idx3-ubyte");
    fuzz("idx", &[idx_sample(false), idx_sample(true)], |data| {
        put(&path, data);
        ijepa::data::idx::read_idx(&path, ijepa::data::idx::IMAGES_MAGIC).is_ok()
    });
}

#[test]
fn npy_arrays() {
    let dir = tmp("fuzz-npy");
    let (f, i) = (dir.join("f.npy"), dir.join("i.npy"));
    ijepa::npy::write_f32(
        &f,
        &[2, 3, 4],
        &(0..24).map(|v| v as f32).collect::<Vec<_>>(),
    )
    .unwrap();
    let samples = vec![
        std::fs::read(&f).unwrap(),
        std::fs::read(reference("official/masks_enc.npy")).unwrap(),
    ];
    fuzz("npy", &samples, |data| {
        put(&i, data);
        let a = ijepa::npy::read_f32(&i).is_ok();
        let b = ijepa::npy::read_i64(&i).is_ok();
        a || b
    });
}

#[test]
fn native_checkpoints() {
    let dir = tmp("fuzz-native");
    let hf = Checkpoint::read(&reference("hf"), &LoadOptions::default()).unwrap();
    let sample = dir.join("sample.safetensors");
    native::write(
        &sample,
        &hf.description,
        &prefixed("encoder", hf.encoder.clone()),
    )
    .unwrap();
    let path = dir.join("m.safetensors");
    fuzz("native", &[std::fs::read(&sample).unwrap()], |data| {
        put(&path, data);
        Checkpoint::read(&path, &LoadOptions::default()).is_ok()
    });
}

#[test]
fn hugging_face_directories() {
    let dir = tmp("fuzz-hf");
    let (weights, config) = (
        std::fs::read(reference("hf/model.safetensors")).unwrap(),
        std::fs::read(reference("hf/config.json")).unwrap(),
    );
    // Even inputs mutate the weights, odd ones config.json.
    let mut n = 0usize;
    fuzz(
        "hf safetensors + config.json",
        &[weights.clone(), config.clone()],
        |data| {
            n += 1;
            let (w, c) = if n % 2 == 1 {
                (data, &config[..])
            } else {
                (&weights[..], data)
            };
            put(&dir.join("model.safetensors"), w);
            put(&dir.join("config.json"), c);
            Checkpoint::read(&dir, &LoadOptions::default()).is_ok()
        },
    );
}

#[test]
fn pickle_guard() {
    let file = std::fs::File::open(reference("official/checkpoint.pth.tar")).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .unwrap()
        .to_string();
    let mut pickle = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name(&name).unwrap(), &mut pickle).unwrap();
    let evil = b"\x80\x02cposix\nsystem\nX\x05\x00\x00\x00touch\x85R.".to_vec();
    fuzz("pickle guard", &[pickle, evil.clone()], |data| {
        let verdict = pickle_guard::scan(data, 0);
        if let Ok(end) = &verdict {
            assert!(*end <= data.len());
        }
        verdict.is_ok()
    });
}

#[test]
fn yaml_configs_and_overrides() {
    let recipe =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/fmnist_vit.yaml");
    let text = std::fs::read(&recipe).unwrap();
    let origin = Path::new("fuzz.yaml");
    fuzz("yaml config", std::slice::from_ref(&text), |data| {
        let yaml = String::from_utf8_lossy(data);
        ijepa::train::config::TrainConfig::from_yaml(&yaml, &[], origin).is_ok()
    });
    let valid = String::from_utf8(text).unwrap();
    let sets: Vec<Vec<u8>> = [
        "optimization.lr=5e-4",
        "data.crop_size=32",
        "mask.pred_mask_scale=[0.15,0.2]",
        "meta.depth=2",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("--set", &sets, |data| {
        let set = String::from_utf8_lossy(data).into_owned();
        ijepa::train::config::TrainConfig::from_yaml(&valid, &[set], origin).is_ok()
    });
}

#[test]
fn image_files() {
    let dir = tmp("fuzz-images");
    let img = image::RgbImage::from_fn(12, 9, |x, y| image::Rgb([x as u8 * 20, y as u8 * 25, 99]));
    let mut samples = Vec::new();
    for format in [
        image::ImageFormat::Png,
        image::ImageFormat::Jpeg,
        image::ImageFormat::Bmp,
        image::ImageFormat::Gif,
        image::ImageFormat::Tiff,
        image::ImageFormat::WebP,
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut bytes, format)
            .unwrap();
        samples.push(bytes.into_inner());
    }
    let path = dir.join("x.img");
    fuzz("image", &samples, |data| {
        put(&path, data);
        ijepa::data::folder::load_image(&path, 3).is_ok()
    });
}
