//! What the run shows about itself: the collapse monitor (spread and effective rank of the
//! target encoder's pooled features on a fixed batch, every epoch) and the loss curve.

use std::path::Path;

use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};
use crate::model::VisionTransformer;

/// Health of the representation on the fixed batch.
#[derive(Clone, Copy, Debug, PartialEq)]
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

/// Run the target encoder on the fixed batch; warn when its features look collapsed.
pub fn health<B: crate::ops::IjepaBackend>(
    target: &VisionTransformer<B>,
    pixels: &(Vec<f32>, [usize; 4]),
    device: &B::Device,
) -> Health {
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
    if h.std < 1e-3 || h.effective_rank < 2.0 {
        eprintln!(
            "warning: the target features look collapsed (std {:.2e}, effective rank {:.2} of {d}): lower the learning rate or raise the EMA momentum",
            h.std, h.effective_rank
        );
    }
    h
}

pub const MONITOR: &str = "monitor.csv";
const MONITOR_HEADER: &str =
    "epoch,step,seconds,cpu_seconds,loss,prediction_loss,feature_std,effective_rank,knn_top1\n";

/// One row of `monitor.csv`: where the run stands at the end of an epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: u64,
    /// Wall-clock seconds spent training so far (the monitor's own time left out).
    pub seconds: f64,
    /// CPU seconds (user + system, all threads) spent training so far, where the OS says.
    pub cpu_seconds: Option<f64>,
    /// Mean loss of the epoch (with the regularisers, if any).
    pub loss: f64,
    /// Mean prediction loss alone (rank 0's batches; after a resume within the epoch, the
    /// steps since the resume).
    pub prediction_loss: f64,
    pub health: Health,
    /// Online kNN top-1 (percent), when the data has labels.
    pub knn_top1: Option<f64>,
}

impl EpochRecord {
    fn csv_row(&self) -> String {
        let opt = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_default();
        format!(
            "{},{},{:.1},{},{:.6},{:.6},{:.6},{:.3},{}\n",
            self.epoch,
            self.step,
            self.seconds,
            opt(self.cpu_seconds, 1),
            self.loss,
            self.prediction_loss,
            self.health.std,
            self.health.effective_rank,
            opt(self.knn_top1, 2)
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 9 {
            return None;
        }
        let opt = |s: &str| s.parse::<f64>().ok();
        Some(Self {
            epoch: f[0].parse().ok()?,
            step: f[1].parse().ok()?,
            seconds: f[2].parse().ok()?,
            cpu_seconds: opt(f[3]),
            loss: f[4].parse().ok()?,
            prediction_loss: f[5].parse().ok()?,
            health: Health {
                std: f[6].parse().ok()?,
                effective_rank: f[7].parse().ok()?,
            },
            knn_top1: opt(f[8]),
        })
    }
}

/// The rows of a `monitor.csv` (rows of an older layout are skipped).
pub fn read_records(path: &Path) -> Result<Vec<EpochRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(EpochRecord::parse)
        .collect())
}

/// Append a row to `out/monitor.csv` (written whole, atomically).
pub fn append_record(out: &Path, rec: &EpochRecord) -> Result<()> {
    let path = out.join(MONITOR);
    let mut text = match std::fs::read_to_string(&path) {
        Ok(t) if t.starts_with(MONITOR_HEADER) => t,
        _ => MONITOR_HEADER.to_string(),
    };
    text.push_str(&rec.csv_row());
    crate::fsutil::write_bytes_atomic(&path, text.as_bytes())
}

/// On resume: keep the rows of the epochs up to `epoch` and return the last one's clocks
/// (seconds, CPU seconds), so that the curves continue where the run stopped.
pub fn resume_records(out: &Path, epoch: usize) -> Result<(f64, f64)> {
    let path = out.join(MONITOR);
    let kept: Vec<EpochRecord> = read_records(&path)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.epoch <= epoch)
        .collect();
    let mut text = MONITOR_HEADER.to_string();
    for r in &kept {
        text.push_str(&r.csv_row());
    }
    crate::fsutil::write_bytes_atomic(&path, text.as_bytes())?;
    Ok(kept
        .last()
        .map_or((0.0, 0.0), |r| (r.seconds, r.cpu_seconds.unwrap_or(0.0))))
}

/// CPU time (user + system, every thread) this process has used, in seconds; `None` where
/// `/proc/self/stat` does not exist.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks of 1/100 s (USER_HZ).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");

/// Why the loss curve could not be drawn (plotters' error for its bitmap backend).
pub type PlotError = plotters::drawing::DrawingAreaErrorKind<
    <plotters::backend::BitMapBackend<'static> as plotters::backend::DrawingBackend>::ErrorType,
>;

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
    let err = |error: PlotError| Error::Plot {
        path: png.to_path_buf(),
        what: "loss curve",
        error,
    };
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
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("I-JEPA pretraining loss", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("loss")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                RGBColor(170, 200, 230),
            ))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))
            .map_err(err)?;
        root.present().map_err(err)?;
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

    #[test]
    fn monitor_rows_round_trip_and_resume_keeps_the_done_epochs() {
        let dir = std::env::temp_dir().join(format!("ijepa-monitor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rec = |epoch: usize, knn: Option<f64>| EpochRecord {
            epoch,
            step: epoch as u64 * 47,
            seconds: epoch as f64 * 61.5,
            cpu_seconds: Some(epoch as f64 * 120.0),
            loss: 0.25,
            prediction_loss: 0.125,
            health: Health {
                std: 0.125,
                effective_rank: 12.5,
            },
            knn_top1: knn,
        };
        for e in 1..=3 {
            append_record(&dir, &rec(e, (e != 2).then_some(70.5))).unwrap();
        }
        let rows = read_records(&dir.join(MONITOR)).unwrap();
        assert_eq!(
            rows,
            vec![rec(1, Some(70.5)), rec(2, None), rec(3, Some(70.5))]
        );
        // Resuming after epoch 2 drops epoch 3 and continues both clocks from epoch 2.
        assert_eq!(resume_records(&dir, 2).unwrap(), (123.0, 240.0));
        assert_eq!(read_records(&dir.join(MONITOR)).unwrap().len(), 2);
        // A fresh run starts from an empty table.
        assert_eq!(resume_records(&dir, 0).unwrap(), (0.0, 0.0));
        assert!(read_records(&dir.join(MONITOR)).unwrap().is_empty());
        // The process clock advances with work done (10 ms ticks).
        if let Some(before) = process_cpu_seconds() {
            let t = std::time::Instant::now();
            let mut x = 0u64;
            while t.elapsed().as_millis() < 200 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            assert!(process_cpu_seconds().unwrap() > before);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
