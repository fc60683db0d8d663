//! Curves of one or several runs against time, drawn from their `monitor.csv`: the epoch's
//! mean prediction loss (without the regularisers, so that runs compare), the effective rank of the target features and the online kNN top-1, one panel
//! each, against the CPU minutes the run had used (wall-clock minutes where the CPU time is
//! unknown). `ijepa pretrain` draws its own run (`monitor.png`); `ijepa curves` compares runs.

use std::path::Path;

use plotters::prelude::*;

use super::monitor::{EpochRecord, PlotError};
use crate::error::{Error, Result};

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");

/// One run's rows and its name in the legend.
pub struct Run {
    pub label: String,
    pub records: Vec<EpochRecord>,
}

/// The time axis: CPU minutes when every run has them, else wall minutes.
fn minutes(runs: &[Run]) -> (bool, impl Fn(&EpochRecord) -> f64 + use<>) {
    let cpu = runs
        .iter()
        .all(|r| r.records.iter().all(|e| e.cpu_seconds.is_some()));
    (cpu, move |e: &EpochRecord| {
        if cpu {
            e.cpu_seconds.unwrap_or(0.0) / 60.0
        } else {
            e.seconds / 60.0
        }
    })
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

type Metric = fn(&EpochRecord) -> Option<f64>;

/// Draw the three panels side by side into `png` (written atomically).
pub fn plot_runs(runs: &[Run], png: &Path) -> Result<()> {
    let err = |error: PlotError| Error::Plot {
        path: png.to_path_buf(),
        what: "monitor curves",
        error,
    };
    if runs.iter().all(|r| r.records.is_empty()) {
        return Err(Error::NothingToDraw {
            path: png.to_path_buf(),
        });
    }
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let (cpu, x_of) = minutes(runs);
    let x_desc = if cpu { "CPU minutes" } else { "minutes" };
    let x_max = runs
        .iter()
        .flat_map(|r| r.records.iter().map(&x_of))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let panels: [(&str, Metric); 3] = [
        ("prediction loss (epoch mean)", |e| Some(e.prediction_loss)),
        ("effective rank", |e| Some(e.health.effective_rank)),
        ("online kNN top-1 %", |e| e.knn_top1),
    ];
    let tmp = png.with_file_name(format!(
        ".{}.tmp.png",
        png.file_stem().and_then(|s| s.to_str()).unwrap_or("curves")
    ));
    {
        let root = BitMapBackend::new(&tmp, (1500, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let areas = root.split_evenly((1, 3));
        for (area, (title, metric)) in areas.iter().zip(panels) {
            let values: Vec<f64> = runs
                .iter()
                .flat_map(|r| r.records.iter().filter_map(metric))
                .filter(|v| v.is_finite())
                .collect();
            let (lo, hi) = values
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            let (lo, hi) = if values.is_empty() {
                (0.0, 1.0)
            } else {
                let pad = ((hi - lo) * 0.08).max(1e-3);
                (lo - pad, hi + pad)
            };
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(0.0..x_max * 1.02, lo..hi)
                .map_err(err)?;
            chart.configure_mesh().x_desc(x_desc).draw().map_err(err)?;
            for (i, run) in runs.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let points: Vec<(f64, f64)> = run
                    .records
                    .iter()
                    .filter_map(|e| metric(e).map(|v| (x_of(e), v)))
                    .filter(|p| p.1.is_finite())
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(run.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(
                        points
                            .into_iter()
                            .map(|p| Circle::new(p, 3, color.filled())),
                    )
                    .map_err(err)?;
            }
            if runs.len() > 1 {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 13))
                    .draw()
                    .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    std::fs::rename(&tmp, png).map_err(|e| Error::io(png, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::monitor::Health;

    fn rec(epoch: usize, cpu: Option<f64>, knn: Option<f64>) -> EpochRecord {
        EpochRecord {
            epoch,
            step: epoch as u64 * 10,
            seconds: epoch as f64 * 30.0,
            cpu_seconds: cpu,
            loss: 1.0 / epoch as f64,
            prediction_loss: 0.5 / epoch as f64,
            health: Health {
                std: 0.1,
                effective_rank: epoch as f64 * 3.0,
            },
            knn_top1: knn,
        }
    }

    #[test]
    fn time_axis_is_cpu_only_when_every_run_has_it() {
        let with = Run {
            label: "a".into(),
            records: vec![rec(1, Some(120.0), Some(50.0))],
        };
        let without = Run {
            label: "b".into(),
            records: vec![rec(1, None, None)],
        };
        let (cpu, x) = minutes(std::slice::from_ref(&with));
        assert!(cpu);
        assert_eq!(x(&with.records[0]), 2.0);
        let runs = [with, without];
        let (cpu, x) = minutes(&runs);
        assert!(!cpu);
        assert_eq!(x(&runs[0].records[0]), 0.5);
    }

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("ijepa-curves-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let png = dir.join("c.png");
        let runs = [
            Run {
                label: "faithful".into(),
                records: (1..4)
                    .map(|e| rec(e, Some(e as f64 * 60.0), None))
                    .collect(),
            },
            Run {
                label: "sigreg".into(),
                records: (1..4)
                    .map(|e| rec(e, Some(e as f64 * 70.0), Some(60.0 + e as f64)))
                    .collect(),
            },
        ];
        plot_runs(&runs, &png).unwrap();
        let img = image::open(&png).unwrap();
        assert_eq!((img.width(), img.height()), (1500, 480));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
