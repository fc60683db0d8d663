//! Pictures of what an encoder learned: every image beside a map of its patch features, the
//! first three principal components of the encoder's patch tokens shown as red, green and
//! blue (the usual picture of a ViT's features, e.g. DINOv2's). The components are fitted on
//! the tokens of all the images together, so the same colour means the same kind of feature
//! in every image of the grid.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::Cpu;
use crate::checkpoint::{Checkpoint, EncoderChoice, HostTensor};
use crate::data::Split;
use crate::data::transform::Preprocess;
use crate::error::{ConfigError, Error, Result};
use crate::eval::features::{Pool, choose_encoder, embed_pixels, list_images, load_image};

/// Images ready for the encoder, with their shape `[N, C, S, S]`.
pub struct Inputs {
    pub pixels: HostTensor,
    /// Where each image came from (file or `dataset[i]`).
    pub names: Vec<String>,
}

/// Load `inputs`: image files and folders, or one dataset spec (`fmnist:DIR`, `mnist:DIR`,
/// `idx:FILE`: its test split) of which the first `count` images are taken.
pub fn load_inputs(inputs: &[String], pre: &Preprocess, count: usize) -> Result<Inputs> {
    let is_dataset = |s: &str| {
        ["fmnist:", "mnist:", "idx:"]
            .iter()
            .any(|p| s.starts_with(p))
    };
    let mut names = Vec::new();
    let mut data = Vec::new();
    match inputs {
        [spec] if is_dataset(spec) => {
            let ds = crate::data::open_source(spec, Split::Test, pre.channels)?;
            for i in 0..ds.len().min(count) {
                let img = ds.get(i)?;
                data.extend(pre.apply_raw(&img));
                names.push(ds.name(i));
            }
        }
        _ => {
            let paths: Vec<std::path::PathBuf> = inputs.iter().map(Into::into).collect();
            for p in list_images(&paths)?.into_iter().take(count) {
                data.extend(load_image(&p, pre)?);
                names.push(p.display().to_string());
            }
        }
    }
    if names.is_empty() {
        return Err(ConfigError::value(
            "--input",
            "image files, folders of images or a labelled set",
            format_args!("{inputs:?} (no images)"),
        )
        .into());
    }
    let shape = vec![names.len(), pre.channels, pre.size, pre.size];
    Ok(Inputs {
        pixels: HostTensor::new(shape, data),
        names,
    })
}

/// The top three principal directions of the rows of `x` (`[m, d]`): their mean and the
/// unit eigenvectors of the covariance with the largest eigenvalues, largest first; each
/// eigenvector's sign is fixed so that its largest-magnitude entry is positive.
pub fn principal_components(x: &[f32], m: usize, d: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut mean = vec![0f64; d];
    for row in x.chunks(d) {
        for (a, v) in mean.iter_mut().zip(row) {
            *a += f64::from(*v) / m as f64;
        }
    }
    let mut cov = nalgebra::DMatrix::<f64>::zeros(d, d);
    for row in x.chunks(d) {
        let c = nalgebra::DVector::from_iterator(
            d,
            row.iter().zip(&mean).map(|(v, mu)| f64::from(*v) - mu),
        );
        cov.ger(1.0 / m.max(1) as f64, &c, &c, 1.0);
    }
    let eig = nalgebra::SymmetricEigen::new(cov);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|a, b| eig.eigenvalues[*b].total_cmp(&eig.eigenvalues[*a]));
    let comps = order
        .into_iter()
        .take(3)
        .map(|j| {
            let mut v: Vec<f64> = eig.eigenvectors.column(j).iter().copied().collect();
            let big = v
                .iter()
                .copied()
                .fold(0.0, |a: f64, b| if b.abs() > a.abs() { b } else { a });
            if big < 0.0 {
                v.iter_mut().for_each(|x| *x = -*x);
            }
            v
        })
        .collect();
    (mean, comps)
}

/// Colours of the `m` rows of `x`: their projections on the first three principal
/// components, each mapped from its 1st-99th percentile range onto 0-255.
pub fn pca_colours(x: &[f32], m: usize, d: usize) -> Vec<[u8; 3]> {
    let (mean, comps) = principal_components(x, m, d);
    let proj: Vec<Vec<f64>> = comps
        .iter()
        .map(|c| {
            x.chunks(d)
                .map(|row| {
                    row.iter()
                        .zip(&mean)
                        .zip(c)
                        .map(|((v, mu), w)| (f64::from(*v) - mu) * w)
                        .sum()
                })
                .collect()
        })
        .collect();
    let ranges: Vec<(f64, f64)> = proj
        .iter()
        .map(|p| {
            let mut s = p.clone();
            s.sort_by(f64::total_cmp);
            let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
            (at(0.01), at(0.99))
        })
        .collect();
    (0..m)
        .map(|i| {
            let mut rgb = [0u8; 3];
            for (k, p) in proj.iter().enumerate() {
                let (lo, hi) = ranges[k];
                let t = if hi > lo {
                    (p[i] - lo) / (hi - lo)
                } else {
                    0.5
                };
                rgb[k] = (t.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
            rgb
        })
        .collect()
}

/// The preprocessed pixels back to bytes (what the model saw), grayscale as gray RGB.
fn display_pixels(pixels: &[f32], c: usize, s: usize, pre: &Preprocess) -> Vec<[u8; 3]> {
    (0..s * s)
        .map(|i| {
            let ch = |k: usize| {
                let v = pixels[k * s * s + i] * pre.std[k] + pre.mean[k];
                (v * 255.0).round().clamp(0.0, 255.0) as u8
            };
            if c == 1 {
                [ch(0); 3]
            } else {
                [ch(0), ch(1), ch(2)]
            }
        })
        .collect()
}

/// How the grid is laid out.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Side of each picture in the grid, in pixels.
    pub cell: usize,
    /// Image / feature-map pairs per row.
    pub pairs_per_row: usize,
}

/// Draw the grid: for each image, the image then its feature map (`grid x grid` patches,
/// each a block of one colour), `cell` pixels each, separated by a few white pixels.
pub fn render(
    images: &[Vec<[u8; 3]>],
    size: usize,
    maps: &[Vec<[u8; 3]>],
    grid: usize,
    layout: Layout,
) -> RgbImage {
    let (cell, per_row) = (layout.cell.max(1), layout.pairs_per_row.max(1));
    let gap = 4;
    let rows = images.len().div_ceil(per_row);
    let cols = images.len().min(per_row);
    let width = cols * (2 * cell + 3 * gap) + gap;
    let height = rows * (cell + gap) + gap;
    let mut out = RgbImage::from_pixel(width as u32, height as u32, Rgb([255, 255, 255]));
    for (i, (img, map)) in images.iter().zip(maps).enumerate() {
        let (r, c) = (i / per_row, i % per_row);
        let y0 = gap + r * (cell + gap);
        let x0 = gap + c * (2 * cell + 3 * gap);
        for y in 0..cell {
            for x in 0..cell {
                let p = img[(y * size / cell) * size + x * size / cell];
                out.put_pixel((x0 + x) as u32, (y0 + y) as u32, Rgb(p));
                let q = map[(y * grid / cell) * grid + x * grid / cell];
                out.put_pixel((x0 + cell + gap + x) as u32, (y0 + y) as u32, Rgb(q));
            }
        }
    }
    out
}

/// What [`visualise`] did.
pub struct VizSummary {
    pub images: usize,
    pub encoder: EncoderChoice,
    pub grid: usize,
}

/// Load the images, run the chosen encoder (target by default, when the checkpoint has one),
/// colour the patch tokens by their first three principal components and write the grid.
pub fn visualise(
    ck: &Checkpoint,
    inputs: &[String],
    count: usize,
    encoder: Option<EncoderChoice>,
    layout: Layout,
    output: &Path,
) -> Result<VizSummary> {
    let which = choose_encoder(ck, encoder);
    let model = ck.build_encoder::<Cpu>(which, &Default::default())?;
    let cfg = &ck.description.encoder;
    let pre = &ck.description.preprocess;
    let inputs = load_inputs(inputs, pre, count)?;
    let [n, c, s] = [inputs.names.len(), cfg.in_chans, cfg.image_size];
    let tokens = embed_pixels(&model, &inputs.pixels, Pool::None, 16, &Default::default());
    let (t, d) = (tokens.shape[1], tokens.shape[2]);
    let grid = cfg.grid();
    let colours = pca_colours(&tokens.data, n * t, d);
    let maps: Vec<Vec<[u8; 3]>> = colours.chunks(t).map(<[_]>::to_vec).collect();
    let images: Vec<Vec<[u8; 3]>> = inputs
        .pixels
        .data
        .chunks(c * s * s)
        .map(|p| display_pixels(p, c, s, pre))
        .collect();
    let cell = layout.cell.max(grid);
    let img = render(&images, s, &maps, grid, Layout { cell, ..layout });
    let tmp = output.with_file_name(format!(
        ".{}.tmp.png",
        output.file_stem().and_then(|x| x.to_str()).unwrap_or("viz")
    ));
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|error| Error::ImageWrite {
            path: output.to_path_buf(),
            error,
        })?;
    std::fs::rename(&tmp, output).map_err(|e| Error::io(output, e))?;
    Ok(VizSummary {
        images: n,
        encoder: which,
        grid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens spread mostly along e1, less along e2, least along e3 (plus a constant offset):
    /// the components come out as ±e1, ±e2, ±e3 in that order, and the colours follow the
    /// coordinates.
    #[test]
    fn components_recover_the_spread_directions() {
        let d = 5;
        // A full factorial design: the three coordinates are uncorrelated.
        let mut x: Vec<f32> = Vec::new();
        for a in -2..=2 {
            for b in [-1.0f32, 1.0] {
                for c in [-1.0f32, 1.0] {
                    x.extend([
                        4.0 * a as f32 + 1.0,
                        2.0 * b - 3.0,
                        0.5 * c + 2.0,
                        0.7,
                        -0.2,
                    ]);
                }
            }
        }
        let m = x.len() / d;
        let (mean, comps) = principal_components(&x, m, d);
        assert!((mean[3] - 0.7).abs() < 1e-6);
        for (k, comp) in comps.iter().enumerate() {
            assert!((comp[k] - 1.0).abs() < 1e-6, "component {k}: {comp:?}");
        }
        let colours = pca_colours(&x, m, d);
        // Red grows with the first coordinate.
        let (lo, hi) = (0..m).fold((0, 0), |(lo, hi), i| {
            if x[i * d] < x[lo * d] {
                (i, hi)
            } else if x[i * d] > x[hi * d] {
                (lo, i)
            } else {
                (lo, hi)
            }
        });
        assert_eq!((colours[lo][0], colours[hi][0]), (0, 255));
    }

    #[test]
    fn grid_layout() {
        let img = vec![[10, 20, 30]; 4];
        let map = vec![[200, 0, 0], [0, 200, 0], [0, 0, 200], [9, 9, 9]];
        let out = render(
            &[img.clone(), img.clone(), img],
            2,
            &[map.clone(), map.clone(), map],
            2,
            Layout {
                cell: 8,
                pairs_per_row: 2,
            },
        );
        // 2 pairs per row: 2 * (2 * 8 + 12) + 4 wide; 2 rows: 2 * 12 + 4 high.
        assert_eq!((out.width(), out.height()), (60, 28));
        assert_eq!(out.get_pixel(4, 4).0, [10, 20, 30]);
        // The map's first patch (top left) and last (bottom right) of the first pair.
        assert_eq!(out.get_pixel(4 + 8 + 4, 4).0, [200, 0, 0]);
        assert_eq!(out.get_pixel(4 + 8 + 4 + 7, 4 + 7).0, [9, 9, 9]);
    }
}
