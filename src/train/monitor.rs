//! What the run shows about itself: the collapse monitor (spread and effective rank of the
//! target encoder's pooled features on a fixed batch, every epoch) and the loss curve.

use std::path::Path;

use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};
use crate::model::VisionTransformer;

/// Health of the representation on the fixed batch.
#[derive(Clone, Copy, Debug)]
pub struct Health {
    /// Mean over feature dimensions of the standard deviation across images.
    pub std: f64,
    /// `exp(entropy)` of the normalised singular values of the centred features
    /// (Roy & Vetterli 2007): 1 when every image maps to one direction.
    pub effective_rank: f64,
}

/// Spread and effective rank of `[n, d]` features.
pub fn feature_health(features: &[f32], n: usize, d: usize) -> Health {
    let mut mean = vec![0f64; d];
    for row in features.chunks(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64 / n as f64;
        }
    }
    let centred: Vec<f64> = features
        .chunks(d)
        .flat_map(|row| row.iter().zip(&mean).map(|(v, m)| *v as f64 - m))
        .collect();
    let std = (0..d)
        .map(|j| ((0..n).map(|i| centred[i * d + j].powi(2)).sum::<f64>() / n.max(1) as f64).sqrt())
        .sum::<f64>()
        / d.max(1) as f64;
    // Eigenvalues of the smaller Gram matrix are the squared singular values.
    let m = nalgebra::DMatrix::from_row_slice(n, d, &centred);
    let gram = if n <= d {
        &m * m.transpose()
    } else {
        m.transpose() * &m
    };
    let eig = nalgebra::SymmetricEigen::new(gram).eigenvalues;
    let sv: Vec<f64> = eig.iter().map(|l| l.max(0.0).sqrt()).collect();
    let total: f64 = sv.iter().sum();
    let effective_rank = if total > 0.0 {
        let h: f64 = sv
            .iter()
            .filter(|s| **s > 0.0)
            .map(|s| s / total)
            .map(|p| -p * p.ln())
            .sum();
        h.exp()
    } else {
        0.0
    };
    Health {
        std,
        effective_rank,
    }
}

/// The monitor's file in a run folder, and its header line.
pub const MONITOR: &str = "monitor.csv";
const HEADER: &str = "epoch,feature_std,effective_rank\n";

/// The epochs `monitor.csv` in `out` has a row for.
pub fn logged_epochs(out: &Path) -> Vec<usize> {
    std::fs::read_to_string(out.join(MONITOR))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next()?.parse().ok())
        .collect()
}

/// Drops the rows of epochs after `epoch` (they will be redone by a resumed run).
pub fn keep_epochs_up_to(out: &Path, epoch: usize) -> Result<()> {
    let path = out.join(MONITOR);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut kept = String::from(HEADER);
    for line in text.lines().skip(1) {
        if line
            .split(',')
            .next()
            .and_then(|e| e.parse::<usize>().ok())
            .is_some_and(|e| e <= epoch)
        {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    crate::fsutil::write_bytes_atomic(&path, kept.as_bytes())
}

/// Run the target encoder on the fixed batch, append to `monitor.csv`, warn on collapse.
pub fn check<B: crate::ops::IjepaBackend>(
    target: &VisionTransformer<B>,
    pixels: &(Vec<f32>, [usize; 4]),
    device: &B::Device,
    out: &Path,
    epoch: usize,
) -> Result<Health> {
    let (data, shape) = pixels;
    let x: Tensor<B, 4> = Tensor::from_data(TensorData::new(data.clone(), *shape), device);
    let pooled = target.forward(x, None).mean_dim(1);
    let [n, _, d] = pooled.dims();
    let feats = pooled
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default();
    let h = feature_health(&feats, n, d);
    let path = out.join(MONITOR);
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| HEADER.into());
    text.push_str(&format!("{epoch},{:.6},{:.3}\n", h.std, h.effective_rank));
    crate::fsutil::write_bytes_atomic(&path, text.as_bytes())?;
    if h.std < 1e-3 || h.effective_rank < 2.0 {
        eprintln!(
            "warning: the target features look collapsed (std {:.2e}, effective rank {:.2} of {d}): lower the learning rate or raise the EMA momentum",
            h.std, h.effective_rank
        );
    }
    Ok(h)
}

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");

/// Draw `loss` against `step` from the CSV log (a raw and a smoothed line).
pub fn plot_losses(csv: &Path, png: &Path) -> Result<()> {
    use plotters::prelude::*;
    let points: Vec<(f64, f64)> = super::log::read(csv)?
        .into_iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.step as f64, r.loss))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let err = |e: String| Error::format(png, format!("cannot draw the loss curve: {e}"));
    let (x0, x1) = (
        points[0].0,
        points[points.len() - 1].0.max(points[0].0 + 1.0),
    );
    let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let window = (points.len() / 50).max(1);
    let smooth: Vec<(f64, f64)> = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let from = i.saturating_sub(window - 1);
            let w = &points[from..=i];
            (p.0, w.iter().map(|q| q.1).sum::<f64>() / w.len() as f64)
        })
        .collect();
    let tmp = png.with_file_name(".loss.tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("I-JEPA pretraining loss", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("loss")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                RGBColor(170, 200, 230),
            ))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, png).map_err(|e| Error::io(png, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapsed_and_spread_features() {
        let (n, d) = (32, 8);
        let collapsed: Vec<f32> = (0..n * d).map(|i| (i % d) as f32).collect();
        let h = feature_health(&collapsed, n, d);
        assert!(h.std < 1e-9 && h.effective_rank < 1e-9);
        // one direction: rank 1
        let line: Vec<f32> = (0..n)
            .flat_map(|i| (0..d).map(move |j| (i as f32) * (j as f32 + 1.0)))
            .collect();
        assert!((feature_health(&line, n, d).effective_rank - 1.0).abs() < 1e-6);
        // orthogonal, equally spread: rank d
        let eye: Vec<f32> = (0..n)
            .flat_map(|i| (0..d).map(move |j| if i % d == j { 1.0 } else { 0.0 }))
            .collect();
        let r = feature_health(&eye, n, d).effective_rank;
        assert!(r > d as f64 - 1.5, "{r}");
    }
}
